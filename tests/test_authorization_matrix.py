"""Every route of the URL conf against every kind of caller, as one table.

A route added to the URL conf without a row here fails ``test_every_route_has_a_row``. Each cell
runs in a savepoint that is rolled back, so all of them meet the same world: alice's jobs (one
completed by miner-1 with a signed and sealed receipt, one queued and paid for, one running on
miner-1), bob (another client), miner-1 and miner-2 of two owners, an admin key, and alice
signed in to the browser (the session user).
"""

import json

import pytest
from django.contrib.admindocs.views import simplify_regex
from django.db import transaction
from django.urls import URLPattern, URLResolver, get_resolver, resolve
from rest_framework.test import APIClient
from rest_framework.views import APIView

from agents.services import agent_register, task_submit, workflow_create, workflow_execute
from catalog.models import CatalogModel
from explorer.models import BlockLeaf, LeafKind
from explorer.services import blocks_seal_pending
from jobs.models import Receipt
from miners.models import Miner
from payments.selectors import wallet_of
from swarm.models import MemberRole
from swarm.services import member_join, task_coordinate

pytestmark = [pytest.mark.postgres, pytest.mark.django_db]

CALLERS = ("anonymous", "client", "other_client", "miner", "other_miner", "admin", "session")
SECRET_PROMPT = "the client's secret prompt 7f3a"


def url_routes() -> dict[str, set[str]]:
    """Every route of the URL conf (the admin's aside) and the methods its view serves: for DRF
    views those it implements, for other views ``{"*"}`` (any one row covers them)."""
    routes: dict[str, set[str]] = {}

    def walk(patterns, prefix: str) -> None:
        for pattern in patterns:
            route = prefix + str(pattern.pattern)
            if isinstance(pattern, URLResolver):
                if route != "/admin/":
                    walk(pattern.url_patterns, route)
                continue
            assert isinstance(pattern, URLPattern)
            view_class = getattr(pattern.callback, "cls", None)
            if view_class is not None and issubclass(view_class, APIView):
                allowed = pattern.callback.initkwargs.get("http_method_names", view_class.http_method_names)
                methods = {m.upper() for m in allowed if m not in ("head", "options") and hasattr(view_class, m)}
            else:
                methods = {"*"}
            routes.setdefault(simplify_regex(route), set()).update(methods)

    walk(get_resolver().url_patterns, "/")
    return routes


