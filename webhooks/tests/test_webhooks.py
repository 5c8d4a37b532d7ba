"""Webhooks: endpoints of one's own, signed deliveries of job and payment events, their order,
retries with backoff, and the addresses a delivery may not reach."""

import itertools
import logging
import time
import uuid
from datetime import timedelta
from decimal import Decimal

import dramatiq
import pytest
from django.core.cache import cache
from django.db import connection, transaction
from django.test import Client
from django.test.utils import CaptureQueriesContext
from django.utils import timezone
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from jobs import services as job_services
from jobs.services import jobs_expire_queued
from tests.factories import WalletFactory
from webhooks import services, tasks
from webhooks.models import DeliveryStatus, WebhookDelivery, WebhookEndpoint

pytestmark = pytest.mark.django_db

PUBLIC_URL = "https://hooks.example.com/aitbc"


def create_webhook(api, url, events=("job.completed",)):
    response = api.post("/v1/webhooks", {"url": url, "events": list(events)}, format="json")
    assert response.status_code == 201, response.content
    return response.json()


def complete_paid_job(client_api, miner_api, register_miner, submit_job) -> str:
    WalletFactory(user=client_api.user, minted=Decimal(10))
    register_miner(miner_api)
    job_id = submit_job(client_api, payment_amount="1")["job_id"]
    lease = miner_api.post("/v1/miners/poll", {}, format="json").json()
    done = miner_api.post(
        f"/v1/miners/{job_id}/result", {"result": {"output": "hi"}, "lease_token": lease["lease_token"]}, format="json"
    )
    assert done.status_code == 200, done.content
    return job_id


def deliveries_of(job_id) -> list[WebhookDelivery]:
    return list(WebhookDelivery.objects.filter(job_id=job_id).order_by("id"))


# --- Endpoints ---------------------------------------------------------------------------------


def test_a_webhook_shows_its_secret_once_and_only_to_its_owner(client_api, other_client_api):
    created = create_webhook(client_api, PUBLIC_URL, events=["job.completed", "job.failed", "job.completed"])

    assert created["secret"].startswith("whsec_")
    assert created["events"] == ["job.completed", "job.failed"]
    shown = client_api.get(f"/v1/webhooks/{created['id']}").json()
    assert "secret" not in shown and shown["url"] == PUBLIC_URL
    assert [hook["id"] for hook in client_api.get("/v1/webhooks").json()["items"]] == [created["id"]]
    assert other_client_api.get(f"/v1/webhooks/{created['id']}").status_code == 404
    assert other_client_api.get("/v1/webhooks").json()["items"] == []
    assert client_api.delete(f"/v1/webhooks/{created['id']}").status_code == 204
    assert client_api.get(f"/v1/webhooks/{created['id']}").status_code == 404


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:8000/hook",
        "http://localhost/hook",
        "http://api.localhost/hook",
        "http://10.1.2.3/hook",
        "http://192.168.0.10/hook",
        "http://172.16.5.4/hook",
        "http://169.254.169.254/latest/meta-data",
        "http://[::1]/hook",
        "http://[fe80::1]/hook",
        "http://[::ffff:127.0.0.1]/hook",
        "http://0.0.0.0/hook",
        "ftp://hooks.example.com/hook",
    ],
)
def test_a_private_loopback_or_link_local_address_is_refused(client_api, url):
    response = client_api.post("/v1/webhooks", {"url": url, "events": ["job.completed"]}, format="json")

    assert response.status_code == 422
    assert not WebhookEndpoint.objects.exists()


@pytest.mark.parametrize("url", ["http://hooks.example.com:99999/hook", "https://hooks.example.com:0/hook"])
@pytest.mark.parametrize("allow_private", [False, True])
def test_a_port_out_of_range_is_refused(client_api, settings, url, allow_private):
    settings.WEBHOOKS_ALLOW_PRIVATE = allow_private
    response = client_api.post("/v1/webhooks", {"url": url, "events": ["job.completed"]}, format="json")

    assert response.status_code == 422
    assert response.json()["error_code"] == "WEBHOOK_URL_REFUSED"
    assert not WebhookEndpoint.objects.exists()


