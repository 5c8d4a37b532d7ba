from django.db import migrations

# PostgreSQL enforces what the ledger promises: every transaction's entries sum to zero (checked
# at commit, once all its entries are in) and nothing once written is changed or deleted.
# SQLite, the embedded store, relies on the services alone.
BALANCED_AND_APPEND_ONLY = """
CREATE FUNCTION payments_ledger_balanced() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF (SELECT COALESCE(SUM(amount), 0) FROM payments_ledgerentry WHERE transaction_id = NEW.transaction_id) <> 0 THEN
        RAISE EXCEPTION 'ledger transaction % does not balance', NEW.transaction_id USING ERRCODE = '23514';
    END IF;
    RETURN NULL;
END $$;
CREATE CONSTRAINT TRIGGER payments_ledgerentry_balanced AFTER INSERT ON payments_ledgerentry
    DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION payments_ledger_balanced();

CREATE FUNCTION payments_ledger_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'the ledger is append-only: % on % refused', TG_OP, TG_TABLE_NAME USING ERRCODE = '23514';
END $$;
CREATE TRIGGER payments_ledgerentry_append_only BEFORE UPDATE OR DELETE ON payments_ledgerentry
    FOR EACH ROW EXECUTE FUNCTION payments_ledger_append_only();
CREATE TRIGGER payments_ledgertransaction_append_only BEFORE UPDATE OR DELETE ON payments_ledgertransaction
    FOR EACH ROW EXECUTE FUNCTION payments_ledger_append_only();
"""

DROP = """
DROP TRIGGER payments_ledgertransaction_append_only ON payments_ledgertransaction;
DROP TRIGGER payments_ledgerentry_append_only ON payments_ledgerentry;
DROP FUNCTION payments_ledger_append_only();
DROP TRIGGER payments_ledgerentry_balanced ON payments_ledgerentry;
DROP FUNCTION payments_ledger_balanced();
"""


def _run(schema_editor, sql: str) -> None:
    if schema_editor.connection.vendor == "postgresql":
        with schema_editor.connection.cursor() as cursor:
            cursor.execute(sql)  # no parameters: the "%" in RAISE is literal


def create(apps, schema_editor):
    _run(schema_editor, BALANCED_AND_APPEND_ONLY)


def drop(apps, schema_editor):
    _run(schema_editor, DROP)


class Migration(migrations.Migration):
    dependencies = [("payments", "0001_initial")]

    operations = [migrations.RunPython(create, drop)]
