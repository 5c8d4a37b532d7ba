"""Joins the API keys' labels and the agent scope."""

from django.db import migrations


class Migration(migrations.Migration):
    dependencies = [
        ("accounts", "0003_api_key_label"),
        ("accounts", "0003_apikey_scope_agent"),
    ]

    operations = []
