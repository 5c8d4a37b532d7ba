"""Verified results: verdicts on miners' answers, and what they do to the miners.

A verdict (``jobs.models.Verdict``) says what the platform found about one answer: it agreed
with the other attempts of a verified job, was outvoted by them, or answered a canary right or
wrong. Wrong answers lower the miner's reputation (``jobs.selectors.with_reputation``) and,
past ``VERIFICATION_SUSPEND_AFTER_WRONG_ANSWERS`` in the reputation window, suspend it
(``miners.services.miner_suspend``) until staff lift the suspension.
"""

from django.conf import settings
from django.db import transaction

from jobs.models import Job, Verdict, VerdictKind
from jobs.selectors import miner_reputation, with_reputation, wrong_answers_counting
from miners import services as miner_services
from miners.models import Miner, MinerStatus


@transaction.atomic
def verdict_record(*, attempt: Job, kind: str) -> Verdict:
    """Record ``kind`` (a ``VerdictKind``) on the answer of ``attempt``, a job its miner completed;
    refresh the miner's reputation, and suspend the miner when the verdict is its wrong answer
    too many. Once per job: a second verdict on it returns the first."""
    verdict, created = Verdict.objects.get_or_create(job=attempt, defaults={"miner_id": attempt.miner_id, "kind": kind})
    if created:
        miner = Miner.objects.get(pk=attempt.miner_id)
        if verdict.wrong:
            _suspend_if_due(miner, last=verdict)
        miner_services.miners_set_reputation(reputations={miner.pk: miner_reputation(miner=miner)})
    return verdict


def _suspend_if_due(miner: Miner, *, last: Verdict) -> None:
    if miner.suspended_at is not None:
        return
    wrong = wrong_answers_counting(miner=miner)
    if wrong >= settings.VERIFICATION_SUSPEND_AFTER_WRONG_ANSWERS:
        what = "failed canary" if last.kind == VerdictKind.CANARY_FAILED else "outvoted answer"
        miner_services.miner_suspend(
            miner=miner,
            reason=f"{wrong} wrong answers (outvoted or failed canaries) in the reputation window; "
            f"the last, a {what}, on job {last.job_id}.",
        )


def miners_refresh_reputation() -> int:
    """Store every registered miner's reputation where matching reads it (housekeeping: completions
    and failures move it between verdicts). Returns how many miners were read."""
    miners = with_reputation(Miner.objects.exclude(status=MinerStatus.DEREGISTERED))
    reputations = dict(miners.values_list("pk", "reputation"))
    miner_services.miners_set_reputation(reputations=reputations)
    return len(reputations)
