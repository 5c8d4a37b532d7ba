"""A network's worth of history written straight into PostgreSQL, for the admin's scale test and
``bench/admin.py``: owners with wallets, miners, jobs in every state, failed attempts, and for one
completed job in five a receipt and a settlement crediting the miner's owner.

The rows obey the tables' constraints (leases of running jobs, balanced ledger transactions); they
are written in a handful of ``INSERT … SELECT generate_series`` statements because going through
the services would take hours at this size.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta

from django.contrib.auth.hashers import make_password
from django.db import connection, transaction
from django.utils import timezone

from accounts.models import User
from miners.models import Miner, MinerStatus, ServedModel
from payments.models import Wallet, WalletKind
from payments.services import system_wallet

# The models the jobs name, as the SQL below spells them.
MODELS = ("llama3.2", "mistral-7b", "smollm2-135m", "minilm-l6")
# Jobs spread over this much history, newest first.
HISTORY = timedelta(days=30)


@dataclass(frozen=True)
class Seeded:
    jobs: int
    failed_attempts: int
    miners: int
    owners: int
    settled: int


def seed_network(*, jobs: int, failed_attempts: int, miners: int, owners: int | None = None) -> Seeded:
    """Write the history; returns what was written. PostgreSQL only."""
    owners = owners or max(1, miners // 5)
    if failed_attempts > jobs:
        raise ValueError("at most one failed attempt per job")
    now = timezone.now()
    with transaction.atomic():
        password = make_password(None)
        people = User.objects.bulk_create(
            [User(username=f"scale-owner-{n}", password=password) for n in range(owners)]
            + [User(username="scale-client", password=password)]
        )
        *owner_rows, client = people
        Wallet.objects.bulk_create(
            [Wallet(address=f"ait1scale{user.pk:032d}", kind=WalletKind.USER, user=user) for user in people]
        )
        miner_rows = Miner.objects.bulk_create(
            [
                Miner(
                    miner_id=f"scale-rig-{n}",
                    owner=owner_rows[n % owners],
                    status=(MinerStatus.ONLINE, MinerStatus.ONLINE, MinerStatus.OFFLINE)[n % 3],
                    gpu_name="NVIDIA RTX 4090",
                    vram_gb=24,
                    region="eu",
                    max_concurrent_jobs=4,
                    last_heartbeat_at=now - timedelta(seconds=n % 600),
                )
                for n in range(miners)
            ]
        )
        ServedModel.objects.bulk_create(
            [ServedModel(miner=miner, name=MODELS[n % len(MODELS)]) for n, miner in enumerate(miner_rows)]
        )
        miner_ids = [miner.pk for miner in miner_rows]
        treasury = system_wallet(WalletKind.TREASURY)
        with connection.cursor() as cursor:
            cursor.execute(_JOBS, {"n": jobs, "client": client.pk, "miners": miner_ids, "now": now, "span": HISTORY})
            cursor.execute(_FAILED_ATTEMPTS, {"client": client.pk, "n": failed_attempts})
            cursor.execute(_RECEIPTS, {"client": client.pk})
            cursor.execute(_SETTLEMENTS, {"client": client.pk, "treasury": treasury.pk})
            settled = cursor.rowcount // 2
            cursor.execute(_BALANCES, {"treasury": treasury.pk, "client": client.pk})
    with connection.cursor() as cursor:
        # As autovacuum would by now: the planner needs the tables' sizes to use their indexes.
        for table in (
            "jobs_job",
            "jobs_failedattempt",
            "jobs_receipt",
            "payments_ledgertransaction",
            "payments_ledgerentry",
            "payments_wallet",
            "miners_miner",
            "miners_servedmodel",
            "accounts_user",
        ):
            cursor.execute(f"ANALYZE {table}")
    return Seeded(jobs=jobs, failed_attempts=failed_attempts, miners=miners, owners=owners, settled=settled)


# Job g (1..n): 2 % queued, 1 % running, 5 % failed, 2 % cancelled, the rest completed; the g-th
# newest, so that g = 1 is the most recent. Ids are derived from g so the statements below find them.
_JOBS = """
INSERT INTO jobs_job (
    id, client_id, type, model, payload, constraints, priority, rank_at, status, ttl_seconds, expires_at,
    req_gpu, req_region, miner_id, attempt, max_attempts, lease_token, lease_expires_at,
    result, error_code, error_message, progress, usage, price, unit_price, request_fingerprint, verification,
    settles_on_verdict, created_at, started_at, completed_at, updated_at
)
SELECT
    md5('scale-job-' || g)::uuid, %(client)s, 'inference',
    (ARRAY['llama3.2', 'mistral-7b', 'smollm2-135m', 'minilm-l6'])[1 + g %% 4],
    '{"prompt": "hi"}'::jsonb, '{}'::jsonb, g %% 5, created, state, 900, created + interval '900 seconds',
    '', '', CASE WHEN state = 'queued' THEN NULL ELSE (%(miners)s::bigint[])[1 + g %% cardinality(%(miners)s::bigint[])] END,
    CASE WHEN state = 'queued' THEN 0 ELSE 1 END, 3,
    CASE WHEN state = 'running' THEN md5('lease-' || g) ELSE '' END,
    CASE WHEN state = 'running' THEN %(now)s + interval '120 seconds' END,
    CASE WHEN state = 'completed' THEN '{"text": "hello"}'::jsonb END,
    CASE WHEN state = 'failed' THEN 'OUT_OF_MEMORY' ELSE '' END, '',
    CASE WHEN state = 'completed' THEN 100 ELSE 0 END,
    CASE WHEN state = 'completed' THEN '{"units": 42, "total_tokens": 42}'::jsonb ELSE '{}'::jsonb END,
    NULL, NULL, '', '{}'::jsonb, false,
    created,
    CASE WHEN state IN ('queued', 'cancelled') THEN NULL ELSE created + interval '1 second' END,
    CASE WHEN state IN ('completed', 'failed', 'cancelled') THEN created + interval '5 seconds' END,
    created
