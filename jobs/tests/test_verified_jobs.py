"""Verified jobs (``verification`` on ``POST /v1/jobs``): k attempts on miners of distinct owners,
the answer a majority agree on, the liars paid nothing; canaries; no consensus."""

import json
import re
from datetime import timedelta
from decimal import Decimal
from functools import partial

import pytest
from django.db import connections
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from accounts.services import user_get_or_create
from core.errors import Conflict
from jobs import verification
from jobs.models import Job, JobStatus, Verdict, VerdictKind
from jobs.selectors import miner_reputation
from jobs.services import job_claim, job_complete, job_fail, job_submit, jobs_expire_queued
from jobs.verification import verifications_decide_stalled, verifications_end_past_ttl
from miners.capabilities import Capabilities
from miners.models import Miner
from miners.services import miner_register
from payments.models import Payment, PaymentStatus, Wallet
from payments.services import treasury_mint, wallet_open
from tests.threads import run_at_once

MODEL = "llama3.2"
PROMPT = {"type": "inference", "model": MODEL, "prompt": "What is the capital of France?"}
TRUTH_TEXT = {"text": "Paris."}


@pytest.fixture
def client_api(make_api):
    return make_api("client", "alice")


def miner_api(make_api, miner_id: str, owner: str):
    api = make_api("miner", owner, miner_id=miner_id)
    registered = api.post("/v1/miners/register", {"capabilities": {"models": [MODEL]}, "concurrency": 1}, format="json")
    assert registered.status_code in (200, 201), registered.content
    return api


def poll(api) -> dict:
    response = api.post("/v1/miners/poll", {"max_wait_seconds": 0}, format="json")
    assert response.status_code == 200, response.content
    return response.json()


def answer(api, job: dict, text: str):
    return api.post(
        f"/v1/miners/{job['job_id']}/result",
        {"result": {"text": text}, "metrics": {"units": 5}, "lease_token": job["lease_token"]},
        format="json",
    )


def balance(username: str) -> Decimal:
    return Wallet.objects.get(user__username=username).balance


@pytest.mark.django_db
def test_redundancy_3_with_one_liar_agrees_without_it_and_pays_the_liar_nothing(client_api, make_api):
    honest_1 = miner_api(make_api, "honest-1", "owner-1")
    honest_2 = miner_api(make_api, "honest-2", "owner-2")
    liar = miner_api(make_api, "liar", "owner-3")
    owners_before = {name: balance(name) for name in ("owner-1", "owner-2", "owner-3")}
    client_before = balance("alice")

    submitted = client_api.post(
        "/v1/jobs",
        {"payload": PROMPT, "payment_amount": "2", "verification": {"redundancy": 3, "agreement": "exact"}},
        format="json",
    )
    assert submitted.status_code == 201, submitted.content
    job_id = submitted.json()["job_id"]
    assert submitted.json()["status"] == "running"
    assert submitted.json()["price"] == "6.00000000"
    assert submitted.json()["verification"] == {"redundancy": 3, "agreement": "exact", "threshold": None}
    assert submitted.json()["payment_status"] == "escrowed" and submitted.json()["amount_charged"] is None
    assert balance("alice") == client_before - 6

    claims = {name: poll(api) for name, api in (("liar", liar), ("honest-1", honest_1), ("honest-2", honest_2))}
    assert len({claim["job_id"] for claim in claims.values()}) == 3
    assert all(claim["payload"]["prompt"] == PROMPT["prompt"] for claim in claims.values())
    assert answer(liar, claims["liar"], "The capital of France is Berlin.").status_code == 200
    assert answer(honest_1, claims["honest-1"], "Paris.").status_code == 200
    assert client_api.get(f"/v1/jobs/{job_id}").json()["status"] == "running"
    assert answer(honest_2, claims["honest-2"], "  Paris. ").status_code == 200

    view = client_api.get(f"/v1/jobs/{job_id}").json()
    assert view["status"] == "completed" and view["result"] == {"text": "Paris."}
    # What the client paid is what its agreeing attempts were paid.
    assert view["payment_status"] == "released" and view["amount_charged"] == "4.00000000"
    receipt = client_api.get(f"/v1/jobs/{job_id}/receipt").json()
    assert receipt["job_id"] == job_id
    assert receipt["providers"] == ["honest-1", "honest-2"]
    assert receipt["price"] == "4"
    assert receipt["metadata"]["verification"]["outvoted"] == ["liar"]
    listed = client_api.get(f"/v1/jobs/{job_id}/receipts").json()["items"]
    assert len(listed) == 4
    assert {r["provider"] for r in listed} == {"honest-1", "honest-2", "liar"}

    liar_attempt = Job.objects.get(pk=claims["liar"]["job_id"])
    assert liar_attempt.payment.status == PaymentStatus.REFUNDED and liar_attempt.payment.amount_paid == 0
    assert balance("owner-3") == owners_before["owner-3"]
    assert balance("owner-1") > owners_before["owner-1"] and balance("owner-2") > owners_before["owner-2"]
    assert balance("alice") == client_before - 4
    assert Verdict.objects.get(job=liar_attempt).kind == VerdictKind.OUTVOTED
    assert miner_reputation(miner=Miner.objects.get(miner_id="liar")) == 0
    assert miner_reputation(miner=Miner.objects.get(miner_id="honest-1")) == 1


