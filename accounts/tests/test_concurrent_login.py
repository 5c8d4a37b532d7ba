"""Logins racing with one signed nonce: the compare-and-set lets exactly one through."""

import pytest
from rest_framework.test import APIClient

from accounts.models import UserSession
from accounts.tests.conftest import ask_nonce, login_body
from tests.threads import run_at_once

pytestmark = [pytest.mark.postgres, pytest.mark.django_db(transaction=True)]

RACERS = 8


def test_concurrent_logins_with_one_nonce_let_exactly_one_in(wallet):
    body = login_body(wallet, ask_nonce(APIClient(), wallet.address))
    outcomes: list[tuple[int, str | None]] = []

    def race():
        response = APIClient().post("/v1/users/login", body, format="json")
        outcomes.append((response.status_code, response.json().get("error_code")))

    assert run_at_once([race] * RACERS) == []

    assert sorted(outcomes) == [(200, None)] + [(401, "NONCE_USED")] * (RACERS - 1)
    assert UserSession.objects.count() == 1
