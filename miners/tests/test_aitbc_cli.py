"""The original AITBC CLI's miner commands, sent exactly as it sends them: the miner id in the query
of ``register`` and ``heartbeat``, no X-Miner-ID header, its own capability shapes."""

import pytest

from miners.models import Miner

pytestmark = pytest.mark.django_db


@pytest.fixture
def cli(make_api):
    """The CLI's client: X-Api-Key and JSON, nothing else."""
    return make_api("miner", "gpu-owner")


def test_register_names_the_miner_from_the_query(cli):
    response = cli.post(
        "/v1/miners/register?miner_id=cli-miner",
        {"capabilities": {"cpu": {"cores": 4}, "memory": {"gb": 16}}},
        format="json",
    )

    assert response.status_code == 200
    assert response.json()["miner_id"] == "cli-miner"
    assert Miner.objects.get().miner_id == "cli-miner"
    # Its later calls under its own name find it.
    assert cli.post("/v1/miners/heartbeat?miner_id=cli-miner").status_code == 200
    assert cli.get("/v1/miners/cli-miner/earnings", {"miner_id": "cli-miner"}).status_code == 200


def test_the_cli_gpu_shape_is_read_as_a_gpu(cli):
    body = {"capabilities": {"gpu": {"model": "RTX 4090", "memory_gb": 24, "cuda_cores": 16384}}}
    cli.post("/v1/miners/register?miner_id=cli-miner", body, format="json")

    miner = Miner.objects.get()
    assert (miner.gpu_name, miner.vram_gb) == ("RTX 4090", 24.0)
    assert miner.capabilities == body["capabilities"]


def test_the_cli_default_cpu_shape_is_a_miner_without_a_gpu(cli):
    body = {"capabilities": {"cpu": {"cores": 4}, "memory": {"gb": 16}}}
    cli.post("/v1/miners/register?miner_id=cli-miner", body, format="json")

    miner = Miner.objects.get()
    assert (miner.gpu_name, miner.vram_gb) == ("", 0.0)
    assert miner.capabilities == body["capabilities"]
    assert not miner.served_models.exists()


def test_update_capabilities_reads_the_cli_gpu_shape(cli):
    cli.post("/v1/miners/register?miner_id=cli-miner", {"capabilities": {"cpu": {"cores": 4}}}, format="json")

    response = cli.put(
        "/v1/miners/cli-miner/capabilities",
        {"capabilities": {"gpu": {"model": "A100", "memory_gb": 80}}},
        format="json",
    )

    assert response.status_code == 200
    assert (response.json()["gpu_name"], response.json()["vram_gb"]) == ("A100", 80.0)
