"""Wake-ups for miners long-polling for work.

A poll that finds nothing registers a :class:`Waiter` for the models its miner serves and
sleeps on it. Submitting or re-queueing a job announces the job's model: on PostgreSQL with
``NOTIFY`` inside the job's transaction (delivered at commit to every process, where a
listener thread relays it), otherwise in-process after commit (the embedded server is one
process). Each announcement wakes one waiter per process that serves the model; a woken
waiter that loses the race simply waits again. Nothing here is the only record of a job:
a missed wake-up costs latency until the next poll, never work.

Apps above ``jobs`` that run work themselves (``inference``'s in-cluster workers) register an
``on_queued`` callback in their ``AppConfig.ready()`` instead of being imported from here.
"""

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import partial, update_wrapper

from django.conf import settings
from django.db import connection, transaction

from catalog.selectors import catalog_names
from core import shutdown
from miners.capabilities import AGENT_TASK_MODEL

logger = logging.getLogger(__name__)

CHANNEL = "aitbc_jobs"
HELD_BACK_MEMORY = 1024


@dataclass
class Wakeup:
    """One announcement of work for ``model``, handed from waiter to waiter until one claims it."""

    model: str
    tried: set = field(default_factory=set)


class Waiter:
    """A sleeping poll for ``models``; with ``all_but`` instead, for every model but those (a miner
    that declares no models waits for the models outside the catalog). ``on_wake``, if given, is
    called (from the waking thread, so it must be quick and thread-safe) on each wake-up: an
    event loop's waiter wakes its loop with it rather than keeping a thread blocked in ``wait``."""

    def __init__(
        self,
        hub: "WakeupHub",
        models: Iterable[str],
        all_but: frozenset[str] | None = None,
        on_wake: Callable[[], None] | None = None,
    ):
        self.hub = hub
        self.models = frozenset(models)
        self.all_but = all_but
        self.on_wake = on_wake
        self._event = threading.Event()
        self._pending: list[Wakeup] = []

    def wants(self, model: str) -> bool:
        return model in self.models or (self.all_but is not None and model not in self.all_but)

    def wake(self, wakeup: Wakeup) -> None:
        with self.hub._lock:
            self._pending.append(wakeup)
        self._event.set()
        if self.on_wake is not None:
            try:
                self.on_wake()
            except Exception as error:
                # Its event loop is gone, so is whoever waited: its wake-ups go to other waiters.
                logger.warning("wake-up not delivered, waiter dropped: %r", error)
                self.hub.drop(self)

    def wait(self, timeout: float) -> bool:
        woke = self._event.wait(timeout)
        self._event.clear()
        return woke

    def claimed(self, count: int) -> None:
        """``count`` jobs were claimed after the wake-ups received so far: those are used up."""
        with self.hub._lock:
            del self._pending[:count]

    def pass_on(self) -> None:
        """Hand the unused wake-ups to other waiters (this miner could not take the work)."""
        with self.hub._lock:
            pending, self._pending = self._pending, []
        for wakeup in pending:
            self.hub.relay(wakeup)


