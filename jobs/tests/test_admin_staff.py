from decimal import Decimal

from django.urls import reverse

from explorer.services import blocks_seal_pending
from jobs.models import Job, JobStatus
from payments.models import Payment, PaymentStatus
from payments.selectors import wallet_of
from tests.admin_responses import listed, messages_of

JOBS = reverse("admin:jobs_job_changelist")
HOME = reverse("admin:index")


def poll(api):
    return api.post("/v1/miners/poll", {"max_wait_seconds": 0}, format="json")


def pay(api, job_id, amount="2"):
    response = api.post("/v1/payments", {"job_id": job_id, "amount": amount}, format="json")
    assert response.status_code == 201, response.content


def paid_job(api, submit_job, amount="3") -> Job:
    return Job.objects.get(pk=submit_job(api, payment_amount=amount)["job_id"])


def refund(admin_client, *jobs):
    return admin_client.post(
        JOBS,
        {
            "action": "refund_payments",
            "_selected_action": [job.pk for job in jobs],
            "apply": "1",
            "reason": "Fraud report 7",
        },
        follow=True,
    )


def cancel(admin_client, *job_ids):
    return admin_client.post(
        JOBS,
        {"action": "cancel_jobs", "_selected_action": list(job_ids), "apply": "1", "reason": "Fraud report 7"},
        follow=True,
    )


# --- Refunds ---------------------------------------------------------------------------


def test_refund_action_refunds_escrowed_payments_of_finished_jobs(admin_client, client_api, submit_job):
    job = paid_job(client_api, submit_job, "3")
    Job.objects.filter(pk=job.pk).update(status=JobStatus.FAILED)  # failed without its refund

    response = refund(admin_client, job)

    assert "Refunded 1 payment(s)." in messages_of(response)
    assert Payment.objects.get().status == PaymentStatus.REFUNDED
    assert wallet_of(user=client_api.user).balance == Decimal(100)
    assert Job.objects.get(pk=job.pk).payment_status == PaymentStatus.REFUNDED


def test_refund_action_leaves_active_jobs_and_settled_payments_alone(admin_client, client_api, submit_job):
    queued = paid_job(client_api, submit_job, "1")
    cancelled = paid_job(client_api, submit_job, "2")
    client_api.post(f"/v1/jobs/{cancelled.pk}/cancel")

    response = refund(admin_client, queued, cancelled)

    shown = messages_of(response)
    assert "Refunded 0 payment(s)." in shown
    assert any(queued.payment_id in message and "cancel" in message for message in shown)
    assert Payment.objects.get(pk=queued.payment.pk).status == PaymentStatus.ESCROWED


# --- Cancel refunds ---------------------------------------------------------------------


def test_cancel_action_refunds_the_escrow_and_says_how_many(admin_client, client_api, submit_job):
    paid, unpaid = submit_job(client_api), submit_job(client_api)
    pay(client_api, paid["job_id"])
    response = cancel(admin_client, paid["job_id"], unpaid["job_id"])
    assert "2 job(s) cancelled." in messages_of(response)
    assert "1 escrow(s) refunded." in messages_of(response)
    payment = Payment.objects.get(job__pk=paid["job_id"])
    assert (payment.status, payment.amount_refunded) == (PaymentStatus.REFUNDED, Decimal(2))
    assert Job.objects.get(pk=paid["job_id"]).payment_status == PaymentStatus.REFUNDED


def test_cancel_action_gives_the_client_its_credits_back(admin_client, client_api, submit_job):
    job = submit_job(client_api)
    pay(client_api, job["job_id"])
    paid = wallet_of(user=client_api.user).balance
    cancel(admin_client, job["job_id"])
    assert wallet_of(user=client_api.user).balance == paid + 2


def test_cancel_action_refunds_a_running_job(admin_client, client_api, miner_api, register_miner, submit_job):
    register_miner(miner_api)
    job = submit_job(client_api)
    pay(client_api, job["job_id"])
    assert poll(miner_api).json()["job_id"] == job["job_id"]
    response = cancel(admin_client, job["job_id"])
    assert "1 escrow(s) refunded." in messages_of(response)
    assert Job.objects.get(pk=job["job_id"]).status == JobStatus.CANCELLED


