"""Receipts' move from the explorer to jobs keeps every row, and keeps queueing new ones for sealing."""

import pytest
from django.contrib.contenttypes.models import ContentType
from django.db import connection
from django.db.migrations.executor import MigrationExecutor

from explorer.models import PendingLeaf
from explorer.tests.conftest import completed_jobs
from jobs.models import Receipt
from jobs.receipts import receipts_issue

pytestmark = pytest.mark.django_db(transaction=True)

BEFORE_THE_MOVE = [("jobs", "0007_claim_function_from_matching"), ("explorer", "0005_receipt_opening")]


def migrate(targets) -> None:
    executor = MigrationExecutor(connection)
    executor.migrate(targets)


def latest() -> list[tuple[str, str]]:
    return MigrationExecutor(connection).loader.graph.leaf_nodes()


def test_receipts_keep_their_rows_attestations_and_sealing_queue_when_they_move_to_jobs():
    kept_job, new_job = completed_jobs(2)
    job_id = Receipt._meta.get_field("job").target_field.get_db_prep_value(kept_job.pk, connection)
    at = connection.ops.adapt_datetimefield_value(kept_job.completed_at)
    content_type = ContentType.objects.get_for_model(Receipt).pk
    migrate(BEFORE_THE_MOVE)
    try:
        with connection.cursor() as cursor:
            cursor.execute(
                "INSERT INTO explorer_receipt (receipt_id, job_id, signed_json, opening, created_at) "
                """VALUES ('rcpt_kept', %s, '{"receipt_id": "rcpt_kept"}', '{"input_salt": "00"}', %s)""",
                [job_id, at],
            )
            cursor.execute(
                "INSERT INTO explorer_receiptattestation (receipt_id, alg, key_id, sig, created_at) "
                "VALUES ('rcpt_kept', 'Ed25519', 'key', 'sig', %s)",
                [at],
            )
    finally:
        migrate(latest())
    ContentType.objects.clear_cache()

    kept = Receipt.objects.prefetch_related("attestations").get(pk="rcpt_kept")
    assert (kept.job_id, kept.opening) == (kept_job.pk, {"input_salt": "00"})
    assert kept.served_document()["attestations"] == [{"alg": "Ed25519", "key_id": "key", "sig": "sig"}]
    assert Receipt._meta.db_table == "jobs_receipt"
    # Permissions and admin history keep pointing at the receipts.
    assert ContentType.objects.get_for_model(Receipt).pk == content_type
    # The trigger that queues a stored receipt for sealing followed its table.
    issued = receipts_issue(completed=[(new_job, new_job.miner.miner_id, new_job.price)])[0]
    waiting = list(PendingLeaf.objects.filter(kind="receipt").values_list("ref", flat=True))
    assert waiting == ["rcpt_kept", issued.receipt_id]
