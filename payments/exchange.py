"""The Bitcoin → AITBC exchange: payment requests, their expiry and confirmation, and its public figures.

A request quotes ``btc_amount`` for ``aitbc_amount`` at ``BTC_TO_AITBC_RATE`` and gets a deposit
address of its own (``payments.bitcoin``). It stays ``pending`` until its deadline, then is
``expired``. Staff, or the payment processor through an HMAC-signed webhook, confirm it: the
compare-and-set ``pending → confirmed`` and the mint into the buyer's wallet (business key
``exchange:<id>``) commit together, so credits are minted once however often it is confirmed.
"""

import hashlib
import hmac
import logging
import secrets
from dataclasses import dataclass
from datetime import timedelta
from decimal import Decimal

from django.conf import settings
from django.db import IntegrityError, transaction
from django.db.models import Count, Max, Q, Sum
from django.db.models.functions import Coalesce
from django.utils import timezone

from core.errors import Conflict, Invalid, NotFound, ServiceError
from payments.bitcoin import deposit_address
from payments.models import ExchangePayment, ExchangePaymentStatus, LedgerTransaction
from payments.services import credits, treasury_mint, wallet_open

logger = logging.getLogger(__name__)

SATOSHI = Decimal("0.00000001")
# Rounding between the two amounts may differ by this much (in BTC) and still match the rate.
AMOUNT_TOLERANCE_BTC = SATOSHI
# Concurrent requests may pick the same next index; the loser of the unique constraint takes the next one.
INDEX_ALLOCATION_ATTEMPTS = 50
SIGNATURE_SCHEME = "sha256="


def new_exchange_payment_id() -> str:
    return f"exch_{secrets.token_hex(12)}"


def business_key_of(payment: ExchangePayment) -> str:
    return f"exchange:{payment.pk}"


# --- Services ------------------------------------------------------------------------------


def btc_quote(aitbc_amount) -> Decimal:
    """The BTC that buys ``aitbc_amount`` at ``BTC_TO_AITBC_RATE``, to the satoshi: what a request
    should quote (``exchange_payment_create`` accepts a satoshi either way)."""
    return credits(credits(aitbc_amount) / settings.BTC_TO_AITBC_RATE)


def exchange_payment_create(*, user, aitbc_amount, btc_amount, now=None) -> ExchangePayment:
    """A pending request to buy ``aitbc_amount`` for ``btc_amount``, with the next unused deposit address.

    400 ``AMOUNT_MISMATCH`` unless ``btc_amount`` is ``aitbc_amount / BTC_TO_AITBC_RATE`` to within a satoshi.
    """
    rate = settings.BTC_TO_AITBC_RATE
    aitbc_amount, btc_amount = credits(aitbc_amount), credits(btc_amount)
    if aitbc_amount <= 0 or btc_amount <= 0:
        raise Invalid("Both amounts must be at least 0.00000001.", code="INVALID_AMOUNT")
    if abs(btc_amount - aitbc_amount / rate) > AMOUNT_TOLERANCE_BTC:
        raise ServiceError("Amount mismatch", code="AMOUNT_MISMATCH")
    wallet = wallet_open(user=user)
    expires_at = (now or timezone.now()) + timedelta(seconds=settings.EXCHANGE_PAYMENT_TTL_SECONDS)
    for _ in range(INDEX_ALLOCATION_ATTEMPTS):
        index = ExchangePayment.objects.aggregate(next=Coalesce(Max("derivation_index") + 1, 0))["next"]
        try:
            with transaction.atomic():
                return ExchangePayment.objects.create(
                    id=new_exchange_payment_id(),
                    user=user,
                    wallet=wallet,
                    aitbc_amount=aitbc_amount,
                    btc_amount=btc_amount,
                    rate=rate,
                    derivation_index=index,
                    deposit_address=deposit_address(index),
                    expires_at=expires_at,
                )
        except IntegrityError:
            if not ExchangePayment.objects.filter(derivation_index=index).exists():
                raise
    raise ServiceError("Too many payment requests at once; try again.", code="EXCHANGE_BUSY", status_code=503)


def exchange_payment_as_it_stands(payment: ExchangePayment, *, now=None) -> ExchangePayment:
    """What a read shows, writing nothing: a pending payment past its deadline reads as expired
    (the housekeeping sweep, or a confirmation coming too late, stores it so)."""
    if payment.status == ExchangePaymentStatus.PENDING and payment.expires_at <= (now or timezone.now()):
        payment.status = ExchangePaymentStatus.EXPIRED
    return payment


