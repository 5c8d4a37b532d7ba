"""``jobs.wakeup.on_queued``: how apps above jobs hear of queued work without jobs importing them."""

import pytest

from accounts.services import user_get_or_create
from jobs import wakeup
from jobs.services import job_submit


@pytest.fixture
def heard(monkeypatch):
    models = []
    monkeypatch.setattr(wakeup, "_queued_callbacks", [models.append])
    return models


def submit(model="llama3.2"):
    return job_submit(client=user_get_or_create(username="alice"), model=model, payload={"prompt": "x"})


@pytest.mark.django_db
def test_a_callback_hears_a_submitted_jobs_model_once_it_commits(heard, django_capture_on_commit_callbacks):
    with django_capture_on_commit_callbacks(execute=True):
        submit("llama3.2")
        assert heard == []

    assert heard == ["llama3.2"]


@pytest.mark.django_db
def test_a_failing_callback_never_fails_the_submission(monkeypatch, django_capture_on_commit_callbacks):
    def broken(model):
        raise RuntimeError("broker down")

    monkeypatch.setattr(wakeup, "_queued_callbacks", [broken])
    with django_capture_on_commit_callbacks(execute=True):
        submission = submit()

    assert submission.created


def test_inference_registers_its_worker_wake_up():
    from inference.tasks import wake_cluster_workers

    assert wake_cluster_workers in wakeup._queued_callbacks
