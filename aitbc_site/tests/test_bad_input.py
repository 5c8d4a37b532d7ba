"""Input the database cannot hold is a clear 4xx, never a 500."""

import logging
import uuid

import pytest
from rest_framework.test import APIClient

from core.api.parsers import MAX_JSON_DEPTH, RefusedJSON, accepted_unread, load_json

pytestmark = pytest.mark.django_db


@pytest.mark.parametrize(
    "path",
    ["/v1/models/a%00b", "/v1/payments/pay_%00", "/v1/receipts/rcpt_%00", "/v1/explorer/addresses/ait1%00"],
)
def test_a_nul_in_a_path_is_a_client_error(client_api, path):
    response = client_api.get(path)
    assert 400 <= response.status_code < 500
    assert "error_code" in response.json()


def test_an_offset_beyond_any_database_integer_is_an_empty_page():
    response = APIClient().get("/v1/explorer/blocks?offset=99999999999999999999")
    assert response.status_code == 200
    assert response.json()["items"] == []


def test_json_nested_too_deeply_is_422(client_api):
    body = "[" * 5000 + "]" * 5000
    response = client_api.generic("POST", "/v1/jobs", body, content_type="application/json")
    assert response.status_code == 422


@pytest.mark.parametrize("header", ["HTTP_X_API_KEY", "HTTP_X_SESSION_TOKEN"])
def test_a_nul_in_a_credential_is_refused_before_any_lookup(header):
    response = APIClient().get("/v1/jobs", **{header: "aitbc_\x00abc"})
    assert response.status_code == 422
    assert response.json()["error_code"] == "MALFORMED_REQUEST"


def test_a_block_number_in_other_digits_is_404():
    assert APIClient().get("/v1/explorer/blocks/²").status_code == 404


def assert_api_error(response, status_code: int, error_code: str) -> dict:
    assert response.status_code == status_code, response.content
    assert response["Content-Type"].startswith("application/json")
    body = response.json()
    assert body["error_code"] == error_code
    assert isinstance(body["detail"], str)
    return body


@pytest.mark.parametrize("depth", [65, 300, 950, 5000])
def test_json_nested_too_deeply_is_422_on_an_anonymous_route_and_logs_no_error(caplog, depth):
    body = '{"a":' * depth + "1" + "}" * depth

    response = APIClient().generic("POST", "/v1/auth/nonce", body, content_type="application/json")

    assert_api_error(response, 422, "MALFORMED_REQUEST")
    assert "64 levels" in response.json()["detail"]
    assert not [record for record in caplog.records if record.levelno >= logging.ERROR]


def test_json_nested_64_deep_is_accepted():
    document = load_json("[" * MAX_JSON_DEPTH + "]" * MAX_JSON_DEPTH)

    assert isinstance(document, list)
    with pytest.raises(RefusedJSON):
        load_json("[" * (MAX_JSON_DEPTH + 1) + "]" * (MAX_JSON_DEPTH + 1))


LONE_SURROGATE = "\\udc80"


@pytest.mark.parametrize(
    ("scope", "path", "body"),
    [
        ("client", "/v1/jobs", f'{{"prompt": "hi", "model": "{LONE_SURROGATE}"}}'),
        ("miner", "/v1/miners/register", f'{{"capabilities": {{"gpus": [{{"name": "{LONE_SURROGATE}"}}]}}}}'),
        ("miner", "/v1/miners/register", f'{{"capabilities": {{"models": ["m"]}}, "region": "{LONE_SURROGATE}"}}'),
        ("miner", "/v1/miners/poll", f'{{"miner_id": "{LONE_SURROGATE}"}}'),
        (
            "client",
            "/v1/payments",
            f'{{"job_id": "{uuid.uuid4()}", "amount": 1, "payment_method": "{LONE_SURROGATE}"}}',
        ),
        ("client", "/v1/jobs", f'{{"prompt": "hi", "model": "m", "params": {{"{LONE_SURROGATE}": 1}}}}'),
    ],
)
def test_a_lone_surrogate_in_a_json_body_is_422(make_api, scope, path, body):
    api = make_api(scope, f"{scope}-user", miner_id="rig-1" if scope == "miner" else None)

    response = api.generic("POST", path, body, content_type="application/json")

    assert_api_error(response, 422, "MALFORMED_REQUEST")
    assert "surrogate" in response.json()["detail"]


@pytest.mark.parametrize(
    ("path", "headers"),
    [
        ("/v1/jobs?model=%00", {}),
        ("/v1/miners/poll?miner_id=%00", {}),
        ("/v1/explorer/blocks/a%00b", {}),
        ("/v1/miners/poll", {"HTTP_X_MINER_ID": "rig\x00"}),
        ("/v1/miners/poll", {"HTTP_X_MINER_ID": "rig\udc80"}),
        ("/v1/jobs", {"HTTP_IDEMPOTENCY_KEY": "\ud800"}),
    ],
)
def test_unstorable_text_in_the_path_query_or_headers_is_422(make_api, path, headers):
    api = make_api("miner" if "miners" in path else "client", "someone")

    assert_api_error(api.get(path, **headers), 422, "MALFORMED_REQUEST")


