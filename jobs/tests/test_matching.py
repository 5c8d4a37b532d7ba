"""The matching rule (``jobs.matching``) pinned by one table of cases: the claim (the SQL function
on PostgreSQL, the ORM on SQLite), a miner's list of available jobs and a job's capable miners
must all agree with it."""

from decimal import Decimal

import pytest
from django.db import connection
from django.utils import timezone

from accounts.services import user_get_or_create
from catalog.models import CatalogModel
from jobs import matching
from jobs.models import JobType
from jobs.selectors import claimable_jobs, miners_able_to_run
from jobs.services import job_claim, job_submit
from miners.capabilities import AGENT_TASK_MODEL, Capabilities
from miners.services import miner_register

MINER = {"gpu_name": "NVIDIA RTX 4090", "vram_gb": 24.0, "cuda_version": "12.4", "region": "eu-west", "price": "0.5"}

CASES = [
    ("no constraints", {}, {}, True),
    ("enough vram", {"min_vram_gb": 24}, {}, True),
    ("too little vram", {"min_vram_gb": 24.5}, {}, False),
    ("newer cuda", {"cuda": "12.1"}, {}, True),
    ("older cuda", {"cuda": "12.10"}, {}, False),
    ("cuda 0 without a cuda version", {"cuda": "0"}, {"cuda_version": ""}, True),
    ("any cuda needs a version", {"cuda": "1.0"}, {"cuda_version": ""}, False),
    ("region in other case", {"region": "EU-West"}, {}, True),
    ("other region", {"region": "us-east"}, {}, False),
    ("region without one", {"region": "eu-west"}, {"region": ""}, False),
    ("price within the cap", {"max_price": "0.5"}, {}, True),
    ("price above the cap", {"max_price": "0.49"}, {}, False),
    ("no price meets any cap", {"max_price": "0"}, {"price": None}, True),
    ("gpu substring in other case", {"gpu": "rtx 4090"}, {}, True),
    ("other gpu", {"gpu": "H100"}, {}, False),
    ("gpu without a gpu name", {"gpu": "4090"}, {"gpu_name": ""}, False),
    ("every constraint met", {"min_vram_gb": 16, "cuda": "12", "region": "EU-WEST", "gpu": "4090"}, {}, True),
    ("one constraint missed", {"min_vram_gb": 16, "cuda": "12", "region": "us-east", "gpu": "4090"}, {}, False),
]


def register(*, models=("llama3.2",), **overrides):
    fields = {**MINER, **overrides}
    price = fields.pop("price")
    capabilities = Capabilities(models=tuple(models), price=None if price is None else Decimal(price), **fields)
    miner, _ = miner_register(owner=user_get_or_create(username="gpu-owner"), miner_id="m", capabilities=capabilities)
    return miner


def submit(constraints: dict, model: str = "llama3.2"):
    client = user_get_or_create(username="alice")
    payload = {"type": "inference", "prompt": "x", "model": model}
    return job_submit(client=client, model=model, payload=payload, constraints=constraints).job


@pytest.mark.django_db
@pytest.mark.parametrize("constraints, miner_fields, matches", [case[1:] for case in CASES], ids=[c[0] for c in CASES])
def test_every_form_of_the_rule_agrees(constraints, miner_fields, matches):
    miner = register(**miner_fields)
    job = submit(constraints)

    assert claimable_jobs(miner=miner, now=timezone.now()).filter(pk=job.pk).exists() is matches
    assert miners_able_to_run(job=job).filter(pk=miner.pk).exists() is matches
    assert [claimed.pk for claimed in job_claim(miner=miner)] == ([job.pk] if matches else [])


@pytest.mark.django_db
def test_a_miner_never_matches_a_model_it_does_not_serve():
    miner = register(models=["other"])
    job = submit({})

    assert not claimable_jobs(miner=miner, now=timezone.now()).exists()
    assert not miners_able_to_run(job=job).exists()
    assert job_claim(miner=miner) == []


@pytest.mark.django_db
@pytest.mark.parametrize("state", [{"draining": True}, {"status": "offline"}])
def test_a_miner_that_takes_no_work_matches_nothing(state):
    miner = register()
    job = submit({})
    type(miner).objects.filter(pk=miner.pk).update(**state)
    miner.refresh_from_db()

    assert not miners_able_to_run(job=job).exists()
    assert job_claim(miner=miner) == []


@pytest.mark.postgres
@pytest.mark.django_db
def test_the_installed_claim_function_is_built_from_the_stated_rule():
    with connection.cursor() as cursor:
        cursor.execute("SELECT prosrc FROM pg_proc WHERE proname = 'jobs_claim'")
        (source,) = cursor.fetchone()
    assert matching.MINER_MEETS_JOB.strip() in source


@pytest.mark.django_db
def test_a_miner_declaring_no_models_matches_every_model_outside_the_catalog_and_none_inside():
    CatalogModel.objects.create(name="catalogued", task="chat", source_kind="hub", source="org/catalogued")
    miner = register(models=())
    outside = submit({}, model="llama3")
    inside = submit({}, model="catalogued")
    too_big = submit({"min_vram_gb": 80}, model="mistral")

    assert set(claimable_jobs(miner=miner, now=timezone.now())) == {outside}
    assert list(miners_able_to_run(job=outside)) == [miner]
    assert not miners_able_to_run(job=inside).exists()
    assert not miners_able_to_run(job=too_big).exists()
    assert [claimed.pk for claimed in job_claim(miner=miner, limit=5)] == [outside.pk]


@pytest.mark.django_db
def test_a_miner_declaring_models_is_not_offered_other_models_outside_the_catalog():
    miner = register(models=("llama3.2",))
    submit({}, model="llama3")

    assert not claimable_jobs(miner=miner, now=timezone.now()).exists()
    assert job_claim(miner=miner) == []


@pytest.mark.django_db
def test_a_miner_declaring_no_models_is_never_offered_an_agents_task():
    miner = register(models=())
    client = user_get_or_create(username="alice")
    task = job_submit(
        client=client, model=AGENT_TASK_MODEL, job_type=JobType.TASK, payload={"task_type": "summarize"}
    ).job

    assert not claimable_jobs(miner=miner, now=timezone.now()).exists()
    assert not miners_able_to_run(job=task).exists()
    assert job_claim(miner=miner) == []
