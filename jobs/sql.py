"""The queue's hot paths as hand-written SQL for PostgreSQL.

Claims and completions run thousands of times a second: a claim is one statement, walking
the queue through its partial index per served model (``CROSS JOIN LATERAL``), so it costs
the same however deep the queue; a completion is a read and one fenced write. The embedded
SQLite setup uses the portable ORM paths in ``jobs.services`` instead.
"""

import json
import uuid
from datetime import datetime

from django.db import DEFAULT_DB_ALIAS, connections, models

from core.rawsql import columns
from jobs.matching import MINER_MEETS_JOB
from jobs.models import Job, JobStatus, Receipt
from payments.models import Payment

# ``jobs_claim`` (``jobs.matching.CLAIM_FUNCTION``, installed by migration) locks the miner's row,
# then leases the best queued jobs it can run: one round trip, its own transaction when called
# outside one. The function lives in the database: changing how claims match takes a migration.
# Each job comes with its payment's columns (NULL for a free job), which its status shows; they
# are renamed so that no name is taken twice.
_PAYMENT_COLUMNS = ", ".join(
    f'p."{field.column}" AS "payment__{field.column}"' for field in Payment._meta.concrete_fields
)
CLAIM = f"""
SELECT {columns(Job, "c")}, {_PAYMENT_COLUMNS}
FROM jobs_claim(
    %(miner)s, %(limit)s, %(job_id)s::uuid, %(models)s::text[], %(now)s, %(lease_until)s, %(headstart)s::float8
) c
LEFT JOIN {Payment._meta.db_table} p ON p.payment_id = c.payment_id
"""

# A dispatcher's batch (agents' assignment): each job to the miner chosen for it, in one statement
# after ``LOCK_MINERS``. The miners' rows are locked first, as ``jobs_claim`` locks them, so the
# running counts read here (a new snapshot, after the locks) hold each miner's concurrency limit
# against its own claims; a job is leased only while queued (``SKIP LOCKED``, then re-checked
# under its lock), so one job never goes to two miners. A miner takes its jobs in the order given,
# up to its free slots; it must be online, not draining nor suspended, serve the job's model and
# meet its constraints (``jobs.matching.MINER_MEETS_JOB``: a pinned job goes to its miner only).
# The leased jobs come back with their payments' columns, as from ``CLAIM``.
LOCK_MINERS = "SELECT id FROM miners_miner WHERE id = ANY(%(miners)s::bigint[]) ORDER BY id FOR UPDATE"
LEASE_TO = f"""
WITH v AS (
    SELECT * FROM unnest(%(jobs)s::uuid[], %(miners)s::bigint[]) WITH ORDINALITY AS v(job_id, miner_id, ord)
), free AS (
    SELECT m.id, m.max_concurrent_jobs - (
        SELECT count(*) FROM jobs_job r WHERE r.miner_id = m.id AND r.status = '{JobStatus.RUNNING}'
    ) AS slots
    FROM miners_miner m
    WHERE m.id IN (SELECT miner_id FROM v) AND m.status = 'online' AND NOT m.draining AND m.suspended_at IS NULL
), fitting AS (
    SELECT j.id, v.miner_id, v.ord FROM v
    JOIN jobs_job j ON j.id = v.job_id
    JOIN miners_miner m ON m.id = v.miner_id
    WHERE j.status = '{JobStatus.QUEUED}' AND j.expires_at > %(now)s
      AND EXISTS (SELECT 1 FROM miners_servedmodel s WHERE s.miner_id = m.id AND s.name = j.model)
      AND {MINER_MEETS_JOB.strip()}
    FOR UPDATE OF j SKIP LOCKED
), picked AS (
    SELECT f.id, f.miner_id FROM (
        SELECT fitting.*, row_number() OVER (PARTITION BY fitting.miner_id ORDER BY fitting.ord) AS n FROM fitting
    ) f JOIN free ON free.id = f.miner_id
    WHERE f.n <= free.slots
), leased AS (
    UPDATE jobs_job j SET status = '{JobStatus.RUNNING}', miner_id = picked.miner_id, attempt = j.attempt + 1,
        lease_token = gen_random_uuid()::text, lease_expires_at = %(lease_until)s, started_at = %(now)s,
        progress = 0, updated_at = %(now)s
    FROM picked WHERE j.id = picked.id
    RETURNING j.*
)
SELECT {columns(Job, "c")}, {_PAYMENT_COLUMNS}
FROM leased c
LEFT JOIN {Payment._meta.db_table} p ON p.payment_id = c.payment_id
"""

# The running jobs a miner reports on: ``jobs_complete`` completes them in memory, signs their
# receipts, then stores both with ``COMPLETE``.
LEASED = f"""
SELECT {columns(Job, "j")} FROM jobs_job j
WHERE j.id = ANY(%(ids)s::uuid[]) AND j.status = '{JobStatus.RUNNING}' AND j.miner_id = %(miner)s
"""

