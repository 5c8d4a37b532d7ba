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


def _escrows_ending(
    *,
    pay_columns: str,
    pay_joins: str = "",
    pay_where: str = "",
    key: str,
    kind: str,
    memo: str,
    status: str,
    amount_paid: str,
) -> str:
    """A statement that ends escrowed payments, settling or refunding them; the money logic every
    ending shares is written here once. Input rows (``%(rows)s``, JSON) name the job, the payment and,
    as the statement needs them, a ``charge``, a ``payee`` (a user's id) and a ``memo``.

    Each escrowed payment of the input is locked; ``pay_columns`` give its ``charge`` (capped by what
    was held), the ``payee_wallet`` and the ``fees_wallet``, from what ``pay_joins`` join (a payment
    they leave out, or ``pay_where`` refuses, is left alone). Then the fee, and a balanced ledger
    transaction per payment (``key`` and the job's id its business key; escrow → payee's wallet,
    fees wallet, client; legs of nothing left out); every wallet touched locked first, in one id
    order; the balances moved once per wallet; the payment updated (``status``, ``amount_paid``).
    Returns the job's id, then the payment's columns, for each payment ended.
    """
    return f"""
WITH input AS (
    SELECT * FROM jsonb_to_recordset(%(rows)s::jsonb)
        AS v(job_id uuid, payment_id text, charge numeric, payee bigint, memo text)
),
fees AS (
    SELECT id FROM payments_wallet WHERE kind = '{WalletKind.FEES}'
),
pay AS (
    SELECT p.id, i.job_id, i.memo, p.payer_id, p.escrow_id, p.amount, {pay_columns}
    FROM payments_payment p
    JOIN input i ON i.payment_id = p.payment_id
    {pay_joins}
    WHERE p.status = '{PaymentStatus.ESCROWED}' {pay_where}
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
    SELECT {key} || split.job_id::text, {kind}, split.job_id, {memo}, %(now)s
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
    SET status = {status}, amount_paid = {amount_paid}, amount_refunded = split.amount - split.charge,
        settled_at = %(now)s, updated_at = %(now)s
    FROM split WHERE p.id = split.id
    RETURNING split.job_id, {columns(Payment, "p")}
)
SELECT ended.*, (SELECT count(*) FROM entries), (SELECT count(*) FROM moved) FROM ended
"""


# Settlements (``charge`` and ``payee`` given), the charge paid to the payee's wallet less the fee
# and the rest back to the client (``settle:<job>``, "Job settled"). A charge whose payee has no
# wallet yet, or any charge while the fees wallet is missing, is left alone (the caller opens them
# and settles it again). It runs with every paid completion: its joins are plain ones.
SETTLE = _escrows_ending(
    pay_columns="LEAST(GREATEST(i.charge, 0), p.amount) AS charge, pw.id AS payee_wallet, fees.id AS fees_wallet",
    pay_joins="JOIN payments_wallet pw ON pw.user_id = i.payee CROSS JOIN fees",
    key="'settle:'",
    kind=f"'{TransactionKind.SETTLE}'",
    memo="'Job settled'",
    status=f"'{PaymentStatus.RELEASED}'",
    amount_paid="split.charge",
)

# Refunds (``memo`` the reason): the whole amount back from the escrow to the client (``refund:<job>``).
REFUND = _escrows_ending(
    pay_columns="0::numeric AS charge, NULL::bigint AS payee_wallet, NULL::bigint AS fees_wallet",
    key="'refund:'",
    kind=f"'{TransactionKind.REFUND}'",
    memo="split.memo",
    status=f"'{PaymentStatus.REFUNDED}'",
    amount_paid="p.amount_paid",
)

# ``SETTLE`` and ``REFUND`` at once, for the escrows a verified job's decision ends: each row a
# settlement (``charge`` and ``payee`` given) or a refund (``charge`` null, its ``memo`` the
# reason). A settlement is left alone where ``SETTLE`` leaves it.
ESCROWS_END = _escrows_ending(
    pay_columns="i.charge IS NULL AS refund, COALESCE(LEAST(GREATEST(i.charge, 0), p.amount), 0) AS charge, "
    "pw.id AS payee_wallet, fees.id AS fees_wallet",
    pay_joins="LEFT JOIN payments_wallet pw ON pw.user_id = i.payee LEFT JOIN fees ON i.charge IS NOT NULL",
    pay_where="AND (i.charge IS NULL OR (pw.id IS NOT NULL AND fees.id IS NOT NULL))",
    key="CASE WHEN split.refund THEN 'refund:' ELSE 'settle:' END",
    kind=f"CASE WHEN split.refund THEN '{TransactionKind.REFUND}' ELSE '{TransactionKind.SETTLE}' END",
    memo="CASE WHEN split.refund THEN split.memo ELSE 'Job settled' END",
    status=f"CASE WHEN split.refund THEN '{PaymentStatus.REFUNDED}' ELSE '{PaymentStatus.RELEASED}' END",
    amount_paid="CASE WHEN split.refund THEN p.amount_paid ELSE split.charge END",
)
