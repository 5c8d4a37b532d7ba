"""Under daphne, a request goes through the middleware in one hop to a thread, not one per
middleware: WhiteNoise, sync-only, is innermost, so Django runs every middleware above it in
sync mode, in the request's thread."""

import asyncio

from asgiref.sync import SyncToAsync
from django.core.handlers.asgi import ASGIHandler


def hops_to_a_thread(path: str) -> tuple[int, int]:
    """(status, hops to a thread) of one ASGI request."""
    hops = 0
    call = SyncToAsync.__call__

    async def counting_call(self, *args, **kwargs):
        nonlocal hops
        hops += 1
        return await call(self, *args, **kwargs)

    scope = {
        "type": "http", "method": "GET", "path": path, "query_string": b"", "headers": [(b"host", b"testserver")],
        "server": ("testserver", 80), "client": ("127.0.0.1", 1234), "asgi": {"version": "3.0"},
        "http_version": "1.1", "scheme": "http", "root_path": "",
    }  # fmt: skip
    sent, body_sent = [], asyncio.Event()

    async def receive():
        if body_sent.is_set():  # the client stays connected
            await asyncio.Event().wait()
        body_sent.set()
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message):
        sent.append(message)

    async def request():
        SyncToAsync.__call__ = counting_call
        try:
            await ASGIHandler()(scope, receive, send)
        finally:
            SyncToAsync.__call__ = call

    asyncio.run(request())
    return sent[0]["status"], hops


def test_a_request_hops_to_a_thread_a_few_times_not_once_per_middleware():
    status, hops = hops_to_a_thread("/health/live")

    assert status == 200
    assert hops <= 6, hops  # 16 with WhiteNoise second from the top