def test_a_stored_url_with_a_port_out_of_range_fails_its_attempt(client_api, submit_job, receiver, settings):
    # One accepted before such ports were refused: its attempts fail, they do not raise.
    create_webhook(client_api, receiver.url, events=["job.cancelled"])
    WebhookEndpoint.objects.update(url="http://hooks.example.com:99999/hook")
    job_id = submit_job(client_api, model="llama3")["job_id"]
    client_api.post(f"/v1/jobs/{job_id}/cancel")
    settings.WEBHOOKS_ALLOW_PRIVATE = False
    [delivery] = deliveries_of(job_id)

    assert services.delivery_attempt(message_id=delivery.message_id) == services.RETRY

    delivery.refresh_from_db()
    assert "port" in delivery.last_error


def test_private_addresses_are_allowed_when_the_setting_says_so(client_api, settings):
    settings.WEBHOOKS_ALLOW_PRIVATE = True

    assert create_webhook(client_api, "http://10.1.2.3/hook")["url"] == "http://10.1.2.3/hook"


def test_unknown_events_are_refused(client_api):
    response = client_api.post("/v1/webhooks", {"url": PUBLIC_URL, "events": ["job.started"]}, format="json")

    assert response.status_code == 422


# --- Deliveries --------------------------------------------------------------------------------


def test_a_completed_paid_job_is_delivered_signed_as_standard_webhooks_say(
    client_api, miner_api, register_miner, submit_job, receiver
):
    hook = create_webhook(client_api, receiver.url, events=["job.completed", "payment.released"])
    job_id = complete_paid_job(client_api, miner_api, register_miner, submit_job)
    completed, released = deliveries_of(job_id)

    assert (completed.event_type, released.event_type) == ("job.completed", "payment.released")
    assert services.delivery_attempt(message_id=completed.message_id) == services.DELIVERED
    [request] = receiver.requests
    event = Webhook(hook["secret"]).verify(request["body"], request["headers"])
    assert event["type"] == "job.completed"
    assert (event["data"]["job_id"], event["data"]["status"]) == (job_id, "completed")
    assert event["data"]["result"] == {"output": "hi"}
    assert request["headers"]["webhook-id"] == completed.message_id
    with pytest.raises(WebhookVerificationError):
        Webhook(hook["secret"]).verify(request["body"] + b" ", request["headers"])
    with pytest.raises(WebhookVerificationError):
        Webhook(services.new_secret()).verify(request["body"], request["headers"])
    completed.refresh_from_db()
    assert (completed.status, completed.attempts, completed.response_status) == (DeliveryStatus.DELIVERED, 1, 204)


def test_the_deliveries_of_one_job_arrive_in_the_order_they_happened(
    client_api, miner_api, register_miner, submit_job, receiver
):
    hook = create_webhook(client_api, receiver.url, events=["job.completed", "payment.released"])
    job_id = complete_paid_job(client_api, miner_api, register_miner, submit_job)
    completed, released = deliveries_of(job_id)
    broker = dramatiq.get_broker()
    broker.flush("webhooks")

    assert services.delivery_attempt(message_id=released.message_id) == services.SKIPPED
    assert services.delivery_attempt(message_id=completed.message_id) == services.DELIVERED
    # The first one's end sent the next.
    [message] = broker.queues["webhooks"].queue
    assert list(dramatiq.Message.decode(message).args) == [released.message_id]
    assert services.delivery_attempt(message_id=released.message_id) == services.DELIVERED

    events = [Webhook(hook["secret"]).verify(r["body"], r["headers"]) for r in receiver.requests]
    assert [event["type"] for event in events] == ["job.completed", "payment.released"]
    assert events[1]["data"]["status"] == "released"


