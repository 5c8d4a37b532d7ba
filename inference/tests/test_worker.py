import asyncio
import time

import dramatiq
import pytest
from asgiref.sync import async_to_sync
from channels.layers import get_channel_layer

from inference import engine
from inference.tests.conftest import TINY
from inference.worker import worker_queue
from jobs import events
from jobs.events import job_group
from jobs.models import FailedAttempt, Job, JobStatus, Receipt
from jobs.services import job_claim, job_complete, job_submit
from miners.models import Miner


def submit(client, prompt="The coordinator", model=TINY, **params):
    params = {"max_tokens": 8, "temperature": 0, **params}
    payload = {"type": "inference", "model": model, "prompt": prompt, "params": params}
    return job_submit(client=client, model=model, payload=payload).job


def test_cluster_host_registers_as_an_in_cluster_miner_serving_its_models(cluster_host):
    miner = Miner.objects.get(miner_id="test-cluster")
    assert miner.in_cluster
    assert list(miner.served_models.values_list("name", flat=True)) == [TINY]
    assert miner.owner.username == "cluster"
    assert miner.gpu_name


def test_drained_job_completes_with_text_usage_and_receipt(cluster_host, client_api):
    job = submit(client_api.user)
    assert cluster_host.drain(TINY) == 1
    job.refresh_from_db()
    assert job.status == JobStatus.COMPLETED
    assert isinstance(job.result["text"], str)
    assert job.result["finish_reason"] in {"stop", "length"}
    assert job.usage["prompt_tokens"] > 0
    assert 0 < job.usage["completion_tokens"] <= 8
    assert job.usage["compute_ms"] >= 0
    assert Receipt.objects.filter(job=job).exists()


def test_queued_jobs_of_a_model_join_one_batch_with_one_by_one_outputs(cluster_host, client_api, monkeypatch):
    prompts = ["The coordinator", "A miner claims", "Receipts are signed with Ed25519", "Clients"]
    jobs = [submit(client_api.user, prompt, max_tokens=6 + i) for i, prompt in enumerate(prompts)]
    joined = []
    add = engine.Generation.add

    def recording(batch, items):
        joined.append(len(items))
        return add(batch, items)

    monkeypatch.setattr(engine.Generation, "add", recording)
    cluster_host.drain(TINY)
    assert [count for count in joined if count] == [4]

    model = cluster_host.models[TINY]
    for job in jobs:
        job.refresh_from_db()
        alone = engine.execute(model, [(str(job.pk), job.payload)])[0]
        assert job.result["text"] == alone.result["text"]


def watch_steps(monkeypatch, before=None, after=None):
    """Call ``before(batch, n)`` and ``after(batch, n)`` around the n-th step (from 1) of every batch."""
    step, count = engine.Generation.step, [0]

    def watched(batch):
        count[0] += 1
        if before is not None:
            before(batch, count[0])
        answers = step(batch)
        if after is not None:
            after(batch, count[0])
        return answers

    monkeypatch.setattr(engine.Generation, "step", watched)


def test_each_job_is_completed_as_soon_as_it_finishes_while_the_others_go_on(cluster_host, client_api, monkeypatch):
    short, long = submit(client_api.user, max_tokens=2), submit(client_api.user, "A miner claims", max_tokens=30)
    seen = []

    def record(batch, n):
        statuses = dict(Job.objects.filter(pk__in=[short.pk, long.pk]).values_list("pk", "status"))
        seen.append((statuses[short.pk], statuses[long.pk], sorted(cluster_host._inflight), sorted(batch.keys)))

    watch_steps(monkeypatch, before=record)
    cluster_host.drain(TINY)

    # The first step (the prefill) gives each job its first token, the second its second: before
    # the third, the short job is completed and the long one still runs.
    assert seen[2] == (JobStatus.COMPLETED, JobStatus.RUNNING, [str(long.pk)], [str(long.pk)])
    assert Receipt.objects.filter(job=short).exists()
    assert Job.objects.get(pk=long.pk).status == JobStatus.COMPLETED
    assert cluster_host._inflight == {}


