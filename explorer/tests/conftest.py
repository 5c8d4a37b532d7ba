from datetime import timedelta

import pytest
from django.utils import timezone

from accounts.models import User
from jobs.models import Job, JobStatus
from jobs.receipts import receipts_issue
from miners.capabilities import Capabilities
from miners.models import Miner
from miners.services import miner_register


def completed_jobs(count: int, *, client_name: str = "alice", miner: Miner | None = None, **fields) -> list[Job]:
    """Completed jobs as ``jobs_complete`` leaves them, built directly: tests need many, fast. Their
    users are too, without wallets: the ledger stays empty unless a test writes to it."""
    client = User.objects.get_or_create(username=client_name)[0]
    if miner is None:
        owner = User.objects.get_or_create(username="gpu-owner")[0]
        miner = (
            Miner.objects.filter(miner_id="miner-1").first()
            or miner_register(owner=owner, miner_id="miner-1", capabilities=Capabilities(models=("llama3.2",)))[0]
        )
    now = timezone.now()
    return [
        Job.objects.create(
            client=client,
            model="llama3.2",
            payload={"type": "inference", "prompt": f"prompt {i}", "model": "llama3.2"},
            rank_at=now,
            ttl_seconds=900,
            expires_at=now + timedelta(seconds=900),
            max_attempts=3,
            attempt=1,
            status=JobStatus.COMPLETED,
            miner=miner,
            started_at=now - timedelta(seconds=2),
            completed_at=now,
            progress=100,
            result={"output": f"result {i}"},
            usage={"prompt_tokens": 2, "completion_tokens": 3, "total_tokens": 5},
            **fields,
        )
        for i in range(count)
    ]


def issue_receipts(count: int, **kwargs):
    jobs = completed_jobs(count, **kwargs)
    return receipts_issue(completed=[(job, job.miner.miner_id, job.price) for job in jobs])


@pytest.fixture
def make_receipts(db):
    return issue_receipts