@pytest.mark.django_db
def test_attempts_still_running_at_consensus_are_cancelled_and_their_late_results_refused(client_api, make_api):
    apis = [miner_api(make_api, f"rig-{i}", f"owner-{i}") for i in range(3)]
    job_id = client_api.post(
        "/v1/jobs", {"payload": PROMPT, "payment_amount": "1", "verification": {"redundancy": 3}}, format="json"
    ).json()["job_id"]
    claims = [poll(api) for api in apis]

    answer(apis[0], claims[0], "Paris.")
    answer(apis[1], claims[1], "Paris.")
    late = answer(apis[2], claims[2], "Paris.")

    assert late.status_code == 409 and late.json()["error_code"] == "LEASE_NOT_HELD"
    straggler = Job.objects.get(pk=claims[2]["job_id"])
    assert straggler.status == JobStatus.CANCELLED and straggler.payment.status == PaymentStatus.REFUNDED
    assert client_api.get(f"/v1/jobs/{job_id}").json()["status"] == "completed"
    assert not Verdict.objects.filter(job=straggler).exists()


@pytest.mark.django_db
def test_one_owners_miners_never_take_two_attempts_of_one_job(client_api, make_api):
    first = miner_api(make_api, "farm-1", "farm")
    second = miner_api(make_api, "farm-2", "farm")
    other = miner_api(make_api, "elsewhere", "someone")
    client_api.post("/v1/jobs", {"payload": PROMPT, "verification": {"redundancy": 2}}, format="json")

    poll(first)
    assert second.post("/v1/miners/poll", {"max_wait_seconds": 0}, format="json").status_code == 204
    poll(other)


@pytest.mark.django_db
def test_no_consensus_fails_the_job_and_refunds_everything(client_api, make_api):
    apis = [miner_api(make_api, f"rig-{i}", f"owner-{i}") for i in range(3)]
    before = balance("alice")
    job_id = client_api.post(
        "/v1/jobs", {"payload": PROMPT, "payment_amount": "1", "verification": {"redundancy": 3}}, format="json"
    ).json()["job_id"]

    for index, (api, claim) in enumerate(zip(apis, [poll(api) for api in apis], strict=True)):
        answer(api, claim, f"answer number {index}")

    view = client_api.get(f"/v1/jobs/{job_id}").json()
    assert view["status"] == "failed" and view["error_code"] == "NO_CONSENSUS"
    assert view["payment_status"] == "refunded" and view["amount_charged"] is None
    assert balance("alice") == before
    payments = Payment.objects.filter(job__parent_id=job_id)
    assert sorted(payments.values_list("status", flat=True)) == [PaymentStatus.REFUNDED] * 3
    assert not Verdict.objects.exists()


@pytest.mark.django_db
def test_no_consensus_before_the_ttl_fails_the_job_and_refunds_everything(client_api, make_api):
    rig = miner_api(make_api, "rig-0", "owner-0")
    before = balance("alice")
    job_id = client_api.post(
        "/v1/jobs",
        {"payload": PROMPT, "payment_amount": "1", "ttl_seconds": 60, "verification": {"redundancy": 2}},
        format="json",
    ).json()["job_id"]
    answer(rig, poll(rig), "Paris.")
    later = Job.objects.get(pk=job_id).expires_at

    jobs_expire_queued(now=later)
    verifications_end_past_ttl(now=later)

    view = client_api.get(f"/v1/jobs/{job_id}").json()
    assert view["status"] == "failed" and view["error_code"] == "NO_CONSENSUS"
    assert view["payment_status"] == "refunded" and view["amount_charged"] is None
    assert balance("alice") == before


