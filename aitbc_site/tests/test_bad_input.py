"""Input the database cannot hold is a clear 4xx, never a 500."""

import pytest
from rest_framework.test import APIClient

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
def test_a_nul_in_a_credential_is_401(header):
    response = APIClient().get("/v1/jobs", **{header: "aitbc_\x00abc"})
    assert response.status_code == 401


def test_a_block_number_in_other_digits_is_404():
    assert APIClient().get("/v1/explorer/blocks/²").status_code == 404
