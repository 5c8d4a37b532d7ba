"""The queue's hot paths as hand-written SQL for PostgreSQL.

Claims and completions run thousands of times a second; one statement each, with the
queue walked through its partial index per served model (``CROSS JOIN LATERAL``), keeps
them independent of the queue's depth. The embedded SQLite setup uses the portable ORM
paths in ``jobs.services`` instead.
"""

import json

from django.db import DEFAULT_DB_ALIAS, connection
from django.db.models import JSONField

from jobs.models import Job, JobStatus

_FIELDS = Job._meta.concrete_fields
_ATTNAMES = [field.attname for field in _FIELDS]
_JSON_POSITIONS = [i for i, field in enumerate(_FIELDS) if isinstance(field, JSONField)]


def _returning(alias: str) -> str:
    return ", ".join(f'{alias}."{field.column}"' for field in _FIELDS)


LOCK_MINER = """
SELECT m.status, m.draining, m.vram_gb, m.cuda_code, m.region, m.price, m.gpu_name, m.max_concurrent_jobs
FROM miners_miner m WHERE m.id = %(miner)s FOR UPDATE
"""

# Runs after LOCK_MINER, in a new statement, so the running-jobs count sees every claim
# committed before we got the miner's lock.
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
    WHERE s.miner_id = %(miner)s
    ORDER BY c.rank_at
    LIMIT GREATEST(0, %(capacity)s - (
        SELECT count(*) FROM jobs_job r WHERE r.miner_id = %(miner)s AND r.status = '{JobStatus.RUNNING}'
    ))
)
UPDATE jobs_job j SET status = '{JobStatus.RUNNING}', miner_id = %(miner)s, attempt = j.attempt + 1,
    lease_token = gen_random_uuid()::text, lease_expires_at = %(lease_until)s, started_at = %(now)s,
    progress = 0, updated_at = %(now)s
FROM picked WHERE j.id = picked.id
RETURNING {_returning("j")}
"""

COMPLETE = f"""
UPDATE jobs_job j SET status = '{JobStatus.COMPLETED}', result = v.result, usage = v.usage, progress = 100,
    completed_at = %(now)s, lease_expires_at = NULL, error_code = '', error_message = '', updated_at = %(now)s
FROM jsonb_to_recordset(%(outcomes)s::jsonb) AS v(id uuid, result jsonb, usage jsonb, lease_token text),
     accounts_user u
WHERE j.id = v.id AND j.status = '{JobStatus.RUNNING}' AND j.miner_id = %(miner)s
  AND (v.lease_token IS NULL OR j.lease_token = v.lease_token) AND u.id = j.client_id
RETURNING {_returning("j")}, u.username
"""


def jobs_from_rows(rows) -> list[Job]:
    """Job instances from rows whose first columns are the job's, in model order."""
    jobs = []
    width = len(_FIELDS)
    for row in rows:
        values = list(row[:width])
        for i in _JSON_POSITIONS:
            values[i] = _FIELDS[i].from_db_value(values[i], None, connection)
        jobs.append(Job.from_db(DEFAULT_DB_ALIAS, _ATTNAMES, values))
    return jobs


def jsonb_param(value) -> str:
    return json.dumps(value, separators=(",", ":"))
