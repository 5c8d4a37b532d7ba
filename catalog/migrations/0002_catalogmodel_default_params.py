from django.db import migrations, models


def shipped_chat_model_greedy(apps, schema_editor):
    # SmolLM2-135M samples poorly: at temperature 0.7 it answered "What is the capital of France?"
    # with "La femme du France…"; greedy, "The capital of France is Paris."
    CatalogModel = apps.get_model("catalog", "CatalogModel")
    CatalogModel.objects.filter(name="smollm2-135m", default_params={}).update(default_params={"temperature": 0})


class Migration(migrations.Migration):
    dependencies = [("catalog", "0001_initial")]

    operations = [
        migrations.AddField(
            model_name="catalogmodel",
            name="default_params",
            field=models.JSONField(
                blank=True,
                default=dict,
                help_text='Generation parameters a job gets when it sets none of its own, e.g. {"temperature": 0}.',
            ),
        ),
        migrations.RunPython(shipped_chat_model_greedy, migrations.RunPython.noop),
    ]
