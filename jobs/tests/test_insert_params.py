"""A submitted job's INSERT parameters, built without Django's conversions where they change nothing."""

import uuid
from datetime import datetime, timedelta
from decimal import Decimal

import pytest
from django.db import connection
from django.utils import timezone
from psycopg.types.json import Jsonb

from jobs import sql
from jobs.models import Job
from tests.factories import UserFactory


def _job(**fields) -> Job:
    now = timezone.now()
    values = {
        "id": uuid.uuid4(), "type": "inference", "model": "m", "payload": {"prompt": "hi", "params": [1, 2.5, None]},
        "constraints": {"gpu": "A100"}, "priority": 1, "rank_at": now, "ttl_seconds": 900,
        "expires_at": now + timedelta(seconds=900), "max_attempts": 3, "created_at": now,
    }  # fmt: skip
    return Job(**{"client": UserFactory.build(id=7), **values, **fields})


def _django_params(job: Job) -> list:
    return [field.get_db_prep_save(field.pre_save(job, True), connection) for field in sql._INSERT_FIELDS]


def _comparable(value):
    return ("json", value.obj) if isinstance(value, Jsonb) else (type(value), value)


@pytest.mark.filterwarnings("ignore:DateTimeField Job.rank_at received a naive datetime")
@pytest.mark.parametrize(
    "fields",
    [
        {},
        # Values of other types than the columns' own are converted as Django converts them.
        {"req_max_price": 1.5, "req_min_vram_gb": 8, "price": Decimal("1.00000000"), "unit_price": Decimal("0.1")},
        {"ttl_seconds": "900", "req_cuda_code": 86, "req_min_reputation": 0.5, "settles_on_verdict": True},
        {"verification": {"redundancy": 3}, "idempotency_key": "k", "request_fingerprint": "ab" * 32},
        {"rank_at": datetime(2026, 1, 1, 12, 0), "payment_id": "pay_1", "result": None},
    ],
)
def test_parameters_are_those_djangos_conversion_gives(db, fields):
    job = _job(**fields)
    ours = sql.insert_and_announce(job)[1]
    theirs = _django_params(job)
    for field, mine, django in zip(sql._INSERT_FIELDS, ours, theirs, strict=True):
        if field.attname == "updated_at":  # auto_now: the time of each call
            assert isinstance(mine, datetime) and mine.tzinfo is not None
        elif isinstance(django, Jsonb):
            assert isinstance(mine, str) and sql.json.loads(mine) == django.obj, field.attname
        else:
            assert _comparable(mine) == _comparable(django), field.attname


def test_a_job_inserted_with_them_reads_back_the_same(db):
    job = _job(client=UserFactory(), req_max_price=Decimal("2.5"), req_min_vram_gb=8.0, verification=None)
    statement, params = sql.insert_and_announce(job)
    with connection.cursor() as cursor:
        cursor.execute(statement, [*params, "aitbc-test", 10])
    stored = Job.objects.get(pk=job.pk)
    assert (stored.payload, stored.constraints, stored.verification, stored.result) == (
        job.payload, job.constraints, None, None
    )  # fmt: skip
    assert (stored.req_max_price, stored.req_min_vram_gb, stored.rank_at) == (Decimal("2.5"), 8.0, job.rank_at)
