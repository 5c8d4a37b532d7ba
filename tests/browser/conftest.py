"""Browser tests: Debian's Chromium, driven by Playwright, against the app served by daphne.

daphne runs in a subprocess on the test database (so tests are transactional), with the
embedded workers and an in-process inference host serving the tiny GPT-2.
"""

import os

import pytest
from django.conf import settings
from django.db import connection, connections

from aitbc_site.testing.processes import Daphne
from inference.testing import TINY

CHROMIUM = os.environ.get("CHROMIUM_PATH", "/usr/bin/chromium")

pytest.importorskip("playwright.sync_api", reason="pip install -r requirements-dev.txt")


def pytest_collection_modifyitems(config, items):
    if os.path.exists(CHROMIUM):
        return
    skip = pytest.mark.skip(reason=f"needs Chromium at {CHROMIUM} (apt-get install chromium; .ci/run does)")
    for item in items:
        if "tests/browser" in str(item.path):
            item.add_marker(skip)


@pytest.fixture
def server(tiny_model, tmp_path):
    """The app served over HTTP and WebSockets by daphne on the test database."""
    database = connection.settings_dict
    env = {
        **os.environ,
        "DEBUG": "true",
        "SECRET_KEY": "browser-test-secret-key",
        "DATABASE_URL": f"postgres://{database['USER']}@{database['HOST']}:{database['PORT']}/{database['NAME']}",
        "DATABASE_POOL": "false",
        "AITBC_DATA_DIR": str(tmp_path),
        "AITBC_EMBEDDED_WORKERS": "true",
        "AGENT_EMBEDDED": "false",  # its agent would join the miners the pages count
        "INFERENCE_MODELS": TINY,
        "MODEL_CACHE_DIR": str(tmp_path / "models"),
        "ALLOWED_HOSTS": "127.0.0.1,localhost",
    }
    env.pop("DRAMATIQ_BROKER_URL", None)
    if settings.REDIS_URL:
        env["REDIS_URL"] = settings.REDIS_URL
    server = Daphne(env, log_dir=tmp_path)
    try:
        server.start(timeout=30)
        yield server
    finally:
        server.stop(timeout=3)
        print("daphne's log:\n" + server.log(5000))  # shown when the test fails


@pytest.fixture
def server_url(server):
    return server.url


@pytest.fixture
def browser(transactional_db):
    """Chromium, for one test: Playwright's sync API runs an event loop in this thread while it
    lives, so the test's own ORM calls are allowed meanwhile, and it stops before the database
    is flushed (and before any other test runs)."""
    from playwright.sync_api import sync_playwright

    previous = os.environ.get("DJANGO_ALLOW_ASYNC_UNSAFE")
    os.environ["DJANGO_ALLOW_ASYNC_UNSAFE"] = "true"
    try:
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=["--no-sandbox"])
            yield browser
            browser.close()
            # The test's ORM calls ran inside Playwright's loop, on a connection of that context:
            # close it here, or the test database can't be dropped at the end of the run.
            connections.close_all()
    finally:
        if previous is None:
            del os.environ["DJANGO_ALLOW_ASYNC_UNSAFE"]
        else:
            os.environ["DJANGO_ALLOW_ASYNC_UNSAFE"] = previous


@pytest.fixture
def page(browser, server_url):
    context = browser.new_context(base_url=server_url)
    context.set_default_timeout(15_000)
    page = context.new_page()
    yield page
    context.close()


@pytest.fixture
def log_in():
    def log_in(page, username: str, password: str, path: str = "/login/"):
        page.goto(path)
        page.get_by_label("Username").fill(username)
        page.get_by_label("Password").fill(password)
        page.get_by_role("button", name="Log in").click()
        page.wait_for_load_state()

    return log_in
