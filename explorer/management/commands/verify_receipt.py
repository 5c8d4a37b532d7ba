import json
import sys

from django.core.management.base import BaseCommand, CommandError

from explorer import verify


class Command(BaseCommand):
    help = "Verify a receipt file offline (no server, no database): exit status 0 if valid, 1 if not."
    requires_system_checks = []
    requires_migrations_checks = False

    def add_arguments(self, parser):
        parser.add_argument("file", help="the receipt's JSON ('-' reads standard input)")
        parser.add_argument(
            "--public-key",
            action="append",
            help="a coordinator public key to trust (hex or base64; repeatable). Without it, any signer is accepted.",
        )

    def handle(self, *args, file, public_key, **options):
        try:
            if file == "-":
                text = sys.stdin.read()
            else:
                with open(file, encoding="utf-8") as handle:
                    text = handle.read()
            document = verify.load_document(text)
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
            raise CommandError(f"unreadable receipt: {error}") from error
        valid, reason = verify.verify_receipt(document, public_key)
        if not valid:
            self.stderr.write(f"invalid: {reason}")
            sys.exit(1)
        signer = document["signature"]["key_id"]
        attested = len(document.get("attestations", []))
        self.stdout.write(f"valid: signed by {signer}" + (f", {attested} attestation(s)" if attested else ""))
