"""Settlement as one statement on PostgreSQL: it runs with every paid completion.

The portable path in ``payments.services`` does the same through the ORM (SQLite, the
embedded store); this one saves a dozen round trips and the ORM's own cost.
"""

from core.rawsql import columns
from payments.models import Payment, PaymentStatus, TransactionKind, WalletKind

# The payees (users' ids) that have a wallet, and whether the fees wallet is there: a settlement
# that left charges alone asks, to open what is missing.
WALLETS_OF_SETTLEMENT = f"""
SELECT user_id FROM payments_wallet WHERE user_id = ANY(%(payees)s) OR kind = '{WalletKind.FEES}'
"""

# For each escrowed payment of the given jobs (locked): the charge capped by what was held, the
# fee, a balanced ledger transaction (escrow → miner's owner, platform, client), the balances
# moved once per wallet after locking every wallet in id order, and the payment updated (returned
# as the job's id, then the payment's columns). Each charge names its payee (a user's id): its
# wallet and the fees wallet are found here, and a charge whose payee has no wallet yet, or any
# charge while the fees wallet is missing, is left alone (the caller opens them and settles it again).
SETTLE = f"""
WITH input AS (
    SELECT * FROM jsonb_to_recordset(%(charges)s::jsonb)
        AS v(job_id uuid, payment_id text, charge numeric, payee bigint)
),
fees AS (
    SELECT id FROM payments_wallet WHERE kind = '{WalletKind.FEES}'
),
pay AS (
    SELECT p.id, i.job_id, p.payer_id, p.escrow_id, p.amount, LEAST(GREATEST(i.charge, 0), p.amount) AS charge,
           pw.id AS payee_wallet, fees.id AS fees_wallet
    FROM payments_payment p
    JOIN input i ON i.payment_id = p.payment_id
    JOIN payments_wallet pw ON pw.user_id = i.payee
    CROSS JOIN fees
    WHERE p.status = '{PaymentStatus.ESCROWED}'
    ORDER BY p.id
    FOR UPDATE OF p
),
split AS (
    SELECT pay.*, round(pay.charge * %(fee_percent)s::numeric / 100, 8) AS fee FROM pay
),
locked AS (
    SELECT w.id FROM payments_wallet w
    WHERE w.id IN (
        SELECT payer_id FROM split UNION SELECT escrow_id FROM split UNION SELECT payee_wallet FROM split
        UNION SELECT fees_wallet FROM split
    )
    ORDER BY w.id
    FOR UPDATE
),
tx AS (
    INSERT INTO payments_ledgertransaction (business_key, kind, job_id, memo, created_at)
    SELECT 'settle:' || split.job_id::text, '{TransactionKind.SETTLE}', split.job_id, 'Job settled', %(now)s
    FROM split
    RETURNING id, job_id
),
legs AS (
    SELECT tx.id AS transaction_id, leg.wallet_id, leg.amount
    FROM tx JOIN split ON split.job_id = tx.job_id
    CROSS JOIN LATERAL (VALUES
        (split.escrow_id, -split.amount),
        (split.payee_wallet, split.charge - split.fee),
        (split.payer_id, split.amount - split.charge),
        (split.fees_wallet, split.fee)
    ) AS leg(wallet_id, amount)
    WHERE leg.amount <> 0
),
entries AS (
    INSERT INTO payments_ledgerentry (transaction_id, wallet_id, amount)
    SELECT transaction_id, wallet_id, amount FROM legs
    RETURNING 1
),
moved AS (
    UPDATE payments_wallet w SET balance = w.balance + d.delta
    FROM (SELECT wallet_id, sum(amount) AS delta FROM legs GROUP BY wallet_id) d
    WHERE w.id = d.wallet_id AND (SELECT count(*) FROM locked) > 0
    RETURNING 1
),
paid AS (
    UPDATE payments_payment p
    SET status = '{PaymentStatus.RELEASED}', amount_paid = split.charge, amount_refunded = split.amount - split.charge,
        settled_at = %(now)s, updated_at = %(now)s
    FROM split WHERE p.id = split.id
    RETURNING split.job_id, {columns(Payment, "p")}
)
SELECT paid.*, (SELECT count(*) FROM entries), (SELECT count(*) FROM moved) FROM paid
"""

