"""The queue's hot paths as hand-written SQL for PostgreSQL.

Claims and completions run thousands of times a second; one statement each, with the
queue walked through its partial index per served model (``CROSS JOIN LATERAL``), keeps
them independent of the queue's depth. The embedded SQLite setup uses the portable ORM
paths in ``jobs.services`` instead.
"""

import json

from django.db import connection

from aitbc_site.rawsql import columns
from jobs.models import Job, JobStatus

GENERIC_PLAN = "SET LOCAL plan_cache_mode = force_generic_plan"

LOCK_MINER = """
SELECT m.status, m.draining, m.vram_gb, m.cuda_code, m.region, m.price, m.gpu_name, m.max_concurrent_jobs
FROM miners_miner m WHERE m.id = %(miner)s FOR UPDATE
"""

# Runs after LOCK_MINER, in a new statement, so the running-jobs count sees every claim
# committed before we got the miner's lock. Planned once per connection (a generic plan):
# the status tests are literals, so the plan can use the queue's partial index.
CLAIM = f"""
WITH picked AS (
    SELECT c.id FROM miners_servedmodel s
    CROSS JOIN LATERAL (
        SELECT j.id, j.rank_at FROM jobs_job j
        WHERE j.status = '{JobStatus.QUEUED}' AND j.model = s.name AND j.expires_at > %(now)s
          AND (%(job_id)s::uuid IS NULL OR j.id = %(job_id)s::uuid)
          AND (j.req_min_vram_gb IS NULL OR j.req_min_vram_gb <= %(vram)s)
          AND (j.req_cuda_code IS NULL OR j.req_cuda_code <= %(cuda)s)
          AND (j.req_region = '' OR lower(j.req_region) = lower(%(region)s))
          AND (j.req_max_price IS NULL OR %(price)s::numeric IS NULL OR j.req_max_price >= %(price)s::numeric)
          AND (j.req_gpu = '' OR strpos(lower(%(gpu)s), lower(j.req_gpu)) > 0)
        ORDER BY j.rank_at
        LIMIT %(limit)s
        FOR UPDATE OF j SKIP LOCKED
    ) c
    WHERE s.miner_id = %(miner)s AND (%(models)s::text[] IS NULL OR s.name = ANY(%(models)s::text[]))
    ORDER BY c.rank_at
    LIMIT LEAST(%(limit)s, GREATEST(0, %(capacity)s - (
        SELECT count(*) FROM jobs_job r WHERE r.miner_id = %(miner)s AND r.status = '{JobStatus.RUNNING}'
    )))
)
UPDATE jobs_job j SET status = '{JobStatus.RUNNING}', miner_id = %(miner)s, attempt = j.attempt + 1,
    lease_token = gen_random_uuid()::text, lease_expires_at = %(lease_until)s, started_at = %(now)s,
    progress = 0, updated_at = %(now)s
FROM picked WHERE j.id = picked.id
RETURNING {columns(Job, "j")}
"""

COMPLETE = f"""
UPDATE jobs_job j SET status = '{JobStatus.COMPLETED}', result = v.result, usage = v.usage, progress = 100,
    completed_at = %(now)s, lease_expires_at = NULL, error_code = '', error_message = '', updated_at = %(now)s
FROM jsonb_to_recordset(%(outcomes)s::jsonb) AS v(id uuid, result jsonb, usage jsonb, lease_token text),
     accounts_user u
WHERE j.id = v.id AND j.status = '{JobStatus.RUNNING}' AND j.miner_id = %(miner)s
  AND (v.lease_token IS NULL OR j.lease_token = v.lease_token) AND u.id = j.client_id
RETURNING {columns(Job, "j")}, u.username
"""


# The payment mirror of jobs just settled (``payments`` settles; the job records what was paid).
MARK_SETTLED = """
UPDATE jobs_job j SET amount_charged = v.paid, payment_status = %(status)s
FROM jsonb_to_recordset(%(paid)s::jsonb) AS v(id uuid, paid numeric)
WHERE j.id = v.id
"""


def jsonb_param(value) -> str:
    return json.dumps(value, separators=(",", ":"))


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
    params = [field.get_db_prep_save(field.pre_save(job, True), connection) for field in _INSERT_FIELDS]
    return _INSERT_AND_ANNOUNCE, params
