import pytest

from miners.models import Miner


def test_register_is_idempotent_and_updates(miner_api, register_miner):
    register_miner(miner_api, models=["a"])
    register_miner(miner_api, models=["b", "c"], region="eu")
    miner = Miner.objects.get()
    assert miner.miner_id == "miner-1"
    assert sorted(miner.served_models.values_list("name", flat=True)) == ["b", "c"]
    assert miner.region == "eu"


def test_register_reads_the_aitbc_capabilities_shape(miner_api):
    miner_api.post(
        "/v1/miners/register",
        {
            "capabilities": {
                "gpus": [{"name": "RTX 3060", "memory_mb": 12288}, {"name": "RTX 4090", "memory_mb": 24576}],
                "cuda": "12.4",
                "models": ["llama3.2"],
                "price": 0.5,
                "region": "us",
                "max_concurrent_jobs": 3,
            },
        },
        format="json",
    )
    miner = Miner.objects.get()
    assert (miner.gpu_name, miner.vram_gb, miner.cuda_code, miner.max_concurrent_jobs) == ("RTX 4090", 24.0, 12004, 3)


def test_register_reads_the_tutorial_shape(make_api):
    api = make_api("miner", "tutorial-owner")
    response = api.post(
        "/v1/miners/register",
        {
            "miner_id": "my-miner-001",
            "capabilities": ["llama3.2", "codellama"],
            "gpu_info": {"name": "RTX 4090", "memory": "24GB"},
        },
        format="json",
    )
    assert response.json()["miner_id"] == "my-miner-001"
    miner = Miner.objects.get(miner_id="my-miner-001")
    assert miner.vram_gb == 24.0
    assert set(miner.served_models.values_list("name", flat=True)) == {"llama3.2", "codellama"}


def test_one_owner_runs_many_miners_but_ids_are_not_shared(make_api, register_miner):
    owner = make_api("miner", "farm", miner_id="rig-1")
    register_miner(owner)
    owner.credentials(HTTP_X_API_KEY=owner.raw_key, HTTP_X_MINER_ID="rig-2")
    register_miner(owner)
    assert Miner.objects.filter(owner=owner.user).count() == 2
    thief = make_api("miner", "thief", miner_id="rig-1")
    response = thief.post("/v1/miners/register", {"capabilities": {"models": ["x"]}}, format="json")
    assert response.status_code == 409
    assert response.json()["error_code"] == "MINER_ID_TAKEN"


@pytest.mark.parametrize(
    "capabilities",
    [
        {"models": ["m"], "gpus": [{"name": "g", "memory": "1.2.3GB"}]},
        {"models": ["m"], "price": "NaN"},
        {"models": ["m"], "price": "Infinity"},
        {"models": ["m"], "price": 1e20},
        {"models": ["m"], "gpus": [{"name": "g", "memory_mb": -5}]},
    ],
)
def test_unreadable_capabilities_are_422(miner_api, capabilities):
    response = miner_api.post("/v1/miners/register", {"capabilities": capabilities}, format="json")
    assert response.status_code == 422