# For each escrowed payment of the given jobs (locked): its whole amount back from the escrow to
# the client, as a balanced ledger transaction (``refund:<job>``, with the row's memo), the balances
# moved once per wallet after locking every wallet in id order, and the payment updated (returned
# as the job's id, then the payment's columns).
REFUND = f"""
WITH input AS (
    SELECT * FROM jsonb_to_recordset(%(refunds)s::jsonb) AS v(job_id uuid, payment_id text, memo text)
),
pay AS (
    SELECT p.id, i.job_id, i.memo, p.payer_id, p.escrow_id, p.amount
    FROM payments_payment p JOIN input i ON i.payment_id = p.payment_id
    WHERE p.status = '{PaymentStatus.ESCROWED}'
    ORDER BY p.id
    FOR UPDATE OF p
),
locked AS (
    SELECT w.id FROM payments_wallet w
    WHERE w.id IN (SELECT payer_id FROM pay UNION SELECT escrow_id FROM pay)
    ORDER BY w.id
    FOR UPDATE
),
tx AS (
    INSERT INTO payments_ledgertransaction (business_key, kind, job_id, memo, created_at)
    SELECT 'refund:' || pay.job_id::text, '{TransactionKind.REFUND}', pay.job_id, pay.memo, %(now)s
    FROM pay
    RETURNING id, job_id
),
legs AS (
    SELECT tx.id AS transaction_id, leg.wallet_id, leg.amount
    FROM tx JOIN pay ON pay.job_id = tx.job_id
    CROSS JOIN LATERAL (VALUES (pay.escrow_id, -pay.amount), (pay.payer_id, pay.amount)) AS leg(wallet_id, amount)
    WHERE leg.amount <> 0
),
entries AS (
    INSERT INTO payments_ledgerentry (transaction_id, wallet_id, amount)
    SELECT transaction_id, wallet_id, amount FROM legs
    RETURNING 1
),
moved AS (
    UPDATE payments_wallet w SET balance = w.balance + d.delta
    FROM (SELECT wallet_id, sum(amount) AS delta FROM legs GROUP BY wallet_id) d
    WHERE w.id = d.wallet_id AND (SELECT count(*) FROM locked) > 0
    RETURNING 1
),
refunded AS (
    UPDATE payments_payment p
    SET status = '{PaymentStatus.REFUNDED}', amount_refunded = pay.amount, settled_at = %(now)s, updated_at = %(now)s
    FROM pay WHERE p.id = pay.id
    RETURNING pay.job_id, {columns(Payment, "p")}
)
SELECT refunded.*, (SELECT count(*) FROM entries), (SELECT count(*) FROM moved) FROM refunded
"""

# ``SETTLE`` and ``REFUND`` at once, for the escrows a verified job's decision ends: each row a
# settlement (``charge`` and ``payee`` given, as in ``SETTLE``) or a refund (``charge`` null, its
# ``memo`` the reason, as in ``REFUND``). Every wallet either touches is locked first, in one id
# order; a settlement whose payee has no wallet yet (or while the fees wallet is missing) is left
# alone, as ``SETTLE`` leaves it. Returns the job's id, then the payment's columns, for each.
ESCROWS_END = f"""
WITH input AS (
    SELECT * FROM jsonb_to_recordset(%(rows)s::jsonb)
        AS v(job_id uuid, payment_id text, charge numeric, payee bigint, memo text)
),
fees AS (
    SELECT id FROM payments_wallet WHERE kind = '{WalletKind.FEES}'
),
pay AS (
    SELECT p.id, i.job_id, p.payer_id, p.escrow_id, p.amount, i.charge IS NULL AS refund, i.memo,
           COALESCE(LEAST(GREATEST(i.charge, 0), p.amount), 0) AS charge,
           pw.id AS payee_wallet, fees.id AS fees_wallet
    FROM payments_payment p
    JOIN input i ON i.payment_id = p.payment_id
    LEFT JOIN payments_wallet pw ON pw.user_id = i.payee
    LEFT JOIN fees ON true
    WHERE p.status = '{PaymentStatus.ESCROWED}' AND (i.charge IS NULL OR (pw.id IS NOT NULL AND fees.id IS NOT NULL))
    ORDER BY p.id
    FOR UPDATE OF p
),
split AS (
    SELECT pay.*, round(pay.charge * %(fee_percent)s::numeric / 100, 8) AS fee FROM pay
),
locked AS (
    SELECT w.id FROM payments_wallet w
    WHERE w.id IN (
        SELECT payer_id FROM split UNION SELECT escrow_id FROM split UNION SELECT payee_wallet FROM split
        UNION SELECT fees_wallet FROM split
    )
    ORDER BY w.id
    FOR UPDATE
),
tx AS (
    INSERT INTO payments_ledgertransaction (business_key, kind, job_id, memo, created_at)
    SELECT CASE WHEN split.refund THEN 'refund:' ELSE 'settle:' END || split.job_id::text,
           CASE WHEN split.refund THEN '{TransactionKind.REFUND}' ELSE '{TransactionKind.SETTLE}' END,
           split.job_id, CASE WHEN split.refund THEN split.memo ELSE 'Job settled' END, %(now)s
    FROM split
    RETURNING id, job_id
),
legs AS (
    SELECT tx.id AS transaction_id, leg.wallet_id, leg.amount
    FROM tx JOIN split ON split.job_id = tx.job_id
    CROSS JOIN LATERAL (VALUES
        (split.escrow_id, -split.amount),
        (split.payee_wallet, split.charge - split.fee),
        (split.payer_id, split.amount - split.charge),
        (split.fees_wallet, split.fee)
    ) AS leg(wallet_id, amount)
    WHERE leg.amount <> 0
),
entries AS (
    INSERT INTO payments_ledgerentry (transaction_id, wallet_id, amount)
    SELECT transaction_id, wallet_id, amount FROM legs
    RETURNING 1
),
moved AS (
    UPDATE payments_wallet w SET balance = w.balance + d.delta
    FROM (SELECT wallet_id, sum(amount) AS delta FROM legs GROUP BY wallet_id) d
    WHERE w.id = d.wallet_id AND (SELECT count(*) FROM locked) > 0
    RETURNING 1
),
ended AS (
    UPDATE payments_payment p
    SET status = CASE WHEN split.refund THEN '{PaymentStatus.REFUNDED}' ELSE '{PaymentStatus.RELEASED}' END,
        amount_paid = CASE WHEN split.refund THEN p.amount_paid ELSE split.charge END,
        amount_refunded = split.amount - split.charge, settled_at = %(now)s, updated_at = %(now)s
    FROM split WHERE p.id = split.id
    RETURNING split.job_id, {columns(Payment, "p")}
)
SELECT ended.*, (SELECT count(*) FROM entries), (SELECT count(*) FROM moved) FROM ended
"""