# --- Filters ----------------------------------------------------------------------------


def test_filter_by_miner(admin_client, client_api, make_api, register_miner, submit_job):
    rig_a, rig_b = make_api("miner", "a", miner_id="rig-a"), make_api("miner", "b", miner_id="rig-b")
    register_miner(rig_a)
    register_miner(rig_b)
    first, second = submit_job(client_api), submit_job(client_api)
    assert poll(rig_a).json()["job_id"] == first["job_id"]
    assert poll(rig_b).json()["job_id"] == second["job_id"]
    miner_b = Job.objects.get(pk=second["job_id"]).miner
    assert [str(j.pk) for j in listed(admin_client.get(JOBS, {"miner__id__exact": miner_b.pk}))] == [second["job_id"]]


def test_filter_by_model(admin_client, client_api, submit_job):
    submit_job(client_api, model="llama3.2")
    wanted = submit_job(client_api, model="mistral-7b")
    assert [str(j.pk) for j in listed(admin_client.get(JOBS, {"model": "mistral-7b"}))] == [wanted["job_id"]]


def test_filter_by_date(admin_client, client_api, submit_job):
    job = submit_job(client_api)
    Job.objects.exclude(pk=job["job_id"]).delete()
    old = submit_job(client_api)
    Job.objects.filter(pk=old["job_id"]).update(created_at="2020-01-01T00:00:00Z")
    created = Job.objects.get(pk=job["job_id"]).created_at
    response = admin_client.get(
        JOBS, {"created_at__year": created.year, "created_at__month": created.month, "created_at__day": created.day}
    )
    assert [str(j.pk) for j in listed(response)] == [job["job_id"]]


def test_changelist_query_count_does_not_grow_with_jobs(
    admin_client, client_api, make_api, register_miner, submit_job, django_assert_max_num_queries
):
    for n in range(5):
        api = make_api("miner", f"owner-{n}", miner_id=f"rig-{n}")
        register_miner(api)
        submit_job(client_api)
        assert poll(api).status_code == 200
    with django_assert_max_num_queries(12):
        response = admin_client.get(JOBS)
    assert len(listed(response)) == 5


# --- The admin home ---------------------------------------------------------------------


def figure(page: str, element_id: str) -> str:
    start = page.index(f'id="{element_id}">') + len(f'id="{element_id}">')
    return page[start : page.index("</td>", start)]


def test_admin_home_shows_the_network_at_a_glance(
    admin_client, client_api, miner_api, register_miner, submit_job, settings
):
    register_miner(miner_api)
    done = submit_job(client_api)
    pay(client_api, done["job_id"], amount="10")
    assert poll(miner_api).json()["job_id"] == done["job_id"]
    finished = miner_api.post(f"/v1/miners/{done['job_id']}/result", {"result": {"output": "ok"}}, format="json")
    assert finished.status_code == 200, finished.content
    running = submit_job(client_api)
    assert poll(miner_api).json()["job_id"] == running["job_id"]
    submit_job(client_api, model="mistral-7b")
    submit_job(client_api, model="mistral-7b")
    blocks = blocks_seal_pending()
    assert blocks

    page = admin_client.get(HOME).content.decode()

    assert figure(page, "glance-miners-online") == "1"
    assert figure(page, "glance-jobs-queued") == "2"
    assert figure(page, "glance-jobs-running") == "1"
    assert figure(page, "glance-jobs-completed") == "1"
    assert figure(page, "glance-block-height") == str(blocks[-1].height)
    # Welcome credits for the client and the miner's owner are all the treasury has minted.
    assert Decimal(figure(page, "glance-treasury-minted")) == 2 * settings.AITBC_WELCOME_CREDITS
    assert Decimal(figure(page, "glance-fees-collected")) == Decimal("0.5")
    assert '<tr class="health-queue"><td>mistral-7b</td><td>normal</td><td><a href="' in page


def test_admin_home_opens_on_an_empty_network(admin_client):
    page = admin_client.get(HOME).content.decode()
    assert figure(page, "glance-block-height") == "no blocks yet"
    assert "The queue is empty." in page


def test_admin_home_needs_staff(client):
    assert client.get(HOME).status_code == 302
