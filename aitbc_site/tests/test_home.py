import re

from django.contrib.staticfiles import finders

from explorer.services import block_seal
from jobs.models import JobStatus
from payments.selectors import wallet_of
from payments.templatetags.credits import credits


def test_anonymous_visitors_get_the_public_landing_page_with_figures_and_links(client, alice, miner, finished_job):
    finished_job(alice)
    finished_job(alice)
    block_seal()
    response = client.get("/")
    assert response.status_code == 200
    assert response.templates[0].name == "aitbc_site/landing.html"
    content = response.content.decode()
    assert response.context["network"]["miners_online"] == 1
    assert response.context["network"]["jobs"]["completed"] == 2
    assert '<p class="big" id="figure-miners_online">1</p>' in content
    assert '<p class="big" id="figure-jobs_completed">2</p>' in content
    assert f'<p class="big" id="figure-receipts">{response.context["network"]["receipts"]}</p>' in content
    for link in ('href="/explorer/"', 'href="/network/"', 'href="/signup/"', 'href="/login/"', 'href="/docs"'):
        assert link in content, link
    assert "runminer --url http://testserver --api-key" in content, "how to join as a miner"
    assert "Hello," not in content


def test_every_link_of_the_landing_page_opens_for_an_anonymous_visitor(client, db):
    content = client.get("/").content.decode()
    links = set(re.findall(r'href="(/[^"#]*)"', content)) - {"/"}
    assert links
    for link in links:
        if link.startswith("/static/"):
            continue
        assert client.get(link).status_code in (200, 301, 302), link


def test_landing_page_lists_the_catalog_with_its_miners_online(client, miner):
    response = client.get("/")
    catalog = {model.name: model.online_miners for model in response.context["catalog"]}
    assert catalog and all(count >= 0 for count in catalog.values())
    content = response.content.decode()
    for name in catalog:
        assert f"<code>{name}</code>" in content, name


def test_landing_page_reads_a_fixed_number_of_queries(client, alice, finished_job, django_assert_max_num_queries):
    for _ in range(5):
        finished_job(alice)
    with django_assert_max_num_queries(10):
        assert client.get("/").status_code == 200


def test_signed_in_users_get_their_overview_at_the_root(browser, alice):
    response = browser.get("/")
    assert response.status_code == 200
    assert response.templates[0].name == "aitbc_site/overview.html"
    assert b"Hello, alice" in response.content
    assert b"Join as a miner" not in response.content


def test_overview_shows_recent_jobs_balance_and_the_network(browser, alice, finished_job, queued_job):
    done = finished_job(alice)
    waiting = queued_job(alice)
    response = browser.get("/")
    assert list(response.context["recent_jobs"]) == [waiting, done]
    assert response.context["job_counts"] == {"total": 2, "active": 1, "completed": 1}
    assert f"{credits(wallet_of(user=alice).balance)} AITBC".encode() in response.content
    assert waiting.status == JobStatus.QUEUED
    assert response.context["wallet"].balance < 100


def test_overview_reads_a_fixed_number_of_queries(browser, alice, finished_job, django_assert_max_num_queries):
    for _ in range(6):
        finished_job(alice)
    with django_assert_max_num_queries(13):  # the disabled webhooks' notice reads one more
        browser.get("/")


def test_the_favicon_is_an_svg_linked_from_every_page_and_favicon_ico_redirects_to_it(client, db):
    response = client.get("/favicon.ico")
    assert response.status_code == 301
    assert response["Location"] == "/static/favicon.svg"
    assert '<link rel="icon" href="/static/favicon.svg" type="image/svg+xml">' in client.get("/login/").content.decode()
    assert finders.find("favicon.svg").endswith("static/favicon.svg")
