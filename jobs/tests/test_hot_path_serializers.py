"""The two serializers that build their output directly (every submit, status poll and status
event; every poll that hands out work) must show exactly the fields they declare for the schema;
the bodies of polls and results read without their serializers must read as the serializers
read them."""

import uuid

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from jobs.api.miner_serializers import (
    LeasedJobSerializer,
    PollSerializer,
    ResultSerializer,
    ResultsSerializer,
    ResultWithJobSerializer,
    plain_poll,
    plain_result,
    plain_results,
)
from jobs.api.serializers import JobSerializer, JobSubmitSerializer, plain_submission
from jobs.services import job_claim
from tests.factories import JobFactory, MinerFactory


@pytest.mark.django_db
def test_job_view_shows_the_declared_fields():
    job = JobFactory(completed_by=MinerFactory(), payment_amount="1")
    assert list(JobSerializer(job).data) == list(JobSerializer().fields)


@pytest.mark.django_db
def test_leased_job_shows_the_declared_fields():
    miner = MinerFactory()
    job = JobFactory()
    (leased,) = job_claim(miner=miner, job_id=job.pk)
    assert list(LeasedJobSerializer(leased).data) == list(LeasedJobSerializer().fields)


# Bodies as the request parser hands them over (``StrictJSONParser`` refuses NUL and unpaired
# surrogates before any view reads them): what miners send, and what they should not.
_characters = st.characters(exclude_categories=("Cs",), exclude_characters="\x00")


def _str(max_size: int):
    return st.text(_characters, max_size=max_size)


_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | _str(5),
    lambda children: st.lists(children, max_size=3) | st.dictionaries(_str(5), children, max_size=3),
    max_leaves=8,
)
_token = st.one_of(_str(40), _json)
_uuid_text = st.uuids().map(str) | _str(40)


def _maybe(key, values):
    return st.one_of(st.just({}), values.map(lambda value: {key: value}))


_result_body = st.builds(
    lambda *parts: {k: v for part in parts for k, v in part.items()},
    _maybe("result", _json),
    _maybe("metrics", _json | st.dictionaries(_str(5), _json, max_size=3)),
    _maybe("signature", _json),
    _maybe("lease_token", _token),
    _maybe("job_id", _uuid_text),
    _maybe("extra", _json),
)


@settings(max_examples=300, deadline=None)
@given(st.one_of(_json, st.fixed_dictionaries({}, optional={"max_wait_seconds": _json, "max_jobs": _json})))
def test_a_plainly_valid_poll_reads_as_the_serializer_reads_it(body):
    plain = plain_poll(body)
    if plain is not None:
        serializer = PollSerializer(data=body)
        assert serializer.is_valid(), serializer.errors
        assert plain == serializer.validated_data


@settings(max_examples=300, deadline=None)
@given(_result_body)
def test_a_plainly_valid_result_reads_as_the_serializer_reads_it(body):
    plain = plain_result(body)
    if plain is not None:
        serializer = (ResultWithJobSerializer if "job_id" in body else ResultSerializer)(data=body)
        assert serializer.is_valid(), serializer.errors
        assert plain == serializer.validated_data


@settings(max_examples=200, deadline=None)
@given(st.one_of(_json, st.fixed_dictionaries({"results": st.lists(_result_body, max_size=4)})))
def test_plainly_valid_results_read_as_the_serializer_reads_them(body):
    plain = plain_results(body)
    if plain is not None:
        serializer = ResultsSerializer(data=body)
        assert serializer.is_valid(), serializer.errors
        assert plain == serializer.validated_data["results"]


def test_the_usual_bodies_are_read_plainly():
    assert plain_poll({}) == {"max_wait_seconds": 0.0, "max_jobs": 1}
    assert plain_poll({"max_wait_seconds": 15, "max_jobs": 10}) == {"max_wait_seconds": 15.0, "max_jobs": 10}
    body = {"result": {"output": "x"}, "metrics": {"units": 3}, "lease_token": "b5e8" * 9}
    assert plain_result(body) == body
    job_id = "0b9e5c1e-1c6e-4c1f-8d5e-2f0e6b1d9a10"
    assert plain_results({"results": [{**body, "job_id": job_id}]})[0]["job_id"] == uuid.UUID(job_id)


_text = st.one_of(st.sampled_from(["llama3.2", " llama3.2", "", "chat", "embedding", "x" * 201]), _str(8))
_params = st.one_of(
    st.fixed_dictionaries(
        {}, optional={"max_tokens": st.integers(-2, 5000), "temperature": _json, "stop": _json, "seed": _json}
    ),
    _json,
)
_submission = st.one_of(
    st.fixed_dictionaries(
        {
            "payload": st.one_of(
                _json, st.fixed_dictionaries({"prompt": _text, "model": _text}, optional={"type": _text})
            )
        },
        optional={"ttl_seconds": st.one_of(st.integers(-1, 10**7), _json), "constraints": _json, "priority": _json},
    ),
    st.fixed_dictionaries(
        {"prompt": st.one_of(_text, _json)},
        optional={"model": _text, "type": _text, "params": _params, "messages": _json},
    ),
)


@pytest.mark.django_db
@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(_submission)
def test_a_plainly_valid_submission_reads_as_the_serializer_reads_it(body):
    plain = plain_submission(body)
    if plain is not None:
        serializer = JobSubmitSerializer(data=body)
        assert serializer.is_valid(), serializer.errors
        assert plain == serializer.validated_data


@pytest.mark.django_db
def test_the_usual_submissions_are_read_plainly():
    cli = {"payload": {"type": "inference", "prompt": "hi", "model": "llama3.2"}, "ttl_seconds": 900, "constraints": {}}
    assert plain_submission(cli)["payload"] == {"type": "inference", "prompt": "hi", "model": "llama3.2"}
    tutorial = {"prompt": "hi", "model": "llama3.2", "params": {"max_tokens": 16}}
    assert plain_submission(tutorial)["payload"]["params"] == {"max_tokens": 16}
    assert plain_submission({"prompt": "hi", "model": "llama3.2", "params": {"max_tokens": 0}}) is None


@pytest.mark.django_db
@pytest.mark.parametrize("ttl", [None, 0, True, 1.5, "900"])
def test_a_submission_with_an_odd_ttl_is_left_to_the_serializer(ttl):
    assert plain_submission({"payload": {"prompt": "hi", "model": "llama3.2"}, "ttl_seconds": ttl}) is None
