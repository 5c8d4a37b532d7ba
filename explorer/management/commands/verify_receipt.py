import sys

from django.core.management.base import BaseCommand, CommandError

from explorer import verify


class Command(BaseCommand):
    help = (
        "Verify a receipt file offline (no server, no database): its signature, and with the receipt's opening "
        "the job's payload and result it commits to. Exit status 0 if valid, 1 if not."
    )
    requires_system_checks = []
    requires_migrations_checks = False

    def add_arguments(self, parser):
        verify.add_arguments(parser)

    def handle(self, *args, file, public_key, opening, payload, result, **options):
        try:
            document, given = verify.load(file, opening=opening, payload=payload, result=result)
        except (OSError, UnicodeDecodeError, ValueError) as error:
            raise CommandError(f"unreadable receipt: {error}") from error
        valid, reason = verify.verify_any(document, public_key, **given)
        if not valid:
            self.stderr.write(f"invalid: {reason}")
            sys.exit(1)
        if "step_receipts" in document:  # an execution's receipt bundle
            steps = len(document["step_receipts"])
            signer = document["receipt"]["signature"]["key_id"]
            self.stdout.write(f"valid: signed by {signer}, over {steps} step receipt(s), each valid")
            return
        signer = document["signature"]["key_id"]
        attested = len(document.get("attestations", []))
        also = verify.matched(given)
        self.stdout.write(
            f"valid: signed by {signer}"
            + (f", {attested} attestation(s)" if attested else "")
            + (f"; {also}" if also else "")
        )
