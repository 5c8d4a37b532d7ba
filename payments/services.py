"""Every movement of credits: wallets, minting, escrow hold, settlement and refund.

All of it goes through ``ledger_post``: one balanced transaction whose business key makes it
happen at most once, with each wallet's balance moved in the same database transaction (and
kept non-negative by a constraint). Callers run these inside their own transaction, so a job's
state change and its money move together or not at all.
"""

import hashlib
import json
import secrets
from dataclasses import dataclass
from decimal import ROUND_HALF_UP, Decimal

from django.conf import settings
from django.db import IntegrityError, connection, transaction
from django.db.models import Q
from django.utils import timezone
from nacl.signing import SigningKey

from core import rawsql
from core.crypto.addresses import HRP, wallet_address
from core.errors import Conflict, Invalid, PaymentRequired
from payments import sql
from payments.models import (
    LedgerEntry,
    LedgerTransaction,
    Payment,
    PaymentStatus,
    PendingCredit,
    PendingCreditStatus,
    TransactionKind,
    Wallet,
    WalletKind,
)

CENT = Decimal("0.00000001")


def credits(value) -> Decimal:
    """An amount as the ledger stores it: 8 decimal places."""
    return Decimal(value).quantize(CENT, rounding=ROUND_HALF_UP)


def _derived_address(label: str) -> str:
    # System and escrow wallets have no key; their addresses hash a label through the same encoding.
    return wallet_address(hashlib.sha256(f"{HRP}:{label}".encode()).digest())


def system_wallet(kind: str) -> Wallet:
    wallet = Wallet.objects.filter(kind=kind).first()
    if wallet is not None:
        return wallet
    try:
        with transaction.atomic():
            return Wallet.objects.create(kind=kind, address=_derived_address(kind))
    except IntegrityError:
        return Wallet.objects.get(kind=kind)


def wallet_open(*, user, public_key: bytes | None = None) -> Wallet:
    """The user's wallet, opened (with the welcome credits) on first use.

    Without ``public_key`` the platform makes a key pair and keeps only the public half: the
    wallet is custodial, moved by the platform on the user's behalf.
    """
    wallet = Wallet.objects.filter(user=user).first()
    if wallet is not None:
        return wallet
    key = public_key or SigningKey.generate().verify_key.encode()
    try:
        with transaction.atomic():
            wallet = Wallet.objects.create(
                kind=WalletKind.USER, user=user, address=wallet_address(key), public_key=key.hex()
            )
            welcome = credits(settings.AITBC_WELCOME_CREDITS)
            if welcome > 0:
                ledger_post(
                    business_key=f"welcome:{wallet.address}",
                    kind=TransactionKind.WELCOME,
                    legs=[(system_wallet(WalletKind.TREASURY), -welcome), (wallet, welcome)],
                    memo="Welcome credits",
                )
                wallet.balance = welcome
    except IntegrityError:
        existing = Wallet.objects.filter(user=user).first()
        if existing is None:
            raise Invalid("This key's wallet belongs to another account.", code="WALLET_TAKEN") from None
        return existing
    return wallet


@dataclass(frozen=True)
class Posting:
    """One balanced transaction to write: ``legs`` are ``(wallet, amount)``."""

    business_key: str
    kind: str
    legs: list
    job: object = None
    memo: str = ""
    actor: object = None

    def amounts(self) -> dict[int, Decimal]:
        amounts: dict[int, Decimal] = {}
        for wallet, amount in self.legs:
            amounts[wallet.pk] = amounts.get(wallet.pk, Decimal(0)) + credits(amount)
        amounts = {pk: amount for pk, amount in amounts.items() if amount != 0}
        if sum(amounts.values()) != 0:
            raise ValueError(f"unbalanced ledger transaction {self.business_key}: {amounts}")
        return amounts


def ledger_post(
    *, business_key: str, kind: str, legs: list[tuple[Wallet, Decimal]], job=None, memo: str = "", actor=None
) -> LedgerTransaction:
    """Post one balanced transaction, once: a business key already posted returns that transaction.

    A leg that would take a wallet below zero fails the whole posting with 402 ``INSUFFICIENT_FUNDS``.
    """
    posting = Posting(business_key=business_key, kind=kind, legs=legs, job=job, memo=memo, actor=actor)
    try:
        with transaction.atomic():
            return _write_postings([posting])[0]
    except IntegrityError as error:
        if "wallet_balance_non_negative" in str(error):
            raise PaymentRequired("Insufficient funds in the wallet.", code="INSUFFICIENT_FUNDS") from None
        existing = LedgerTransaction.objects.filter(business_key=business_key).first()
        if existing is None:
            raise
        return existing