FROM (
    SELECT g, %(now)s - %(span)s * g / %(n)s AS created,
        CASE WHEN g %% 100 < 2 THEN 'queued' WHEN g %% 100 < 3 THEN 'running' WHEN g %% 100 < 8 THEN 'failed'
             WHEN g %% 100 < 10 THEN 'cancelled' ELSE 'completed' END AS state
    FROM generate_series(1, %(n)s) AS g
) AS seeded
"""

# Spread over the jobs that ran, one per job, against the miner that ran it.
_FAILED_ATTEMPTS = """
INSERT INTO jobs_failedattempt (job_id, miner_id, attempt, error_code, error_message, created_at)
SELECT id, miner_id, 1, (ARRAY['OUT_OF_MEMORY', 'LEASE_EXPIRED', 'MINER_SILENT', 'CUDA_ERROR'])[1 + n %% 4],
       'seeded', ran_at
FROM (
    SELECT id, miner_id, coalesce(started_at, created_at) AS ran_at, row_number() OVER (ORDER BY created_at DESC) AS n
    FROM jobs_job WHERE client_id = %(client)s AND miner_id IS NOT NULL
) AS ran
WHERE n %% greatest(1, (SELECT count(*) FROM jobs_job WHERE client_id = %(client)s AND miner_id IS NOT NULL)
                          / greatest(1, %(n)s)) = 0
ORDER BY n
LIMIT %(n)s
"""

_PAID = """
SELECT id, miner_id, completed_at FROM jobs_job
WHERE client_id = %(client)s AND status = 'completed' AND get_byte(decode(md5(id::text), 'hex'), 0) %% 5 = 0
"""

_RECEIPTS = f"""
INSERT INTO jobs_receipt (receipt_id, job_id, signed_json, created_at)
SELECT md5('receipt-' || id), id, '{{"version": "1.0", "job_id": "' || id || '"}}', completed_at
FROM ({_PAID}) AS paid
"""

# The miner's owner is credited 0.95 of each paid job from the treasury: balanced, as the ledger's
# triggers require.
_SETTLEMENTS = f"""
WITH paid AS ({_PAID}),
tx AS (
    INSERT INTO payments_ledgertransaction (business_key, kind, job_id, memo, created_at)
    SELECT 'settle:' || id, 'settle', id, '', completed_at FROM paid
    RETURNING id, job_id
)
INSERT INTO payments_ledgerentry (transaction_id, wallet_id, amount)
SELECT tx.id, wallet.id, 0.95
FROM tx JOIN jobs_job job ON job.id = tx.job_id JOIN miners_miner miner ON miner.id = job.miner_id
     JOIN payments_wallet wallet ON wallet.user_id = miner.owner_id
UNION ALL
SELECT tx.id, %(treasury)s, -0.95 FROM tx
"""

_BALANCES = """
UPDATE payments_wallet wallet SET balance = wallet.balance + totals.amount
FROM (
    SELECT entry.wallet_id, sum(entry.amount) AS amount
    FROM payments_ledgerentry entry JOIN payments_ledgertransaction tx ON tx.id = entry.transaction_id
    JOIN jobs_job job ON job.id = tx.job_id
    WHERE job.client_id = %(client)s
    GROUP BY entry.wallet_id
) AS totals
WHERE wallet.id = totals.wallet_id
"""


def admin_pages() -> list[tuple[str, str]]:
    """Every page staff open in the admin: its index, each registered model's list (and the miners'
    list sorted by each figure), and the change page of each model's most recent row."""
    from django.contrib import admin
    from django.contrib.admin.utils import quote
    from django.urls import reverse

    pages = [("index", reverse("admin:index"))]
    for model, model_admin in sorted(admin.site._registry.items(), key=lambda item: item[0]._meta.label):
        opts = model._meta
        changelist = reverse(f"admin:{opts.app_label}_{opts.model_name}_changelist")
        pages.append((f"{opts.label} list", changelist))
        if model is Miner:
            figures = ("load", "jobs_completed", "reputation")
            for figure in figures:
                column = list(model_admin.list_display).index(figure) + 1
                pages.append((f"{opts.label} list by {figure}", f"{changelist}?o=-{column}"))
        latest = model._default_manager.order_by("-pk").first()
        if latest is not None:
            change = reverse(f"admin:{opts.app_label}_{opts.model_name}_change", args=[quote(latest.pk)])
            pages.append((f"{opts.label} page", change))
    return pages
