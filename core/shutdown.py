"""A stopping server answers what waits in it at once, so that a restart takes about a second.

On SIGTERM, before the server's own handling of it (which lets requests in flight finish, then
exits), every long poll waiting in the process answers ``204`` and every WebSocket is closed with
``4503`` (the server is going away: connect again). Miners poll or connect again and reach
another server behind the proxy, or this one once it is back; nothing is lost (a job claimed for
a closing socket goes back to the queue). gunicorn's workers hook in through
``gunicorn.conf.py``, daphne through ``asgi.py``.
"""

import asyncio
import logging
import signal
import sys
import threading
from collections.abc import Awaitable, Callable

logger = logging.getLogger(__name__)

# How long a stopping daphne lets the requests in flight and its closing sockets finish.
DRAIN_SECONDS = 5.0

_stopping = threading.Event()
_on_stop: list[Callable[[], None]] = []
_on_stop_async: list[Callable[[], Awaitable[None]]] = []


def when_stopping(callback: Callable[[], None] | None = None, *, closing=None) -> None:
    """Register what a stopping process does: ``callback`` answers waiting long polls (called at
    once, from any thread), ``closing`` is awaited in the event loop to close open sockets. The
    apps that keep such waiters register here from their ``ready()``."""
    if callback is not None:
        _on_stop.append(callback)
    if closing is not None:
        _on_stop_async.append(closing)


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
    served, so that a stopping daphne can let them finish before it cancels what is left."""

    def __init__(self, application):
        self.application = application
        self.tasks: set[asyncio.Task] = set()

    async def __call__(self, scope, receive, send):
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


def drain_daphne_on_sigterm(application: ConnectionsInFlight) -> None:
    """Under daphne, SIGTERM drains ``application`` first, then stops daphne as its handler does.

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

        async def drain_then_stop():
            try:
                await application.drain(DRAIN_SECONDS)
            except Exception:
                logger.exception("draining before the stop failed")
            finally:
                server_handler(signal.SIGTERM, None)

        def on_sigterm_in_loop():
            if draining:  # a second SIGTERM: stop now
                server_handler(signal.SIGTERM, None)
            else:
                draining.append(asyncio.get_running_loop().create_task(drain_then_stop()))

        # Twisted's own way to leave a signal handler for the event loop.
        signal.signal(signal.SIGTERM, lambda signum, frame: reactor.callFromThread(on_sigterm_in_loop))

    # After startup: Twisted installs its signal handlers while it starts.
    reactor.callWhenRunning(install)