def _write_postings(postings: list[Posting], *, wallets_locked: bool = False) -> list[LedgerTransaction]:
    """Write postings in a fixed number of statements, however many: their transactions, their
    entries, and one update of every balance they move. The wallets are locked first in one
    order (unless the caller did), so concurrent postings never deadlock."""
    amounts = [posting.amounts() for posting in postings]
    posted = LedgerTransaction.objects.bulk_create(
        LedgerTransaction(business_key=p.business_key, kind=p.kind, job=p.job, memo=p.memo[:300], actor=p.actor)
        for p in postings
    )
    LedgerEntry.objects.bulk_create(
        LedgerEntry(transaction=tx, wallet_id=pk, amount=amount)
        for tx, legs in zip(posted, amounts, strict=True)
        for pk, amount in legs.items()
    )
    deltas: dict[int, Decimal] = {}
    for legs in amounts:
        for pk, amount in legs.items():
            deltas[pk] = deltas.get(pk, Decimal(0)) + amount
    deltas = {pk: delta for pk, delta in deltas.items() if delta != 0}
    if deltas:
        if not wallets_locked:
            list(Wallet.objects.select_for_update().filter(pk__in=deltas).order_by("pk").values_list("pk"))
        _move_balances(deltas)
    return posted


def _move_balances(deltas: dict[int, Decimal]) -> None:
    # Written out: the ORM's Case/When costs more Python than the statement costs the database.
    cases = " ".join(["WHEN %s THEN %s"] * len(deltas))
    ids = ", ".join(["%s"] * len(deltas))
    params = [value for pk, delta in deltas.items() for value in (pk, delta)] + list(deltas)
    with connection.cursor() as cursor:
        cursor.execute(
            f"UPDATE payments_wallet SET balance = balance + (CASE id {cases} END) WHERE id IN ({ids})", params
        )


def treasury_mint(*, wallet: Wallet, amount, actor=None, memo: str = "", business_key: str | None = None):
    """Create credits: the treasury goes down, ``wallet`` up. Staff mints are audited by actor."""
    amount = credits(amount)
    if amount <= 0:
        raise Invalid("The amount must be positive.", code="INVALID_AMOUNT")
    return ledger_post(
        business_key=business_key or f"mint:{secrets.token_hex(12)}",
        kind=TransactionKind.MINT,
        legs=[(system_wallet(WalletKind.TREASURY), -amount), (wallet, amount)],
        memo=memo or "Minted",
        actor=actor,
    )


def credit_needs_approval(*, total: Decimal) -> bool:
    return total > settings.ADMIN_CREDIT_APPROVAL_THRESHOLD


def credit_request(*, wallets: list[Wallet], amount, reason: str, actor) -> list[PendingCredit]:
    """Ask for a credit of ``amount`` into each wallet, to be minted once another staff member approves."""
    amount = credits(amount)
    if amount <= 0:
        raise Invalid("The amount must be positive.", code="INVALID_AMOUNT")
    return PendingCredit.objects.bulk_create(
        [PendingCredit(wallet=wallet, amount=amount, reason=reason[:300], requested_by=actor) for wallet in wallets]
    )


def _pending_credit_locked(pending: PendingCredit, *, actor) -> PendingCredit:
    locked = PendingCredit.objects.select_for_update().select_related("wallet").get(pk=pending.pk)
    if locked.status != PendingCreditStatus.PENDING:
        raise Conflict(f"This credit was {locked.get_status_display().lower()} already.", code="CREDIT_DECIDED")
    if locked.requested_by_id == actor.pk:
        raise Conflict("A second staff member must decide on a credit you asked for.", code="SECOND_APPROVER_REQUIRED")
    return locked


@transaction.atomic
def credit_approve(*, pending: PendingCredit, actor) -> PendingCredit:
    """Mint a pending credit, approved by ``actor`` (not its requester); once only."""
    locked = _pending_credit_locked(pending, actor=actor)
    locked.transaction = treasury_mint(
        wallet=locked.wallet,
        amount=locked.amount,
        actor=locked.requested_by,
        memo=f"{locked.reason} (approved by {actor})"[:300],
        business_key=f"credit-approved:{locked.pk}",
    )
    locked.status, locked.decided_by, locked.decided_at = PendingCreditStatus.APPROVED, actor, timezone.now()
    locked.save(update_fields=["transaction", "status", "decided_by", "decided_at"])
    return locked