def test_a_job_submitted_while_another_decodes_joins_its_batch(cluster_host, client_api, monkeypatch):
    long = submit(client_api.user, "A miner claims", max_tokens=40)
    joined = {}

    def submit_a_short_job_at_step_3(batch, n):
        if n == 3:
            joined["job"] = submit(client_api.user, max_tokens=3)
            assert cluster_host.drain(TINY) == 0  # the wake-up, as the listener delivers it mid-drain
        done = "job" in joined and Job.objects.get(pk=joined["job"].pk).status == JobStatus.COMPLETED
        if done and "done_at" not in joined:
            joined["done_at"] = n
            joined["long_then"] = Job.objects.get(pk=long.pk).status

    watch_steps(monkeypatch, before=submit_a_short_job_at_step_3)
    assert cluster_host.drain(TINY) == 2

    # Announced during step 3, it is claimed right after it, is prefilled at step 4 (its first
    # token), has its 3 tokens after step 6 and is completed before step 7, while the long job
    # still decodes.
    assert (joined["done_at"], joined["long_then"]) == (7, JobStatus.RUNNING)
    model = cluster_host.models[TINY]
    for job in (long, joined["job"]):
        job.refresh_from_db()
        assert job.result["text"] == engine.execute(model, [("alone", job.payload)])[0].result["text"]


def test_a_cancelled_job_leaves_the_batch_at_the_next_step(cluster_host, client_api, monkeypatch):
    from jobs.services import job_cancel

    cancelled, kept = submit(client_api.user, max_tokens=40), submit(client_api.user, "A miner claims", max_tokens=20)
    keys_after = {}

    def cancel_at_step_2(batch, n):
        if n == 2:
            job_cancel(job_id=cancelled.pk)

    watch_steps(monkeypatch, before=cancel_at_step_2, after=lambda batch, n: keys_after.setdefault(n, batch.keys))
    cluster_host.drain(TINY)

    assert keys_after[1] == [str(cancelled.pk), str(kept.pk)]
    assert keys_after[3] == [str(kept.pk)]
    assert Job.objects.get(pk=cancelled.pk).status == JobStatus.CANCELLED
    assert Job.objects.get(pk=kept.pk).status == JobStatus.COMPLETED
    assert not FailedAttempt.objects.exists()


def test_the_worker_claims_only_jobs_for_the_models_it_loaded(cluster_host, client_api):
    from miners.models import ServedModel

    # Even a model the miner row lists but this process never loaded stays in the queue.
    ServedModel.objects.create(miner=Miner.objects.get(miner_id="test-cluster"), name="other")
    other = job_submit(client=client_api.user, model="other", payload={"type": "inference", "prompt": "x"}).job
    mine = submit(client_api.user)
    cluster_host.drain(TINY)
    assert Job.objects.get(pk=other.pk).status == JobStatus.QUEUED
    assert Job.objects.get(pk=mine.pk).status == JobStatus.COMPLETED
    assert cluster_host.drain("other") == 0


def test_an_input_too_long_fails_the_job_with_its_error_code(cluster_host, client_api):
    job = submit(client_api.user, prompt="The coordinator " * 400, max_tokens=2000)
    cluster_host.drain(TINY)
    job.refresh_from_db()
    assert job.status == JobStatus.FAILED
    assert job.error_code == "INPUT_TOO_LONG"
    assert job.error_message
    assert not FailedAttempt.objects.exists(), "the platform's engine refusing a request is not the host's failure"


