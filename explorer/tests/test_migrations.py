"""The sealing queue's migration: it queues every item that waited before it, and nothing sealed."""

import pytest
from django.db import connection
from django.db.migrations.executor import MigrationExecutor

from explorer.tests.conftest import completed_jobs
from payments.services import treasury_mint
from tests.factories import WalletFactory

pytestmark = [pytest.mark.postgres, pytest.mark.django_db(transaction=True)]

BEFORE, QUEUE = ("explorer", "0003_drop_redundant_fk_index"), ("explorer", "0004_pending_leaves")


def migrate(target) -> None:
    executor = MigrationExecutor(connection)
    executor.loader.build_graph()
    executor.migrate([target])


def migrate_to_latest() -> None:
    executor = MigrationExecutor(connection)
    executor.migrate(executor.loader.graph.leaf_nodes())


def test_the_queue_starts_with_every_item_no_block_holds(settings):
    settings.AITBC_WELCOME_CREDITS = 0
    wallet = WalletFactory(user__username="carol")
    sealed_tx, *waiting_txs = [treasury_mint(wallet=wallet, amount="1").pk for _ in range(3)]
    jobs = completed_jobs(3)
    migrate(BEFORE)
    try:
        with connection.cursor() as cursor:
            cursor.execute(
                "INSERT INTO explorer_receipt (receipt_id, job_id, signed_json, created_at) "
                "VALUES ('rcpt_sealed', %s, '{}', now()), ('rcpt_a', %s, '{}', now()), ('rcpt_b', %s, '{}', now())",
                [job.pk for job in jobs],
            )
            cursor.execute(
                "INSERT INTO explorer_block (height, hash, prev_hash, merkle_root, timestamp, tx_count, proposer, "
                "signature) VALUES (0, repeat('a', 64), repeat('0', 64), '', now(), 0, '', ''), "
                "(1, repeat('b', 64), repeat('a', 64), '', now(), 2, '', '')"
            )
            cursor.execute(
                "INSERT INTO explorer_blockleaf (block_id, position, kind, ref, leaf_hash) "
                "VALUES (1, 0, 'receipt', 'rcpt_sealed', ''), (1, 1, 'transaction', %s, '')",
                [str(sealed_tx)],
            )
    finally:
        migrate(QUEUE)
        migrate_to_latest()

    with connection.cursor() as cursor:
        cursor.execute("SELECT kind, ref FROM explorer_pendingleaf ORDER BY id")
        queued = cursor.fetchall()
    assert queued == [("receipt", "rcpt_a"), ("receipt", "rcpt_b"), *(("transaction", str(pk)) for pk in waiting_txs)]