@pytest.mark.django_db
def test_cancelling_a_verified_job_cancels_and_refunds_its_attempts(client_api, make_api):
    rig = miner_api(make_api, "rig-0", "owner-0")
    before = balance("alice")
    job_id = client_api.post(
        "/v1/jobs", {"payload": PROMPT, "payment_amount": "1", "verification": {"redundancy": 2}}, format="json"
    ).json()["job_id"]
    claim = poll(rig)

    assert client_api.post(f"/v1/jobs/{job_id}/cancel").json()["status"] == "cancelled"

    assert answer(rig, claim, "Paris.").status_code == 409
    assert set(Job.objects.filter(parent_id=job_id).values_list("status", flat=True)) == {JobStatus.CANCELLED}
    assert balance("alice") == before


@pytest.mark.django_db
def test_semantic_agreement_compares_embeddings_by_cosine(client_api, make_api):
    apis = [miner_api(make_api, f"rig-{i}", f"owner-{i}") for i in range(3)]
    job_id = client_api.post(
        "/v1/jobs",
        {
            "payload": {"type": "embedding", "model": MODEL, "input": ["hello"]},
            "verification": {"redundancy": 3, "agreement": "semantic", "threshold": 0.99},
        },
        format="json",
    ).json()["job_id"]
    vectors = [[0.0, 1.0, 0.0], [1.0, 0.0, 0.0], [0.999, 0.01, 0.0]]
    for api, claim, vector in zip(apis, [poll(api) for api in apis], vectors, strict=True):
        api.post(
            f"/v1/miners/{claim['job_id']}/result",
            {"result": {"embeddings": [vector]}, "lease_token": claim["lease_token"]},
            format="json",
        )

    job = Job.objects.get(pk=job_id)
    assert job.status == JobStatus.COMPLETED and job.result == {"embeddings": [vectors[1]]}
    assert Verdict.objects.get(miner__miner_id="rig-0").kind == VerdictKind.OUTVOTED


@pytest.mark.django_db
@pytest.mark.parametrize(
    "verification, field",
    [
        ({"redundancy": 1}, "redundancy"),
        ({"redundancy": 99}, "redundancy"),
        ({"redundancy": "3"}, "redundancy"),
        ({"redundancy": True}, "redundancy"),
        ({}, "redundancy"),
        ({"redundancy": 3, "agreement": "fuzzy"}, "agreement"),
        ({"redundancy": 3, "agreement": "semantic", "threshold": 0}, "threshold"),
        ({"redundancy": 3, "agreement": "semantic", "threshold": 1.5}, "threshold"),
        ({"redundancy": 3, "agreement": "semantic", "threshold": "high"}, "threshold"),
        ({"redundancy": 3, "threshold": 0.9}, "threshold"),
        ({"redundancy": 3, "quorum": 2}, "quorum"),
        ("three", "verification"),
        ([3], "verification"),
    ],
)
def test_bad_verification_values_are_refused_with_a_422_naming_the_field(client_api, verification, field):
    response = client_api.post("/v1/jobs", {"payload": PROMPT, "verification": verification}, format="json")

    assert response.status_code == 422, response.content
    body = response.json()
    assert body["error_code"] == "INVALID_VERIFICATION"
    assert field in str(body)
    assert not Job.objects.exists()


@pytest.mark.django_db
def test_a_null_verification_is_an_ordinary_job(client_api):
    response = client_api.post("/v1/jobs", {"payload": PROMPT, "verification": None}, format="json")

    assert response.status_code == 201, response.content
    assert response.json()["verification"] is None
    (job,) = Job.objects.all()
    assert (job.verification, job.status, job.parent_id) == ({}, JobStatus.QUEUED, None)