@pytest.fixture
def world(settings, make_api, register_miner, submit_job, django_user_model):
    settings.RATE_LIMITS_ENABLED = False
    settings.MINER_MAX_POLL_WAIT_SECONDS = 0
    # No miner serves matrix-model: OpenAI-compatible requests answer 504 with their job at once.
    settings.OPENAI_QUEUE_TIMEOUT_SECONDS = 0
    callers = {
        "anonymous": APIClient(),
        "client": make_api("client", "alice"),
        "other_client": make_api("client", "bob"),
        "miner": make_api("miner", "gpu-owner", miner_id="miner-1"),
        "other_miner": make_api("miner", "gpu-other", miner_id="miner-2"),
        "admin": make_api("admin", "operator"),
    }
    alice = callers["client"]
    register_miner(callers["miner"], models=("llama3.2",), max_concurrent_jobs=4)
    register_miner(callers["other_miner"], models=("llama3.2",))
    CatalogModel.objects.create(name="matrix-model", task="chat", source_kind="hub", source="example/matrix")

    done = submit_job(alice, prompt=SECRET_PROMPT)["job_id"]
    poll = callers["miner"].post("/v1/miners/poll", {}, format="json").json()
    assert poll["job_id"] == done
    completed = callers["miner"].post(
        f"/v1/miners/{done}/result", {"result": {"output": "hello"}, "lease_token": poll["lease_token"]}, format="json"
    )
    assert completed.status_code == 200, completed.content
    blocks_seal_pending()
    running = submit_job(alice, prompt=SECRET_PROMPT)["job_id"]
    assert callers["miner"].post("/v1/miners/poll", {}, format="json").json()["job_id"] == running
    queued = submit_job(alice, prompt=SECRET_PROMPT, payment_amount="1")
    exchange = alice.post(
        "/v1/exchange/create-payment",
        {"user_id": alice.user.pk, "aitbc_amount": 1000, "btc_amount": 0.01},
        format="json",
    )
    assert exchange.status_code == 201, exchange.content
    agent_owner = django_user_model.objects.create(username="agent-runner")
    agent_register(owner=agent_owner, agent_id="matrix-agent", agent_type="worker")
    task = task_submit(client=alice.user, task_data={"prompt": SECRET_PROMPT}, priority="normal")
    workflow = workflow_create(
        owner=alice.user, name="matrix", steps={"a": {"type": "chat", "model": "matrix-model", "prompt": SECRET_PROMPT}}
    )
    execution = workflow_execute(workflow=workflow, client=alice.user, inputs={})
    webhook = alice.post("/v1/webhooks", {"url": WEBHOOK_URL, "events": ["job.completed"]}, format="json")
    assert webhook.status_code == 201, webhook.content
    member, _ = member_join(miner=Miner.objects.get(miner_id="miner-1"), role=MemberRole.MONITOR)
    member_join(miner=Miner.objects.get(miner_id="miner-2"), role=MemberRole.MONITOR, swarm_id=member.swarm_id)
    swarm_task = task_coordinate(
        client=alice.user, swarm=member.swarm, strategy="redundant", job_type="inference", model="llama3.2",
        payload={"type": "inference", "model": "llama3.2", "prompt": SECRET_PROMPT}, collaborators=2,
        timeout_seconds=600,
    )  # fmt: skip
    receipt = Receipt.objects.get(job_id=done)
    leaf = BlockLeaf.objects.filter(kind=LeafKind.RECEIPT, ref=receipt.pk).select_related("block").get()
    values = {
        "done": done,
        "running": running,
        "queued": queued["job_id"],
        "payment": queued["payment_id"],
        "exchange": exchange.json()["payment_id"],
        "receipt": receipt.pk,
        "user": alice.user.pk,
        "key": alice.api_key.pk,
        "height": leaf.block.height,
        "tx": leaf.leaf_hash,
        "address": wallet_of(user=alice.user).address,
        "document": receipt.served_document(),
        "agent": "matrix-agent",
        "task": str(task.job_id),
        "priority": "low",
        "workflow": str(workflow.pk),
        "execution": str(execution.pk),
        "webhook": webhook.json()["id"],
        "swarm": str(member.swarm_id),
        "swarm_task": str(swarm_task.pk),
    }
    return callers, values, alice.user


def caller_api(callers: dict, caller: str, session_user) -> APIClient:
    if caller != "session":
        return callers[caller]
    # Signed in afresh for every cell: a cell that signs out must not sign out the next.
    browser = APIClient()
    browser.force_login(session_user)
    return browser


def answer(api: APIClient, method: str, path: str, body) -> tuple[int, bytes]:
    """The status and body of one request, in a savepoint rolled back afterwards."""
    with transaction.atomic():
        response = api.generic(
            method, path, json.dumps(body) if body is not None else "", content_type="application/json"
        )
        transaction.set_rollback(True)
    return response.status_code, response.content


