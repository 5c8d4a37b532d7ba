"""schemathesis over the whole OpenAPI schema, in process against the WSGI application.

Every operation gets schema-valid and schema-violating requests, as a client and as a miner;
each answer must not be a server error and must match the schema (a documented status, its body,
its headers, a violation refused). A business rule the schema can't state (a job names a model
somewhere) may refuse schema-valid input with a documented 422, so that check is left out.

``SCHEMA_FUZZ_EXAMPLES`` (default 4 per operation and mode) sets how hard it looks: see the README.
"""

import os

import pytest
import schemathesis
from django.core.handlers.wsgi import WSGIHandler
from drf_spectacular.generators import SchemaGenerator
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis.generation import GenerationMode
from schemathesis.specs.openapi.checks import positive_data_acceptance

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
            case.call_and_validate(headers=headers, excluded_checks=[positive_data_acceptance])

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
