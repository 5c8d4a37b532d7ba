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

from accounts.models import User
from core.rawsql import columns
from jobs.matching import MINER_MEETS_JOB
from jobs.models import FailedAttempt, Job, JobStatus, Receipt, Verdict
from miners.models import Miner
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


# --- Verified jobs (``jobs.verification``) ------------------------------------------------

# A decision's read: the verified job locked (``SKIP LOCKED``: one locked by another decision, or
# a cancel, is left to it), then, while it runs, its attempts locked, each with its miner, the
# miner's owner and its payment (NULL where there is none). One row per attempt, each holding the
# job's columns first (one row of the job alone when there is no attempt to read). The rows are
# the locked versions: an attempt completed while the lock was awaited is read completed.
LOCK_VERIFIED = f"""
WITH parent AS MATERIALIZED (
    SELECT {columns(Job, "j")} FROM jobs_job j WHERE j.id = %(id)s FOR UPDATE SKIP LOCKED
), attempts AS MATERIALIZED (
    SELECT {columns(Job, "a")} FROM jobs_job a
    WHERE a.parent_id = (
        SELECT id FROM parent WHERE status = '{JobStatus.RUNNING}' AND verification <> '{{}}'::jsonb
    )
    ORDER BY a.completed_at, a.created_at
    FOR UPDATE OF a
)
SELECT {columns(Job, "parent")}, {columns(Job, "attempts")}, {columns(Miner, "m")}, {columns(User, "u")},
       {columns(Payment, "p")}
FROM parent
LEFT JOIN attempts ON true
LEFT JOIN miners_miner m ON m.id = attempts.miner_id
LEFT JOIN {User._meta.db_table} u ON u.id = m.owner_id
LEFT JOIN payments_payment p ON p.payment_id = attempts.payment_id
"""
LOCK_VERIFIED_OFFSETS = tuple(
    sum(len(model._meta.concrete_fields) for model in (Job, Job, Miner, User, Payment)[:n]) for n in range(5)
)

# Verdicts on answers, ``(job, miner, kind)`` each, once per job (a second is ignored), and, for
# the miners among them given a wrong one (``%(wrong_miners)s``), the figures of their reputation
# (``jobs.selectors.with_wrong_answers_counting``, the verdicts just inserted counted with the
# others: the statement's own reads do not see its inserts): the reputation matching reads is
# stored where it changed, and each such miner's row comes back as ``(id, wrong answers counting
# towards a suspension, whether it is suspended)``.
_VERDICTS = f"""
verdicts AS (
    INSERT INTO {Verdict._meta.db_table} (job_id, miner_id, kind, created_at)
    SELECT v.job_id, v.miner_id, v.kind, %(now)s
    FROM unnest(%(verdict_jobs)s::uuid[], %(verdict_miners)s::bigint[], %(verdict_kinds)s::text[])
        AS v(job_id, miner_id, kind)
    ON CONFLICT (job_id) DO NOTHING
    RETURNING miner_id, kind, created_at
), figures AS (
    SELECT m.id, m.suspended_at,
        (SELECT count(*) FROM jobs_job j
         WHERE j.miner_id = m.id AND j.status = '{JobStatus.COMPLETED}' AND j.completed_at >= %(since)s) AS completed,
        (SELECT count(*) FROM {FailedAttempt._meta.db_table} f
         WHERE f.miner_id = m.id AND f.created_at >= %(since)s) AS failed,
        (SELECT count(*) FROM {Verdict._meta.db_table} v
         WHERE v.miner_id = m.id AND v.kind = ANY(%(wrong_kinds)s::text[]) AND v.created_at >= %(since)s)
        + (SELECT count(*) FROM verdicts n
           WHERE n.miner_id = m.id AND n.kind = ANY(%(wrong_kinds)s::text[]) AND n.created_at >= %(since)s) AS wrong,
        (SELECT count(*) FROM {Verdict._meta.db_table} v
         WHERE v.miner_id = m.id AND v.kind = ANY(%(wrong_kinds)s::text[])
           AND v.created_at > GREATEST(%(since)s, COALESCE(m.suspension_lifted_at, %(since)s)))
        + (SELECT count(*) FROM verdicts n
           WHERE n.miner_id = m.id AND n.kind = ANY(%(wrong_kinds)s::text[])
             AND n.created_at > GREATEST(%(since)s, COALESCE(m.suspension_lifted_at, %(since)s))) AS counting
    FROM miners_miner m WHERE m.id = ANY(%(wrong_miners)s::bigint[])
), reputations AS (
    SELECT id, GREATEST(completed - wrong, 0)::float8 / NULLIF(completed + failed, 0)::float8 AS reputation
    FROM figures
), stored AS (
    UPDATE miners_miner m SET reputation_score = r.reputation
    FROM reputations r
    WHERE m.id = r.id AND m.reputation_score IS DISTINCT FROM r.reputation
    RETURNING m.id
)"""
VERDICTS = f"""
WITH {_VERDICTS.strip()}
SELECT f.id, f.counting, f.suspended_at IS NOT NULL, (SELECT count(*) FROM stored) FROM figures f
"""

# A verified job's agreed answer, in one statement: the job completed with it, the attempts still
# out cancelled (``%(cancel)s``, with the reason ``%(reason)s``), its receipt inserted, and the
# verdicts on the answers with their miners' reputations (as ``VERDICTS``, which it returns).
AGREED = f"""
WITH done AS (
    UPDATE jobs_job SET status = '{JobStatus.COMPLETED}', result = %(result)s::jsonb, usage = %(usage)s::jsonb,
        progress = 100, completed_at = %(now)s, error_code = '', error_message = '', updated_at = %(now)s
    WHERE id = %(id)s
    RETURNING id
), cancelled AS (
    UPDATE jobs_job SET status = '{JobStatus.CANCELLED}', completed_at = %(now)s, lease_expires_at = NULL,
        error_code = %(cancel_code)s, error_message = %(reason)s, updated_at = %(now)s
    WHERE id = ANY(%(cancel)s::uuid[])
    RETURNING id
), receipt AS (
    INSERT INTO {Receipt._meta.db_table} (receipt_id, job_id, signed_json, opening, created_at)
    SELECT %(receipt_id)s, id, %(signed_json)s, %(opening)s::jsonb, %(now)s FROM done
    RETURNING 1
), {_VERDICTS.strip()}
SELECT f.id, f.counting, f.suspended_at IS NOT NULL,
       (SELECT count(*) FROM stored), (SELECT count(*) FROM receipt), (SELECT count(*) FROM cancelled)
FROM figures f
"""