def test_a_body_over_the_limit_is_413_in_the_api_shape(settings):
    settings.DATA_UPLOAD_MAX_MEMORY_SIZE = 1_000_000
    body = '{"wallet_address": "' + "x" * 1_000_000 + '"}'

    response = APIClient().generic("POST", "/v1/auth/nonce", body, content_type="application/json")

    assert_api_error(response, 413, "REQUEST_TOO_LARGE")


def test_a_ten_megabyte_body_is_413_with_the_default_limit(client_api):
    response = client_api.generic("POST", "/v1/jobs", "x" * 10_000_000, content_type="application/json")

    assert_api_error(response, 413, "REQUEST_TOO_LARGE")


def test_too_many_query_parameters_is_400_in_the_api_shape(client_api):
    query = "&".join(f"p{n}=1" for n in range(1100))

    assert_api_error(client_api.get(f"/v1/jobs?{query}"), 400, "TOO_MANY_FIELDS")


def test_a_host_not_served_is_400_in_the_api_shape():
    response = APIClient().get("/v1/explorer/stats", HTTP_HOST="evil.example.com")

    assert_api_error(response, 400, "INVALID_HOST")


def test_a_method_the_metrics_route_does_not_serve_is_405_in_the_api_shape():
    response = APIClient().post("/metrics")

    assert_api_error(response, 405, "METHOD_NOT_ALLOWED")
    assert response["Allow"] == "GET, HEAD"


@pytest.mark.parametrize(
    "query",
    [
        "offset=null",
        "offset=-1",
        "limit=0",
        "limit=ten",
        "offset=1&offset=2",
        "offset=%D9%A5",
        "to_time=",
        "from_time=",
    ],
)
def test_list_parameters_the_schema_does_not_allow_are_422(client_api, query):
    assert_api_error(client_api.get(f"/v1/jobs?{query}"), 422, "VALIDATION_ERROR")
    assert_api_error(client_api.get(f"/v1/jobs/history?{query}"), 422, "VALIDATION_ERROR")


@pytest.mark.parametrize("path", ["/v1/explorer/blocks?offset=null", "/v1/receipts?limit=-5"])
def test_pagination_parameters_the_schema_does_not_allow_are_422_everywhere(client_api, path):
    assert_api_error(client_api.get(path), 422, "VALIDATION_ERROR")


@pytest.mark.parametrize(
    "text",
    [
        '{"prompt": "a \\u0000 b"}',  # a NUL escaped
        '{"prompt": "' + LONE_SURROGATE + '"}',
        '{"prompt": "\u00e9t\u00e9"}',  # not ASCII
        '{"a": "' + "[" * 100 + '"}',  # brackets in a string, counted all the same
        "[" * (MAX_JSON_DEPTH + 1) + "]" * (MAX_JSON_DEPTH + 1),
    ],
)
def test_text_that_might_be_refused_is_walked(text):
    assert not accepted_unread(text)


def test_plain_ascii_text_of_few_brackets_is_not_walked():
    assert accepted_unread('{"payload": {"prompt": "hi", "model": "m"}, "ttl_seconds": 900}')
    assert accepted_unread("[" * MAX_JSON_DEPTH + "]" * MAX_JSON_DEPTH)


def test_a_plain_body_is_not_walked_and_the_others_are(client_api, monkeypatch):
    from core.api import parsers

    walked = []
    check_json = parsers.check_json
    monkeypatch.setattr(parsers, "check_json", lambda document: walked.append(document) or check_json(document))
    assert client_api.post("/v1/jobs", {"prompt": "hi", "model": "m"}, format="json").status_code == 201
    assert walked == []
    body = '{"prompt": "\\u0068i", "model": "m"}'
    assert client_api.generic("POST", "/v1/jobs", body, content_type="application/json").status_code == 201
    assert walked == [{"prompt": "hi", "model": "m"}]
    nul = '{"prompt": "a\\u0000", "model": "m"}'
    assert_api_error(
        client_api.generic("POST", "/v1/jobs", nul, content_type="application/json"), 422, "MALFORMED_REQUEST"
    )


@pytest.mark.parametrize(
    ("body", "detail"),
    [
        (
            b"{not json",
            "JSON parse error - Expecting property name enclosed in double quotes: line 1 column 2 (char 1)",
        ),
        (b'{"a": NaN}', "JSON parse error - Out of range float values are not JSON compliant: 'NaN'"),
        (b'{"a": "\xff"}', "JSON parse error - 'utf-8' codec can't decode byte 0xff in position 7: invalid start byte"),
    ],
)
def test_malformed_bodies_keep_drfs_messages(client_api, body, detail):
    response = client_api.generic("POST", "/v1/jobs", body, content_type="application/json")
    assert assert_api_error(response, 422, "MALFORMED_REQUEST")["detail"] == detail