def exchange_payment_expire_if_due(*, payment: ExchangePayment, now=None) -> ExchangePayment:
    """A pending payment past its deadline becomes expired; returns the payment as it now stands."""
    now = now or timezone.now()
    if payment.status == ExchangePaymentStatus.PENDING and payment.expires_at <= now:
        ExchangePayment.objects.filter(pk=payment.pk, status=ExchangePaymentStatus.PENDING, expires_at__lte=now).update(
            status=ExchangePaymentStatus.EXPIRED
        )
        payment.refresh_from_db(fields=["status", "confirmed_at", "txid", "confirmations", "confirmed_by"])
    return payment


def exchange_payments_expire_due(*, now=None) -> int:
    """Housekeeping: every pending payment past its deadline becomes expired. Returns how many."""
    return ExchangePayment.objects.filter(
        status=ExchangePaymentStatus.PENDING, expires_at__lte=now or timezone.now()
    ).update(status=ExchangePaymentStatus.EXPIRED)


@dataclass(frozen=True)
class ExchangeConfirmation:
    payment: ExchangePayment
    mint: LedgerTransaction
    minted_now: bool  # False when the payment had been confirmed before: nothing was minted this time


def exchange_payment_confirm(
    *,
    payment_id: str,
    actor=None,
    txid: str = "",
    confirmations: int | None = None,
    amount_btc: Decimal | None = None,
    now=None,
) -> ExchangeConfirmation:
    """Confirm a pending payment and mint its ``aitbc_amount`` into the buyer's wallet, once.

    ``actor`` is the staff member confirming, who vouches for the deposit: what they report is
    checked, what they leave out is their judgement. Without an actor (the payment processor's
    webhook) the report is the only evidence: ``txid``, ``confirmations`` and ``amount_btc`` must
    all be given, else 422 ``CONFIRMATION_INCOMPLETE`` naming the missing ones. Confirming a
    confirmed payment again changes nothing and returns the first confirmation. 409
    ``PAYMENT_EXPIRED`` after the deadline; 409 ``UNDERPAID`` or ``NOT_ENOUGH_CONFIRMATIONS`` when
    the report says so.
    """
    if actor is None:
        _require_processor_report(txid=txid, confirmations=confirmations, amount_btc=amount_btc)
    now = now or timezone.now()
    payment = ExchangePayment.objects.select_related("wallet").filter(pk=payment_id).first()
    if payment is None:
        raise NotFound("Exchange payment not found.", code="EXCHANGE_PAYMENT_NOT_FOUND")
    if payment.status == ExchangePaymentStatus.CONFIRMED:
        return _repeated_confirmation(payment, txid=txid)
    if amount_btc is not None and credits(amount_btc) < payment.btc_amount:
        raise Conflict(
            f"Received {credits(amount_btc)} BTC of the {payment.btc_amount} BTC requested.", code="UNDERPAID"
        )
    if confirmations is not None and confirmations < settings.EXCHANGE_MIN_CONFIRMATIONS:
        raise Conflict(
            f"The payment has {confirmations} confirmation(s); {settings.EXCHANGE_MIN_CONFIRMATIONS} are required.",
            code="NOT_ENOUGH_CONFIRMATIONS",
        )
    with transaction.atomic():
        won = ExchangePayment.objects.filter(
            pk=payment.pk, status=ExchangePaymentStatus.PENDING, expires_at__gt=now
        ).update(
            status=ExchangePaymentStatus.CONFIRMED,
            confirmed_at=now,
            txid=txid,
            confirmations=confirmations or 0,
            confirmed_by=actor,
        )
        if won:
            mint = treasury_mint(
                wallet=payment.wallet,
                amount=payment.aitbc_amount,
                actor=actor,
                memo=f"Exchange {payment.pk}: {payment.btc_amount} BTC at {payment.rate} AITBC/BTC",
                business_key=business_key_of(payment),
            )
    payment.refresh_from_db()
    if won:
        return ExchangeConfirmation(payment=payment, mint=mint, minted_now=True)
    if payment.status == ExchangePaymentStatus.CONFIRMED:  # confirmed by a concurrent call
        return _repeated_confirmation(payment, txid=txid)
    exchange_payment_expire_if_due(payment=payment, now=now)
    raise Conflict("This payment request has expired; create a new one.", code="PAYMENT_EXPIRED")