class WakeupHub:
    def __init__(self):
        self._lock = threading.Lock()
        self._waiters: deque[Waiter] = deque()
        self._listener: threading.Thread | None = None
        self._stopping = threading.Event()
        # Jobs this process offers to a miner of its own (``hold_back``): job id → the model whose
        # announcement arrived meanwhile (None until it does); then those taken, whose
        # announcement may still arrive, the last ``HELD_BACK_MEMORY`` of them.
        self._held_back: dict[str, str | None] = {}
        self._taken: deque[str] = deque(maxlen=HELD_BACK_MEMORY)

    @contextmanager
    def waiter(
        self, models: Iterable[str], all_but: frozenset[str] | None = None, on_wake: Callable[[], None] | None = None
    ):
        waiter = Waiter(self, models, all_but, on_wake)
        self._ensure_listener()
        with self._lock:
            self._waiters.append(waiter)
        try:
            yield waiter
        finally:
            self.drop(waiter)

    def drop(self, waiter: Waiter) -> None:
        """``waiter`` waits no more: the wake-ups it did not use go to other waiters."""
        with self._lock:
            if waiter in self._waiters:
                self._waiters.remove(waiter)
        waiter.pass_on()

    def notify(self, model: str) -> None:
        """Wake the longest-waiting waiter serving ``model``."""
        self.relay(Wakeup(model))

    def relay(self, wakeup: Wakeup) -> None:
        with self._lock:
            untried = [w for w in self._waiters if id(w) not in wakeup.tried]
            # A waiter naming the model (or an agent's own name) before one waiting for any model
            # outside the catalog.
            chosen = next((w for w in untried if wakeup.model in w.models), None) or next(
                (w for w in untried if w.wants(wakeup.model)), None
            )
            if chosen is None:
                return
            wakeup.tried.add(id(chosen))
            # Rotate so the next job for this model wakes a different waiter.
            self._waiters.remove(chosen)
            self._waiters.append(chosen)
        chosen.wake(wakeup)

    def notify_all(self) -> None:
        with self._lock:
            waiters = list(self._waiters)
        for waiter in waiters:
            waiter.wake(Wakeup(model="", tried={id(w) for w in waiters}))

    def hold_back(self, job_ids: Iterable) -> None:
        """Keep the announcements of ``job_ids`` from this process's waiters until ``let_go``: the
        caller offers those jobs to a miner itself, so a waiter woken by them would only race it."""
        with self._lock:
            self._held_back.update((str(job_id), None) for job_id in job_ids)

    def let_go(self, job_ids: Iterable, *, taken: set) -> None:
        """The offers of ``hold_back`` are over: a job not in ``taken`` is announced to the waiters
        if its announcement came meanwhile (else it comes as usual); one taken is announced to none."""
        missed = []
        with self._lock:
            for job_id in map(str, job_ids):
                model = self._held_back.pop(job_id, None)
                if job_id in taken:
                    if model is None:
                        self._taken.append(job_id)
                elif model is not None:
                    missed.append(model)
        for model in missed:
            self.notify(model)

    def _announced(self, job_id: str, model: str) -> None:
        with self._lock:
            if job_id in self._held_back:
                self._held_back[job_id] = model
                return
            if job_id in self._taken:
                self._taken.remove(job_id)
                return
        self.notify(model)

    def stop_listener(self) -> None:
        """Close the LISTEN connection (tests drop their database afterwards)."""
        listener = self._listener
        if listener is not None:
            self._stopping.set()
            listener.join(timeout=5)
            self._stopping.clear()
            self._listener = None

    def _ensure_listener(self) -> None:
        if not settings.IS_POSTGRES or (self._listener is not None and self._listener.is_alive()):
            return
        with self._lock:
            if self._listener is None or not self._listener.is_alive():
                self._listener = threading.Thread(target=self._listen, name="aitbc-wakeup", daemon=True)
                self._listener.start()

    def _listen(self) -> None:
        import psycopg

        params = connection.get_connection_params()
        params.pop("cursor_factory", None)
        params.pop("context", None)
        while not self._stopping.is_set():
            try:
                with psycopg.connect(**params, autocommit=True) as conn:
                    conn.execute(f"LISTEN {CHANNEL}")
                    # Anything announced while we were not listening: let every waiter look.
                    self.notify_all()
                    while not self._stopping.is_set():
                        for notification in conn.notifies(timeout=1.0):
                            job_id, _, model = notification.payload.partition(" ")
                            self._announced(job_id, model)
            except Exception:
                logger.exception("wake-up listener lost its connection; reconnecting")
                time.sleep(1)


hub = WakeupHub()