# What each caller must get, in the order of CALLERS.
PUBLIC = (200,) * 7
SUBMIT = {"prompt": "hi", "model": "llama3.2"}
RESULT = {"result": {"output": "ok"}}
TOKENS = {"tokens": [{"job_id": "{running}", "index": 0, "text": "ok"}]}
CHAT = {"model": "matrix-model", "messages": [{"role": "user", "content": "hi"}]}
AGENT = {"agent_id": "matrix-new", "agent_type": "worker"}
TASK = {"task_data": {"prompt": "hi"}, "priority": "normal"}
REPORT = {"agent_id": "{agent}", "result": "x"}
WORKFLOW = {"name": "w", "steps": {"a": {"type": "chat", "model": "matrix-model", "prompt": "hi"}}}
WEBHOOK_URL = "https://hooks.example.com/aitbc"
COORDINATE = {"swarm_id": "{swarm}", "task": {"prompt": "hi", "model": "llama3.2"}, "collaborators": 1}
SWARM_ROWS = [
    ("POST", "join", {"role": "monitor"}, (401, 403, 403, 201, 201, 404, 403)),
    ("POST", "{swarm}/leave", None, (401, 403, 403, 200, 200, 422, 403)),
    ("GET", "list", None, (401, 200, 200, 200, 200, 200, 200)),
    ("POST", "coordinate", COORDINATE, (401, 202, 202, 403, 403, 202, 202)),
    ("GET", "tasks/{swarm_task}/status", None, (401, 200, 404, 403, 403, 200, 200)),
    ("POST", "tasks/{swarm_task}/consensus", {}, (401, 200, 404, 403, 403, 200, 200)),
    ("POST", "tasks/{swarm_task}/choose", {"choice": 0}, (401, 409, 404, 403, 403, 409, 409)),
    ("POST", "tasks/{swarm_task}/cancel", None, (401, 200, 404, 403, 403, 200, 200)),
]
ROWS = [
    ("GET", "/v1/jobs", None, (401, 200, 200, 403, 403, 200, 200)),
    ("POST", "/v1/jobs", SUBMIT, (401, 201, 201, 403, 403, 201, 201)),
    ("GET", "/v1/jobs/history", None, (401, 200, 200, 403, 403, 200, 200)),
    ("GET", "/v1/jobs/{done}", None, (401, 200, 404, 403, 403, 200, 200)),
    ("DELETE", "/v1/jobs/{queued}", None, (401, 200, 404, 403, 403, 200, 200)),
    ("GET", "/v1/jobs/{done}/status", None, (401, 200, 404, 403, 403, 200, 200)),
    ("GET", "/v1/jobs/{done}/result", None, (401, 200, 404, 403, 403, 200, 200)),
    ("POST", "/v1/jobs/{queued}/cancel", None, (401, 200, 404, 403, 403, 200, 200)),
    ("GET", "/v1/jobs/{done}/receipt", None, (401, 200, 404, 403, 403, 200, 200)),
    ("GET", "/v1/jobs/{done}/receipts", None, (401, 200, 404, 403, 403, 200, 200)),
    ("POST", "/v1/client/jobs", SUBMIT, (401, 201, 201, 403, 403, 201, 201)),
    ("GET", "/v1/client/jobs/{done}/status", None, (401, 200, 404, 403, 403, 200, 200)),
    ("GET", "/v1/client/jobs/{done}/receipts", None, (401, 200, 404, 403, 403, 200, 200)),
    ("POST", "/v1/miners/register", {"capabilities": {"models": ["llama3.2"]}}, (401, 403, 403, 200, 200, 200, 403)),
    ("POST", "/v1/miners/heartbeat", {"inflight": 0}, (401, 403, 403, 200, 200, 404, 403)),
    ("GET", "/v1/miners/poll", None, (401, 403, 403, 200, 200, 404, 403)),
    ("POST", "/v1/miners/poll", {}, (401, 403, 403, 200, 200, 404, 403)),
    ("POST", "/v1/miners/tokens", TOKENS, (401, 403, 403, 200, 200, 404, 403)),
    ("POST", "/v1/miners/{running}/result", RESULT, (401, 403, 403, 200, 409, 200, 403)),
    (
        "POST",
        "/v1/miners/results",
        {"results": [{**RESULT, "job_id": "{running}"}]},
        (401, 403, 403, 200, 200, 404, 403),
    ),
    ("POST", "/v1/miners/{running}/fail", {"error_code": "INFERENCE_FAILED"}, (401, 403, 403, 200, 409, 200, 403)),
    ("POST", "/v1/miners/miner-1/jobs", None, (401, 403, 403, 200, 404, 200, 403)),
    ("GET", "/v1/miners/miner-1/jobs", None, (401, 403, 403, 200, 404, 200, 403)),
    ("POST", "/v1/miners/miner-1/earnings", None, (401, 403, 403, 200, 404, 200, 403)),
    ("GET", "/v1/miners/miner-1/earnings", None, (401, 403, 403, 200, 404, 200, 403)),
    (
        "PUT",
        "/v1/miners/miner-1/capabilities",
        {"capabilities": {"models": ["llama3.2"]}},
        (401, 403, 403, 200, 404, 200, 403),
    ),
    ("DELETE", "/v1/miners/miner-1", None, (401, 403, 403, 200, 404, 200, 403)),
    ("POST", "/v1/miner/register", {"capabilities": {"models": ["llama3.2"]}}, (401, 403, 403, 200, 200, 200, 403)),
    ("POST", "/v1/miner/heartbeat", {"inflight": 0}, (401, 403, 403, 200, 200, 404, 403)),
    ("GET", "/v1/miner/jobs", None, (401, 403, 403, 200, 200, 404, 403)),
    ("POST", "/v1/miner/result", {**RESULT, "job_id": "{running}"}, (401, 403, 403, 200, 409, 200, 403)),
    ("GET", "/v1/jobs/available", None, (401, 403, 403, 200, 200, 404, 403)),
    ("POST", "/v1/jobs/{queued}/claim", {}, (401, 403, 403, 200, 200, 404, 403)),
    ("POST", "/v1/jobs/{running}/complete", RESULT, (401, 403, 403, 200, 409, 200, 403)),
    ("GET", "/v1/models", None, (401, 200, 200, 200, 200, 200, 200)),
    ("GET", "/v1/models/matrix-model", None, (401, 200, 200, 200, 200, 200, 200)),
    ("POST", "/v1/chat/completions", CHAT, (401, 504, 504, 403, 403, 504, 504)),
    ("POST", "/v1/completions", {"model": "matrix-model", "prompt": "hi"}, (401, 504, 504, 403, 403, 504, 504)),
    ("POST", "/v1/embeddings", {"model": "matrix-model", "input": "hi"}, (401, 400, 400, 403, 403, 400, 400)),
    ("POST", "/v1/payments", {"job_id": "{running}", "amount": "1"}, (401, 201, 404, 403, 403, 404, 201)),
    ("GET", "/v1/payments/{payment}", None, (401, 200, 403, 403, 403, 200, 200)),
    ("GET", "/v1/payments/{payment}/status", None, (401, 200, 403, 403, 403, 200, 200)),
    ("GET", "/v1/payments/{payment}/receipt", None, (401, 200, 403, 403, 403, 200, 200)),
    ("POST", "/v1/payments/{payment}/release", None, (401, 409, 403, 403, 403, 409, 409)),
    ("POST", "/v1/payments/{payment}/refund", None, (401, 409, 403, 403, 403, 409, 409)),
    ("GET", "/v1/jobs/{queued}/payment", None, (401, 200, 404, 403, 403, 200, 200)),
    (
        "POST",
        "/v1/exchange/create-payment",
        {"user_id": "{user}", "aitbc_amount": 1000, "btc_amount": 0.01},
        (401, 201, 403, 403, 403, 201, 201),
    ),
    ("GET", "/v1/exchange/payment-status/{exchange}", None, (401, 200, 404, 403, 403, 200, 200)),
    (
        "POST",
        "/v1/exchange/confirm-payment/{exchange}",
        {"tx_hash": "ab" * 32, "confirmations": 6},
        (401, 403, 403, 403, 403, 200, 403),
    ),
    ("GET", "/v1/exchange/rates", None, PUBLIC),
    ("GET", "/v1/exchange/market-stats", None, PUBLIC),
    ("POST", "/v1/auth/nonce", {"wallet_address": "{address}"}, (201, 201, 201, 201, 201, 201, 201)),
    (
        "POST",
        "/v1/users/login",
        {"wallet_address": "{address}", "public_key": "00" * 32, "signature": "00" * 64},
        (401, 401, 401, 401, 401, 401, 401),
    ),
    (
        "POST",
        "/v1/login",
        {"wallet_address": "{address}", "public_key": "00" * 32, "signature": "00" * 64},
        (401, 401, 401, 401, 401, 401, 401),
    ),
    ("GET", "/v1/users/me", None, (401, 200, 200, 403, 403, 200, 200)),
    ("GET", "/v1/users/{user}/balance", None, (401, 200, 403, 403, 403, 200, 200)),
    ("GET", "/v1/users/{user}/transactions", None, (401, 200, 403, 403, 403, 200, 200)),
    ("POST", "/v1/logout", None, (401, 422, 422, 422, 422, 422, 200)),
    ("POST", "/v1/users/logout", None, (401, 422, 422, 422, 422, 422, 200)),
    ("GET", "/v1/receipts", None, (401, 200, 200, 403, 403, 200, 200)),
    ("POST", "/v1/receipts/verify", {"receipt": "{document}"}, PUBLIC),
    ("GET", "/v1/receipts/public-key", None, PUBLIC),
    ("GET", "/v1/receipts/{receipt}", None, (401, 200, 404, 200, 404, 200, 200)),
    ("GET", "/v1/receipts/{receipt}/proof", None, PUBLIC),
    ("GET", "/v1/receipts/{receipt}/opening", None, (401, 200, 404, 404, 404, 200, 200)),
    (
        "POST",
        "/v1/receipts/{receipt}/attestations",
        {"alg": "Ed25519", "key_id": "k", "sig": "s"},
        (401, 403, 403, 422, 403, 403, 403),
    ),
    ("GET", "/v1/stats", None, PUBLIC),
    ("GET", "/api/v1/blocks", None, PUBLIC),
    ("GET", "/v1/webhooks", None, (401, 200, 200, 403, 403, 200, 200)),
    ("POST", "/v1/webhooks", {"url": WEBHOOK_URL, "events": ["job.completed"]}, (401, 201, 201, 403, 403, 201, 201)),
    ("GET", "/v1/webhooks/{webhook}", None, (401, 200, 404, 403, 403, 404, 200)),
    ("DELETE", "/v1/webhooks/{webhook}", None, (401, 204, 404, 403, 403, 404, 204)),
    ("POST", "/v1/webhooks/{webhook}/test", None, (401, 202, 404, 403, 403, 404, 202)),
    ("POST", "/v1/webhooks/{webhook}/rotate-secret", None, (401, 200, 404, 403, 403, 404, 200)),
    ("POST", "/v1/webhooks/{webhook}/enable", None, (401, 200, 404, 403, 403, 404, 200)),
    ("GET", "/v1/webhooks/{webhook}/deliveries", None, (401, 200, 404, 403, 403, 404, 200)),
    *(
        row
        for prefix in ("/v1/explorer", "/explorer")
        for row in [
            ("GET", f"{prefix}/blocks", None, PUBLIC),
            ("GET", f"{prefix}/blocks/{{height}}", None, PUBLIC),
            ("GET", f"{prefix}/transactions", None, PUBLIC),
            ("GET", f"{prefix}/transactions/{{tx}}", None, PUBLIC),
            ("GET", f"{prefix}/transactions/{{tx}}/proof", None, PUBLIC),
            ("GET", f"{prefix}/addresses", None, PUBLIC),
            ("GET", f"{prefix}/addresses/{{address}}", None, PUBLIC),
            ("GET", f"{prefix}/receipts", None, PUBLIC),
            ("GET", f"{prefix}/stats", None, PUBLIC),
        ]
    ),
    ("GET", "/health", None, PUBLIC),
    ("GET", "/v1/health", None, PUBLIC),
    ("POST", "/agents/register", AGENT, (401, 403, 403, 403, 403, 200, 403)),
    ("POST", "/agents/discover", {"agent_type": "worker"}, (401, 200, 200, 200, 200, 200, 200)),
    ("GET", "/agents/{agent}", None, (401, 200, 200, 200, 200, 200, 200)),
    ("PUT", "/agents/{agent}/status", {"status": "busy"}, (401, 403, 403, 403, 403, 200, 403)),
    ("POST", "/agents/{agent}/heartbeat", {}, (401, 403, 403, 403, 403, 200, 403)),
    ("POST", "/agents/{agent}/poll", {}, (401, 403, 403, 403, 403, 200, 403)),
    ("POST", "/v1/agents/register", AGENT, (401, 403, 403, 403, 403, 200, 403)),
    ("POST", "/v1/agents/discover", {"agent_type": "worker"}, (401, 200, 200, 200, 200, 200, 200)),
    ("GET", "/v1/agents/{agent}", None, (401, 200, 200, 200, 200, 200, 200)),
    ("PUT", "/v1/agents/{agent}/status", {"status": "busy"}, (401, 403, 403, 403, 403, 200, 403)),
    ("POST", "/v1/agents/{agent}/heartbeat", {}, (401, 403, 403, 403, 403, 200, 403)),
    ("POST", "/v1/agents/{agent}/poll", {}, (401, 403, 403, 403, 403, 200, 403)),
    ("POST", "/api/v1/agents/register", AGENT, (401, 403, 403, 403, 403, 200, 403)),
    ("POST", "/api/v1/agents/discover", {"agent_type": "worker"}, (401, 200, 200, 200, 200, 200, 200)),
    ("GET", "/api/v1/agents/{agent}", None, (401, 200, 200, 200, 200, 200, 200)),
    ("PUT", "/api/v1/agents/{agent}/status", {"status": "busy"}, (401, 403, 403, 403, 403, 200, 403)),
    ("POST", "/api/v1/agents/{agent}/heartbeat", {}, (401, 403, 403, 403, 403, 200, 403)),
    ("POST", "/api/v1/agents/{agent}/poll", {}, (401, 403, 403, 403, 403, 200, 403)),
    ("POST", "/tasks/submit", TASK, (401, 200, 200, 403, 403, 200, 200)),
    ("GET", "/tasks/status", None, (401, 200, 200, 200, 200, 200, 200)),
    ("GET", "/tasks/queues", None, (401, 200, 200, 200, 200, 200, 200)),
    ("GET", "/tasks/queues/stats", None, (401, 200, 200, 200, 200, 200, 200)),
    ("POST", "/tasks/queues/{priority}/clear", None, (401, 403, 403, 403, 403, 200, 403)),
    ("GET", "/tasks/{task}", None, (401, 200, 404, 404, 404, 200, 200)),
    # Nobody holds the task's lease: the admin, speaking for the agent, is refused.
    ("POST", "/tasks/{task}/result", REPORT, (401, 403, 403, 403, 403, 409, 403)),
    ("POST", "/tasks/{task}/fail", {**REPORT, "error": "x"}, (401, 403, 403, 403, 403, 409, 403)),
    ("POST", "/v1/tasks/submit", TASK, (401, 200, 200, 403, 403, 200, 200)),
    ("GET", "/v1/tasks/status", None, (401, 200, 200, 200, 200, 200, 200)),
    ("GET", "/v1/tasks/queues", None, (401, 200, 200, 200, 200, 200, 200)),
    ("GET", "/v1/tasks/queues/stats", None, (401, 200, 200, 200, 200, 200, 200)),
    ("POST", "/v1/tasks/queues/{priority}/clear", None, (401, 403, 403, 403, 403, 200, 403)),
    ("GET", "/v1/tasks/{task}", None, (401, 200, 404, 404, 404, 200, 200)),
    # Nobody holds the task's lease: the admin, speaking for the agent, is refused.
    ("POST", "/v1/tasks/{task}/result", REPORT, (401, 403, 403, 403, 403, 409, 403)),
    ("POST", "/v1/tasks/{task}/fail", {**REPORT, "error": "x"}, (401, 403, 403, 403, 403, 409, 403)),
    ("GET", "/v1/agents/workflows", None, (401, 200, 200, 403, 403, 200, 200)),
    ("POST", "/v1/agents/workflows", WORKFLOW, (401, 200, 200, 403, 403, 200, 200)),
    ("GET", "/v1/agents/workflows/{workflow}", None, (401, 200, 404, 403, 403, 200, 200)),
    ("PUT", "/v1/agents/workflows/{workflow}", {"description": "d"}, (401, 200, 404, 403, 403, 200, 200)),
    ("DELETE", "/v1/agents/workflows/{workflow}", None, (401, 204, 404, 403, 403, 204, 204)),
    ("POST", "/v1/agents/workflows/{workflow}/execute", {"inputs": {}}, (401, 200, 404, 403, 403, 200, 200)),
    ("GET", "/v1/agents/executions", None, (401, 200, 200, 403, 403, 200, 200)),
    ("GET", "/v1/agents/executions/{execution}", None, (401, 200, 404, 403, 403, 200, 200)),
    ("GET", "/v1/agents/executions/{execution}/status", None, (401, 200, 404, 403, 403, 200, 200)),
    ("POST", "/v1/agents/executions/{execution}/cancel", None, (401, 200, 404, 403, 403, 200, 200)),
    ("GET", "/v1/agents/executions/{execution}/logs", None, (401, 200, 404, 403, 403, 200, 200)),
    ("GET", "/v1/agents/executions/{execution}/receipt", None, (401, 425, 404, 403, 403, 425, 425)),
    ("GET", "/api/v1/agents/workflows", None, (401, 200, 200, 403, 403, 200, 200)),
    ("POST", "/api/v1/agents/workflows", WORKFLOW, (401, 200, 200, 403, 403, 200, 200)),
    ("GET", "/api/v1/agents/workflows/{workflow}", None, (401, 200, 404, 403, 403, 200, 200)),
    ("PUT", "/api/v1/agents/workflows/{workflow}", {"description": "d"}, (401, 200, 404, 403, 403, 200, 200)),
    ("DELETE", "/api/v1/agents/workflows/{workflow}", None, (401, 204, 404, 403, 403, 204, 204)),
    ("POST", "/api/v1/agents/workflows/{workflow}/execute", {"inputs": {}}, (401, 200, 404, 403, 403, 200, 200)),
    ("GET", "/api/v1/agents/executions", None, (401, 200, 200, 403, 403, 200, 200)),
    ("GET", "/api/v1/agents/executions/{execution}", None, (401, 200, 404, 403, 403, 200, 200)),
    ("GET", "/api/v1/agents/executions/{execution}/status", None, (401, 200, 404, 403, 403, 200, 200)),
    ("POST", "/api/v1/agents/executions/{execution}/cancel", None, (401, 200, 404, 403, 403, 200, 200)),
    ("GET", "/api/v1/agents/executions/{execution}/logs", None, (401, 200, 404, 403, 403, 200, 200)),
    ("GET", "/api/v1/agents/executions/{execution}/receipt", None, (401, 425, 404, 403, 403, 425, 425)),
    ("GET", "/health/live", None, PUBLIC),
    ("GET", "/health/ready", None, PUBLIC),
    ("GET", "/metrics", None, PUBLIC),
    ("GET", "/v1/metrics", None, PUBLIC),
    ("GET", "/openapi.json", None, PUBLIC),
    ("GET", "/docs", None, PUBLIC),
    ("GET", "/redoc", None, PUBLIC),
    # The landing page for anyone, the overview for a signed-in session.
    ("GET", "/", None, PUBLIC),
    ("GET", "/favicon.ico", None, (301,) * 7),
    ("GET", "/login/", None, (200, 200, 200, 200, 200, 200, 302)),
    ("POST", "/logout/", None, (302, 302, 302, 302, 302, 302, 302)),
    ("GET", "/signup/", None, PUBLIC),
    ("GET", "/keys/", None, (302, 302, 302, 302, 302, 302, 200)),
    ("POST", "/keys/{key}/revoke/", None, (302, 302, 302, 302, 302, 302, 302)),
    ("GET", "/jobs/", None, (302, 302, 302, 302, 302, 302, 200)),
    ("GET", "/jobs/{done}/", None, (302, 302, 302, 302, 302, 302, 200)),
    ("GET", "/wallet/", None, (302, 302, 302, 302, 302, 302, 200)),
    ("GET", "/miners/", None, (302, 302, 302, 302, 302, 302, 200)),
    ("GET", "/agents/", None, (302, 302, 302, 302, 302, 302, 200)),
    ("GET", "/workflows/{workflow}/", None, (302, 302, 302, 302, 302, 302, 200)),
    ("GET", "/executions/{execution}/", None, (302, 302, 302, 302, 302, 302, 200)),
    ("GET", "/swarms/", None, (302, 302, 302, 302, 302, 302, 200)),
    ("GET", "/swarms/{swarm}/", None, (302, 302, 302, 302, 302, 302, 200)),
    ("GET", "/swarms/tasks/{swarm_task}/", None, (302, 302, 302, 302, 302, 302, 200)),
    ("GET", "/network/", None, PUBLIC),
    ("GET", "/explorer/", None, PUBLIC),
    ("GET", "/explorer/blocks/", None, (302, 302, 302, 302, 302, 302, 302)),
    ("GET", "/explorer/blocks/{height}/", None, PUBLIC),
    ("GET", "/explorer/transactions/{tx}/", None, PUBLIC),
    ("GET", "/explorer/addresses/{address}/", None, PUBLIC),
    ("GET", "/explorer/receipts/", None, PUBLIC),
    *(
        (method, f"{prefix}{route}", body, expected)
        for prefix in ("/v1/swarm/", "/swarm/")
        for method, route, body, expected in SWARM_ROWS
    ),
]