def _require_processor_report(*, txid: str, confirmations: int | None, amount_btc: Decimal | None) -> None:
    reported = {"txid": txid or None, "confirmations": confirmations, "amount_btc": amount_btc}
    missing = [name for name, value in reported.items() if value is None]
    if missing:
        raise Invalid(
            f"A payment processor's confirmation must report {', '.join(missing)}.",
            code="CONFIRMATION_INCOMPLETE",
            errors={name: ["This field is required."] for name in missing},
        )


def _repeated_confirmation(payment: ExchangePayment, *, txid: str) -> ExchangeConfirmation:
    if txid and txid != payment.txid:
        logger.warning(
            "exchange payment %s confirmed again with another txid %s (first: %s)", payment.pk, txid, payment.txid
        )
    mint = LedgerTransaction.objects.get(business_key=business_key_of(payment))
    return ExchangeConfirmation(payment=payment, mint=mint, minted_now=False)


def webhook_signature_valid(*, body: bytes, signature_header: str) -> bool:
    """Whether ``signature_header`` is ``sha256=<hex HMAC-SHA256 of body>`` under ``EXCHANGE_WEBHOOK_SECRET``."""
    secret = settings.EXCHANGE_WEBHOOK_SECRET
    if not secret:
        return False
    expected = SIGNATURE_SCHEME + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
    return hmac.compare_digest(expected.encode(), signature_header.strip().lower().encode())


# --- Selectors -----------------------------------------------------------------------------


def exchange_payment_visible_to(*, payment_id: str, user, is_admin: bool) -> ExchangePayment | None:
    """The payment if it is ``user``'s (any payment for an admin); someone else's is None, as a missing one."""
    payments = ExchangePayment.objects.filter(pk=payment_id)
    if not is_admin:
        payments = payments.filter(user=user)
    return payments.first()


def exchange_rates() -> dict:
    rate = settings.BTC_TO_AITBC_RATE
    return {
        "btc_to_aitbc": rate,
        "aitbc_to_btc": credits(1 / rate),
        "fee_percent": Decimal(0),
        "network": settings.EXCHANGE_NETWORK,
        "payment_ttl_seconds": settings.EXCHANGE_PAYMENT_TTL_SECONDS,
    }


def exchange_market_stats(*, now=None) -> dict:
    """Totals over every request; a pending request past its deadline counts as expired."""
    now = now or timezone.now()
    day_ago = now - timedelta(hours=24)
    confirmed = Q(status=ExchangePaymentStatus.CONFIRMED)
    recent = confirmed & Q(confirmed_at__gt=day_ago)
    live = Q(status=ExchangePaymentStatus.PENDING, expires_at__gt=now)
    totals = ExchangePayment.objects.aggregate(
        total_requests=Count("pk"),
        confirmed_payments=Count("pk", filter=confirmed),
        pending_payments=Count("pk", filter=live),
        aitbc_minted=Sum("aitbc_amount", filter=confirmed),
        btc_received=Sum("btc_amount", filter=confirmed),
        daily_volume=Sum("aitbc_amount", filter=recent),
        daily_volume_btc=Sum("btc_amount", filter=recent),
    )
    rate = settings.BTC_TO_AITBC_RATE
    # The rate is configured, not traded: it changes only when the operator changes it.
    rate_a_day_ago = (
        ExchangePayment.objects.filter(created_at__lte=day_ago).order_by("-created_at").values_list("rate", flat=True)
    ).first() or rate
    zero = Decimal(0)
    return {
        "price": credits(1 / rate),
        "price_change_24h": ((rate_a_day_ago / rate - 1) * 100).quantize(Decimal("0.01")),
        "daily_volume": totals["daily_volume"] or zero,
        "daily_volume_btc": totals["daily_volume_btc"] or zero,
        "total_payments": totals["confirmed_payments"],
        "pending_payments": totals["pending_payments"],
        "expired_payments": totals["total_requests"] - totals["confirmed_payments"] - totals["pending_payments"],
        "total_requests": totals["total_requests"],
        "aitbc_minted": totals["aitbc_minted"] or zero,
        "btc_received": totals["btc_received"] or zero,
        "updated_at": now,
    }