def test_only_the_owners_subscribed_events_are_recorded(client_api, other_client_api, submit_job, receiver):
    create_webhook(client_api, receiver.url, events=["job.completed"])
    create_webhook(other_client_api, receiver.url, events=["job.cancelled"])
    job_id = submit_job(client_api, model="llama3")["job_id"]

    client_api.post(f"/v1/jobs/{job_id}/cancel")

    assert deliveries_of(job_id) == []


def test_a_cancelled_job_and_its_refund_are_recorded_with_the_cancellation(client_api, submit_job, receiver):
    WalletFactory(user=client_api.user, minted=Decimal(10))
    create_webhook(client_api, receiver.url, events=["job.cancelled", "payment.refunded"])
    job_id = submit_job(client_api, payment_amount="1")["job_id"]

    client_api.post(f"/v1/jobs/{job_id}/cancel")

    assert [d.event_type for d in deliveries_of(job_id)] == ["job.cancelled", "payment.refunded"]


def test_a_test_delivery_is_signed_and_logged(client_api, receiver):
    hook = create_webhook(client_api, receiver.url)

    queued = client_api.post(f"/v1/webhooks/{hook['id']}/test")
    assert queued.status_code == 202
    assert services.delivery_attempt(message_id=queued.json()["message_id"]) == services.DELIVERED

    assert Webhook(hook["secret"]).verify(receiver.requests[0]["body"], receiver.requests[0]["headers"])["type"] == (
        "webhook.test"
    )
    [logged] = client_api.get(f"/v1/webhooks/{hook['id']}/deliveries").json()["items"]
    assert (logged["event_type"], logged["status"], logged["response_status"]) == ("webhook.test", "delivered", 204)


def test_a_rotated_secret_signs_beside_the_old_one_for_a_while(client_api, receiver):
    hook = create_webhook(client_api, receiver.url)
    rotated = client_api.post(f"/v1/webhooks/{hook['id']}/rotate-secret").json()
    message_id = client_api.post(f"/v1/webhooks/{hook['id']}/test").json()["message_id"]

    services.delivery_attempt(message_id=message_id)

    request = receiver.requests[0]
    assert rotated["secret"] != hook["secret"]
    assert Webhook(rotated["secret"]).verify(request["body"], request["headers"])
    assert Webhook(hook["secret"]).verify(request["body"], request["headers"])


def test_a_redirect_is_not_followed(client_api, receiver, settings):
    elsewhere = type(receiver)()
    receiver.statuses, receiver.redirect_to = [302], elsewhere.url
    hook = create_webhook(client_api, receiver.url)
    message_id = client_api.post(f"/v1/webhooks/{hook['id']}/test").json()["message_id"]

    services.delivery_attempt(message_id=message_id)

    elsewhere.close()
    assert elsewhere.requests == []
    assert "redirects are not followed" in WebhookDelivery.objects.get(message_id=message_id).last_error


def test_a_private_address_is_refused_at_delivery_too(client_api, submit_job, receiver, settings):
    create_webhook(client_api, receiver.url, events=["job.cancelled"])
    job_id = submit_job(client_api, model="llama3")["job_id"]
    client_api.post(f"/v1/jobs/{job_id}/cancel")
    settings.WEBHOOKS_ALLOW_PRIVATE = False
    [delivery] = deliveries_of(job_id)

    assert services.delivery_attempt(message_id=delivery.message_id) == services.RETRY

    assert receiver.requests == []
    delivery.refresh_from_db()
    assert "private, loopback or link-local" in delivery.last_error


