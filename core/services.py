"""The staff console's audit log: every admin action records itself here, whichever app's admin it is."""

from collections.abc import Iterable
from decimal import Decimal

from django.contrib.admin.models import CHANGE, LogEntry
from django.db import models, transaction

from core.models import StaffAction


@transaction.atomic
def staff_action_record(
    *,
    actor,
    action: str,
    targets: Iterable[models.Model],
    summary: str,
    reason: str = "",
    amount: Decimal | None = None,
) -> StaffAction:
    """Record what ``actor`` did to ``targets``: a ``StaffAction`` and, for each object, a ``LogEntry``
    (so the admin's "Recent actions" and the object's history show it)."""
    targets = list(targets)
    record = StaffAction.objects.create(
        actor=actor,
        action=action,
        reason=reason[:300],
        summary=summary,
        targets=[{"model": target._meta.label_lower, "pk": str(target.pk), "repr": str(target)} for target in targets],
        amount=amount,
    )
    message = f"{action[:1].upper()}{action[1:]}: {summary}" + (f" Reason: {reason}" if reason else "")
    LogEntry.objects.log_actions(user_id=actor.pk, queryset=targets, action_flag=CHANGE, change_message=message)
    return record
