import json
import os
from pathlib import Path

from django.conf import settings
from django.core.management.base import BaseCommand

from accounts.models import ApiKey
from accounts.services import api_key_create, hash_key, user_get_or_create


class Command(BaseCommand):
    help = "Ensure a demo client key and miner key exist (kept under AITBC_DATA_DIR) and print where to start."

    def add_arguments(self, parser):
        parser.add_argument("--url", default="http://127.0.0.1:8000")

    def handle(self, *args, url, **options):
        path = Path(settings.DATA_DIR) / "demo_keys.json"
        keys = json.loads(path.read_text()) if path.exists() else {}
        for scope, username in (("client", "demo-client"), ("miner", "demo-miner")):
            raw = keys.get(scope)
            if not raw or not ApiKey.objects.filter(key_hash=hash_key(raw), revoked_at__isnull=True).exists():
                keys[scope] = api_key_create(
                    user=user_get_or_create(username=username), scope=scope, name="demo"
                ).raw_key
        path.write_text(json.dumps(keys, indent=2))
        os.chmod(path, 0o600)
        self.stdout.write(
            f"\nAITBC Coordinator is starting at {url}/\n"
            f"  API docs:   {url}/docs   (ReDoc: {url}/redoc, schema: {url}/openapi.json)\n"
            f"  Admin:      {url}/admin/  (create a login: .venv/bin/python manage.py createsuperuser)\n"
            f"  Health:     {url}/health  Metrics: {url}/metrics\n"
            f"  Client key: {keys['client']}\n"
            f"  Miner key:  {keys['miner']}\n"
            f"  Models:     smollm2-135m (chat), minilm-l6 (embeddings), answered inside this server\n"
            f"  Try:        curl -H 'X-Api-Key: {keys['client']}' -H 'Content-Type: application/json' "
            f'-d \'{{"prompt": "What is the capital of France?", "model": "smollm2-135m", "params": {{"max_tokens": 40, "temperature": 0}}}}\' {url}/v1/jobs\n'
            f"              then GET {url}/v1/jobs/<job_id>/result with the same key\n"
        )