@transaction.atomic
def credit_decline(*, pending: PendingCredit, actor) -> PendingCredit:
    locked = _pending_credit_locked(pending, actor=actor)
    locked.status, locked.decided_by, locked.decided_at = PendingCreditStatus.DECLINED, actor, timezone.now()
    locked.save(update_fields=["status", "decided_by", "decided_at"])
    return locked


# --- Escrow ----------------------------------------------------------------------------


def new_payment_id() -> str:
    return f"pay_{secrets.token_hex(12)}"


def escrow_hold(
    *, job, client, amount, payment_id: str, currency: str = "AITBC", payment_method: str = "aitbc_token"
) -> Payment:
    """Move ``amount`` from the client's wallet into the job's own escrow wallet (``escrow:<job>``).
    The job refers to the payment by ``payment_id``."""
    amount = credits(amount)
    payer = wallet_open(user=client)
    escrow = Wallet.objects.create(kind=WalletKind.ESCROW, address=_derived_address(f"escrow:{job.pk}"))
    ledger_post(
        business_key=f"escrow:{job.pk}",
        kind=TransactionKind.ESCROW,
        legs=[(payer, -amount), (escrow, amount)],
        job=job,
        memo=f"Escrow for job {job.pk}",
    )
    return Payment.objects.create(
        payment_id=payment_id,
        payer=payer,
        escrow=escrow,
        amount=amount,
        currency=currency,
        payment_method=payment_method,
        status=PaymentStatus.ESCROWED,
    )


def escrows_settle(*, charges: list[tuple], payee) -> dict:
    """Pay for completed jobs from their escrow (``settle:<job>`` each): every ``(job, charge)``
    split between the miner's owner ``payee`` and the platform fee, the rest back to the client.
    Returns ``{job id: payment}`` for the escrows it settled.

    A batch costs the same few statements however many jobs it holds (one on PostgreSQL), and
    locks every wallet it touches first, in one order, so concurrent batches never deadlock.
    """
    return escrows_settle_each(charges=[(job, charge, payee) for job, charge in charges])


def escrows_settle_each(*, charges: list[tuple]) -> dict:
    """``escrows_settle`` for charges of several payees, ``(job, charge, payee)`` each (the answers
    of a verified job that agreed): on PostgreSQL one settlement statement for all of them."""
    if connection.vendor == "postgresql":
        return _settle_postgres(charges=charges)
    paid, payees = {}, {payee.pk: payee for _, _, payee in charges}
    for payee_id, payee in payees.items():
        mine = [(job, charge) for job, charge, to in charges if to.pk == payee_id]
        paid |= _settle_portable(charges=mine, payee=payee)
    return paid


def _settle_portable(*, charges: list[tuple], payee) -> dict:
    payments = {
        payment.payment_id: payment
        for payment in Payment.objects.select_for_update()
        .filter(payment_id__in=[job.payment_id for job, _ in charges], status=PaymentStatus.ESCROWED)
        .order_by("pk")
    }
    if not payments:
        return {}
    involved = Q(pk__in={w for p in payments.values() for w in (p.payer_id, p.escrow_id)})
    involved |= Q(user=payee) | Q(kind=WalletKind.FEES)
    wallets = list(Wallet.objects.select_for_update().filter(involved).order_by("pk"))
    payee_wallet = next((w for w in wallets if w.user_id == payee.pk), None)
    fees = next((w for w in wallets if w.kind == WalletKind.FEES), None)
    if payee_wallet is None or fees is None:  # the first settlement of this payee, or of all
        wallet_open(user=payee)
        system_wallet(WalletKind.FEES)
        return _settle_portable(charges=charges, payee=payee)
    now = timezone.now()
    postings, settled = [], {}
    for job, charge in charges:
        payment = payments.get(job.payment_id)
        if payment is None:
            continue
        charge = max(Decimal(0), min(credits(charge), payment.amount))
        fee = credits(charge * settings.PLATFORM_FEE_PERCENT / 100)
        refund = payment.amount - charge
        legs = [
            (Wallet(pk=payment.escrow_id), -payment.amount),
            (payee_wallet, charge - fee),
            (Wallet(pk=payment.payer_id), refund),
            (fees, fee),
        ]
        postings.append(
            Posting(
                business_key=f"settle:{job.pk}", kind=TransactionKind.SETTLE, legs=legs, job=job, memo="Job settled"
            )
        )
        payment.status = PaymentStatus.RELEASED
        payment.amount_paid, payment.amount_refunded = charge, refund
        payment.settled_at = payment.updated_at = now
        settled[job.pk] = payment
    _write_postings(postings, wallets_locked=True)
    fields = ["status", "amount_paid", "amount_refunded", "settled_at", "updated_at"]
    if len(settled) == 1:  # the common case (one result over HTTP): a plain UPDATE is far cheaper
        next(iter(settled.values())).save(update_fields=fields)
    else:
        Payment.objects.bulk_update(list(settled.values()), fields)
    return settled


