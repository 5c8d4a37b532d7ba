"""Pinned jobs, minimum reputations, verdicts on answers and the suspensions they bring. The claim
tests run on whichever database the suite runs on (PostgreSQL's ``jobs_claim``, SQLite's ORM)."""

import re

import pytest
from django.urls import reverse
from django.utils import timezone

from accounts.services import user_get_or_create
from core.models import StaffAction
from jobs.models import Verdict, VerdictKind
from jobs.selectors import claimable_jobs, miner_reputation, miners_able_to_run
from jobs.services import job_claim, job_complete, job_submit
from jobs.verification import miners_refresh_reputation, verdict_record
from miners.capabilities import Capabilities
from miners.models import Miner
from miners.services import miner_lift_suspension, miner_register

MODEL = "llama3.2"

pytestmark = pytest.mark.django_db


def register(miner_id: str, owner: str = "owner") -> Miner:
    miner, _ = miner_register(
        owner=user_get_or_create(username=owner),
        miner_id=miner_id,
        capabilities=Capabilities(models=(MODEL,), max_concurrent_jobs=100),
    )
    return miner


def submit(**extra):
    client = user_get_or_create(username="client")
    return job_submit(client=client, model=MODEL, payload={"model": MODEL, "prompt": "hi"}, **extra).job


def answered(miner: Miner, text: str = "ok"):
    """A job ``miner`` claimed and completed with ``text``."""
    job = submit(pinned_miner=miner)
    (claimed,) = job_claim(miner=miner, job_id=job.pk)
    job_complete(job_id=job.pk, miner=miner, result={"text": text}, lease_token=claimed.lease_token)
    job.refresh_from_db()
    return job


def test_a_pinned_job_is_offered_to_its_miner_only():
    chosen, other = register("chosen"), register("other", owner="someone-else")
    job = submit(pinned_miner=chosen)

    assert not claimable_jobs(miner=other, now=timezone.now()).exists()
    assert list(miners_able_to_run(job=job)) == [chosen]
    assert job_claim(miner=other) == []
    assert [claimed.pk for claimed in job_claim(miner=chosen)] == [job.pk]


def test_a_job_asking_for_a_reputation_is_refused_to_miners_below_it_or_without_one():
    newcomer, proven = register("newcomer"), register("proven")
    Miner.objects.filter(pk=proven.pk).update(reputation_score=0.95)
    proven.refresh_from_db()
    job = submit(min_reputation=0.9)

    assert list(miners_able_to_run(job=job)) == [proven]
    assert job_claim(miner=newcomer) == []
    Miner.objects.filter(pk=proven.pk).update(reputation_score=0.85)
    assert job_claim(miner=proven) == []
    Miner.objects.filter(pk=proven.pk).update(reputation_score=0.9)
    assert [claimed.pk for claimed in job_claim(miner=proven)] == [job.pk]


def test_an_outvoted_answer_lowers_the_miners_reputation():
    liar = register("liar")
    honest_answers = [answered(liar) for _ in range(3)]
    assert miner_reputation(miner=liar) == 1.0

    verdict_record(attempt=honest_answers[0], kind=VerdictKind.AGREED)
    verdict_record(attempt=honest_answers[1], kind=VerdictKind.OUTVOTED)

    assert miner_reputation(miner=liar) == pytest.approx(2 / 3)
    liar.refresh_from_db()
    assert liar.reputation_score == pytest.approx(2 / 3)
    assert liar.suspended_at is None


def test_a_verdict_is_recorded_once_per_answer():
    miner = register("rig")
    job = answered(miner)

    first = verdict_record(attempt=job, kind=VerdictKind.CANARY_FAILED)
    again = verdict_record(attempt=job, kind=VerdictKind.CANARY_PASSED)

    assert again.pk == first.pk and again.kind == VerdictKind.CANARY_FAILED
    assert Verdict.objects.count() == 1


def test_wrong_answers_past_the_threshold_suspend_the_miner_until_staff_lift_it(settings):
    settings.VERIFICATION_SUSPEND_AFTER_WRONG_ANSWERS = 2
    miner = register("rig")
    first, second, third = (answered(miner) for _ in range(3))

    verdict_record(attempt=first, kind=VerdictKind.CANARY_FAILED)
    miner.refresh_from_db()
    assert miner.suspended_at is None
    verdict_record(attempt=second, kind=VerdictKind.OUTVOTED)
    miner.refresh_from_db()
    assert miner.suspended_at is not None
    assert "2 wrong answers" in miner.suspended_reason and str(second.pk) in miner.suspended_reason

    waiting = submit()
    assert job_claim(miner=miner) == []
    assert not miners_able_to_run(job=waiting).filter(pk=miner.pk).exists()

    miner_lift_suspension(miner=miner, actor=user_get_or_create(username="staff"))
    assert [claimed.pk for claimed in job_claim(miner=miner)] == [waiting.pk]
    # The wrong answers before the lift no longer count: one more is not yet a suspension.
    verdict_record(attempt=third, kind=VerdictKind.CANARY_FAILED)
    miner.refresh_from_db()
    assert miner.suspended_at is None


def test_housekeeping_stores_reputations_for_matching():
    miner = register("rig")
    answered(miner)
    assert Miner.objects.get(pk=miner.pk).reputation_score is None

    miners_refresh_reputation()

    assert Miner.objects.get(pk=miner.pk).reputation_score == 1.0


def test_staff_see_why_a_miner_is_suspended_and_lift_it(admin_client, settings):
    settings.VERIFICATION_SUSPEND_AFTER_WRONG_ANSWERS = 1
    miner = register("rig")
    verdict_record(attempt=answered(miner), kind=VerdictKind.CANARY_FAILED)
    miner.refresh_from_db()

    page = admin_client.get(reverse("admin:miners_miner_change", args=[miner.pk]))
    assert page.status_code == 200
    assert miner.suspended_reason in page.content.decode()
    assert "canary answered wrong" in page.content.decode().lower()
    listed = admin_client.get(reverse("admin:miners_miner_changelist") + "?suspended=yes")
    assert "rig" in listed.content.decode()

    admin_client.post(
        reverse("admin:miners_miner_changelist"), {"action": "lift_suspension", "_selected_action": [miner.pk]}
    )

    miner.refresh_from_db()
    assert miner.suspended_at is None and miner.suspension_lifted_at is not None
    action = StaffAction.objects.get(action="lift suspension miner")
    assert "failed canary" in action.summary


def test_staff_list_canary_outcomes(admin_client):
    miner = register("rig")
    verdict_record(attempt=answered(miner), kind=VerdictKind.CANARY_PASSED)
    verdict_record(attempt=answered(miner), kind=VerdictKind.CANARY_FAILED)

    failed = admin_client.get(reverse("admin:jobs_verdict_changelist") + "?kind__exact=canary_failed")

    assert failed.status_code == 200
    rows = re.findall(r'class="field-kind">([^<]+)<', failed.content.decode())
    assert rows == ["Canary answered wrong"]