def test_an_engine_fault_fails_the_attempt_and_requeues(cluster_host, client_api, monkeypatch):
    def broken(batch):
        raise RuntimeError("kernel exploded")

    monkeypatch.setattr(engine.Generation, "step", broken)
    job = submit(client_api.user)
    cluster_host.drain(TINY)
    job.refresh_from_db()
    assert job.status == JobStatus.QUEUED
    assert job.error_code == "INFERENCE_FAILED"
    assert "kernel exploded" in job.error_message
    assert FailedAttempt.objects.get().miner == cluster_host.miner
    assert cluster_host._inflight == {}


def test_stopping_the_host_hands_a_running_batch_back_to_the_queue(cluster_host, client_api, monkeypatch):
    watch_steps(monkeypatch, before=lambda batch, n: n == 2 and cluster_host.stop())
    job = submit(client_api.user, max_tokens=500)
    cluster_host.drain(TINY)
    job.refresh_from_db()
    assert job.status == JobStatus.QUEUED
    assert job.error_code == "MINER_SHUTDOWN"
    assert not FailedAttempt.objects.exists()


def test_heartbeat_extends_only_the_leases_this_process_runs(cluster_host, client_api):
    from django.utils import timezone

    running_here, orphan = submit(client_api.user), submit(client_api.user)
    claimed = job_claim(miner=cluster_host.miner, limit=2, models=[TINY])
    Job.objects.filter(pk__in=[running_here.pk, orphan.pk]).update(lease_expires_at=timezone.now())
    cluster_host._inflight = {str(running_here.pk): claimed[0]}
    assert cluster_host.heartbeat() == 1
    assert Job.objects.get(pk=running_here.pk).lease_expires_at > Job.objects.get(pk=orphan.pk).lease_expires_at


def test_streamed_tokens_reach_the_jobs_group_in_order_before_the_final_status(
    cluster_host, client_api, django_capture_on_commit_callbacks
):
    job = submit(client_api.user, max_tokens=12)
    layer = get_channel_layer()
    channel = async_to_sync(layer.new_channel)()
    async_to_sync(layer.group_add)(job_group(job.pk), channel)
    with django_capture_on_commit_callbacks(execute=True):
        cluster_host.drain(TINY)
    events.flush()

    async def receive():
        return await asyncio.wait_for(layer.receive(channel), timeout=10)

    received = []
    while True:
        message = async_to_sync(receive)()
        received.append(message)
        if message["type"] == "job.status" and message["status"] == "completed":
            break
    tokens = [m for m in received if m["type"] == "job.token"]
    job.refresh_from_db()
    assert [m["index"] for m in tokens] == list(range(len(tokens)))
    assert "".join(m["text"] for m in tokens) == job.result["text"]
    assert [m["progress"] for m in tokens] == sorted(m["progress"] for m in tokens)
    assert received[-1]["result"]["text"] == job.result["text"]


def test_a_submission_wakes_the_workers_on_the_models_queue(
    cluster_host, client_api, django_capture_on_commit_callbacks
):
    broker = dramatiq.get_broker()
    broker.declare_queue(worker_queue(TINY))
    broker.flush(worker_queue(TINY))
    with django_capture_on_commit_callbacks(execute=True):
        submit(client_api.user)
    assert broker.queues[worker_queue(TINY)].qsize() == 1


def test_jobs_for_models_no_cluster_worker_serves_send_no_wakeup(
    tiny_model, client_api, django_capture_on_commit_callbacks
):
    broker = dramatiq.get_broker()
    broker.declare_queue(worker_queue(TINY))
    broker.flush(worker_queue(TINY))
    with django_capture_on_commit_callbacks(execute=True):
        submit(client_api.user)
    assert broker.queues[worker_queue(TINY)].qsize() == 0