@pytest.mark.django_db
def test_listing_verified_jobs_reads_their_escrows_at_once(client_api, client):
    def submit_verified(n):
        for _ in range(n):
            body = {"payload": PROMPT, "payment_amount": "1", "verification": {"redundancy": 2}}
            assert client_api.post("/v1/jobs", body, format="json").status_code == 201

    def queries(get):
        # The fewer of two reads: a key's or session's occasional bookkeeping write is not the list's.
        counts = []
        for _ in range(2):
            with CaptureQueriesContext(connections["default"]) as captured:
                response = get()
            assert response.status_code == 200
            counts.append(len(captured.captured_queries))
        return min(counts), response

    client.force_login(user_get_or_create(username="alice"))
    submit_verified(2)
    few, listed = queries(lambda: client_api.get("/v1/jobs"))
    few_page, _ = queries(lambda: client.get("/jobs/"))
    submit_verified(3)
    many, listed = queries(lambda: client_api.get("/v1/jobs"))
    many_page, _ = queries(lambda: client.get("/jobs/"))

    assert (many, many_page) == (few, few_page)
    assert [job["payment_status"] for job in listed.json()["items"]] == ["escrowed"] * 5


@pytest.mark.django_db
def test_a_short_wallet_stores_no_attempt(client_api):
    response = client_api.post(
        "/v1/jobs", {"payload": PROMPT, "payment_amount": "60", "verification": {"redundancy": 2}}, format="json"
    )

    assert response.status_code == 402
    assert not Job.objects.exists()


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_distinct_owners_hold_under_concurrent_claims():
    client = user_get_or_create(username="client")
    farm, other = user_get_or_create(username="farm"), user_get_or_create(username="other")
    capabilities = Capabilities(models=(MODEL,), max_concurrent_jobs=50)
    farm_miners = [miner_register(owner=farm, miner_id=f"farm-{i}", capabilities=capabilities)[0] for i in range(6)]
    miner_register(owner=other, miner_id="other", capabilities=capabilities)
    parents = [
        job_submit(client=client, model=MODEL, payload=PROMPT, verification={"redundancy": 3}).job for _ in range(10)
    ]
    connections.close_all()

    def claim_all(miner):
        while job_claim(miner=miner, limit=5):
            pass

    assert run_at_once([partial(claim_all, miner) for miner in farm_miners]) == []

    for parent in parents:
        claimed = Job.objects.filter(parent=parent, miner__isnull=False)
        assert claimed.count() == 1, "one owner's miners took two attempts of one job"
    assert Job.objects.filter(parent__in=parents, status=JobStatus.QUEUED).count() == 20


@pytest.mark.django_db
def test_a_verified_jobs_attempts_are_not_listed_among_the_clients_jobs(client_api):
    job_id = client_api.post("/v1/jobs", {"payload": PROMPT, "verification": {"redundancy": 2}}, format="json").json()[
        "job_id"
    ]

    listed = client_api.get("/v1/jobs").json()["items"]

    assert [job["job_id"] for job in listed] == [job_id]
    assert Job.objects.filter(parent_id=job_id).count() == 2


def _register(miner_id: str, owner: str, *, in_cluster: bool = False) -> Miner:
    capabilities = Capabilities(models=(MODEL,), max_concurrent_jobs=10)
    return miner_register(
        owner=user_get_or_create(username=owner), miner_id=miner_id, capabilities=capabilities, in_cluster=in_cluster
    )[0]


def _run(miner: Miner, text: str) -> Job:
    """``miner`` claims the next job it is offered and answers ``text``."""
    (job,) = job_claim(miner=miner)
    job_complete(job_id=job.pk, miner=miner, result={"text": text}, lease_token=job.lease_token)
    return job


@pytest.fixture
def canaries(settings):
    settings.VERIFICATION_CANARY_RATE = 1
    settings.VERIFICATION_SUSPEND_AFTER_WRONG_ANSWERS = 2
    return _register("cluster-rig", "cluster", in_cluster=True)


