"""What a deployment keeps through any fault, read from its database after the load has drained:
no accepted job lost, every job completed, receipted and settled once, the ledger conserved and
the block chain verifying from genesis with everything sealed.

The checks read the tables with SQL (they run beside the deployment, not inside it); the chain is
sealed and verified by the app's own ``seal_blocks`` and ``verify_chain`` commands.
"""

from __future__ import annotations

import subprocess
from collections import Counter
from decimal import Decimal

from aitbc_site.testing.processes import PYTHON, ROOT

# Each check: a count (or sum) that is zero when the invariant holds.
CHECKS = {
    "jobs_with_more_than_one_receipt": """
        SELECT count(*) FROM (SELECT job_id FROM jobs_receipt GROUP BY job_id HAVING count(*) > 1) d""",
    "completed_jobs_without_receipt": """
        SELECT count(*) FROM jobs_job j WHERE j.status = 'completed'
        AND NOT EXISTS (SELECT 1 FROM jobs_receipt r WHERE r.job_id = j.id)""",
    "receipts_of_jobs_not_completed": """
        SELECT count(*) FROM jobs_receipt r JOIN jobs_job j ON j.id = r.job_id WHERE j.status <> 'completed'""",
    "paid_completed_jobs_not_settled_once": """
        SELECT count(*) FROM jobs_job j WHERE j.status = 'completed' AND j.payment_id IS NOT NULL
        AND (SELECT count(*) FROM payments_ledgertransaction t WHERE t.job_id = j.id AND t.kind = 'settle') <> 1""",
    "completed_jobs_refunded": """
        SELECT count(*) FROM payments_ledgertransaction t JOIN jobs_job j ON j.id = t.job_id
        WHERE t.kind = 'refund' AND j.status = 'completed'""",
    "payments_of_completed_jobs_not_released": """
        SELECT count(*) FROM payments_payment p JOIN jobs_job j ON j.payment_id = p.payment_id
        WHERE j.status = 'completed' AND p.status <> 'released'""",
    "ended_escrows_not_empty": """
        SELECT count(*) FROM payments_payment p JOIN payments_wallet w ON w.id = p.escrow_id
        WHERE p.status IN ('released', 'refunded') AND w.balance <> 0""",
    "ledger_sum_of_all_entries": "SELECT coalesce(sum(amount), 0) FROM payments_ledgerentry",
    "ledger_sum_of_all_balances": "SELECT coalesce(sum(balance), 0) FROM payments_wallet",
    "unbalanced_ledger_transactions": """
        SELECT count(*) FROM (SELECT transaction_id FROM payments_ledgerentry
        GROUP BY transaction_id HAVING sum(amount) <> 0) d""",
    "wallets_off_their_entries": """
        SELECT count(*) FROM payments_wallet w
        WHERE w.balance <> coalesce((SELECT sum(amount) FROM payments_ledgerentry e WHERE e.wallet_id = w.id), 0)""",
    "negative_balances_outside_treasury": "SELECT count(*) FROM payments_wallet WHERE balance < 0 AND kind <> 'treasury'",
    "receipts_not_sealed": """
        SELECT count(*) FROM jobs_receipt r WHERE NOT EXISTS
        (SELECT 1 FROM explorer_blockleaf l WHERE l.kind = 'receipt' AND l.ref = r.receipt_id)""",
    "ledger_transactions_not_sealed": """
        SELECT count(*) FROM payments_ledgertransaction t WHERE NOT EXISTS
        (SELECT 1 FROM explorer_blockleaf l WHERE l.kind = 'transaction' AND l.ref = t.id::text)""",
}


def database_invariants(conn, *, accepted: set[str], results_accepted: Counter) -> dict:
    """Every invariant as a figure (zero when it holds), with the job counts they were taken over.

    ``accepted``: the ids of the jobs clients were told were accepted (201). ``results_accepted``:
    how many times a miner was told each job's result was accepted (200).
    """
    by_status = dict(conn.execute("SELECT status, count(*) FROM jobs_job GROUP BY status").fetchall())
    ids = list(accepted | set(results_accepted))
    statuses = dict(conn.execute("SELECT id::text, status FROM jobs_job WHERE id = ANY(%s::uuid[])", [ids]).fetchall())
    report = {
        "jobs_accepted": len(accepted),
        "jobs_by_status": by_status,
        "accepted_jobs_lost": sum(1 for job_id in accepted if statuses.get(job_id) != "completed"),
        "jobs_not_completed": sum(n for status, n in by_status.items() if status != "completed"),
        "results_accepted_twice": sum(1 for n in results_accepted.values() if n > 1),
        "results_accepted_for_jobs_not_completed": len(
            {job_id for job_id in results_accepted if statuses.get(job_id) != "completed"}
        ),
        "receipts": conn.execute("SELECT count(*) FROM jobs_receipt").fetchone()[0],
    }
    for name, query in CHECKS.items():
        value = conn.execute(query).fetchone()[0]
        report[name] = str(value) if isinstance(value, Decimal) else value
    return report


def violations(report: dict) -> dict:
    """The figures of ``database_invariants`` that are not zero."""
    ignored = {"jobs_accepted", "jobs_by_status", "receipts"}
    return {name: value for name, value in report.items() if name not in ignored and Decimal(str(value)) != 0}


def chain_verifies(env: dict) -> tuple[bool, str]:
    """Seal whatever waits (``seal_blocks``), then ``verify_chain`` from genesis."""
    output = ""
    for command in (["seal_blocks"], ["verify_chain"]):
        done = subprocess.run(
            [PYTHON, "manage.py", *command], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300
        )
        output += done.stdout[-2000:] + done.stderr[-2000:]
        if done.returncode != 0:
            return False, output
    return True, output
