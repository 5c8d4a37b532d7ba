"""The two serializers that build their output directly (every submit, status poll and status
event; every poll that hands out work) must show exactly the fields they declare for the schema."""

import pytest

from jobs.api.miner_serializers import LeasedJobSerializer
from jobs.api.serializers import JobSerializer
from jobs.services import job_claim
from tests.factories import JobFactory, MinerFactory

pytestmark = pytest.mark.django_db


def test_job_view_shows_the_declared_fields():
    job = JobFactory(completed_by=MinerFactory(), payment_amount="1")
    assert list(JobSerializer(job).data) == list(JobSerializer().fields)


def test_leased_job_shows_the_declared_fields():
    miner = MinerFactory()
    job = JobFactory()
    (leased,) = job_claim(miner=miner, job_id=job.pk)
    assert list(LeasedJobSerializer(leased).data) == list(LeasedJobSerializer().fields)
