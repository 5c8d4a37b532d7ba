from decimal import Decimal

from django.contrib.admin.models import CHANGE, LogEntry
from django.urls import reverse

from core.models import StaffAction
from core.services import staff_action_record
from tests.factories import MinerFactory

AUDIT = reverse("admin:core_staffaction_changelist")


def test_a_staff_action_is_recorded_with_a_log_entry_per_object(admin_user):
    miners = [MinerFactory(miner_id="rig-a"), MinerFactory(miner_id="rig-b")]

    record = staff_action_record(
        actor=admin_user, action="ban miner", targets=miners, summary="2 miner(s) banned.", reason="Fraud", amount=None
    )

    assert StaffAction.objects.get() == record
    assert [target["repr"] for target in record.targets] == ["rig-a", "rig-b"]
    entries = LogEntry.objects.order_by("object_repr")
    assert [(e.object_repr, e.action_flag, e.user_id) for e in entries] == [
        ("rig-a", CHANGE, admin_user.pk),
        ("rig-b", CHANGE, admin_user.pk),
    ]
    assert entries[0].get_change_message() == "Ban miner: 2 miner(s) banned. Reason: Fraud"


def test_the_audit_list_finds_actions_by_reason_and_by_object(admin_client, admin_user):
    miner = MinerFactory(miner_id="rig-7")
    staff_action_record(actor=admin_user, action="ban miner", targets=[miner], summary="1 miner(s) banned: rig-7.")
    staff_action_record(
        actor=admin_user, action="credit wallets", targets=[], summary="Credited.", reason="Ticket 9", amount=Decimal(5)
    )

    by_reason = admin_client.get(AUDIT, {"q": "ticket 9"})
    by_object = admin_client.get(AUDIT, {"q": "rig-7"})

    assert [r.action for r in by_reason.context["cl"].result_list] == ["credit wallets"]
    assert [r.action for r in by_object.context["cl"].result_list] == ["ban miner"]


def test_the_audit_log_cannot_be_edited_or_deleted(admin_client, admin_user):
    record = staff_action_record(actor=admin_user, action="drain miner", targets=[], summary="Nothing.")

    assert admin_client.get(reverse("admin:core_staffaction_add")).status_code == 403
    assert admin_client.post(reverse("admin:core_staffaction_delete", args=[record.pk])).status_code == 403
    assert admin_client.get(reverse("admin:core_staffaction_change", args=[record.pk])).status_code == 200