def fill(template, values: dict):
    if template == "{document}":
        return values["document"]
    if isinstance(template, str):
        filled = template.format(**values)
        return int(filled) if template == "{user}" else filled
    if isinstance(template, dict):
        return {key: fill(value, values) for key, value in template.items()}
    if isinstance(template, list):
        return [fill(item, values) for item in template]
    return template


def test_every_route_has_a_row():
    job_id, number = "00000000-0000-0000-0000-000000000000", "1"
    values = {"done": job_id, "running": job_id, "queued": job_id, "user": number, "key": number, "height": number}
    values.update({"agent": "x", "task": job_id, "priority": "low", "workflow": job_id, "execution": job_id})
    values.update({"webhook": job_id, "swarm": job_id, "swarm_task": job_id})
    values.update({name: "x" for name in ("payment", "exchange", "receipt", "tx", "address")})
    rows: dict[str, set[str]] = {}
    for method, template, _, _ in ROWS:
        route = simplify_regex("/" + resolve(template.format(**values)).route)
        rows.setdefault(route, set()).add(method)

    routes = url_routes()

    assert set(routes) == set(rows), "routes without a row, or rows for no route"
    missing = {route: methods - rows[route] for route, methods in routes.items() if methods - rows[route] - {"*"}}
    assert not missing, f"methods without a row: {missing}"


def test_every_caller_gets_what_its_row_says_and_never_another_tenants_data(world):
    callers, values, session_user = world
    wrong = []
    for method, template, body, expected in ROWS:
        path = fill(template, values)
        for caller, expected_status in zip(CALLERS, expected, strict=True):
            status_code, content = answer(caller_api(callers, caller, session_user), method, path, fill(body, values))
            if status_code != expected_status:
                wrong.append(f"{method} {template} as {caller}: {status_code}, expected {expected_status}")
            # Miners see queued jobs' payloads: they are there to run them.
            if caller in ("anonymous", "other_client") and SECRET_PROMPT.encode() in content:
                wrong.append(f"{method} {template} as {caller}: shows the client's prompt")

    assert not wrong, "\n".join(wrong)
