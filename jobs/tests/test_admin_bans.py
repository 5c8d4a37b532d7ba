"""Bans and maintenance from the console: they go through a confirmation with a reason, are
recorded in the audit log and the objects' history, and stick: the miner is told why (403)."""

from django.contrib.admin.models import LogEntry
from django.urls import reverse

from core.models import StaffAction
from jobs.models import Job, JobStatus
from miners.models import Miner, MinerBan, MinerBanKind, MinerStatus
from tests.admin_responses import messages_of

MINERS = reverse("admin:miners_miner_changelist")
BANS = reverse("admin:miners_minerban_changelist")
REASON = "Returned forged results"


def act(admin_client, action, miners, **confirmation):
    return admin_client.post(
        MINERS, {"action": action, "_selected_action": [m.pk for m in miners], **confirmation}, follow=True
    )


def poll(api):
    return api.post("/v1/miners/poll", {"max_wait_seconds": 0}, format="json")


def heartbeat(api):
    return api.post("/v1/miners/heartbeat", {}, format="json")


def registered(api, register_miner) -> Miner:
    register_miner(api)
    return Miner.objects.get(miner_id=api._credentials["HTTP_X_MINER_ID"])


def test_ban_first_shows_what_will_change_and_asks_for_a_reason(admin_client, miner_api, register_miner):
    miner = registered(miner_api, register_miner)

    page = act(admin_client, "ban", [miner])

    text = page.content.decode()
    assert "Miner miner-1 (gpu-owner, online) is banned" in text and 'name="reason"' in text
    assert Miner.objects.get(pk=miner.pk).banned_at is None
    unexplained = act(admin_client, "ban", [miner], apply="1", reason="")
    assert "This field is required." in unexplained.content.decode()
    assert Miner.objects.get(pk=miner.pk).banned_at is None


def test_a_confirmed_ban_is_in_the_audit_log_and_the_miners_history(
    admin_client, admin_user, miner_api, register_miner
):
    miner = registered(miner_api, register_miner)

    act(admin_client, "ban", [miner], apply="1", reason=REASON)

    record = StaffAction.objects.get()
    assert (record.actor, record.action, record.reason) == (admin_user, "ban miner", REASON)
    assert "miner-1" in record.summary
    history = admin_client.get(reverse("admin:miners_miner_history", args=[miner.pk])).content.decode()
    assert REASON in history
    index = admin_client.get(reverse("admin:index")).content.decode()
    assert "miner-1" in index.split("Recent actions")[1]
    assert LogEntry.objects.get().object_id == str(miner.pk)


def test_an_owner_ban_refuses_a_new_miner_id_of_the_same_owner(admin_client, make_api, register_miner):
    first = make_api("miner", "mallory", miner_id="rig-1")
    miner = registered(first, register_miner)

    response = act(admin_client, "ban_owner", [miner], apply="1", reason=REASON)

    assert "1 owner(s) banned; 1 miner(s) banned; 0 job(s) returned to the queue." in messages_of(response)
    first.credentials(HTTP_X_API_KEY=first.raw_key, HTTP_X_MINER_ID="rig-2")
    again = first.post("/v1/miners/register", {"capabilities": {"models": ["llama3.2"]}}, format="json")
    assert (again.status_code, again.json()["error_code"]) == (403, "MINER_BANNED")
    assert REASON in again.json()["detail"]
    assert not Miner.objects.filter(miner_id="rig-2").exists()
    assert StaffAction.objects.get().action == "ban owner"


def test_lifting_an_owner_ban_lets_new_miner_ids_register(admin_client, make_api, register_miner):
    api = make_api("miner", "mallory", miner_id="rig-1")
    act(admin_client, "ban_owner", [registered(api, register_miner)], apply="1", reason=REASON)
    ban = MinerBan.objects.get()

    admin_client.post(BANS, {"action": "lift", "_selected_action": [ban.pk]})

    api.credentials(HTTP_X_API_KEY=api.raw_key, HTTP_X_MINER_ID="rig-2")
    assert api.post("/v1/miners/register", {"capabilities": {"models": ["llama3.2"]}}, format="json").status_code == 200


def test_an_address_range_ban_bans_miners_registered_from_it_and_refuses_new_ones(
    admin_client, make_api, register_miner
):
    inside = make_api("miner", "eve", miner_id="rig-in")
    inside.defaults["REMOTE_ADDR"] = "203.0.113.7"
    outside = make_api("miner", "olga", miner_id="rig-out")
    miner_inside, miner_outside = registered(inside, register_miner), registered(outside, register_miner)

    added = admin_client.post(
        reverse("admin:miners_minerban_add"),
        {"kind": MinerBanKind.NETWORK, "network": "203.0.113.0/24", "reason": REASON},
        follow=True,
    )

    assert added.status_code == 200
    assert MinerBan.objects.get().network == "203.0.113.0/24"
    assert Miner.objects.get(pk=miner_inside.pk).banned_at is not None
    assert Miner.objects.get(pk=miner_outside.pk).banned_at is None
    newcomer = make_api("miner", "trent", miner_id="rig-new")
    newcomer.defaults["REMOTE_ADDR"] = "203.0.113.200"
    refused = newcomer.post("/v1/miners/register", {"capabilities": {"models": ["llama3.2"]}}, format="json")
    assert (refused.status_code, refused.json()["error_code"]) == (403, "MINER_BANNED")
    assert StaffAction.objects.get().action == "ban network"


def test_an_address_range_ban_refuses_what_is_not_an_address(admin_client):
    page = admin_client.post(
        reverse("admin:miners_minerban_add"), {"kind": MinerBanKind.NETWORK, "network": "nowhere", "reason": REASON}
    )
    assert "is not an address or an address range" in page.content.decode()
    assert not MinerBan.objects.exists()


def test_maintenance_sticks_through_heartbeats_until_staff_end_it(
    admin_client, miner_api, register_miner, client_api, submit_job
):
    miner = registered(miner_api, register_miner)
    job = submit_job(client_api)
    assert poll(miner_api).json()["job_id"] == job["job_id"]

    response = act(admin_client, "maintenance", [miner], apply="1", reason="Replacing a GPU")

    assert "1 miner(s) in maintenance; 1 job(s) returned to the queue." in messages_of(response)
    assert Job.objects.get(pk=job["job_id"]).status == JobStatus.QUEUED
    refused = heartbeat(miner_api)
    assert (refused.status_code, refused.json()["error_code"]) == (403, "MINER_MAINTENANCE")
    assert "Replacing a GPU" in refused.json()["detail"]
    assert poll(miner_api).status_code == 403
    assert Miner.objects.get(pk=miner.pk).status == MinerStatus.OFFLINE

    act(admin_client, "end_maintenance", [miner])

    assert heartbeat(miner_api).status_code == 200
    assert Miner.objects.get(pk=miner.pk).status == MinerStatus.ONLINE
    assert [r.action for r in StaffAction.objects.order_by("created_at")] == [
        "maintenance miner",
        "end maintenance miner",
    ]


def test_miners_cannot_be_deleted_from_the_console(admin_client, miner_api, register_miner):
    miner = registered(miner_api, register_miner)
    assert admin_client.get(reverse("admin:miners_miner_delete", args=[miner.pk])).status_code == 403
    page = admin_client.get(reverse("admin:miners_miner_change", args=[miner.pk])).content.decode()
    assert "session_token_hash" not in page and miner.session_token_hash not in page