def test_enabling_a_disabled_webhook_sends_what_waits(
    client_api, submit_job, receiver, django_capture_on_commit_callbacks
):
    hook = create_webhook(client_api, receiver.url, events=["job.cancelled"])
    job_id = submit_job(client_api, model="llama3")["job_id"]
    client_api.post(f"/v1/jobs/{job_id}/cancel")
    endpoint = WebhookEndpoint.objects.get()
    services.endpoint_disable(endpoint=endpoint, reason="down")
    [delivery] = deliveries_of(job_id)
    assert services.delivery_attempt(message_id=delivery.message_id) == services.SKIPPED

    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        assert client_api.post(f"/v1/webhooks/{hook['id']}/enable").json()["enabled"] is True

    sends = [c for c in callbacks if getattr(c, "func", None) == tasks.deliver_webhook.send]
    assert [send.args for send in sends] == [(delivery.message_id,)]
    assert services.delivery_attempt(message_id=delivery.message_id) == services.DELIVERED


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_a_broker_that_does_not_answer_leaves_the_miners_result_accepted_and_the_delivery_recorded(
    client_api, miner_api, register_miner, submit_job, receiver, monkeypatch, caplog
):
    def broker_down(*args, **kwargs):
        raise ConnectionError("Error 111 connecting to the broker")

    create_webhook(client_api, receiver.url)
    monkeypatch.setattr(tasks.deliver_webhook, "send", broker_down)

    job_id = complete_paid_job(client_api, miner_api, register_miner, submit_job)  # 200, not a 500

    [delivery] = deliveries_of(job_id)
    assert delivery.status == DeliveryStatus.PENDING
    assert any("broker_down" in record.getMessage() for record in caplog.records if record.levelname == "ERROR")


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_a_failing_endpoint_is_retried_with_growing_delays_then_disabled_and_its_owner_told(
    make_api, receiver, settings, monkeypatch, caplog
):
    receiver.statuses = [500]
    settings.WEBHOOK_RETRY_SECONDS = 1.5
    monkeypatch.setitem(tasks.deliver_webhook.options, "min_backoff", 50)
    monkeypatch.setitem(tasks.deliver_webhook.options, "max_backoff", 400)
    client = make_api("client", "hooked")
    create_webhook(client, receiver.url, events=["job.cancelled"])
    broker = dramatiq.get_broker()
    broker.flush("webhooks")
    worker = dramatiq.Worker(broker, queues={"webhooks"}, worker_threads=1, worker_timeout=20)
    worker.start()
    try:
        job_id = client.post("/v1/jobs", {"prompt": "hi", "model": "llama3"}, format="json").json()["job_id"]
        client.post(f"/v1/jobs/{job_id}/cancel")
        deadline = time.monotonic() + 20
        while WebhookEndpoint.objects.filter(enabled=True).exists() and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        worker.stop()

    delivery = WebhookDelivery.objects.get()
    arrivals = [request["at"] for request in receiver.requests]
    gaps = [later - earlier for earlier, later in itertools.pairwise(arrivals)]
    assert len(arrivals) >= 4
    assert (delivery.status, delivery.attempts) == (DeliveryStatus.FAILED, len(arrivals))
    # Dramatiq's backoff: at least 50 ms doubling each time, up to the 400 ms cap (jittered to 200-400).
    for retry, gap in enumerate(gaps):
        assert gap >= 0.9 * min(0.050 * 2**retry, 0.200), gaps
    assert max(gaps) > 2 * gaps[0], gaps
    endpoint = WebhookEndpoint.objects.get()
    assert not endpoint.enabled
    assert "HTTP 500" in endpoint.disabled_reason
    errors = [record.getMessage() for record in caplog.records if record.levelno >= logging.ERROR]
    assert errors == [], "an endpoint that is down is not the server's error"
    # Nothing more is sent to a disabled endpoint.
    assert services.delivery_attempt(message_id=delivery.message_id) == services.SKIPPED
    browser = Client()
    browser.force_login(client.user)
    page = browser.get("/").content.decode()
    assert receiver.url in page and "was disabled" in page


def test_an_expired_job_and_its_refund_are_recorded_by_the_sweep(client_api, submit_job, receiver):
    WalletFactory(user=client_api.user, minted=Decimal(10))
    create_webhook(client_api, receiver.url, events=["job.expired", "payment.refunded"])
    job_id = submit_job(client_api, payment_amount="1")["job_id"]

    jobs_expire_queued(now=timezone.now() + timedelta(days=1))

    expired, refunded = deliveries_of(job_id)
    assert (expired.event_type, refunded.event_type) == ("job.expired", "payment.refunded")
    assert services.delivery_attempt(message_id=expired.message_id) == services.DELIVERED
    assert services.delivery_attempt(message_id=refunded.message_id) == services.DELIVERED
    assert [r["body"].count(b'"status":"expired"') for r in receiver.requests] == [1, 0]