def _settle_postgres(*, charges: list[tuple], opened: bool = False) -> dict:
    rows = _settlement_rows(charges)
    paid = dict(_escrows_end_postgres(sql.SETTLE, rows=rows))
    left = [(job, charge, payee) for job, charge, payee in charges if job.pk not in paid]
    if left and not opened:
        # The first settlement of a payee, or of all: with their wallets open (here, or by another
        # settlement since the statement passed them by), settle what was left.
        _open_settlement_wallets(payees={payee.pk: payee for _, _, payee in left})
        paid |= _settle_postgres(charges=left, opened=True)
    return paid


def _open_settlement_wallets(*, payees: dict) -> None:
    """Open the wallets a settlement of ``payees`` (by user id) needs and lacks."""
    with connection.cursor() as cursor:
        cursor.execute(sql.WALLETS_OF_SETTLEMENT, {"payees": list(payees)})
        present = {row[0] for row in cursor.fetchall()}
    missing = [payee for payee_id, payee in payees.items() if payee_id not in present]
    for payee in missing:
        wallet_open(user=payee)
    if None not in present:
        system_wallet(WalletKind.FEES)


def escrows_end(*, charges: list[tuple], refunds: list[tuple]) -> tuple[dict, dict]:
    """``escrows_settle_each`` for ``charges`` and ``escrows_refund`` for ``refunds`` together (the
    escrows a verified job's decision ends): on PostgreSQL one statement for all. Returns ``({job
    id: payment settled}, {job id: payment refunded})``."""
    if connection.vendor != "postgresql":
        refunded = escrows_refund(refunds=refunds)
        return (escrows_settle_each(charges=charges) if charges else {}), refunded
    rows = _settlement_rows(charges) + _refund_rows(refunds)
    if not rows:
        return {}, {}
    paid, refunded = {}, {}
    for job_id, payment in _escrows_end_postgres(sql.ESCROWS_END, rows=rows):
        (refunded if payment.status == PaymentStatus.REFUNDED else paid)[job_id] = payment
    left = [(job, charge, payee) for job, charge, payee in charges if job.pk not in paid]
    if left:
        _open_settlement_wallets(payees={payee.pk: payee for _, _, payee in left})
        paid |= _settle_postgres(charges=left, opened=True)
    return paid, refunded


def escrow_refund(*, job, reason: str) -> Payment | None:
    """Give a job's whole escrow back to the client (``refund:<job>``); once, whatever calls it."""
    payment = (
        Payment.objects.select_for_update().select_related("payer", "escrow").filter(payment_id=job.payment_id).first()
        if job.payment_id
        else None
    )
    if payment is None or payment.status != PaymentStatus.ESCROWED:
        return payment
    ledger_post(
        business_key=f"refund:{job.pk}",
        kind=TransactionKind.REFUND,
        legs=[(payment.escrow, -payment.amount), (payment.payer, payment.amount)],
        job=job,
        memo=reason[:300],
    )
    payment.status = PaymentStatus.REFUNDED
    payment.amount_refunded = payment.amount
    payment.settled_at = timezone.now()
    payment.save(update_fields=["status", "amount_refunded", "settled_at", "updated_at"])
    return payment


