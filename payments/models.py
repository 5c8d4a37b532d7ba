from django.conf import settings
from django.db import models
from django.db.models import Q

AMOUNT = {"max_digits": 24, "decimal_places": 8}


class WalletKind(models.TextChoices):
    USER = "user", "User"
    TREASURY = "treasury", "Treasury"  # mints credits: the only balance that may go negative
    FEES = "fees", "Platform fees"
    ESCROW = "escrow", "Escrow of one payment"


class Wallet(models.Model):
    """An account of the ledger. ``balance`` is the sum of its entries, kept in the same
    transaction as they are written, and never negative but for the treasury's."""

    address = models.CharField(max_length=90, unique=True)
    kind = models.CharField(max_length=16, choices=WalletKind.choices, default=WalletKind.USER)
    user = models.OneToOneField(
        settings.AUTH_USER_MODEL, on_delete=models.PROTECT, null=True, blank=True, related_name="wallet"
    )
    public_key = models.CharField(max_length=64, blank=True, help_text="Hex Ed25519 key the address derives from.")
    balance = models.DecimalField(**AMOUNT, default=0)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["id"]
        constraints = [
            models.CheckConstraint(condition=Q(kind__in=WalletKind.values), name="wallet_kind_valid"),
            models.CheckConstraint(
                condition=Q(balance__gte=0) | Q(kind=WalletKind.TREASURY), name="wallet_balance_non_negative"
            ),
            models.CheckConstraint(
                condition=Q(user__isnull=True) | Q(kind=WalletKind.USER), name="wallet_only_user_wallets_have_users"
            ),
            models.UniqueConstraint(
                fields=["kind"], condition=Q(kind__in=[WalletKind.TREASURY, WalletKind.FEES]), name="wallet_one_system"
            ),
        ]

    def __str__(self) -> str:
        return self.address


class TransactionKind(models.TextChoices):
    MINT = "mint", "Mint"
    WELCOME = "welcome", "Welcome credits"
    ESCROW = "escrow", "Escrow hold"
    SETTLE = "settle", "Settlement"
    REFUND = "refund", "Refund"
    CREDIT = "credit", "Staff credit"
    TRANSFER = "transfer", "Transfer"


class LedgerTransaction(models.Model):
    """One balanced movement of credits: its entries sum to zero (a deferred constraint trigger
    checks it at commit on PostgreSQL). ``business_key`` makes every posting idempotent:
    ``escrow:<job>`` and ``settle:<job>`` can each happen once."""

    business_key = models.CharField(max_length=160, unique=True)
    kind = models.CharField(max_length=16, choices=TransactionKind.choices)
    job = models.ForeignKey("jobs.Job", on_delete=models.PROTECT, null=True, blank=True, related_name="transactions")
    memo = models.CharField(max_length=300, blank=True)
    actor = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        on_delete=models.PROTECT,
        null=True,
        blank=True,
        related_name="+",
        help_text="The staff member who made it, for credits and mints.",
    )
    created_at = models.DateTimeField(auto_now_add=True, db_index=True)

    class Meta:
        ordering = ["id"]
        constraints = [models.CheckConstraint(condition=Q(kind__in=TransactionKind.values), name="ledger_kind_valid")]

    def __str__(self) -> str:
        return self.business_key


class LedgerEntry(models.Model):
    transaction = models.ForeignKey(LedgerTransaction, on_delete=models.PROTECT, related_name="entries")
    wallet = models.ForeignKey(Wallet, on_delete=models.PROTECT, related_name="entries")
    amount = models.DecimalField(**AMOUNT, help_text="Positive: credited to the wallet; negative: debited.")

    class Meta:
        ordering = ["id"]
        verbose_name_plural = "ledger entries"
        constraints = [models.CheckConstraint(condition=~Q(amount=0), name="ledger_entry_non_zero")]
        indexes = [models.Index(fields=["wallet", "-id"], name="ledger_entry_wallet_idx")]

    def __str__(self) -> str:
        return f"{self.wallet_id} {self.amount:+}"


class PaymentStatus(models.TextChoices):
    PENDING = "pending", "Pending"
    ESCROWED = "escrowed", "Escrowed"
    RELEASED = "released", "Released"
    REFUNDED = "refunded", "Refunded"
    FAILED = "failed", "Failed"


class Payment(models.Model):
    """A job's payment: the amount held in its own escrow wallet until the job settles or refunds.

    The job points at its payment (``Job.payment``, by ``payment_id``); ``payment.job`` reads back.
    """

    payment_id = models.CharField(max_length=40, unique=True)
    payer = models.ForeignKey(Wallet, on_delete=models.PROTECT, related_name="payments")
    escrow = models.OneToOneField(Wallet, on_delete=models.PROTECT, related_name="escrowed_payment")
    amount = models.DecimalField(**AMOUNT)
    currency = models.CharField(max_length=16, default="AITBC")
    payment_method = models.CharField(max_length=32, default="aitbc_token")
    status = models.CharField(max_length=16, choices=PaymentStatus.choices, default=PaymentStatus.ESCROWED)
    amount_paid = models.DecimalField(**AMOUNT, default=0, help_text="Paid out on settlement (miner + fee).")
    amount_refunded = models.DecimalField(**AMOUNT, default=0)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)
    settled_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at"]
        constraints = [
            models.CheckConstraint(condition=Q(status__in=PaymentStatus.values), name="payment_status_valid"),
            models.CheckConstraint(condition=Q(amount__gt=0), name="payment_amount_positive"),
            models.CheckConstraint(
                condition=Q(amount_paid__gte=0, amount_refunded__gte=0), name="payment_outflows_non_negative"
            ),
        ]

    def __str__(self) -> str:
        return self.payment_id

    @property
    def amount_charged(self):
        """What the job cost its client: the amount paid out on settlement; None until released."""
        return self.amount_paid if self.status == PaymentStatus.RELEASED else None


