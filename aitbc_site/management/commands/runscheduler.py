import contextlib

from django.core.management.base import BaseCommand

from aitbc_site.scheduler import run_blocking


class Command(BaseCommand):
    help = "Send the periodic housekeeping actors' messages to the Dramatiq broker (run one per deployment)."

    def handle(self, *args, **options):
        self.stdout.write("Housekeeping scheduler running; Ctrl-C to stop.")
        with contextlib.suppress(KeyboardInterrupt):
            run_blocking()
