"""Live pages survive a server restart: their sockets reconnect by themselves."""

import re

from django.contrib.auth import get_user_model
from playwright.sync_api import expect

PASSWORD = "a-long-browser-password"


def test_network_page_reconnects_after_the_server_restarts(page, log_in, server):
    get_user_model().objects.create_user(username="erin", password=PASSWORD)
    log_in(page, "erin", PASSWORD)  # the dashboard socket wants a signed-in user
    page.goto("/network/")
    live = page.locator("#network-live")
    expect(live).to_have_text("Live.")

    server.stop(timeout=5)  # SIGTERM: daphne closes its sockets with 4503
    expect(live).to_have_text(re.compile("reconnecting"))

    server.start(timeout=30)  # the same port
    expect(live).to_have_text("Live.", timeout=30_000)
