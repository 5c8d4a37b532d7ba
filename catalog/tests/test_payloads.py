"""The payload rules (``catalog.payloads``), and the API, the dashboard form and the job service
refusing by them alike."""

import pytest

from catalog import payloads
from catalog.models import ModelTask
from catalog.payloads import PayloadError
from jobs.models import Job, JobType


def test_the_rules_name_the_platforms_job_types_and_tasks():
    # An agent's task carries what its agent reads, not a model's payload.
    assert set(payloads.PAYLOAD_TYPES) == set(JobType.values) - {JobType.TASK}
    assert payloads.EMBEDDING_TASK == ModelTask.EMBEDDING


def test_params_under_params_win_over_top_level_ones_and_nulls_are_not_given():
    payload = {"max_tokens": 5, "temperature": 1, "seed": None, "params": {"max_tokens": 7, "top_p": None}}
    assert payloads.generation_params(payload) == {"max_tokens": 7, "temperature": 1}


@pytest.mark.parametrize(
    "params, field",
    [
        ({"max_tokens": 0}, "max_tokens"),
        ({"max_tokens": 10.5}, "max_tokens"),
        ({"max_tokens": True}, "max_tokens"),
        ({"temperature": 2.5}, "temperature"),
        ({"temperature": "hot"}, "temperature"),
        ({"top_p": 0}, "top_p"),
        ({"top_p": 1.5}, "top_p"),
        ({"seed": -1}, "seed"),
        ({"seed": 2**63}, "seed"),
        ({"stop": ["a", "b", "c", "d", "e"]}, "stop"),
        ({"stop": [""]}, "stop"),
        ({"stop": 5}, "stop"),
    ],
)
def test_a_parameter_out_of_its_rule_is_invalid_params(params, field):
    with pytest.raises(PayloadError) as refused:
        payloads.check_params(params)
    assert (refused.value.code, refused.value.field) == ("INVALID_PARAMS", field)


def test_a_models_own_limit_bounds_max_tokens():
    payloads.check_params({"max_tokens": 64}, max_tokens=64)
    with pytest.raises(PayloadError):
        payloads.check_params({"max_tokens": 65}, max_tokens=64)


@pytest.mark.parametrize(
    "payload, code, field",
    [
        ({"type": "inference"}, "INVALID_PAYLOAD", "prompt"),
        ({"type": "inference", "prompt": ""}, "INVALID_PAYLOAD", "prompt"),
        ({"type": "chat", "messages": [{"role": "user"}]}, "INVALID_PAYLOAD", "messages"),
        ({"type": "inference", "prompt": "x", "params": "max_tokens=5"}, "INVALID_PAYLOAD", "params"),
        ({"type": "embedding", "input": []}, "INVALID_PAYLOAD", "input"),
        ({"type": "embedding", "input": ["x", ""]}, "INVALID_PAYLOAD", "input"),
        ({"type": "embedding", "input": ["x"] * 257}, "INPUT_TOO_LONG", "input"),
        ({"type": "inference", "prompt": "x" * 11}, "INPUT_TOO_LONG", "prompt"),
        ({"type": "chat", "messages": [{"role": "user", "content": "x" * 6}] * 2}, "INPUT_TOO_LONG", "messages"),
        ({"type": "inference", "prompt": "x", "temperature": 3}, "INVALID_PARAMS", "temperature"),
    ],
)
def test_a_payload_is_checked_whole_for_its_type(payload, code, field):
    with pytest.raises(PayloadError) as refused:
        payloads.check_payload(payload, max_input_chars=10)
    assert (refused.value.code, refused.value.field) == (code, field)


def test_a_model_runs_only_payloads_of_its_task():
    with pytest.raises(PayloadError) as refused:
        payloads.check_fits_model({}, payload_type="embedding", model="m", task="chat", max_tokens=8)
    assert refused.value.code == "UNSUPPORTED_TASK"
    payloads.check_fits_model({}, payload_type="chat", model="m", task="text-generation", max_tokens=8)


@pytest.mark.parametrize(
    "body",
    [
        {"prompt": "x", "model": "m", "params": {"top_p": 0}},
        {"prompt": "x", "model": "m", "params": {"stop": ["a", "b", "c", "d", "e"]}},
        {"prompt": "x", "model": "m", "temperature": 7},
    ],
)
def test_the_api_refuses_what_the_engine_would_fail(client_api, body):
    response = client_api.post("/v1/jobs", body, format="json")

    assert response.status_code == 422
    assert response.json()["errors"]["params"]
    assert not Job.objects.exists()


def test_the_dashboard_form_refuses_by_the_same_rules(client, django_user_model, settings):
    settings.JOB_MAX_INPUT_CHARS = 10
    client.force_login(django_user_model.objects.create_user(username="alice"))

    response = client.post("/jobs/", {"model": "smollm2-135m", "prompt": "x" * 11})

    assert "prompt" in response.context["form"].errors
    assert not Job.objects.exists()
