"""An agent's miner row is its seat in the job machinery, not a GPU miner: no list or count of miners
shows it."""

import re

import pytest
from django.urls import reverse

from aitbc_site.admin import health
from jobs import feed
from jobs.selectors import online_miners_with_work
from miners.models import Miner

pytestmark = pytest.mark.django_db


@pytest.fixture
def one_of_each(settings, miner_api, register_miner, agent_api, register_agent):
    """One GPU miner and one agent, both online."""
    settings.EXPLORER_STATS_CACHE_SECONDS = 0
    register_miner(miner_api)
    register_agent(agent_api)
    assert Miner.objects.filter(status="online").count() == 2
    return Miner.objects.exclude(miner_id__startswith="agent:").get()


def test_the_network_figures_count_gpu_miners_only(client, one_of_each):
    stats = client.get("/v1/stats").json()
    assert (stats["miners_online"], stats["miners"]["online"]) == (1, 1)
    assert client.get(reverse("explorer:network")).context["snapshot"]["miners_online"] == 1
    assert client.get("/").context["network"]["miners_online"] == 1
    assert 'registered_miners{status="online"} 1.0' in client.get("/metrics").content.decode()


def test_the_staff_console_counts_gpu_miners_only(admin_client, one_of_each):
    page = admin_client.get(reverse("admin:index")).content.decode()
    assert re.search(r'id="glance-miners-online">1<', page)
    assert dict((state, count) for state, count, _ in health()["miners"])["online"] == 1
    link = next(link for state, _, link in health()["miners"] if state == "online")
    listed = admin_client.get(link).context["cl"].result_list
    assert [miner.miner_id for miner in listed] == [one_of_each.miner_id]


def test_the_staff_miner_list_filters_by_kind(admin_client, one_of_each):
    changelist = reverse("admin:miners_miner_changelist")
    gpu = admin_client.get(changelist, {"kind": "gpu"}).context["cl"].result_list
    agents = admin_client.get(changelist, {"kind": "agent"}).context["cl"].result_list
    assert [miner.miner_id for miner in gpu] == [one_of_each.miner_id]
    assert [miner.miner_id for miner in agents] == ["agent:hermes-agent"]


def test_the_miners_page_lists_gpu_miners_only(client, django_user_model, one_of_each):
    assert [miner.miner_id for miner in online_miners_with_work()] == [one_of_each.miner_id]
    client.force_login(django_user_model.objects.create_user(username="viewer"))
    assert [miner.miner_id for miner in client.get(reverse("jobs:miners")).context["miners"]] == [one_of_each.miner_id]


def test_the_live_feed_announces_gpu_miners_only(monkeypatch, one_of_each):
    posted = []
    monkeypatch.setattr(feed, "_post", posted.extend)
    agent_seat = Miner.objects.get(miner_id="agent:hermes-agent")

    feed.publish_miner_online(agent_seat, models=["agent-task"])
    feed.publish_miners_offline([agent_seat, one_of_each])
    feed.publish_miner_online(one_of_each, models=["llama3.2"])

    assert [(event["kind"], event["data"]["miner_id"]) for _, event in posted] == [
        ("miner.offline", one_of_each.miner_id),
        ("miner.online", one_of_each.miner_id),
    ]
