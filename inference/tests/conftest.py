import pytest

from inference.testing import TINY


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
