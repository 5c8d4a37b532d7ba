"""In-cluster inference: this process as a miner that loads catalog models and runs their jobs.

A host loads its models once, registers itself as an in-cluster miner and heartbeats. When a
job for one of its models is committed it drains that model's queue. Two signals say so: the
database's own announcement (``jobs.wakeup``: PostgreSQL NOTIFY, or in-process when embedded),
which a listener thread per model waits on, and the Dramatiq message on the model's queue
(``inference.tasks.run_inference``), which also carries housekeeping's re-sends.

A generation model's drain is one continuous batch (``engine.Generation``): between two decoding
steps it claims as many jobs as the batch has room for, in one ``SKIP LOCKED`` statement, whenever
a wake-up arrived or the last claim was full; they join the batch, and each job that finishes is
completed (receipt, settlement) at once, while the others go on. Tokens stream to each job's
channel group as they are decoded. Between steps the batch also lets go of the jobs it no longer
holds (cancelled, or re-queued after its lease lapsed). An embedding model's drain claims up to
``INFERENCE_BATCH_SIZE`` jobs, runs them as one batch, completes them in one transaction and
claims again. Wake-ups arriving meanwhile fold into the running drain, so one model never runs two
batches at once in a process.
"""

import logging
import threading
import time
from contextlib import suppress
from dataclasses import dataclass, field

from django.conf import settings
from django.db import close_old_connections, connection

from accounts.services import user_get_or_create
from catalog.selectors import catalog_entry
from core.errors import ServiceError
from inference import engine
from jobs import events, matching, wakeup
from jobs.models import Job
from jobs.selectors import leases_held
from jobs.services import TRUSTED_BLAMELESS_ERRORS, Outcome, job_claim, job_fail, jobs_complete, miner_heartbeat
from miners.capabilities import Capabilities
from miners.models import Miner
from miners.services import miner_register

logger = logging.getLogger(__name__)


# A drain runs every job queued for the model: it uses up every wake-up received before it.
WAKEUPS_ALL = 1 << 30


def worker_queue(model: str) -> str:
    """The Dramatiq queue whose messages wake the workers serving ``model``."""
    return f"inference.{model}"


@dataclass
class _Drain:
    lock: threading.Lock = field(default_factory=threading.Lock)
    running: bool = False
    pending: bool = False

    def take_pending(self) -> bool:
        """Whether a wake-up came since the last call."""
        with self.lock:
            pending, self.pending = self.pending, False
        return pending


