"""An execution's advance reads as hand-written SQL on PostgreSQL.

An advance runs after every step's job ends; building its two reads with the ORM cost more CPU
than the rest of it. ``LOCK_EXECUTION`` locks the execution's row (whoever advances it takes this
lock first) and reads it with its client; ``STEP_ROWS``, a new statement and so a new snapshot
taken after the lock, reads its steps with their jobs and the jobs' payments. Other databases
(the embedded SQLite) use the same reads through the ORM (``agents.services``).
"""

from accounts.models import User
from agents.models import Execution, ExecutionStep
from core.rawsql import columns
from jobs.models import Job
from payments.models import Payment

LOCK_EXECUTION = f"""
SELECT {columns(Execution, "e")}, {columns(User, "u")}
FROM {Execution._meta.db_table} e JOIN {User._meta.db_table} u ON u.id = e.client_id
WHERE e.id = %s
FOR UPDATE OF e
"""

STEP_ROWS = f"""
SELECT {columns(ExecutionStep, "s")}, {columns(Job, "j")}, {columns(Payment, "p")}
FROM {ExecutionStep._meta.db_table} s
LEFT JOIN {Job._meta.db_table} j ON j.id = s.job_id
LEFT JOIN {Payment._meta.db_table} p ON p.payment_id = j.payment_id
WHERE s.execution_id = %s
"""

# What an advance changed in its steps, in one statement however many: each changed row's
# mutable fields as they now are in memory (``agents.services._write`` builds the JSON).
STEP_CHANGES = f"""
UPDATE {ExecutionStep._meta.db_table} s SET status = v.status, job_id = v.job_id, attempts = v.attempts,
    not_before = v.not_before, output = v.output, error = v.error, cost = v.cost, started_at = v.started_at,
    finished_at = v.finished_at
FROM jsonb_to_recordset(%s::jsonb) AS v(
    id bigint, status text, job_id uuid, attempts smallint, not_before timestamptz, output jsonb, error text,
    cost numeric, started_at timestamptz, finished_at timestamptz
)
WHERE s.id = v.id
"""
STEP_FIELDS = ("status", "job_id", "attempts", "not_before", "output", "error", "cost", "started_at", "finished_at")
