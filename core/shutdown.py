"""A stopping server answers what waits in it at once, so that a restart takes about a second.

On SIGTERM, before the server's own handling of it (which lets requests in flight finish, then
exits), every long poll waiting in the process answers ``204`` and every WebSocket is closed with
``4503`` (the server is going away: connect again). Miners poll or connect again and reach
another server behind the proxy, or this one once it is back; nothing is lost (a job claimed for
a closing socket goes back to the queue). gunicorn's workers hook in through
``gunicorn.conf.py``, daphne through ``asgi.py``.
"""

import asyncio
import json
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Awaitable, Callable

from django.urls import Resolver404, resolve

logger = logging.getLogger(__name__)

# How long a stopping daphne lets the requests in flight and its closing sockets finish.
DRAIN_SECONDS = 5.0
# How long it gives what it cancelled then to end, and how long after that it may take to exit
# before it leaves at once (a thread that waits for the stopped event loop would hold it for ever).
CANCEL_SECONDS = 1.0
EXIT_SECONDS = 5.0

_RESTARTING = json.dumps(
    {"detail": "The server is restarting: try again.", "error_code": "SERVICE_UNAVAILABLE"}
).encode()

_stopping = threading.Event()
_on_stop: list[Callable[[], None]] = []
_on_stop_async: list[Callable[[], Awaitable[None]]] = []
_served_while_stopping: set[str] = set()


def when_stopping(callback: Callable[[], None] | None = None, *, closing=None) -> None:
    """Register what a stopping process does: ``callback`` answers waiting long polls (called at
    once, from any thread), ``closing`` is awaited in the event loop to close open sockets. The
    apps that keep such waiters register here from their ``ready()``."""
    if callback is not None:
        _on_stop.append(callback)
    if closing is not None:
        _on_stop_async.append(closing)


def serve_while_stopping(*url_names: str) -> None:
    """Routes (by URL name) a stopping daphne still serves while it drains: those that finish the
    work in flight, such as a miner's result that a request waiting in the process answers with.
    Apps register theirs from ``ready()``; every other request is answered ``503``."""
    _served_while_stopping.update(url_names)


def _refused_while_stopping(scope) -> bool:
    if scope["type"] != "http" or not stopping():
        return False
    try:
        return resolve(scope["path"]).url_name not in _served_while_stopping
    except Resolver404:
        return True


def stopping() -> bool:
    """Whether this process is stopping: nothing may start waiting any more."""
    return _stopping.is_set()


def stop_waiting() -> None:
    """Answer every long poll of this process now, and those that come in from now on at once."""
    _stopping.set()
    for callback in _on_stop:
        callback()


def on_sigterm(before: Callable[[], None]) -> None:
    """On SIGTERM, start ``before`` (in a thread of its own: a signal handler must not wait for a
    lock), then run the handler installed now, the server's own."""
    server_handler = signal.getsignal(signal.SIGTERM)

    def handle(signum, frame):
        threading.Thread(target=before, name="aitbc-shutdown", daemon=True).start()
        if callable(server_handler):
            server_handler(signum, frame)

    signal.signal(signal.SIGTERM, handle)


class ConnectionsInFlight:
    """ASGI middleware around the whole application: it knows the requests and sockets being
    served, so that a stopping daphne can let them finish before it cancels what is left. A
    request arriving meanwhile is answered ``503`` at once (its client tries again, behind a proxy
    on another server), but on the routes that finish work in flight (``serve_while_stopping``);
    a socket is closed with 4503 (``core.sockets``)."""

    def __init__(self, application):
        self.application = application
        self.tasks: set[asyncio.Task] = set()

    async def __call__(self, scope, receive, send):
        if _refused_while_stopping(scope):
            headers = [(b"content-type", b"application/json"), (b"retry-after", b"1")]
            await send({"type": "http.response.start", "status": 503, "headers": headers})
            await send({"type": "http.response.body", "body": _RESTARTING})
            return None
        task = asyncio.current_task()
        self.tasks.add(task)
        try:
            return await self.application(scope, receive, send)
        finally:
            self.tasks.discard(task)

    async def drain(self, timeout: float) -> None:
        """Answer the long polls, close the sockets with 4503, and wait up to ``timeout`` seconds
        for all of them to finish."""
        stop_waiting()
        await asyncio.gather(*(closing() for closing in _on_stop_async))
        in_flight = {task for task in self.tasks if not task.done()}
        if in_flight:
            _, unfinished = await asyncio.wait(in_flight, timeout=timeout)
            if unfinished:
                logger.warning("stopping with %d request(s) or socket(s) unfinished", len(unfinished))
        # Cancel every task left on the loop, the async views that a request's sync middleware
        # waits for in its thread among them (daphne cancels only the requests): their threads
        # end, and the process can exit.
        left = asyncio.all_tasks() - {asyncio.current_task()}
        for task in left:
            task.cancel()
        if left:
            await asyncio.wait(left, timeout=CANCEL_SECONDS)


def drain_daphne_on_sigterm(application: ConnectionsInFlight) -> None:
    """Under daphne, SIGTERM (or Ctrl-C) drains ``application`` first, then stops daphne as its handler does.

    daphne's own handler stops the reactor at once, and daphne then cancels every connection
    still open: a long poll would keep the process alive until its wait ran out (its thread
    cannot be cancelled), and sockets would be cut without a close code.
    """
    reactor = sys.modules.get("twisted.internet.reactor")
    if reactor is None:
        return  # another ASGI server

    def install():
        server_handler = signal.getsignal(signal.SIGTERM)
        if not callable(server_handler):
            return  # daphne installed no signal handlers (``runserver``)
        draining: list[asyncio.Task] = []

        def stop():
            server_handler(signal.SIGTERM, None)
            threading.Thread(target=_exit_if_still_running, name="aitbc-exit", daemon=True).start()

        async def drain_then_stop():
            try:
                await application.drain(DRAIN_SECONDS)
            except Exception:
                logger.exception("draining before the stop failed")
            finally:
                stop()

        def on_sigterm_in_loop():
            if draining:  # a second SIGTERM: stop now
                stop()
            else:
                draining.append(asyncio.get_running_loop().create_task(drain_then_stop()))

        # Twisted's own way to leave a signal handler for the event loop. Ctrl-C (SIGINT) stops the
        # server the same way, unless it is ignored (as in a job a shell started in the background).
        for signum in (signal.SIGTERM, signal.SIGINT):
            if callable(signal.getsignal(signum)):
                signal.signal(signum, lambda signum, frame: reactor.callFromThread(on_sigterm_in_loop))

    # After startup: Twisted installs its signal handlers while it starts.
    reactor.callWhenRunning(install)


def _exit_if_still_running() -> None:
    """Leave at once if the interpreter's exit is still waiting, ``EXIT_SECONDS`` after the
    server stopped, for a thread that can't end."""
    time.sleep(EXIT_SECONDS)
    logger.warning("a thread still runs %.0f s after the server stopped: exiting without it", EXIT_SECONDS)
    for stream in (sys.stdout, sys.stderr):
        stream.flush()
    os._exit(0)
