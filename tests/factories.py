"""Factories for the main models, for every test.

Each one builds through the owning app's services, as the application does, so the rows keep
their invariants: a wallet gets its welcome credits through the ledger, a miner its served
models, a job its escrow, a completed job its receipt and settlement. Fields a service takes
are factory fields; call ``XFactory(...)`` (or ``XFactory.create_batch(n, ...)``) in a test.
"""

from decimal import Decimal

import factory
from factory.django import DjangoModelFactory

from accounts.models import ApiKey, ApiKeyScope, User
from accounts.services import api_key_create, user_get_or_create
from jobs.models import Job
from jobs.services import job_claim, job_complete, job_submit
from miners.capabilities import Capabilities
from miners.models import Miner
from miners.services import miner_register
from payments.models import Payment, Wallet
from payments.services import treasury_mint, wallet_open

PASSWORD = "correct horse battery staple"


class UserFactory(DjangoModelFactory):
    """``UserFactory(username="alice")``: the account (the same one again for the same name);
    ``password=True`` gives it ``PASSWORD`` for browser log-ins."""

    class Meta:
        model = User

    username = factory.Sequence(lambda n: f"user-{n}")
    password = None

    @classmethod
    def _create(cls, model_class, *, username, password=None, **fields):
        user = user_get_or_create(username=username)
        if password:
            user.set_password(PASSWORD if password is True else password)
            user.save(update_fields=["password"])
        return user


class ApiKeyFactory(DjangoModelFactory):
    """An issued key; the raw key, shown once by the service, is on ``.raw_key``."""

    class Meta:
        model = ApiKey

    user = factory.SubFactory(UserFactory)
    scope = ApiKeyScope.CLIENT
    name = ""

    @classmethod
    def _create(cls, model_class, *, user, scope, name):
        issued = api_key_create(user=user, scope=scope, name=name)
        issued.api_key.raw_key = issued.raw_key
        return issued.api_key


class WalletFactory(DjangoModelFactory):
    """The user's wallet as ``wallet_open`` opens it (welcome credits included), plus ``minted``
    credits from the treasury."""

    class Meta:
        model = Wallet

    user = factory.SubFactory(UserFactory)
    minted = None

    @classmethod
    def _create(cls, model_class, *, user, minted=None):
        wallet = wallet_open(user=user)
        if minted:
            treasury_mint(wallet=wallet, amount=minted)
            wallet.refresh_from_db()
        return wallet


class MinerFactory(DjangoModelFactory):
    """A registered, online miner serving ``models``; other keywords are its capabilities
    (``max_concurrent_jobs``, ``gpus``, ``region``…)."""

    class Meta:
        model = Miner

    owner = factory.SubFactory(UserFactory, username="gpu-owner")
    miner_id = factory.Sequence(lambda n: f"rig-{n}")
    models = ("llama3.2",)

    @classmethod
    def _create(cls, model_class, *, owner, miner_id, models, **capabilities):
        miner, _session_token = miner_register(
            owner=owner, miner_id=miner_id, capabilities=Capabilities(models=tuple(models), **capabilities)
        )
        return miner


class JobFactory(DjangoModelFactory):
    """A job submitted by ``client`` (queued, its price held in escrow when ``payment_amount``
    is given). ``completed_by=miner`` has that miner claim it and report ``result``, so it is
    completed, receipted and settled as a real one; ``claimed_by=miner`` leaves it running."""

    class Meta:
        model = Job

    client = factory.SubFactory(UserFactory, username="alice")
    model = "llama3.2"
    prompt = "What is the capital of France?"
    payment_amount = None
    claimed_by = None
    completed_by = None
    result = factory.LazyFunction(lambda: {"text": "Paris.", "finish_reason": "stop"})

    @classmethod
    def _create(cls, model_class, *, client, model, prompt, payment_amount, claimed_by, completed_by, result, **extra):
        payload = {"type": "inference", "model": model, "prompt": prompt}
        amount = Decimal(payment_amount) if payment_amount is not None else None
        job = job_submit(client=client, model=model, payload=payload, payment_amount=amount, **extra).job
        miner = completed_by or claimed_by
        if miner is not None:
            (claimed,) = job_claim(miner=miner, job_id=job.pk)
            if completed_by is not None:
                job_complete(
                    job_id=job.pk,
                    miner=miner,
                    result=result,
                    metrics={"duration_ms": 40, "units": 7},
                    lease_token=claimed.lease_token,
                )
            job.refresh_from_db()
        return job


class PaymentFactory(DjangoModelFactory):
    """A job's payment: a job submitted with ``amount`` held in escrow (pass ``job__…`` to shape
    the job, e.g. ``job__completed_by=miner`` for a settled one)."""

    class Meta:
        model = Payment

    amount = "1"
    job = factory.SubFactory(JobFactory, payment_amount=factory.SelfAttribute("..amount"))

    @classmethod
    def _create(cls, model_class, *, job, amount):
        return Payment.objects.get(job=job)
