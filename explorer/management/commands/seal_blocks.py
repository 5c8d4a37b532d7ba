from django.core.management.base import BaseCommand

from explorer import services


class Command(BaseCommand):
    help = "Seal every waiting receipt and ledger transaction into blocks now."

    def add_arguments(self, parser):
        parser.add_argument("--max-blocks", type=int, default=None)
        parser.add_argument(
            "--seconds", type=float, default=None, help="start no block after this long (BLOCK_SEAL_RUN_SECONDS)"
        )

    def handle(self, *args, max_blocks, seconds, **options):
        sealed = services.blocks_seal_pending(max_blocks=max_blocks, seconds=seconds)
        for block in sealed:
            self.stdout.write(f"block {block.height}: {block.tx_count} leaves, {block.hash}")
        self.stdout.write(f"sealed {len(sealed)} block(s)")
