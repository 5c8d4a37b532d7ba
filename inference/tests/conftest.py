import pytest

from inference.models import CatalogModel
from inference.testing import build_tiny_gpt2

TINY = "tiny-gpt2"


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    return build_tiny_gpt2(tmp_path_factory.mktemp("models") / TINY)


@pytest.fixture
def tiny_model(db, tiny_model_dir):
    """The tiny GPT-2 as a catalog model."""
    return CatalogModel.objects.create(
        name=TINY,
        task="text-generation",
        source_kind="directory",
        source=str(tiny_model_dir),
        default_max_tokens=16,
        max_tokens=2000,
    )


@pytest.fixture
def cluster_host(tiny_model, settings, tmp_path):
    """This test process as an in-cluster miner serving the tiny model, batches of 4; it drains
    when a test says so (no listener thread racing the test)."""
    from inference.worker import ClusterHost

    settings.MODEL_CACHE_DIR = tmp_path
    host = ClusterHost([TINY], miner_id="test-cluster", batch_size=4, listen=False)
    host.start()
    yield host
    host.stop()
