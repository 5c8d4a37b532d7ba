import pytest

from catalog.models import CatalogModel

TINY_EMBED = "tiny-embed"


@pytest.fixture
def tiny_embedding_model(db, tiny_model_dir):
    """The tiny GPT-2 as a catalog embedding model (mean-pooled hidden states)."""
    return CatalogModel.objects.create(
        name=TINY_EMBED,
        task="embedding",
        source_kind="directory",
        source=str(tiny_model_dir),
        default_max_tokens=16,
        max_tokens=512,
    )