def escrows_refund(*, refunds: list[tuple]) -> dict:
    """``escrow_refund`` for several jobs, ``(job, reason)`` each: on PostgreSQL one statement for
    all. Returns ``{job id: payment}`` for the escrows it refunded."""
    if connection.vendor != "postgresql":
        refunded = {job.pk: escrow_refund(job=job, reason=reason) for job, reason in refunds}
        return {job_id: payment for job_id, payment in refunded.items() if payment is not None}
    rows = _refund_rows(refunds)
    return dict(_escrows_end_postgres(sql.REFUND, rows=rows)) if rows else {}


def _settlement_rows(charges: list[tuple]) -> list[dict]:
    return [
        {"job_id": str(job.pk), "payment_id": job.payment_id, "charge": str(credits(charge)), "payee": payee.pk}
        for job, charge, payee in charges
    ]


def _refund_rows(refunds: list[tuple]) -> list[dict]:
    return [
        {"job_id": str(job.pk), "payment_id": job.payment_id, "charge": None, "memo": reason[:300]}
        for job, reason in refunds
        if job.payment_id
    ]


def _escrows_end_postgres(statement: str, *, rows: list[dict]) -> list[tuple]:
    """Settle or refund each row's escrow in one ``statement`` of ``payments.sql``; returns ``(job
    id, payment)`` for each escrow it ended."""
    with connection.cursor() as cursor:
        cursor.execute(
            statement,
            {"rows": json.dumps(rows), "fee_percent": str(settings.PLATFORM_FEE_PERCENT), "now": timezone.now()},
        )
        ended = cursor.fetchall()
    return [(row[0], payment) for row, payment in zip(ended, rawsql.instances(Payment, ended, start=1), strict=True)]


# --- Budgets: credits held for a run of many payments -------------------------------------


def budget_hold(*, user, amount, key: str, memo: str) -> Wallet:
    """Move ``amount`` from the user's wallet into an escrow wallet of its own for ``key`` (a workflow
    execution's budget, from which its steps are paid), once: ``escrow:<key>``."""
    amount = credits(amount)
    payer = wallet_open(user=user)
    escrow = Wallet.objects.filter(address=_derived_address(f"escrow:{key}")).first()
    if escrow is None:
        escrow = Wallet.objects.create(kind=WalletKind.ESCROW, address=_derived_address(f"escrow:{key}"))
    ledger_post(
        business_key=f"escrow:{key}", kind=TransactionKind.ESCROW, legs=[(payer, -amount), (escrow, amount)], memo=memo
    )
    return escrow


def budget_draw(*, user, amount, key: str, part: str) -> None:
    """Hand ``amount`` of the budget ``key`` back to its user for one payment (``draw:<key>:<part>``,
    once), which the caller escrows for that payment in the same transaction. More than is left is
    402 ``BUDGET_EXHAUSTED``."""
    amount = credits(amount)
    if amount <= 0:
        return
    escrow = Wallet.objects.select_for_update().get(address=_derived_address(f"escrow:{key}"))
    if escrow.balance < amount:
        raise PaymentRequired("The budget has too little left for this step.", code="BUDGET_EXHAUSTED")
    ledger_post(
        business_key=f"draw:{key}:{part}",
        kind=TransactionKind.TRANSFER,
        legs=[(escrow, -amount), (wallet_open(user=user), amount)],
        memo=f"Budget {key}, {part}",
    )


def budget_release(*, user, key: str, memo: str) -> Decimal:
    """Give what is left of the budget ``key`` back to its user (``refund:<key>``, once). Returns it."""
    escrow = Wallet.objects.select_for_update().filter(address=_derived_address(f"escrow:{key}")).first()
    if escrow is None or escrow.balance <= 0:
        return Decimal(0)
    left = escrow.balance
    ledger_post(
        business_key=f"refund:{key}",
        kind=TransactionKind.REFUND,
        legs=[(escrow, -left), (wallet_open(user=user), left)],
        memo=memo[:300],
    )
    return left


def budget_return(*, user, amount, key: str, part: str) -> None:
    """Put ``amount`` drawn from the budget ``key`` and refunded to its user back into the budget
    (``return:<key>:<part>``, once)."""
    amount = credits(amount)
    if amount <= 0:
        return
    escrow = Wallet.objects.get(address=_derived_address(f"escrow:{key}"))
    ledger_post(
        business_key=f"return:{key}:{part}",
        kind=TransactionKind.TRANSFER,
        legs=[(wallet_open(user=user), -amount), (escrow, amount)],
        memo=f"Budget {key}, {part} returned",
    )
