"""A catalog model's default generation parameters, given to the jobs that set none of their own."""

import pytest
from django.core.exceptions import ValidationError

from catalog import payloads
from catalog.models import CatalogModel


def test_defaults_fill_only_what_the_job_does_not_set():
    defaults = {"temperature": 0, "top_p": 0.9}

    assert payloads.with_default_params({"prompt": "x"}, defaults)["params"] == defaults
    assert payloads.with_default_params({"prompt": "x", "params": {"temperature": 1}}, defaults)["params"] == {
        "temperature": 1,
        "top_p": 0.9,
    }
    # Older clients set parameters at the payload's top level: those count as set.
    assert payloads.with_default_params({"prompt": "x", "temperature": 1}, defaults)["params"] == {"top_p": 0.9}


@pytest.mark.django_db
def test_the_shipped_chat_model_is_greedy_by_default():
    assert CatalogModel.objects.get(name="smollm2-135m").default_params == {"temperature": 0}
    assert CatalogModel.objects.get(name="minilm-l6").default_params == {}


@pytest.mark.parametrize("defaults", [{"temperature": 5}, {"colour": "blue"}, ["temperature"]])
def test_staff_cannot_save_defaults_a_job_could_not_send(defaults):
    entry = CatalogModel(
        name="m", task="chat", source_kind="hub", source="org/m", default_params=defaults, default_max_tokens=1
    )

    with pytest.raises(ValidationError) as refused:
        entry.clean()
    assert "default_params" in refused.value.message_dict
