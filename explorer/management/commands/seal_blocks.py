from django.core.management.base import BaseCommand

from explorer import services


class Command(BaseCommand):
    help = "Seal every waiting receipt and ledger transaction into blocks now."

    def add_arguments(self, parser):
        parser.add_argument(
            "--full-scan",
            action="store_true",
            help="also look for unsealed items older than the look-back window (slow on a large history)",
        )
        parser.add_argument("--max-blocks", type=int, default=None)

    def handle(self, *args, full_scan, max_blocks, **options):
        sealed = services.blocks_seal_pending(max_blocks=max_blocks, full_scan=full_scan)
        for block in sealed:
            self.stdout.write(f"block {block.height}: {block.tx_count} leaves, {block.hash}")
        self.stdout.write(f"sealed {len(sealed)} block(s)")