@pytest.mark.django_db
def test_failed_canaries_count_against_a_lying_miner_until_it_is_suspended(canaries):
    liar = _register("liar", "bad-owner")
    client = user_get_or_create(username="client")
    wallet_before = wallet_open(user=client).balance

    for round_number in (1, 2):
        job_submit(client=client, model=MODEL, payload=PROMPT)
        _run(liar, "whatever")  # a real job: a canary follows it, answered first by the platform's engine
        reference = _run(canaries, "4")
        assert reference.parent.verification["canary_miner"] == liar.pk
        probe = _run(liar, "whatever")  # the same kind of job, pinned to the liar
        assert probe.parent_id == reference.parent_id and probe.req_miner_id == liar.pk
        assert set(probe.payload) == set(reference.payload) and "canary" not in str(probe.payload)
        assert Verdict.objects.get(job=probe).kind == VerdictKind.CANARY_FAILED
        assert Job.objects.get(pk=probe.parent_id).error_code == "CANARY_FAILED"
        liar.refresh_from_db()
        assert (liar.suspended_at is not None) is (round_number == 2)

    assert "failed canary" in liar.suspended_reason
    assert miner_reputation(miner=liar) == pytest.approx(2 / 4)
    job_submit(client=client, model=MODEL, payload=PROMPT)
    assert job_claim(miner=liar) == []
    # Canaries cost no real client anything: the client's two free jobs moved nothing.
    assert wallet_open(user=client).balance == wallet_before
    assert {job.client.username for job in Job.objects.filter(parent__verification__has_key="canary_miner")} == {
        "canary"
    }


@pytest.mark.django_db
def test_an_honest_miner_passes_its_canary(canaries):
    honest = _register("honest", "good-owner")
    client = user_get_or_create(username="client")
    job_submit(client=client, model=MODEL, payload=PROMPT)
    _run(honest, "Paris.")
    _run(canaries, "The answer is 4.")

    probe = _run(honest, "The   answer is 4.")

    assert Verdict.objects.get(job=probe).kind == VerdictKind.CANARY_PASSED
    assert Job.objects.get(pk=probe.parent_id).status == JobStatus.COMPLETED
    honest.refresh_from_db()
    assert honest.suspended_at is None and miner_reputation(miner=honest) == 1


@pytest.mark.django_db
def test_no_canary_without_an_in_cluster_worker_to_answer_first(settings):
    settings.VERIFICATION_CANARY_RATE = 1
    rig = _register("rig", "owner")
    job_submit(client=user_get_or_create(username="client"), model=MODEL, payload=PROMPT)
    _run(rig, "Paris.")

    assert not Job.objects.filter(parent__isnull=False).exists()


@pytest.mark.django_db
def test_matching_prefers_reputable_miners_while_a_job_is_young(settings):
    settings.MATCHING_REPUTATION_HEADSTART_SECONDS = 60
    doubtful, trusted = _register("doubtful", "owner-1"), _register("trusted", "owner-2")
    Miner.objects.filter(pk=doubtful.pk).update(reputation_score=0.5)
    Miner.objects.filter(pk=trusted.pk).update(reputation_score=1.0)
    client = user_get_or_create(username="client")
    fresh = job_submit(client=client, model=MODEL, payload=PROMPT).job
    waited = job_submit(client=client, model=MODEL, payload=PROMPT).job
    Job.objects.filter(pk=waited.pk).update(created_at=waited.created_at - timedelta(seconds=31))

    assert [job.pk for job in job_claim(miner=doubtful, limit=5)] == [waited.pk]
    assert [job.pk for job in job_claim(miner=trusted, limit=5)] == [fresh.pk]


