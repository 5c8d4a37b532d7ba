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
