import logging
import os
import signal
import socket
from pathlib import Path

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError

from agents.runner import RunnerError, TaskRunner


class Command(BaseCommand):
    help = (
        "Join a coordinator as an agent over HTTP: register, long-poll for tasks, run them on the platform's "
        "engine (text-generation, chat, summarize on the generation model; embedding on the embedding model) "
        "and report each result. SIGTERM stops after the running task."
    )

    def add_arguments(self, parser):
        parser.add_argument("--url", default=os.environ.get("AITBC_URL", "http://127.0.0.1:8000"))
        parser.add_argument("--api-key", default=os.environ.get("AITBC_API_KEY", ""), help="An agent-scope key.")
        parser.add_argument("--agent-id", default=f"{socket.gethostname()}-agent")
        parser.add_argument("--generation-model", default="smollm2-135m", help="Catalog name; empty for none.")
        parser.add_argument("--embedding-model", default="minilm-l6", help="Catalog name; empty for none.")
        parser.add_argument("--poll-wait", type=float, default=15, help="Long-poll seconds.")
        parser.add_argument("--heartbeat", type=float, default=20, help="Seconds between heartbeats.")
        parser.add_argument("--device", default=settings.INFERENCE_DEVICE or None)
        parser.add_argument("--cache-dir", default=str(settings.MODEL_CACHE_DIR))
        parser.add_argument("--max-tasks", type=int, default=None, help="Exit after answering this many tasks.")

    def handle(self, *args, **options):
        if not options["api_key"]:
            raise CommandError("An agent API key is required (--api-key or AITBC_API_KEY).")
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
        # One line per job, not one per request: httpx logs every poll, heartbeat and streamed batch at INFO.
        logging.getLogger("httpx").setLevel(logging.WARNING)
        runner = TaskRunner(
            url=options["url"],
            api_key=options["api_key"],
            agent_id=options["agent_id"],
            generation_model=options["generation_model"] or None,
            embedding_model=options["embedding_model"] or None,
            poll_wait=options["poll_wait"],
            heartbeat_seconds=options["heartbeat"],
            cache_dir=options["cache_dir"] and Path(options["cache_dir"]),
            device=options["device"],
            max_tasks=options["max_tasks"],
        )
        signal.signal(signal.SIGTERM, lambda *_: runner.stop())
        try:
            done = runner.run()
        except RunnerError as error:
            raise CommandError(str(error)) from error
        self.stdout.write(f"answered {done} tasks")
