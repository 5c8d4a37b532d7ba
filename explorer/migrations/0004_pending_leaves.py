from django.db import migrations, models

# Every stored receipt and ledger transaction gets its PendingLeaf in the same transaction, from
# the database itself: whatever path stores the item (the completing statement, the settlement
# statement, the ORM), none can be missed, and none committed late is sealed late or never.
POSTGRESQL = """
CREATE FUNCTION explorer_receipts_pending() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO explorer_pendingleaf (kind, ref)
    SELECT 'receipt', receipt_id FROM added ORDER BY created_at, receipt_id;
    RETURN NULL;
END $$;
CREATE TRIGGER explorer_receipt_pending AFTER INSERT ON explorer_receipt
    REFERENCING NEW TABLE AS added FOR EACH STATEMENT EXECUTE FUNCTION explorer_receipts_pending();

CREATE FUNCTION explorer_transactions_pending() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO explorer_pendingleaf (kind, ref) SELECT 'transaction', id::text FROM added ORDER BY id;
    RETURN NULL;
END $$;
CREATE TRIGGER explorer_ledgertransaction_pending AFTER INSERT ON payments_ledgertransaction
    REFERENCING NEW TABLE AS added FOR EACH STATEMENT EXECUTE FUNCTION explorer_transactions_pending();
"""
POSTGRESQL_DROP = """
DROP TRIGGER explorer_ledgertransaction_pending ON payments_ledgertransaction;
DROP FUNCTION explorer_transactions_pending();
DROP TRIGGER explorer_receipt_pending ON explorer_receipt;
DROP FUNCTION explorer_receipts_pending();
"""
SQLITE = [
    """CREATE TRIGGER explorer_receipt_pending AFTER INSERT ON explorer_receipt BEGIN
        INSERT INTO explorer_pendingleaf (kind, ref) VALUES ('receipt', NEW.receipt_id);
    END""",
    """CREATE TRIGGER explorer_ledgertransaction_pending AFTER INSERT ON payments_ledgertransaction BEGIN
        INSERT INTO explorer_pendingleaf (kind, ref) VALUES ('transaction', CAST(NEW.id AS TEXT));
    END""",
]
SQLITE_DROP = ["DROP TRIGGER explorer_ledgertransaction_pending", "DROP TRIGGER explorer_receipt_pending"]

# What waited before the queue existed: every item no block holds, oldest first.
BACKFILL = [
    """INSERT INTO explorer_pendingleaf (kind, ref)
       SELECT 'receipt', r.receipt_id FROM explorer_receipt r
       WHERE NOT EXISTS (SELECT 1 FROM explorer_blockleaf l WHERE l.kind = 'receipt' AND l.ref = r.receipt_id)
       ORDER BY r.created_at, r.receipt_id""",
    """INSERT INTO explorer_pendingleaf (kind, ref)
       SELECT 'transaction', CAST(t.id AS TEXT) FROM payments_ledgertransaction t
       WHERE NOT EXISTS (SELECT 1 FROM explorer_blockleaf l WHERE l.kind = 'transaction' AND l.ref = CAST(t.id AS TEXT))
       ORDER BY t.id""",
]


def _execute(schema_editor, statements: list[str]) -> None:
    with schema_editor.connection.cursor() as cursor:
        for statement in statements:
            cursor.execute(statement)  # no parameters


def create(apps, schema_editor):
    # The triggers first: the tables stay locked until this migration commits, so nothing stored
    # in between is missed by both.
    postgresql = schema_editor.connection.vendor == "postgresql"
    _execute(schema_editor, [POSTGRESQL] if postgresql else SQLITE)
    _execute(schema_editor, BACKFILL)


def drop(apps, schema_editor):
    postgresql = schema_editor.connection.vendor == "postgresql"
    _execute(schema_editor, [POSTGRESQL_DROP] if postgresql else SQLITE_DROP)


class Migration(migrations.Migration):
    dependencies = [
        ("explorer", "0003_drop_redundant_fk_index"),
        ("payments", "0002_ledger_triggers"),
    ]

    operations = [
        migrations.CreateModel(
            name="PendingLeaf",
            fields=[
                ("id", models.BigAutoField(primary_key=True, serialize=False)),
                (
                    "kind",
                    models.CharField(
                        choices=[("receipt", "Receipt"), ("transaction", "Ledger transaction")], max_length=16
                    ),
                ),
                ("ref", models.CharField(max_length=64)),
            ],
            options={
                "ordering": ["id"],
                "constraints": [
                    models.CheckConstraint(
                        condition=models.Q(("kind__in", ["receipt", "transaction"])), name="pending_leaf_kind_valid"
                    )
                ],
            },
        ),
        migrations.RunPython(create, drop),
    ]
