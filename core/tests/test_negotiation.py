"""The API answers JSON: at once for clients that accept it (or say nothing), by DRF's negotiation
for the rest, which refuses what it cannot give."""

import pytest
from rest_framework.renderers import JSONRenderer
from rest_framework.request import Request
from rest_framework.test import APIRequestFactory

from core.api.negotiation import JSONFirstNegotiation


def chosen(accept: str | None, path: str = "/v1/jobs"):
    headers = {"HTTP_ACCEPT": accept} if accept is not None else {}
    request = Request(APIRequestFactory().get(path, **headers))
    return JSONFirstNegotiation().select_renderer(request, [JSONRenderer()])


@pytest.mark.parametrize("accept", [None, "*/*", "application/json", "application/*", "application/json; indent=2"])
def test_json_is_answered_to_clients_that_accept_it(accept):
    renderer, media_type = chosen(accept)
    assert isinstance(renderer, JSONRenderer)
    assert media_type.startswith("application/json")


def test_a_client_accepting_only_html_is_refused():
    from rest_framework.exceptions import NotAcceptable

    with pytest.raises(NotAcceptable):
        chosen("text/html")


@pytest.mark.django_db
def test_an_api_answer_to_a_client_accepting_only_html_is_406(client_api):
    response = client_api.get("/v1/jobs", HTTP_ACCEPT="text/html")
    assert (response.status_code, response.json()["error_code"]) == (406, "NOT_ACCEPTABLE")
