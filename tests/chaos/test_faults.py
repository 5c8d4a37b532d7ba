"""Faults injected into a running deployment under load: whatever dies or restarts, no accepted job
is lost, each is completed, receipted and settled exactly once, the ledger stays conserved, the
chain verifies, and the deployment recovers within a bound.

Each test submits jobs through gunicorn (gthread workers) on PostgreSQL and Redis of its own, with
HTTP miners answering at once, housekeeping on a Dramatiq worker and the scheduler. The report of
each run is printed (shown when a test fails); ``bench/soak.py`` runs the same faults for longer.
"""

import asyncio
import json

import pytest

from aitbc_site.testing.chaos import CatalogEntry, ChaosRun, Layout
from aitbc_site.testing.load import job_body
from inference.testing import TINY

pytestmark = [pytest.mark.chaos, pytest.mark.slow]

# Jobs come back from a dead holder after its lease (4 s) and the next sweep (every 2 s).
HOLDER_RECOVERY_S = 20
# A replaced web worker boots Django: seconds, on a busy 2-core machine up to tens.
WEB_WORKER_RECOVERY_S = 45
OUTAGE_RECOVERY_S = 20


def run(scenario) -> None:
    asyncio.run(scenario())


def assert_kept(chaos: ChaosRun, *, recovery_within_s: float) -> dict:
    report = chaos.report()
    print(json.dumps(report, indent=2))
    assert report["violations"] == {}
    assert report["chain_verifies"], report["chain_output"]
    assert report["submissions"]["refused"] == []
    assert report["submissions"]["unanswered"] == 0
    assert report["invariants"]["receipts"] == report["invariants"]["jobs_by_status"]["completed"]
    assert report["faults"]
    for fault in report["faults"]:
        assert fault["recovery_s"] is not None, fault
        assert fault["recovery_s"] <= recovery_within_s, fault
        assert fault.get("held_jobs_not_completed", 0) == 0, fault
    return report


def test_web_workers_killed_mid_load_lose_nothing(deploy):
    deployment = deploy(Layout())
    chaos = ChaosRun(deployment)

    async def scenario():
        load = asyncio.ensure_future(chaos.submit(500))
        for kill in range(1, 4):
            await chaos.wait_for_completions(100 * kill)
            await chaos.kill_web_worker(deployment.gunicorns[0])
        await load
        await chaos.drain()

    run(scenario)
    report = assert_kept(chaos, recovery_within_s=WEB_WORKER_RECOVERY_S)
    assert report["invariants"]["jobs_accepted"] == 500
    assert len(report["faults"]) == 3


def test_http_miners_killed_mid_job_lose_nothing(deploy):
    deployment = deploy(Layout(miner_fleets=3))
    chaos = ChaosRun(deployment)

    async def scenario():
        load = asyncio.ensure_future(chaos.submit(500))
        for kill, fleet in enumerate([*deployment.fleets, deployment.fleets[0]], start=1):
            await chaos.wait_for_completions(80 * kill)
            await chaos.kill_miners(fleet)
        await load
        await chaos.drain()

    run(scenario)
    report = assert_kept(chaos, recovery_within_s=HOLDER_RECOVERY_S)
    assert report["invariants"]["jobs_accepted"] == 500
    # The kills came mid-job: the dead miners held leases, and those jobs completed elsewhere.
    assert sum(fault["jobs_held"] for fault in report["faults"]) > 0


def tiny_job(n: int) -> dict:
    """A job for the in-cluster workers, at the catalog's price."""
    return job_body(TINY, n, price=None, max_tokens=8)


def test_dramatiq_workers_killed_mid_batch_lose_nothing(deploy, tiny_model_dir):
    layout = Layout(housekeeping_workers=0, inference_workers=2, inference_model=TINY, miner_fleets=0)
    deployment = deploy(layout, catalog=(CatalogEntry(TINY, tiny_model_dir),))
    chaos = ChaosRun(deployment)

    async def scenario():
        for worker in deployment.inference_workers:
            load = asyncio.ensure_future(chaos.submit(100, body=tiny_job))
            await chaos.kill_inference_worker(worker)
            await load
        await chaos.drain()

    run(scenario)
    report = assert_kept(chaos, recovery_within_s=HOLDER_RECOVERY_S)
    assert report["invariants"]["jobs_accepted"] == 200
    assert sum(fault["jobs_held"] for fault in report["faults"]) > 0


def test_postgres_restart_costs_only_the_requests_in_flight(deploy):
    deployment = deploy(Layout())
    chaos = ChaosRun(deployment)

    async def scenario():
        load = asyncio.ensure_future(chaos.submit(300, rate=30))
        await chaos.wait_for_completions(80)
        await chaos.restart_postgres()
        await load
        await chaos.drain()
        # Restarted while nothing runs (the miners stopped too): every connection the servers'
        # pools hold is one the restart ended when the next requests come.
        for fleet in deployment.fleets:
            await asyncio.to_thread(fleet.stop)
        await chaos.restart_postgres()
        await chaos.submit(100)
        for fleet in deployment.fleets:
            await asyncio.to_thread(fleet.start)
        await chaos.drain()
        await chaos.sealed()  # recovery counts the first block sealed after the restart

    run(scenario)
    report = assert_kept(chaos, recovery_within_s=OUTAGE_RECOVERY_S)
    assert report["invariants"]["jobs_accepted"] == 400
    for fault in report["faults"]:
        assert fault["requests_failed_after_back"] == 0, fault


def test_redis_outage_loses_nothing_and_housekeeping_resumes(deploy):
    deployment = deploy(Layout())
    chaos = ChaosRun(deployment)

    async def scenario():
        load = asyncio.ensure_future(chaos.submit(400, rate=40))
        await chaos.wait_for_completions(80)
        await chaos.redis_outage(3)
        await load
        # On a slow host the load may have ended while Redis was away: recovery counts the first
        # job accepted after it is back.
        await chaos.submit(20)
        await chaos.drain()
        await chaos.sealed()

    run(scenario)
    report = assert_kept(chaos, recovery_within_s=3 + OUTAGE_RECOVERY_S)
    assert report["invariants"]["jobs_accepted"] == 420
    [outage] = report["faults"]
    # The API stays up while Redis is away, and nothing fails once it is back.
    assert outage["requests_failed_while_out"] == 0
    assert outage["requests_failed_after_back"] == 0
    assert outage["first_after_back_s"]["block_sealed"] is not None