@pytest.mark.django_db
def test_the_verified_jobs_page_shows_who_agreed_and_who_was_outvoted(browser, alice):
    rigs = [_register(name, f"owner-{name}") for name in ("liar", "honest-1", "honest-2")]
    parent = job_submit(client=alice, model=MODEL, payload=PROMPT, verification={"redundancy": 3}).job
    for rig, text in zip(rigs, ("Berlin.", "Paris.", "Paris."), strict=True):
        _run(rig, text)

    page = browser.get(f"/jobs/{parent.pk}/").content.decode()
    listed = browser.get("/jobs/").content.decode()

    rows = re.findall(r'<tr class="verdict-(\w+)">\s*<td>([\w-]+)</td>', page)
    assert sorted(rows) == [("agreed", "honest-1"), ("agreed", "honest-2"), ("outvoted", "liar")]
    receipt = json.loads(re.search(r'<script id="receipt-data" type="application/json">(.*?)</script>', page)[1])
    assert receipt["providers"] == ["honest-1", "honest-2"]
    assert f"/jobs/{parent.pk}/" in listed
    assert not any(str(attempt.pk) in listed for attempt in Job.objects.filter(parent=parent))


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_attempts_answering_at_once_decide_their_job_once():
    client = user_get_or_create(username="client")
    wallet_open(user=client)
    rigs = [_register(f"rig-{i}", f"owner-{i}") for i in range(3)]
    parents = [
        job_submit(
            client=client, model=MODEL, payload=PROMPT, payment_amount=Decimal(1), verification={"redundancy": 3}
        ).job
        for _ in range(5)
    ]
    claims = [
        [
            job_claim(miner=rig, job_id=attempt.pk)[0]
            for rig, attempt in zip(rigs, Job.objects.filter(parent=parent).order_by("pk"), strict=True)
        ]
        for parent in parents
    ]
    connections.close_all()

    for claimed in claims:
        answers = [
            partial(job_complete, job_id=attempt.pk, miner=rig, result=TRUTH_TEXT, lease_token=attempt.lease_token)
            for rig, attempt in zip(rigs, claimed, strict=True)
        ]
        # The one after the agreement is refused: its attempt was cancelled.
        assert [error for error in run_at_once(answers) if not isinstance(error, Conflict)] == []

    for parent in parents:
        parent.refresh_from_db()
        assert parent.status == JobStatus.COMPLETED and parent.result == TRUTH_TEXT
        assert parent.receipts.count() == 1
        payments = Payment.objects.filter(job__parent=parent)
        assert sorted(payments.values_list("status", flat=True)) in (
            [PaymentStatus.RELEASED] * 3,
            [PaymentStatus.REFUNDED] + [PaymentStatus.RELEASED] * 2,
        )
        assert (
            Verdict.objects.filter(job__parent=parent).count() == payments.filter(status=PaymentStatus.RELEASED).count()
        )


@pytest.mark.django_db
@pytest.mark.parametrize("value", [-0.1, 1.5, "high"])
def test_a_min_reputation_out_of_range_is_refused(client_api, value):
    response = client_api.post("/v1/jobs", {"payload": PROMPT, "min_reputation": value}, format="json")

    assert response.status_code == 422 and "min_reputation" in str(response.json())


@pytest.mark.django_db
def test_a_min_reputation_is_kept_for_matching(client_api):
    job_id = client_api.post("/v1/jobs", {"payload": PROMPT, "min_reputation": 0.8}, format="json").json()["job_id"]

    assert Job.objects.get(pk=job_id).req_min_reputation == 0.8


@pytest.mark.django_db
def test_a_decision_that_failed_after_the_last_result_is_taken_up_by_housekeeping(monkeypatch):
    miners = [_register(f"rig-{i}", f"owner-{i}") for i in range(2)]
    job = job_submit(client=user_get_or_create(username="alice"), model=MODEL, payload=PROMPT,
                     verification={"redundancy": 2}).job  # fmt: skip
    _run(miners[0], "Paris.")
    (attempt,) = job_claim(miner=miners[1])

    def broken(parent, attempts, *, past_deadline):
        raise RuntimeError("the decision broke")

    with monkeypatch.context() as patched:
        patched.setattr(verification, "_decide_verified", broken)
        with pytest.raises(RuntimeError):
            job_complete(job_id=attempt.pk, miner=miners[1], result={"text": "Paris."}, lease_token=attempt.lease_token)
    assert Job.objects.get(pk=attempt.pk).status == JobStatus.COMPLETED
    assert Job.objects.get(pk=job.pk).status == JobStatus.RUNNING

    assert verifications_decide_stalled() == 1

    job.refresh_from_db()
    assert (job.status, job.result) == (JobStatus.COMPLETED, {"text": "Paris."})
    assert verifications_decide_stalled() == 0


@pytest.mark.django_db
def test_housekeeping_passes_over_a_job_it_judged_until_an_attempt_changes(monkeypatch):
    miners = [_register(f"rig-{i}", f"owner-{i}") for i in range(2)]
    job = job_submit(client=user_get_or_create(username="alice"), model=MODEL, payload=PROMPT,
                     verification={"redundancy": 2}).job  # fmt: skip
    judged = []

    def nothing_to_do(parent, attempts, *, past_deadline):  # a decision that finds nothing to do
        judged.append(parent.pk)

    monkeypatch.setattr(verification, "_decide_verified", nothing_to_do)
    first = _run(miners[0], "Paris.")
    _run(miners[1], "Paris.")
    judged.clear()

    assert verifications_decide_stalled() == 1
    assert verifications_decide_stalled() == 0
    assert verifications_decide_stalled() == 0
    assert judged == [job.pk]

    Job.objects.filter(pk=first.pk).update(updated_at=timezone.now() + timedelta(seconds=1))
    assert verifications_decide_stalled() == 1
    monkeypatch.undo()
    Job.objects.filter(pk=first.pk).update(updated_at=timezone.now() + timedelta(seconds=2))
    assert verifications_decide_stalled() == 1
    assert Job.objects.get(pk=job.pk).status == JobStatus.COMPLETED


