import os
import subprocess
import sys

import pytest

from accounts.services import user_get_or_create
from inference import tasks
from jobs.services import job_submit


@pytest.mark.django_db
@pytest.mark.parametrize("served, announced", [({"llama3.2"}, ["llama3.2"]), (set(), [])])
def test_a_queued_job_wakes_the_cluster_workers_only_for_a_model_they_serve(
    monkeypatch, django_capture_on_commit_callbacks, served, announced
):
    calls = []
    monkeypatch.setattr(tasks, "cluster_served_models", lambda: frozenset(served))
    monkeypatch.setattr(tasks, "announce_to_workers", calls.append)

    with django_capture_on_commit_callbacks(execute=True):
        job_submit(client=user_get_or_create(username="alice"), model="llama3.2", payload={"prompt": "x"})

    assert calls == announced


def test_a_web_process_never_imports_torch():
    script = (
        "import sys, django; django.setup(); import aitbc_site.urls, aitbc_site.asgi, jobs.services; "
        "sys.exit('torch' in sys.modules)"
    )
    env = {"DJANGO_SETTINGS_MODULE": "aitbc_site.settings", "AITBC_EMBEDDED_WORKERS": "false"}
    result = subprocess.run([sys.executable, "-c", script], env={**os.environ, **env}, timeout=120)
    assert result.returncode == 0
