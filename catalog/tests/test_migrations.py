"""The catalog's move from ``inference``: the table, its rows and its constraints come along."""

import pytest
from django.db import IntegrityError, connection, transaction
from django.db.migrations.executor import MigrationExecutor

from catalog.models import CatalogModel

pytestmark = pytest.mark.django_db(transaction=True)

BEFORE = [("inference", "0002_offline_models"), ("catalog", None)]


def migrate(targets) -> None:
    executor = MigrationExecutor(connection)
    executor.loader.build_graph()
    executor.migrate(targets)


def migrate_to_latest() -> None:
    executor = MigrationExecutor(connection)
    executor.loader.build_graph()
    executor.migrate(executor.loader.graph.leaf_nodes())


def test_catalog_rows_move_into_the_catalog_table():
    migrate(BEFORE)
    try:
        with connection.cursor() as cursor:
            cursor.execute(
                "INSERT INTO inference_catalogmodel (name, task, source_kind, source, description, default_max_tokens,"
                " max_tokens, price_per_1k_tokens, enabled, created_at, updated_at)"
                " VALUES ('staff-added', 'chat', 'hub', 'org/model', '', 8, 64, 1.5, false, %s, %s)",
                ["2026-01-01T00:00:00Z", "2026-01-01T00:00:00Z"],
            )
    finally:
        migrate_to_latest()

    assert "inference_catalogmodel" not in connection.introspection.table_names()
    moved = CatalogModel.objects.get(name="staff-added")
    assert (moved.task, moved.source, moved.max_tokens, moved.enabled) == ("chat", "org/model", 64, False)
    with pytest.raises(IntegrityError), transaction.atomic():
        CatalogModel.objects.create(name="bad-task", task="speech", source_kind="hub", source="x")
