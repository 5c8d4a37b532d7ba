"""Many OS processes claiming and completing at once: every job exactly once."""

import multiprocessing
import os
import threading
from concurrent.futures import ProcessPoolExecutor
from functools import partial

import pytest
from django.db import connections, transaction

from accounts.services import user_get_or_create
from jobs.models import Job, JobStatus, Receipt
from jobs.services import job_claim, job_complete, job_submit, jobs_lease_to
from miners.capabilities import Capabilities
from miners.models import Miner
from miners.services import miner_register
from tests.threads import run_at_once

pytestmark = [pytest.mark.postgres, pytest.mark.django_db(transaction=True)]

PROCESSES = 8
JOBS = 2000


def _claim_and_complete_until_empty(miner_pk: int, batch: int) -> tuple[int, list]:
    connections.close_all()  # never share the parent's socket
    miner = Miner.objects.get(pk=miner_pk)
    claimed, empty_polls = [], 0
    while empty_polls < 3:
        jobs = job_claim(miner=miner, limit=batch)
        if not jobs:
            empty_polls += 1
            continue
        empty_polls = 0
        for job in jobs:
            claimed.append((str(job.pk), job.lease_token))
            job_complete(
                job_id=job.pk, miner=miner, result={"output": f"done by {miner.miner_id}"}, lease_token=job.lease_token
            )
    connections.close_all()
    return os.getpid(), claimed


def test_eight_processes_claim_and_complete_2000_jobs_exactly_once():
    client = user_get_or_create(username="load-client")
    owner = user_get_or_create(username="farm")
    for i in range(JOBS):
        job_submit(client=client, model="llama3.2", payload={"prompt": f"job {i}"})
    miners = [
        miner_register(
            owner=owner, miner_id=f"rig-{i}", capabilities=Capabilities(models=("llama3.2",), max_concurrent_jobs=JOBS)
        )[0]
        for i in range(PROCESSES)
    ]
    connections.close_all()

    with ProcessPoolExecutor(max_workers=PROCESSES, mp_context=multiprocessing.get_context("fork")) as pool:
        futures = [
            pool.submit(_claim_and_complete_until_empty, miner.pk, 1 if i % 2 else 10) for i, miner in enumerate(miners)
        ]
        outcomes = [future.result(timeout=300) for future in futures]
    assert len({pid for pid, _ in outcomes}) == PROCESSES
    claimed = [item for _, items in outcomes for item in items]

    claimed_ids = [job_id for job_id, _ in claimed]
    assert len(claimed_ids) == JOBS
    assert len(set(claimed_ids)) == JOBS, "a job was claimed twice"
    assert Job.objects.filter(status=JobStatus.COMPLETED, attempt=1).count() == JOBS
    assert Receipt.objects.count() == JOBS
    assert Receipt.objects.values("job").distinct().count() == JOBS
    assert {c for c in Job.objects.values_list("miner__miner_id", flat=True).distinct()} <= {m.miner_id for m in miners}
    assert Job.objects.values("miner").distinct().count() > 1, "work was not shared between processes"


def test_a_claim_waiting_on_the_miners_lock_counts_the_claim_committed_before_it():
    client = user_get_or_create(username="limit-client")
    owner = user_get_or_create(username="limit-farm")
    for i in range(2):
        job_submit(client=client, model="llama3.2", payload={"prompt": f"job {i}"})
    miner, _ = miner_register(
        owner=owner, miner_id="one-at-a-time", capabilities=Capabilities(models=("llama3.2",), max_concurrent_jobs=1)
    )
    first_claimed, release = threading.Event(), threading.Event()
    second = []

    def claim_and_hold():
        try:
            with transaction.atomic():
                assert len(job_claim(miner=miner, limit=1)) == 1
                first_claimed.set()
                release.wait(10)  # holds the miner's row lock until then
        finally:
            connections.close_all()

    def claim_meanwhile():
        try:
            first_claimed.wait(10)
            second.extend(job_claim(miner=miner, limit=1))  # waits for the lock, then sees the running job
        finally:
            connections.close_all()

    holder, waiter = threading.Thread(target=claim_and_hold), threading.Thread(target=claim_meanwhile)
    holder.start()
    waiter.start()
    first_claimed.wait(10)
    waiter.join(0.3)
    assert waiter.is_alive(), "the second claim should wait for the miner's lock"
    release.set()
    holder.join(10)
    waiter.join(10)

    assert second == []
    assert Job.objects.filter(miner=miner, status=JobStatus.RUNNING).count() == 1


def test_batch_leases_racing_each_other_and_the_miners_own_claims_lease_each_job_once():
    client = user_get_or_create(username="batch-client")
    owner = user_get_or_create(username="batch-farm")
    job_ids = [job_submit(client=client, model="llama3.2", payload={"prompt": f"job {i}"}).job.pk for i in range(60)]
    miners = [
        miner_register(
            owner=owner, miner_id=f"batch-{i}", capabilities=Capabilities(models=("llama3.2",), max_concurrent_jobs=10)
        )[0]
        for i in range(4)
    ]
    connections.close_all()
    leased: list[list] = []

    def dispatch(shift: int):
        # Every job, each to a different miner than the other dispatchers choose.
        pairs = [(miners[(n + shift) % len(miners)], job_id) for n, job_id in enumerate(job_ids)]
        leased.append([job.pk for job in jobs_lease_to(pairs)])

    def claim_until_full(miner):
        while jobs := job_claim(miner=miner, limit=3):
            leased.append([job.pk for job in jobs])

    calls = [partial(dispatch, shift) for shift in range(3)] + [partial(claim_until_full, miner) for miner in miners]
    assert run_at_once(calls) == []
    handed_out = [job_id for batch in leased for job_id in batch]
    assert len(handed_out) == len(set(handed_out)) == 40, "a job was leased twice, or a limit broken"
    running = Job.objects.filter(status=JobStatus.RUNNING)
    assert set(running.values_list("pk", flat=True)) == set(handed_out)
    assert set(running.values_list("attempt", flat=True)) == {1}
    assert [running.filter(miner=miner).count() for miner in miners] == [10, 10, 10, 10]
    assert Job.objects.filter(status=JobStatus.QUEUED).count() == 20


def test_a_batch_lease_skips_what_the_chosen_miner_cannot_take():
    client = user_get_or_create(username="skip-client")
    owner = user_get_or_create(username="skip-farm")
    jobs = [job_submit(client=client, model="llama3.2", payload={"prompt": f"job {i}"}).job for i in range(5)]
    two_slots, _ = miner_register(
        owner=owner, miner_id="two-slots", capabilities=Capabilities(models=("llama3.2",), max_concurrent_jobs=2)
    )
    other_model, _ = miner_register(owner=owner, miner_id="other-model", capabilities=Capabilities(models=("qwen",)))
    offline, _ = miner_register(owner=owner, miner_id="offline", capabilities=Capabilities(models=("llama3.2",)))
    Miner.objects.filter(pk=offline.pk).update(status="offline")

    chosen = [two_slots, other_model, two_slots, offline, two_slots]  # the last finds no free slot
    leased = jobs_lease_to([(miner, job.pk) for miner, job in zip(chosen, jobs, strict=True)])

    assert {(job.pk, job.miner_id, job.status) for job in leased} == {
        (jobs[0].pk, two_slots.pk, JobStatus.RUNNING),
        (jobs[2].pk, two_slots.pk, JobStatus.RUNNING),
    }
    assert Job.objects.filter(status=JobStatus.QUEUED).count() == 3
