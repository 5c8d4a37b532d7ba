from datetime import timedelta

from django.utils import timezone

from jobs.models import Job


def test_list_is_paginated_with_items_total_limit_offset(client_api, submit_job):
    for i in range(5):
        submit_job(client_api, prompt=f"p{i}")
    page = client_api.get("/v1/jobs?limit=2&offset=1").json()
    assert page["total"] == 5
    assert page["limit"] == 2
    assert page["offset"] == 1
    assert [j["payload"]["prompt"] for j in page["items"]] == ["p3", "p2"]


def test_history_route_is_not_shadowed_by_job_detail(client_api, submit_job):
    submit_job(client_api)
    response = client_api.get("/v1/jobs/history")
    assert response.status_code == 200
    assert response.json()["total"] == 1


def test_filters_by_status_in_either_spelling_type_and_model(client_api, submit_job):
    keep = submit_job(client_api, model="a")
    cancelled = submit_job(client_api, model="b")
    client_api.post(f"/v1/jobs/{cancelled['job_id']}/cancel")
    client_api.post("/v1/jobs", {"payload": {"type": "embedding", "input": "x", "model": "e"}}, format="json")

    def ids(query):
        return {j["job_id"] for j in client_api.get(f"/v1/jobs?{query}").json()["items"]}

    assert ids("status=CANCELED") == {cancelled["job_id"]}
    assert ids("status=cancelled") == {cancelled["job_id"]}
    assert ids("model=a") == {keep["job_id"]}
    assert len(ids("job_type=embedding")) == len(ids("type=embedding")) == 1
    assert client_api.get("/v1/jobs?status=bogus").status_code == 422


def test_filters_by_time_range(client_api, submit_job):
    old = submit_job(client_api, prompt="old")
    Job.objects.filter(pk=old["job_id"]).update(created_at=timezone.now() - timedelta(days=2))
    submit_job(client_api, prompt="new")
    since = (timezone.now() - timedelta(days=1)).isoformat().replace("+00:00", "Z")
    items = client_api.get("/v1/jobs", {"from_time": since}).json()["items"]
    assert [j["payload"]["prompt"] for j in items] == ["new"]
    assert client_api.get("/v1/jobs", {"to_time": "yesterday"}).status_code == 422


def test_clients_see_only_their_own_jobs(client_api, other_client_api, submit_job):
    mine = submit_job(client_api)
    submit_job(other_client_api)
    assert [j["job_id"] for j in client_api.get("/v1/jobs").json()["items"]] == [mine["job_id"]]


def test_list_query_count_does_not_grow_with_jobs(client_api, submit_job, django_assert_max_num_queries):
    for _ in range(30):
        submit_job(client_api)
    # auth, key touch, count, page, and the shared queue-outlook look-ups for one model.
    with django_assert_max_num_queries(8):
        response = client_api.get("/v1/jobs?limit=30")
    assert len(response.json()["items"]) == 30


def test_listing_paid_jobs_reads_their_payments_in_the_same_query(
    client_api, submit_job, django_assert_max_num_queries
):
    for _ in range(10):
        submit_job(client_api, payment_amount="1")
    with django_assert_max_num_queries(8):
        response = client_api.get("/v1/jobs?limit=10")
    assert {(job["payment_status"], job["amount_charged"]) for job in response.json()["items"]} == {("escrowed", None)}