def test_housekeeping_resends_a_delivery_whose_message_was_lost(client_api, submit_job, receiver):
    create_webhook(client_api, receiver.url, events=["job.cancelled"])
    job_id = submit_job(client_api, model="llama3")["job_id"]
    client_api.post(f"/v1/jobs/{job_id}/cancel")
    [delivery] = deliveries_of(job_id)
    broker = dramatiq.get_broker()
    broker.flush("webhooks")

    assert services.deliveries_resend_stalled() == 0  # its message may still be on its way
    assert services.deliveries_resend_stalled(now=timezone.now() + timedelta(minutes=2)) == 1

    [message] = broker.queues["webhooks"].queue
    assert list(dramatiq.Message.decode(message).args) == [delivery.message_id]


# --- Clients without webhooks ------------------------------------------------------------------


def complete_job(client_api, miner_api, submit_job) -> str:
    job_id = submit_job(client_api)["job_id"]
    lease = miner_api.post("/v1/miners/poll", {}, format="json").json()
    done = miner_api.post(
        f"/v1/miners/{job_id}/result", {"result": {"output": "hi"}, "lease_token": lease["lease_token"]}, format="json"
    )
    assert done.status_code == 200, done.content
    return job_id


def statements_of(action) -> list[str]:
    with CaptureQueriesContext(connection) as queries:
        action()
    return [query["sql"] for query in queries.captured_queries]


def test_a_client_without_webhooks_pays_no_statement_for_them_when_its_jobs_end(
    client_api, miner_api, register_miner, submit_job, monkeypatch
):
    register_miner(miner_api)
    cache.delete(services._owner_key(client_api.user.pk))
    first = statements_of(lambda: complete_job(client_api, miner_api, submit_job))
    assert any("webhooks_webhookendpoint" in sql for sql in first)  # not known yet: looked up once
    with_webhooks = statements_of(lambda: complete_job(client_api, miner_api, submit_job))
    listeners = [listener for listener in job_services._event_listeners if listener != services.deliveries_record]
    monkeypatch.setattr(job_services, "_event_listeners", listeners)
    without_webhooks = statements_of(lambda: complete_job(client_api, miner_api, submit_job))

    assert not any("webhook" in sql for sql in with_webhooks)
    assert len(with_webhooks) == len(without_webhooks)


def test_a_webhook_created_just_before_a_job_ends_receives_its_event(
    client_api, miner_api, register_miner, submit_job, receiver
):
    register_miner(miner_api)
    cache.delete(services._owner_key(client_api.user.pk))
    complete_job(client_api, miner_api, submit_job)  # known: no webhooks

    create_webhook(client_api, receiver.url, events=["job.completed"])
    job_id = complete_job(client_api, miner_api, submit_job)

    assert [d.event_type for d in deliveries_of(job_id)] == ["job.completed"]


def test_disabling_deleting_and_enabling_webhooks_are_seen_by_the_next_event(
    client_api, miner_api, register_miner, submit_job, receiver
):
    register_miner(miner_api)
    first = create_webhook(client_api, receiver.url, events=["job.completed"])
    second = create_webhook(client_api, receiver.url, events=["job.completed"])
    client_api.delete(f"/v1/webhooks/{first['id']}")
    assert len(deliveries_of(complete_job(client_api, miner_api, submit_job))) == 1  # the other one
    services.endpoint_disable(endpoint=WebhookEndpoint.objects.get(pk=second["id"]), reason="down")
    assert deliveries_of(complete_job(client_api, miner_api, submit_job)) == []
    assert not any("webhook" in sql for sql in statements_of(lambda: complete_job(client_api, miner_api, submit_job)))

    client_api.post(f"/v1/webhooks/{second['id']}/enable")

    assert len(deliveries_of(complete_job(client_api, miner_api, submit_job))) == 1


