"""schemathesis over the whole OpenAPI schema, in process against the WSGI application.

Every operation gets schema-valid and schema-violating requests, as a client and as a miner;
each answer must not be a server error and must match the schema (a documented status, its body,
its headers, a violation refused). A business rule the schema can't state (a job names a model
somewhere) may refuse schema-valid input with a documented 422, so that check is left out. The
OpenAI-compatible routes answer a job no miner took in time with their documented 504
``job_pending`` (no miner runs here): that one server status is an answer, not a failure.

``SCHEMA_FUZZ_EXAMPLES`` (default 4 per operation and mode) sets how hard it looks: see docs/testing.md.
"""

import os

import pytest
import schemathesis
from django.core.handlers.wsgi import WSGIHandler
from drf_spectacular.generators import SchemaGenerator
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis.checks import not_a_server_error
from schemathesis.generation import GenerationMode
from schemathesis.specs.openapi.checks import ignored_auth, positive_data_acceptance

pytestmark = [pytest.mark.postgres, pytest.mark.slow, pytest.mark.django_db(transaction=True)]

EXAMPLES = int(os.environ.get("SCHEMA_FUZZ_EXAMPLES", "4"))


def _schema():
    schema = schemathesis.openapi.from_dict(SchemaGenerator().get_schema(request=None, public=True))
    schema.app = WSGIHandler()
    return schema


@pytest.fixture
def fuzzing(settings):
    settings.RATE_LIMITS_ENABLED = False
    settings.MINER_MAX_POLL_WAIT_SECONDS = 0
    settings.OPENAI_QUEUE_TIMEOUT_SECONDS = 0


@pytest.fixture
def client_headers(fuzzing, make_api, submit_job):
    api = make_api("client", "alice")
    submit_job(api)
    return {"X-Api-Key": api.raw_key}


@pytest.fixture
def miner_headers(fuzzing, make_api, register_miner):
    api = make_api("miner", "gpu-owner", miner_id="miner-1")
    register_miner(api)
    return {"X-Api-Key": api.raw_key, "X-Miner-ID": "miner-1"}


def not_a_server_error_but_a_pending_job(ctx, response, case):
    if response.status_code == 504 and response.json().get("error", {}).get("code") == "job_pending":
        return None
    return not_a_server_error(ctx, response, case)


def fuzz_every_operation(headers: dict) -> list[str]:
    """Each operation's failures, as schemathesis reports them (the first it finds per operation)."""
    failures = []
    for result in _schema().get_all_operations():
        operation = result.ok()
        cases = st.one_of(
            operation.as_strategy(GenerationMode.POSITIVE), operation.as_strategy(GenerationMode.NEGATIVE)
        )

        @given(case=cases)
        @settings(
            max_examples=2 * EXAMPLES,
            deadline=None,
            derandomize=True,
            database=None,
            suppress_health_check=list(HealthCheck),
        )
        def check(case):
            case.call_and_validate(
                headers=headers,
                excluded_checks=[positive_data_acceptance, not_a_server_error],
                additional_checks=[not_a_server_error_but_a_pending_job],
            )

        try:
            check()
        except Exception as failure:
            failures.append(f"{operation.label}: {failure}")
    return failures


def test_every_operation_answers_as_its_schema_says_to_a_client(client_headers):
    failures = fuzz_every_operation(client_headers)

    assert not failures, "\n\n".join(failures)


def test_every_operation_answers_as_its_schema_says_to_a_miner(miner_headers):
    failures = fuzz_every_operation(miner_headers)

    assert not failures, "\n\n".join(failures)


def test_a_job_through_its_life_answers_as_the_schema_says(client_headers, miner_headers, make_api):
    """Stateful: generated submissions, each followed from status through the miner's poll to its
    result and receipt, every answer checked against the schema (the states stateless fuzzing
    can't reach: a job running, completed, receipted)."""
    schema = _schema()
    miner = make_api("admin", "operator")
    receipted = []

    def step(path: str, method: str, headers: dict, **request):
        case = schema[path][method].Case(**request)
        response = case.call(headers=headers)
        # Who may call what is the authorization matrix's table; here the keys are real ones.
        case.validate_response(response, headers=headers, excluded_checks=[positive_data_acceptance, ignored_auth])
        return response

    @given(generated=schema["/v1/jobs"]["POST"].as_strategy(GenerationMode.POSITIVE))
    @settings(max_examples=2 * EXAMPLES, deadline=None, derandomize=True, database=None)
    def life(generated):
        # The generated body, sent with the client's key alone.
        submitted = step("/v1/jobs", "POST", client_headers, body=generated.body, media_type="application/json")
        if submitted.status_code != 201:
            return
        job = submitted.json()
        job_path = {"job_id": job["job_id"]}
        step("/v1/jobs/{job_id}", "GET", client_headers, path_parameters=job_path)
        # miner-1 now serves exactly this job's model, with room for every constraint a job may name.
        miner.put(
            "/v1/miners/miner-1/capabilities",
            {"capabilities": {"models": [job["model"]], "gpus": [{"name": "x", "memory_mb": 10**8}]}},
            format="json",
        )
        polled = step("/v1/miners/poll", "POST", miner_headers, body={"max_jobs": 1})
        if polled.status_code == 204:
            return
        lease = polled.json()
        # The oldest queued job of the model comes first: every one of them is the client's.
        leased_path = {"job_id": lease["job_id"]}
        step(
            "/v1/miners/{job_id}/result",
            "POST",
            miner_headers,
            path_parameters=leased_path,
            body={"result": {"output": "ok"}, "lease_token": lease["lease_token"]},
        )
        step("/v1/jobs/{job_id}/status", "GET", client_headers, path_parameters=leased_path)
        step("/v1/jobs/{job_id}/result", "GET", client_headers, path_parameters=leased_path)
        receipt = step("/v1/jobs/{job_id}/receipt", "GET", client_headers, path_parameters=leased_path)
        receipted.append(receipt.status_code == 200)

    life()

    assert any(receipted), "no generated job lived to its receipt"
