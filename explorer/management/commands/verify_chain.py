import sys

from django.core.management.base import BaseCommand

from explorer import selectors
from explorer.models import Block


class Command(BaseCommand):
    help = (
        "Re-verify the block chain from genesis: hashes, signatures, prev_hash links and every Merkle root, "
        "recomputed from the receipts and ledger transactions as stored now. Exit status 1 on any problem."
    )

    def handle(self, *args, **options):
        problems = 0
        for problem in selectors.chain_problems():
            problems += 1
            self.stderr.write(problem)
        blocks = Block.objects.count()
        if problems:
            self.stderr.write(f"{problems} problem(s) in {blocks} block(s)")
            sys.exit(1)
        self.stdout.write(f"ok: {blocks} block(s) verify from genesis")