def test_an_event_that_read_no_webhooks_while_one_was_being_created_does_not_hide_it(
    client_api, miner_api, register_miner, submit_job, receiver, django_capture_on_commit_callbacks
):
    register_miner(miner_api)
    key = services._owner_key(client_api.user.pk)
    with django_capture_on_commit_callbacks(execute=True), transaction.atomic():
        services.endpoint_create(owner=client_api.user, url=receiver.url, events=["job.completed"])
        # What a job ending meanwhile stores if its mark had gone (evicted) and it read the
        # endpoints before this commit.
        cache.delete(key)
        cache.add(key, False)

    job_id = complete_job(client_api, miner_api, submit_job)

    assert [d.event_type for d in deliveries_of(job_id)] == ["job.completed"]


def test_a_verified_jobs_events_are_its_own_not_its_attempts(client_api, make_api, register_miner, receiver):
    WalletFactory(user=client_api.user, minted=Decimal(10))
    create_webhook(client_api, receiver.url, events=["job.completed", "job.cancelled", "payment.released",
                                                    "payment.refunded"])  # fmt: skip
    miners = [make_api("miner", f"owner-{i}", miner_id=f"rig-{i}") for i in range(3)]
    for miner in miners:
        register_miner(miner)
    body = {"payload": {"prompt": "hi", "model": "llama3.2"}, "payment_amount": "1", "verification": {"redundancy": 3}}
    job_id = client_api.post("/v1/jobs", body, format="json").json()["job_id"]
    for miner in miners[:2]:
        lease = miner.post("/v1/miners/poll", {}, format="json").json()
        done = miner.post(
            f"/v1/miners/{lease['job_id']}/result", {"result": {"text": "hello"}, "lease_token": lease["lease_token"]},
            format="json",
        )  # fmt: skip
        assert done.status_code == 200, done.content

    # The two agreeing attempts are paid and the third cancelled and refunded: none of it is sent.
    assert [(d.job_id, d.event_type) for d in WebhookDelivery.objects.order_by("id")] == [
        (uuid.UUID(job_id), "job.completed")
    ]


def test_while_the_cache_hangs_a_webhook_is_refused_503_and_one_that_exists_still_gets_its_events(
    client_api, miner_api, register_miner, submit_job, receiver, request
):
    register_miner(miner_api)
    create_webhook(client_api, receiver.url, events=["job.completed"])
    request.getfixturevalue("hanging_cache")

    refused = client_api.post("/v1/webhooks", {"url": receiver.url, "events": ["job.completed"]}, format="json")
    job_id = complete_job(client_api, miner_api, submit_job)

    assert (refused.status_code, refused.json()["error_code"]) == (503, "SERVICE_UNAVAILABLE")
    assert WebhookEndpoint.objects.count() == 1
    assert [d.event_type for d in deliveries_of(job_id)] == ["job.completed"]


def test_enabling_a_webhook_while_the_cache_hangs_is_refused_503_and_leaves_it_disabled(client_api, request):
    hook = create_webhook(client_api, PUBLIC_URL)
    services.endpoint_disable(endpoint=WebhookEndpoint.objects.get(pk=hook["id"]), reason="test")
    request.getfixturevalue("hanging_cache")

    response = client_api.post(f"/v1/webhooks/{hook['id']}/enable")

    assert response.status_code == 503
    assert WebhookEndpoint.objects.get(pk=hook["id"]).enabled is False


def test_the_schema_says_adding_or_enabling_a_webhook_may_be_503(client_api):
    paths = client_api.get("/openapi.json").json()["paths"]
    assert "503" in paths["/v1/webhooks"]["post"]["responses"]
    assert "503" in paths["/v1/webhooks/{webhook_id}/enable"]["post"]["responses"]
