"""Calls run at once, each in a thread of its own, as requests in several server processes race."""

import threading
from collections.abc import Callable

from django.db import connections


def run_at_once(calls: list[Callable[[], object]], *, timeout: float = 60) -> list[Exception]:
    """Run each call in a thread of its own, all released together by a barrier, and wait for them
    (at most ``timeout`` seconds each). Each thread closes its database connections when it ends.
    Returns what the calls raised, for the test to check: a thread's failure must not pass unseen."""
    start = threading.Barrier(len(calls))
    errors: list[Exception] = []

    def run(call: Callable[[], object]) -> None:
        try:
            start.wait()
            call()
        except Exception as error:
            errors.append(error)
        finally:
            connections.close_all()

    threads = [threading.Thread(target=run, args=(call,)) for call in calls]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout)
    return errors