# SQLite's in-memory test database locks whole tables between threads; the embedded server's
# file database does not, and CI runs this on PostgreSQL.
@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_embedded_workers_answer_a_submitted_job(tiny_model_dir, settings, tmp_path, make_api):
    from aitbc_site.scheduler import start_workers
    from catalog.models import CatalogModel
    from inference.worker import stop_host

    CatalogModel.objects.create(
        name=TINY, task="text-generation", source_kind="directory", source=str(tiny_model_dir), max_tokens=256
    )
    settings.INFERENCE_MODELS = [TINY]
    settings.MODEL_CACHE_DIR = tmp_path
    api = make_api("client", "embedded-user")
    worker, scheduler = start_workers()
    try:
        response = api.post("/v1/jobs", {"prompt": "The coordinator", "model": TINY}, format="json")
        job_id = response.json()["job_id"]
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            status = api.get(f"/v1/jobs/{job_id}").json()["status"]
            if status == "completed":
                break
            time.sleep(0.1)
        assert status == "completed"
        assert isinstance(api.get(f"/v1/jobs/{job_id}/result").json()["result"]["text"], str)
    finally:
        scheduler.shutdown(wait=False)
        worker.stop()
        stop_host()


def test_late_result_of_a_superseded_attempt_is_rejected(cluster_host, client_api):
    from core.errors import Conflict
    from jobs.services import job_requeue

    job = submit(client_api.user)
    first = job_claim(miner=cluster_host.miner, limit=1, models=[TINY])[0]
    job_requeue(job_id=job.pk)
    cluster_host.drain(TINY)
    with pytest.raises(Conflict):
        job_complete(job_id=job.pk, miner=cluster_host.miner, result={"text": "late"}, lease_token=first.lease_token)
    job.refresh_from_db()
    assert job.result["text"] != "late"
    assert job.attempt == 2


def start_listening_host(model_dir, settings, tmp_path, miner_id):
    """A host serving the tiny model as its catalog entry, listening for its announcements."""
    from catalog.models import CatalogModel
    from inference.worker import ClusterHost

    CatalogModel.objects.create(name=TINY, task="text-generation", source_kind="directory", source=str(model_dir))
    settings.MODEL_CACHE_DIR = tmp_path
    host = ClusterHost([TINY], miner_id=miner_id, batch_size=4)
    host.start()
    return host


def status_once(job_id, reached, seconds: float) -> str:
    """The job's status once ``reached(status)`` holds, or as it is after ``seconds``."""
    deadline = time.monotonic() + seconds
    while not reached(status := Job.objects.get(pk=job_id).status) and time.monotonic() < deadline:
        time.sleep(0.02)
    return status


@pytest.mark.django_db(transaction=True)
def test_a_host_runs_a_committed_job_as_soon_as_it_is_announced(tiny_model_dir, settings, tmp_path, make_api):
    host = start_listening_host(tiny_model_dir, settings, tmp_path, "listening-host")
    try:
        job = submit(make_api("client", "eager").user)
        assert status_once(job.pk, lambda status: status == JobStatus.COMPLETED, 20) == JobStatus.COMPLETED
    finally:
        host.stop()


@pytest.mark.django_db(transaction=True)
def test_a_host_below_full_reputation_runs_a_job_once_its_head_start_has_passed(
    tiny_model_dir, settings, tmp_path, make_api
):
    # Woken by the job's announcement before its head start passed, the drain claimed nothing and
    # the job waited for the next announcement or housekeeping's re-send.
    settings.MATCHING_REPUTATION_HEADSTART_SECONDS = 0.6
    host = start_listening_host(tiny_model_dir, settings, tmp_path, "reputable-enough")
    try:
        # Stored by housekeeping after the host registered: a head start of 0.3 s.
        Miner.objects.filter(pk=host.miner.pk).update(reputation_score=0.5)
        job = submit(make_api("client", "patient").user)
        assert status_once(job.pk, lambda status: status != JobStatus.QUEUED, 5) != JobStatus.QUEUED
        job.refresh_from_db()
        assert 0.3 <= (job.started_at - job.created_at).total_seconds() < 2
        # Ended before the host stops: a job still being settled would hold rows the flush truncates.
        assert status_once(job.pk, lambda status: status == JobStatus.COMPLETED, 20) == JobStatus.COMPLETED
    finally:
        host.stop()