# Store completions and their receipts in one statement (so, in autocommit, one transaction).
# Each job is fenced by the lease token and the payment it was read with: a job re-leased,
# finished or paid for since is left alone, and its receipt with it. Its escrow settles after
# (``payments.services.escrows_settle``), in the same transaction. The receipts are inserted
# from what the update returns, with no second join.
COMPLETE = f"""
WITH v AS (
    SELECT * FROM jsonb_to_recordset(%(rows)s::jsonb) AS v(
        id uuid, fence text, payment_id text, result jsonb, usage jsonb, receipt_id text, signed_json text,
        opening jsonb
    )
), done AS (
    UPDATE jobs_job j SET status = '{JobStatus.COMPLETED}', result = v.result, usage = v.usage, progress = 100,
        completed_at = %(now)s, lease_expires_at = NULL, error_code = '', error_message = '', updated_at = %(now)s
    FROM v
    WHERE j.id = v.id AND j.status = '{JobStatus.RUNNING}' AND j.miner_id = %(miner)s AND j.lease_token = v.fence
      AND j.payment_id IS NOT DISTINCT FROM v.payment_id
    RETURNING j.id, v.receipt_id, v.signed_json, v.opening
), receipts AS (
    INSERT INTO {Receipt._meta.db_table} (receipt_id, job_id, signed_json, opening, created_at)
    SELECT done.receipt_id, done.id, done.signed_json, done.opening, %(now)s FROM done
)
SELECT id FROM done
"""


_COMPACT = json.JSONEncoder(separators=(",", ":"))


def jsonb_param(value) -> str:
    return _COMPACT.encode(value)


# The jobs ahead of one in its model's queue, counted up to a cap (index-only, no sort).
QUEUE_AHEAD = f"""
SELECT count(*) FROM (
    SELECT 1 FROM jobs_job q WHERE q.status = '{JobStatus.QUEUED}' AND q.model = %s AND q.rank_at < %s LIMIT %s
) ahead
"""


_INSERT_FIELDS = Job._meta.concrete_fields
_INSERT_AND_ANNOUNCE = f"""
WITH ins AS (
    INSERT INTO jobs_job ({", ".join(f'"{field.column}"' for field in _INSERT_FIELDS)})
    VALUES ({", ".join(["%s"] * len(_INSERT_FIELDS))}) RETURNING id, model, rank_at
),
announced AS (SELECT pg_notify(%s, ins.id::text || ' ' || ins.model) FROM ins)
SELECT (SELECT count(*) FROM announced), (
    SELECT count(*) FROM (
        SELECT 1 FROM jobs_job q, ins
        WHERE q.status = '{JobStatus.QUEUED}' AND q.model = ins.model AND q.rank_at < ins.rank_at LIMIT %s
    ) ahead
)
"""


def insert_and_announce(job: Job) -> tuple[str, list]:
    """One statement that inserts ``job``, announces it (NOTIFY is delivered at commit) and
    counts the jobs ahead of it, so a submission is a single round trip in autocommit."""
    db = connections[DEFAULT_DB_ALIAS]
    return _INSERT_AND_ANNOUNCE, [param(job, db) for param in _INSERT_PARAMS]


# The Python types each kind of column takes as it is: Django's own conversion for them changes
# nothing on PostgreSQL, and it is most of what building a job's ~40 parameters costs.
_AS_IS = (
    (models.BooleanField, bool),
    (models.CharField, str),
    (models.TextField, str),
    (models.FloatField, float),
    (models.IntegerField, int),
    (models.UUIDField, uuid.UUID),
    (models.ForeignKey, (int, str, uuid.UUID)),
)


def _insert_param(field):
    """A function of a job and a database connection giving ``field``'s parameter, as Django's
    ``get_db_prep_save`` would."""

    def prepared(job, db):
        return field.get_db_prep_save(field.pre_save(job, True), db)

    if getattr(field, "auto_now", False) or getattr(field, "auto_now_add", False):
        return prepared
    attname, null = field.attname, field.null
    if isinstance(field, models.JSONField) and field.encoder is None and field.decoder is None:

        def json_param(job, db):
            value = getattr(job, attname)
            return None if value is None and null else jsonb_param(value)

        return json_param
    if isinstance(field, models.DateTimeField):
        kind = datetime
    else:
        kind = next((kind for field_class, kind in _AS_IS if isinstance(field, field_class)), None)
        if kind is None:
            return prepared

    if kind is int and not isinstance(field, models.ForeignKey):
        internal_type = field.get_internal_type()

        def integer(job, db):
            value = getattr(job, attname)
            if value is None or type(value) is int:
                return db.ops.adapt_integerfield_value(value, internal_type)
            return prepared(job, db)

        return integer

    kinds = kind if isinstance(kind, tuple) else (kind,)
    naive_refused = kind is datetime  # Django warns of a naive datetime and makes it aware

    def as_is(job, db):
        value = getattr(job, attname)
        if value is None or (type(value) in kinds and not (naive_refused and value.tzinfo is None)):
            return value
        return prepared(job, db)

    return as_is


_INSERT_PARAMS = [_insert_param(field) for field in _INSERT_FIELDS]