class PendingCreditStatus(models.TextChoices):
    PENDING = "pending", "Awaiting approval"
    APPROVED = "approved", "Approved and minted"
    DECLINED = "declined", "Declined"


class PendingCredit(models.Model):
    """A staff credit above ``ADMIN_CREDIT_APPROVAL_THRESHOLD``: nothing is minted until a second
    staff member approves it (never the one who asked)."""

    wallet = models.ForeignKey(Wallet, on_delete=models.PROTECT, related_name="pending_credits")
    amount = models.DecimalField(**AMOUNT)
    reason = models.CharField(max_length=300)
    requested_by = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="+")
    created_at = models.DateTimeField(auto_now_add=True)
    status = models.CharField(max_length=16, choices=PendingCreditStatus.choices, default=PendingCreditStatus.PENDING)
    decided_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.PROTECT, null=True, blank=True, related_name="+"
    )
    decided_at = models.DateTimeField(null=True, blank=True)
    transaction = models.OneToOneField(
        LedgerTransaction, on_delete=models.PROTECT, null=True, blank=True, related_name="approved_credit"
    )

    class Meta:
        ordering = ["-created_at", "-id"]
        constraints = [
            models.CheckConstraint(
                condition=Q(status__in=PendingCreditStatus.values), name="pending_credit_status_valid"
            ),
            models.CheckConstraint(condition=Q(amount__gt=0), name="pending_credit_amount_positive"),
            models.CheckConstraint(
                condition=Q(decided_by__isnull=True) | ~Q(decided_by=models.F("requested_by")),
                name="pending_credit_second_approver",
            ),
        ]

    def __str__(self) -> str:
        return f"credit of {self.amount} AITBC to {self.wallet_id} ({self.status})"


class ExchangePaymentStatus(models.TextChoices):
    PENDING = "pending", "Pending"
    CONFIRMED = "confirmed", "Confirmed"
    EXPIRED = "expired", "Expired"


ExchangePaymentStatus.ACTIVE = (ExchangePaymentStatus.PENDING,)
ExchangePaymentStatus.TERMINAL = (ExchangePaymentStatus.CONFIRMED, ExchangePaymentStatus.EXPIRED)


class ExchangePayment(models.Model):
    """A request to buy AITBC with Bitcoin: the user sends ``btc_amount`` to its own deposit address
    before ``expires_at``; on confirmation ``aitbc_amount`` is minted into ``wallet`` (``exchange:<id>``)."""

    id = models.CharField(primary_key=True, max_length=40, editable=False)
    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="exchange_payments")
    wallet = models.ForeignKey(Wallet, on_delete=models.PROTECT, related_name="exchange_payments")
    aitbc_amount = models.DecimalField(**AMOUNT)
    btc_amount = models.DecimalField(**AMOUNT)
    rate = models.DecimalField(**AMOUNT, help_text="AITBC per BTC when the request was made.")
    deposit_address = models.CharField(max_length=90, unique=True)
    derivation_index = models.PositiveBigIntegerField(unique=True, help_text="n in m/0/n of EXCHANGE_XPUB.")
    status = models.CharField(
        max_length=16, choices=ExchangePaymentStatus.choices, default=ExchangePaymentStatus.PENDING
    )
    expires_at = models.DateTimeField()
    confirmed_at = models.DateTimeField(null=True, blank=True)
    txid = models.CharField(max_length=64, blank=True, help_text="The Bitcoin transaction that paid it.")
    confirmations = models.PositiveIntegerField(default=0, help_text="As the payment processor reported them.")
    confirmed_by = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        on_delete=models.PROTECT,
        null=True,
        blank=True,
        related_name="+",
        help_text="The staff member who confirmed it; empty when a signed webhook did.",
    )
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-created_at", "-id"]
        constraints = [
            models.CheckConstraint(
                condition=Q(status__in=ExchangePaymentStatus.values), name="exchange_payment_status_valid"
            ),
            models.CheckConstraint(
                condition=Q(aitbc_amount__gt=0, btc_amount__gt=0, rate__gt=0), name="exchange_payment_amounts_positive"
            ),
            models.CheckConstraint(
                condition=Q(confirmed_at__isnull=False) | ~Q(status=ExchangePaymentStatus.CONFIRMED),
                name="exchange_payment_confirmed_has_time",
            ),
        ]
        indexes = [
            # The expiry sweep's lookup: pending payments by deadline.
            models.Index(
                fields=["expires_at"],
                condition=Q(status=ExchangePaymentStatus.PENDING),
                name="exchange_payment_pending_idx",
            ),
        ]

    def __str__(self) -> str:
        return self.id
