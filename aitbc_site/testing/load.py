"""Client load over HTTP, as a careful client sends it: every submission carries an
``Idempotency-Key`` and is retried with it until the coordinator answers, so a job is accepted
once whatever breaks under the request. Every request sent is recorded with its outcome.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import random
import time
import uuid
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass, field

from aitbc_site.testing.http import CONNECTION_ERRORS, AsyncConn, build_request

REQUEST_TIMEOUT_S = 60


@dataclass(frozen=True)
class Attempt:
    route: str
    sent: float  # unix time
    answered: float
    status: int | None  # None: the connection broke or timed out

    @property
    def failed(self) -> bool:
        """The server failed it: a 5xx or a broken connection (429 is an answer, not a failure)."""
        return self.status is None or self.status >= 500


@dataclass
class Traffic:
    attempts: list[Attempt] = field(default_factory=list)

    def record(self, route: str, sent: float, status: int | None) -> None:
        self.attempts.append(Attempt(route, sent, time.time(), status))

    def summary(self) -> dict:
        statuses = Counter("conn" if a.status is None else str(a.status) for a in self.attempts)
        answered = [a for a in self.attempts if a.status != 429]
        ok = sum(1 for a in answered if not a.failed)
        return {
            "requests": len(self.attempts),
            "statuses": dict(statuses),
            "rate_limited": statuses.get("429", 0),
            "non_429_success_rate": round(ok / len(answered), 6) if answered else None,
        }


class Client:
    """One client's keep-alive connections to every server, used in turn after each failure."""

    def __init__(self, ports: list[int], key: str, traffic: Traffic):
        self.key, self.traffic = key, traffic
        self._ports = itertools.cycle(ports)
        self.port = next(self._ports)
        self.conn = AsyncConn(self.port)

    async def call(self, route: str, method: str, path: str, body: dict | None = None, headers: dict | None = None):
        raw = build_request(self.port, method, path, {"X-Api-Key": self.key, **(headers or {})}, body)
        sent = time.time()
        try:
            status, answer = await asyncio.wait_for(self.conn.request(raw, reconnect=False), REQUEST_TIMEOUT_S)
        except (*CONNECTION_ERRORS, TimeoutError):
            status, answer = None, b""
        self.traffic.record(route, sent, status)
        if status is None or status >= 500:
            self.conn.close()
            self.port = next(self._ports)
            self.conn = AsyncConn(self.port)
        return status, answer

    def close(self) -> None:
        self.conn.close()


@dataclass
class Submissions:
    """What the clients were told: the jobs accepted, and submissions refused or never answered."""

    accepted: dict[str, float] = field(default_factory=dict)  # job id -> unix time of the 201
    refused: list[tuple[int, str]] = field(default_factory=list)
    unanswered: int = 0
    # The last jobs accepted, with the key of the client that submitted each.
    recent: deque = field(default_factory=lambda: deque(maxlen=500))

    @property
    def accepted_ids(self) -> set[str]:
        return set(self.accepted)


def job_body(model: str, n: int, *, price: str | None = "0.01", max_tokens: int | None = None) -> dict:
    """Job ``n`` for ``model``: paid ``price`` (None: the catalog's price, or free), up to 10 attempts."""
    payload = {"type": "inference", "prompt": f"job {n}: say something", "model": model}
    if max_tokens is not None:
        payload["params"] = {"max_tokens": max_tokens, "temperature": 0}
    body = {"payload": payload, "ttl_seconds": 900, "max_attempts": 10}
    if price is not None:
        body["payment_amount"] = price
    return body


async def submit_jobs(
    clients: list[Client],
    submissions: Submissions,
    *,
    count: int,
    body: Callable[[int], dict],
    rate: float | None = None,
    give_up_after_s: float = 120,
) -> None:
    """Submit jobs ``body(0)`` to ``body(count - 1)`` from the clients concurrently, at ``rate`` per
    second when given (else as fast as they are answered). Each retries its job under one
    ``Idempotency-Key`` until it gets 201, a refusal (4xx but 429), or ``give_up_after_s`` passes."""
    numbers = iter(range(count))
    start = time.monotonic()

    async def one_client(client: Client):
        for n in numbers:
            if rate:
                await asyncio.sleep(max(0.0, start + n / rate - time.monotonic()))
            await _submit_one(client, submissions, body(n), give_up_after_s)

    await asyncio.gather(*(one_client(client) for client in clients))


async def _submit_one(client: Client, submissions: Submissions, body: dict, give_up_after_s: float) -> None:
    headers = {"Idempotency-Key": uuid.uuid4().hex}
    deadline, backoff = time.monotonic() + give_up_after_s, 0.05
    while True:
        status, answer = await client.call("submit", "POST", "/v1/jobs", body, headers)
        if status == 201:
            job_id = json.loads(answer)["job_id"]
            submissions.accepted[job_id] = time.time()
            submissions.recent.append((job_id, client.key))
            return
        if status is not None and 400 <= status < 500 and status != 429:
            submissions.refused.append((status, answer[:300].decode(errors="replace")))
            return
        if time.monotonic() > deadline:
            submissions.unanswered += 1
            return
        await asyncio.sleep(backoff * random.uniform(0.5, 1.5))
        backoff = min(1.0, backoff * 2)


async def read_around(clients: list[Client], submissions: Submissions, stopping: asyncio.Event, *, pause_s: float):
    """What clients and visitors read meanwhile: their jobs, results and receipts, the job list, the
    explorer and the network stats. Answers are recorded, nothing is retried."""
    routes = [
        ("job", lambda job_id: f"/v1/jobs/{job_id}"),
        ("result", lambda job_id: f"/v1/jobs/{job_id}/result"),
        ("receipt", lambda job_id: f"/v1/jobs/{job_id}/receipt"),
        ("jobs", lambda _: "/v1/jobs?limit=20"),
        ("blocks", lambda _: "/v1/explorer/blocks?limit=10"),
        ("explorer receipts", lambda _: "/v1/explorer/receipts?limit=10"),
        ("stats", lambda _: "/v1/stats"),
    ]

    async def reader(client: Client):
        while not stopping.is_set():
            if submissions.recent:
                route, path = random.choice(routes)
                job_id, key = random.choice(submissions.recent)  # read as the job's own client
                await client.call(route, "GET", path(job_id), headers={"X-Api-Key": key})
            await asyncio.sleep(pause_s * random.uniform(0.5, 1.5))

    await asyncio.gather(*(reader(client) for client in clients))
