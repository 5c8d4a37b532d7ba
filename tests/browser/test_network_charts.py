"""In a real browser: the network page's sparklines fill their card as the feed's points arrive."""

import json
import re

import pytest
from django.contrib.auth import get_user_model
from playwright.sync_api import expect

pytestmark = [pytest.mark.postgres, pytest.mark.django_db(transaction=True)]

PASSWORD = "correct-horse-battery-staple"


def _stats(jobs_per_minute: float) -> str:
    figures = {
        "jobs_per_minute": jobs_per_minute,
        "queue_depth": {},
        "median_wait_seconds": None,
        "median_run_seconds": None,
        "tokens_per_second": 0,
        "miners_online": 1,
    }
    return json.dumps({"type": "dashboard.event", "kind": "network.stats", "data": figures})


def _extent(page, name: str) -> dict:
    return page.evaluate(
        """(name) => {
            const svg = document.getElementById("spark-" + name);
            const line = svg.querySelector("path");
            return {
                chart: svg.getBoundingClientRect().width,
                line: line ? line.getBoundingClientRect().width : 0,
                points: line ? line.getAttribute("d").split(/[ML]/).length - 1 : 0,
            };
        }""",
        name,
    )


def test_sparklines_span_the_cards_width_from_the_first_point_as_points_arrive(page, log_in):
    get_user_model().objects.create_user(username="hana", password=PASSWORD)
    log_in(page, "hana", PASSWORD)
    sockets = []

    def feed(socket):
        # The feed, played by the test: a network.stats event every time the test says so.
        sockets.append(socket)

    page.route_web_socket(re.compile(r"/ws/dashboard/$"), feed)
    page.goto("/network/")
    expect(page.locator("#network-live")).to_have_text("Live.")

    first = _extent(page, "jobs_per_minute")
    assert first["chart"] > 0
    assert first["line"] == pytest.approx(first["chart"], abs=2), "one point: a level line across the chart"

    for minute in range(12):  # a minute of updates, every 5 s
        sockets[0].send(_stats(jobs_per_minute=minute % 4))
    expect(page.locator("#stat-jobs_per_minute")).to_have_text("3")
    later = _extent(page, "jobs_per_minute")
    assert later["points"] == 13
    assert later["line"] == pytest.approx(later["chart"], abs=2), "not a dash at the right end"