class ClusterHost:
    """The models this process serves and the miner it claims their jobs as."""

    def __init__(self, model_names, *, miner_id: str, batch_size: int, device: str | None = None, listen: bool = True):
        self.model_names = list(dict.fromkeys(model_names))
        self.miner_id = miner_id
        self.batch_size = batch_size
        self.device = device or None
        self.listen = listen
        self.models: dict[str, engine.LoadedModel] = {}
        self.miner: Miner | None = None
        self._drains: dict[str, _Drain] = {}
        self._inflight: dict[str, Job] = {}
        self._inflight_lock = threading.Lock()
        self._stopping = threading.Event()
        self._threads: list[threading.Thread] = []

    # --- life cycle ----------------------------------------------------------------------

    def start(self) -> None:
        """Load the models, register as a miner and start heartbeating."""
        engine.use_threads(settings.INFERENCE_THREADS)
        for name in self.model_names:
            entry = catalog_entry(name)
            if entry is None or not entry.enabled:
                logger.error("not serving %r: it is not an enabled model of the catalog", name)
                continue
            try:
                self.models[name] = engine.load(
                    engine.ModelSpec.from_catalog(entry), cache_dir=settings.MODEL_CACHE_DIR, device=self.device
                )
            except engine.InferenceError as error:
                logger.error("not serving %r: %s", name, error.message)
        self._drains = {name: _Drain() for name in self.models}
        self.miner = self._register()
        self._threads = [threading.Thread(target=self._beat, name="inference-heartbeat", daemon=True)]
        if self.listen:
            self._threads += [
                threading.Thread(target=self._listen, args=(name,), name=f"inference-{name}", daemon=True)
                for name in self.models
            ]
        for thread in self._threads:
            thread.start()
        logger.info("in-cluster miner %s serves %s", self.miner_id, ", ".join(self.models) or "nothing")

    def _register(self) -> Miner:
        gpu = engine.gpu_info()
        tasks = sorted({model.spec.task for model in self.models.values()})
        capabilities = Capabilities(
            models=tuple(self.models),
            gpu_name=gpu["gpu_name"],
            vram_gb=round(gpu["memory_mb"] / 1024, 2),
            cuda_version=gpu.get("cuda_version", ""),
            max_concurrent_jobs=self.batch_size * max(1, len(self.models)),
            supported_tasks=tuple(tasks),
            raw={"models": list(self.models), "gpus": [gpu], "supported_tasks": tasks},
        )
        owner = user_get_or_create(username=settings.INFERENCE_OWNER_USERNAME)
        miner, _ = miner_register(owner=owner, miner_id=self.miner_id, capabilities=capabilities, in_cluster=True)
        return miner

    def stop(self, timeout: float = 30) -> None:
        """Stop: a running batch aborts and its jobs go back to the queue (``MINER_SHUTDOWN``)."""
        self._stopping.set()
        for thread in self._threads:
            thread.join(timeout)

    @property
    def stopping(self) -> bool:
        return self._stopping.is_set()

    def _beat(self) -> None:
        while not self._stopping.wait(settings.INFERENCE_HEARTBEAT_SECONDS):
            try:
                self.heartbeat()
            except Exception:
                logger.exception("heartbeat of %s failed", self.miner_id)
            finally:
                close_old_connections()
        connection.close()

    def _listen(self, model_name: str) -> None:
        """Drain ``model_name`` whenever one of its jobs is announced.

        A miner below full reputation claims a job only once it has waited its head start
        (``jobs.matching``): a drain woken by an announcement is followed by one more that long
        after it, or the jobs it could not claim yet would wait for the next announcement or
        housekeeping's re-send. Each job a drain left for its head start is claimable by then; one
        announced after the drain's last claim wakes the listener again."""
        look_again_at = None
        with wakeup.hub.waiter([model_name]) as waiter:
            while not self._stopping.is_set():
                wait = 1.0 if look_again_at is None else min(1.0, max(0.0, look_again_at - time.monotonic()))
                woken = waiter.wait(wait)
                due = look_again_at is not None and time.monotonic() >= look_again_at
                if not (woken or due):
                    continue
                look_again_at = None
                try:
                    if self.drain(model_name):
                        waiter.claimed(WAKEUPS_ALL)
                    else:  # nothing this host can run (constraints, head start): let an HTTP miner have it
                        waiter.pass_on()
                    head_start = self._head_start() if woken else 0.0
                    if head_start > 0:
                        look_again_at = time.monotonic() + head_start
                except Exception:  # a database hiccup: the jobs stay queued for the next wake-up
                    logger.exception("draining %s failed", model_name)
                finally:
                    close_old_connections()
        connection.close()

    def _head_start(self) -> float:
        """How long a job waits before this host's miner may claim it, by the reputation stored now
        (housekeeping and verdicts change it while the host runs)."""
        stored = Miner.objects.filter(pk=self.miner.pk).values_list("reputation_score", flat=True)
        self.miner.reputation_score = stored.first()
        return matching.head_start_seconds(self.miner)

    def heartbeat(self) -> int:
        """Report liveness and GPU use; extend the leases of the jobs this process is running."""
        with self._inflight_lock:
            job_ids = list(self._inflight)
        metadata = {"gpu": engine.gpu_info(), "models": list(self.models), "in_cluster": True}
        return miner_heartbeat(miner=self.miner, inflight=len(job_ids), metadata=metadata, job_ids=job_ids)

    # --- work ----------------------------------------------------------------------------

    def drain(self, model_name: str) -> int:
        """Run ``model_name``'s queued jobs until none is left; returns how many it claimed.

        A call while another thread drains the model only asks that thread to claim again.
        """
        state = self._drains.get(model_name)
        if state is None or self.stopping:
            return 0
        with state.lock:
            if state.running:
                state.pending = True
                return 0
            state.running = True
        if self.models[model_name].spec.task in engine.GENERATION_TASKS:
            run = self._run_continuously
        else:
            run = self._run_in_batches
        claimed = 0
        try:
            while True:
                state.take_pending()
                claimed += run(model_name, state)
                with state.lock:
                    if not state.pending or self.stopping:
                        state.running = False
                        return claimed
        except BaseException:
            with state.lock:
                state.running = False
            raise

    def _run_continuously(self, model_name: str, state: _Drain) -> int:
        """One continuous batch of ``model_name``'s jobs, until the queue is empty and the batch is done."""
        claimed = 0
        leased: dict[str, Job] = {}
        batch = engine.Generation(
            self.models[model_name],
            capacity=self.batch_size,
            on_tokens=events.publish_token_events,
            should_stop=self._stopping.is_set,
        )
        more_queued = True
        try:
            with batch:
                while True:
                    if not self.stopping and batch.room and (more_queued or state.take_pending()):
                        room = batch.room
                        jobs = job_claim(miner=self.miner, limit=room, models=[model_name])
                        more_queued = len(jobs) == room
                        claimed += len(jobs)
                        self._hold(leased, jobs)
                        self._report(leased, batch.add([(str(job.pk), job.payload) for job in jobs]))
                        if not batch and more_queued:  # every job claimed failed at once: claim the next ones
                            continue
                    if not batch:
                        return claimed
                    self._report(leased, self._step(batch))
                    self._let_go_of_lost_leases(batch, leased)
        finally:  # a database error ends the drain: the jobs left go back to the queue when their leases lapse
            self._forget(leased, list(leased))

    def _step(self, batch: engine.Generation) -> list[engine.Answer]:
        try:
            return batch.step()
        except Exception as error:  # the engine answers per job; this is a fault in the engine itself
            logger.exception("a step of %d %s jobs failed", len(batch), batch.model.spec.name)
            failure = engine.InferenceError("INFERENCE_FAILED", f"Inference failed: {error}"[:500])
            keys = batch.keys
            batch.drop(keys)
            return [engine.Answer(key=key, result=None, metrics={}, error=failure) for key in keys]

    def _let_go_of_lost_leases(self, batch: engine.Generation, leased: dict[str, Job]) -> None:
        """Take out of the batch the jobs this miner no longer holds (cancelled, re-queued after a
        lapsed lease): computing them further would be wasted, their results refused."""
        if not batch:
            return
        held = leases_held(miner=self.miner, leases={key: leased[key].lease_token for key in batch.keys})
        lost = [key for key in batch.keys if key not in held]
        if lost:
            logger.info("%d %s jobs left the batch: no longer this miner's", len(lost), batch.model.spec.name)
            batch.drop(lost)
            self._forget(leased, lost)

    def _run_in_batches(self, model_name: str, state: _Drain) -> int:
        claimed = 0
        while not self.stopping:
            jobs = job_claim(miner=self.miner, limit=self.batch_size, models=[model_name])
            if not jobs:
                break
            self.run_batch(model_name, jobs)
            claimed += len(jobs)
        return claimed

    def run_batch(self, model_name: str, jobs: list[Job]) -> None:
        """Run claimed jobs as one batch, then complete or fail each under its lease."""
        leased: dict[str, Job] = {}
        self._hold(leased, jobs)
        try:
            self._report(leased, self._execute(model_name, jobs))
        finally:
            self._forget(leased, list(leased))

    def _execute(self, model_name: str, jobs: list[Job]) -> list[engine.Answer]:
        items = [(str(job.pk), job.payload) for job in jobs]
        try:
            return engine.execute(
                self.models[model_name],
                items,
                on_tokens=events.publish_token_events,
                should_stop=self._stopping.is_set,
            )
        except Exception as error:  # the engine reports per item; this is a fault in the engine itself
            logger.exception("batch of %d %s jobs failed", len(jobs), model_name)
            failure = engine.InferenceError("INFERENCE_FAILED", f"Inference failed: {error}"[:500])
            return [engine.Answer(key=key, result=None, metrics={}, error=failure) for key, _ in items]

    def _hold(self, leased: dict[str, Job], jobs: list[Job]) -> None:
        """Count ``jobs`` as running here: heartbeats extend their leases."""
        held = {str(job.pk): job for job in jobs}
        leased.update(held)
        with self._inflight_lock:
            self._inflight.update(held)

    def _forget(self, leased: dict[str, Job], keys: list[str]) -> None:
        with self._inflight_lock:
            for key in keys:
                self._inflight.pop(key, None)
        for key in keys:
            leased.pop(key, None)

    def _report(self, leased: dict[str, Job], answers: list[engine.Answer]) -> None:
        """Complete (in one transaction) or fail each answered job under its lease, and forget it."""
        if not answers:
            return
        try:
            outcomes = [
                Outcome(
                    job_id=answer.key,
                    result=answer.result,
                    metrics=answer.metrics,
                    lease_token=leased[answer.key].lease_token,
                    job=leased[answer.key],
                )
                for answer in answers
                if answer.error is None
            ]
            if outcomes:
                jobs_complete(miner=self.miner, outcomes=outcomes)
            for answer in answers:
                if answer.error is not None:
                    with suppress(ServiceError):  # the lease lapsed meanwhile: the job is someone else's now
                        job_fail(
                            job_id=answer.key,
                            miner=self.miner,
                            error_code=answer.error.code,
                            error_message=answer.error.message,
                            lease_token=leased[answer.key].lease_token,
                            blame=answer.error.code not in TRUSTED_BLAMELESS_ERRORS,
                        )
        finally:
            self._forget(leased, [answer.key for answer in answers])


_host: ClusterHost | None = None
_host_lock = threading.Lock()


def current_host() -> ClusterHost | None:
    return _host


def start_host() -> ClusterHost | None:
    """Start this process's host for ``INFERENCE_MODELS`` (once), and drain what waits for it."""
    global _host
    with _host_lock:
        if _host is not None or not settings.INFERENCE_MODELS:
            return _host
        host = ClusterHost(
            settings.INFERENCE_MODELS,
            miner_id=settings.INFERENCE_MINER_ID,
            batch_size=settings.INFERENCE_BATCH_SIZE,
            device=settings.INFERENCE_DEVICE,
        )
        host.start()
        _host = host
    from inference.tasks import announce_to_workers

    for name in host.models:
        announce_to_workers(name)
    return host


def stop_host() -> None:
    global _host
    with _host_lock:
        host, _host = _host, None
    if host is not None:
        host.stop()