def wait_for_work(
    models: Iterable[str],
    take: Callable[[], list],
    *,
    all_but: frozenset[str] | None = None,
    deadline: float,
    first: Callable[[], list] | None = None,
    look_every: float | None = None,
    look_again_after: float = 0,
) -> list:
    """The sleeping half of a long poll, with a waiter for ``models`` (or ``all_but``, as ``Waiter``):
    takes once more as it registers (``first``, else ``take``: work committed in between still wakes
    it), then sleeps until woken, or at most ``look_every`` seconds where given, and ``take``s again,
    until something is taken, ``deadline`` (``time.monotonic``) passes or the server stops.

    Wake-ups beyond what was taken go to the next waiter (another poller may meet constraints this
    one does not); leaving the waiter hands on the rest. With ``look_again_after`` (a miner's
    reputation head start: a job queued or announced is not yet its to claim), the first look and
    each wake-up that took nothing are followed by one more ``take`` that long after, so the job is
    not left for the next announcement or the deadline.
    """
    with hub.waiter(models, all_but) as waiter:
        taken = (first or take)()
        look_again_at = time.monotonic() + look_again_after if look_again_after > 0 else None
        # A stopping server wakes its waiters after it says so: none sleeps through the stop.
        while not taken and not shutdown.stopping():
            now = time.monotonic()
            remaining = deadline - now
            if remaining <= 0:
                break
            sleep = remaining if look_every is None else min(remaining, look_every)
            if look_again_at is not None:
                sleep = min(sleep, max(0.0, look_again_at - now))
            if not connection.in_atomic_block:
                connection.close()  # hand the connection back to the pool while asleep
            woken = waiter.wait(sleep)
            due = look_again_at is not None and time.monotonic() >= look_again_at
            if (woken or due or look_every is not None) and not shutdown.stopping():
                taken = take()
                waiter.claimed(len(taken))
                if not taken:
                    waiter.pass_on()
                if woken and look_again_after > 0:
                    look_again_at = time.monotonic() + look_again_after
                elif due:
                    look_again_at = None
    return taken


def miner_wait_scope(models: Iterable[str]) -> tuple[frozenset[str], frozenset[str] | None]:
    """The arguments of ``hub.waiter`` for a miner serving ``models``: one that declares none
    waits for every model outside the catalog, as it claims (``jobs.matching``)."""
    models = frozenset(models)
    return (models, None) if models else (models, catalog_names() | {AGENT_TASK_MODEL})


def announce(job) -> None:
    """Announce ``job``'s model once the current transaction commits.

    The payload names the job too: PostgreSQL folds identical notifications of one
    transaction into one, and a sweep re-queueing many jobs of a model must wake as many
    waiters."""
    announce_to(job.model, job_id=job.pk)


def announce_to(name: str, *, job_id) -> None:
    """Wake a waiter for ``name`` (a model, or another name waiters wait on: an agent waits on its
    own) once the current transaction commits, in whichever process it waits."""
    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_notify(%s, %s)", [CHANNEL, f"{job_id} {name}"])
    else:
        transaction.on_commit(lambda: hub.notify(name))


def announce_to_many(wakeups: list[tuple[str, object]]) -> None:
    """``announce_to`` for each ``(name, job_id)``: one statement on PostgreSQL."""
    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            cursor.execute(
                "SELECT pg_notify(%s, p) FROM unnest(%s::text[]) p",
                [CHANNEL, [f"{job_id} {name}" for name, job_id in wakeups]],
            )
    else:
        for name, job_id in wakeups:
            announce_to(name, job_id=job_id)


_queued_callbacks: list[Callable[[str], None]] = []


def on_queued(callback: Callable[[str], None]) -> None:
    """Have ``callback(model)`` called once each job queued for ``model`` (submitted or re-queued)
    is committed. A callback is a best-effort wake-up: an exception it raises is logged, never the
    caller's."""
    if callback not in _queued_callbacks:
        _queued_callbacks.append(callback)


def queued(model: str) -> None:
    """A job for ``model`` is being queued in the current transaction: run the ``on_queued``
    callbacks once it commits."""
    for callback in _queued_callbacks:
        # Named as the callback: a robust hook's failure is logged under its name.
        transaction.on_commit(update_wrapper(partial(callback, model), callback), robust=True)