@pytest.mark.django_db
def test_housekeeping_leaves_verified_jobs_with_attempts_still_out_to_them():
    miners = [_register(f"rig-{i}", f"owner-{i}") for i in range(2)]
    job = job_submit(client=user_get_or_create(username="alice"), model=MODEL, payload=PROMPT,
                     verification={"redundancy": 2}).job  # fmt: skip
    _run(miners[0], "Paris.")

    assert verifications_decide_stalled() == 0
    assert Job.objects.get(pk=job.pk).status == JobStatus.RUNNING


@pytest.mark.django_db
def test_a_decision_stores_the_reputation_the_selectors_count_and_suspends_a_repeated_liar(settings):
    settings.VERIFICATION_SUSPEND_AFTER_WRONG_ANSWERS = 2
    client = user_get_or_create(username="alice")
    liar, honest_1, honest_2 = (_register(f"rig-{i}", f"owner-{i}") for i in range(3))
    job_submit(client=client, model=MODEL, payload=PROMPT, pinned_miner=liar)
    (failing,) = job_claim(miner=liar)
    job_fail(job_id=failing.pk, miner=liar, error_code="OUT_OF_MEMORY", error_message="oom",
             lease_token=failing.lease_token)  # fmt: skip
    _run(liar, "fine")  # the same job, re-queued

    for round_number in (1, 2):
        job = job_submit(client=client, model=MODEL, payload=PROMPT, payment_amount=1,
                         verification={"redundancy": 3}).job  # fmt: skip
        treasury_mint(wallet=wallet_open(user=client), amount=3)
        for miner, text in ((liar, "Berlin."), (honest_1, "Paris."), (honest_2, "Paris.")):
            _run(miner, text)
        job.refresh_from_db()
        assert (job.status, job.result) == (JobStatus.COMPLETED, {"text": "Paris."})
        liar.refresh_from_db()
        assert liar.reputation_score == pytest.approx(miner_reputation(miner=liar))
        assert (liar.suspended_at is not None) is (round_number == 2)

    assert "2 wrong answers" in liar.suspended_reason and "outvoted answer" in liar.suspended_reason
    # Completed 3 (one fine, two outvoted), failed 1: (3 - 2) / (3 + 1).
    assert liar.reputation_score == pytest.approx(1 / 4)


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_a_decision_with_a_liar_costs_a_fixed_number_of_statements(monkeypatch):
    client = user_get_or_create(username="alice")
    treasury_mint(wallet=wallet_open(user=client), amount=100)
    miners = [_register(f"rig-{i}", f"owner-{i}") for i in range(3)]
    decide, captured = verification.verification_decide, []

    def counted(**kwargs):
        with CaptureQueriesContext(connections["default"]) as queries:
            decided = decide(**kwargs)
        captured.append([query["sql"] for query in queries.captured_queries])
        return decided

    monkeypatch.setattr(verification, "verification_decide", counted)
    for _ in range(2):  # the second, with the payees' wallets in place
        job = job_submit(client=client, model=MODEL, payload=PROMPT, payment_amount=1,
                         verification={"redundancy": 3}).job  # fmt: skip
        attempts = [job_claim(miner=miner)[0] for miner in miners]
        for miner, attempt, text in zip(miners, attempts, ("Berlin.", "Paris.", "Paris."), strict=True):
            job_complete(job_id=attempt.pk, miner=miner, result={"text": text}, lease_token=attempt.lease_token)
        assert Job.objects.get(pk=job.pk).status == JobStatus.COMPLETED

    # BEGIN; lock the job and its attempts, read with their miners and payments; settle the two that
    # agreed and refund the liar (one statement, the payees' wallets found in it); complete the job
    # with its receipt, the verdicts and the liar's reputation (one statement); COMMIT.
    assert len(captured[-1]) == 5, "\n".join(captured[-1])
