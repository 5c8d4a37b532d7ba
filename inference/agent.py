"""The external miner agent: a GPU owner's process that joins the network over HTTP.

It needs no database and no broker: it reads the catalog from ``GET /v1/models``, loads the
models it was asked to serve, registers and heartbeats. A polling thread long-polls for as many
jobs as there is room for; the main thread runs them on the same engine as the in-cluster
workers, one continuous batch per generation model that polled jobs join between decoding steps,
a streaming thread sends the text as it is decoded (over a ``ws/miners/?mode=tokens`` socket
where the coordinator offers one, else ``POST /v1/miners/tokens``), and a reporting thread posts
each result (or failure) under its lease as soon as the job ends.
"""

import json
import logging
import queue
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from pathlib import Path

import httpx
from websockets.exceptions import ConnectionClosed, InvalidHandshake, WebSocketException
from websockets.sync.client import ClientConnection, connect

from inference import engine

logger = logging.getLogger(__name__)

# Seconds between the retries of a request the coordinator did not answer (a restart).
RETRY_DELAYS = (0.5, 1, 2, 5, 10)


class AgentError(Exception):
    """The agent cannot start (a model it was asked for is unknown, the key is refused…)."""


class MinerAgent:
    """Serve ``models`` for the coordinator at ``url``, running up to ``batch_size`` jobs at once;
    ``stop()`` stops polling and ends once the running jobs are done (within a second when none
    runs), ``abort()`` ends now and hands them back to the queue. As it ends (stopped, or its
    ``max_jobs`` answered) the agent deregisters its miner: a long poll still waiting on the
    coordinator then takes no job for it (the next start registers it again)."""

    RETRY_DELAYS = RETRY_DELAYS

    def __init__(
        self,
        *,
        url: str,
        api_key: str,
        models: list[str],
        miner_id: str,
        batch_size: int = 8,
        poll_wait: float = 15,
        heartbeat_seconds: float = 20,
        cache_dir: Path | None = None,
        device: str | None = None,
        region: str = "",
        price: str | None = None,
        max_jobs: int | None = None,
        threads: int = 0,
        stream_tokens: bool = True,
        tokens_over: str = "auto",
        transport: httpx.BaseTransport | None = None,
    ):
        self.model_names = list(dict.fromkeys(models))
        self.miner_id = miner_id
        self.batch_size = batch_size
        self.poll_wait = poll_wait
        self.heartbeat_seconds = heartbeat_seconds
        self.cache_dir = cache_dir
        self.device = device
        self.region = region
        self.price = price
        self.max_jobs = max_jobs
        self.threads = threads
        self.http = coordinator_client(
            url, api_key, poll_wait=poll_wait, transport=transport, headers={"X-Miner-ID": miner_id}
        )
        self.models: dict[str, engine.LoadedModel] = {}
        self.jobs_done = 0
        self._stop = threading.Event()
        self._abort = threading.Event()
        self._polled: queue.Queue[dict] = queue.Queue()  # jobs leased, not yet started
        self._slots = threading.Condition()  # guards the two counts below
        self._inflight = 0  # jobs leased and not yet answered
        self._taken = 0  # jobs leased since the start
        self._poll_error: AgentError | None = None
        self._leases: dict[str, str] = {}  # job id → lease token, of the jobs running here
        self.tokens = TokenStream(self.http, over=tokens_over) if stream_tokens else None

    # --- control -------------------------------------------------------------------------

    def stop(self) -> None:
        self._stop.set()

    def abort(self) -> None:
        self._stop.set()
        self._abort.set()

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    # --- life cycle ----------------------------------------------------------------------

    def run(self) -> int:
        """Serve until stopped (or ``max_jobs`` were taken and answered); returns how many jobs this
        agent answered."""
        self.load_models()
        self.register()
        beat = threading.Thread(target=self._beat, name="miner-heartbeat", daemon=True)
        poller = threading.Thread(target=self._poll_for_room, name="miner-poll", daemon=True)
        beat.start()
        poller.start()
        if self.tokens is not None:
            self.tokens.start()
        try:
            with ThreadPoolExecutor(max_workers=1, thread_name_prefix="miner-report") as reporter:
                self._serve(reporter)
        finally:
            self._stop.set()
            with self._slots:
                self._slots.notify_all()
            beat.join(timeout=5)
            if self.tokens is not None:
                self.tokens.close()
            if self._poll_error is None:
                self._leave()
            self.http.close()
        if self._poll_error is not None:
            raise self._poll_error
        return self.jobs_done

    def load_models(self) -> None:
        engine.use_threads(self.threads)
        listed = {entry["id"]: entry for entry in self._request("GET", "/v1/models").json()["data"]}
        unknown = [name for name in self.model_names if name not in listed]
        if unknown:
            raise AgentError(f"Not in the coordinator's catalog: {', '.join(unknown)}. It offers: {', '.join(listed)}.")
        for name in self.model_names:
            spec = engine.ModelSpec.from_dict({**listed[name], "name": name})
            logger.info("loading %s from %s %s", name, spec.source_kind, spec.source)
            self.models[name] = engine.load(spec, cache_dir=self.cache_dir, device=self.device)

    def register(self) -> None:
        gpu = engine.gpu_info()
        capabilities = {
            "gpus": [{"name": gpu["gpu_name"], "memory_mb": gpu["memory_mb"]}],
            "models": list(self.models),
            "supported_tasks": sorted({model.spec.task for model in self.models.values()}),
            "max_concurrent_jobs": self.batch_size,
            "region": self.region,
        }
        if gpu.get("cuda_version"):
            capabilities["cuda"] = gpu["cuda_version"]
        if self.price is not None:
            capabilities["price"] = self.price
        body = {"miner_id": self.miner_id, "capabilities": capabilities, "concurrency": self.batch_size}
        self._request("POST", "/v1/miners/register", json=body)
        logger.info("registered as %s serving %s", self.miner_id, ", ".join(self.models))

    def _leave(self) -> None:
        """Deregister, once: the poll the poller may still be waiting on (the agent does not wait for
        it) can then claim nothing, and a job it claimed just before goes back to the queue."""
        try:
            self.http.delete(f"/v1/miners/{self.miner_id}", timeout=5).raise_for_status()
        except httpx.HTTPError as error:
            logger.warning("could not deregister %s: %s", self.miner_id, error)
        else:
            logger.info("deregistered %s", self.miner_id)

    def _beat(self) -> None:
        while not self._stop.wait(self.heartbeat_seconds):
            body = {"inflight": self._inflight, "status": "online", "metadata": {"gpu": engine.gpu_info()}}
            try:
                self.http.post("/v1/miners/heartbeat", json=body).raise_for_status()
            except httpx.HTTPError as error:
                logger.warning("heartbeat failed: %s", error)

    # --- work ----------------------------------------------------------------------------

    def _room(self) -> int:
        free = self.batch_size - self._inflight
        if self.max_jobs is not None:
            free = min(free, self.max_jobs - self._taken)
        return max(0, free)

    def _poll_for_room(self) -> None:
        """Long-poll for as many jobs as there is room for, whenever there is room, until stopped."""
        try:
            while True:
                with self._slots:
                    while not self.stopping and not self._room() and not self._all_taken():
                        self._slots.wait(timeout=1)
                    if self.stopping or self._all_taken():
                        return
                    room = self._room()
                jobs = self.poll(room)
                with self._slots:
                    self._inflight += len(jobs)
                    self._taken += len(jobs)
                for job in jobs:
                    self._polled.put(job)
        except AgentError as error:
            logger.error("polling stopped: %s", error)
            self._poll_error = error
            self.stop()
        finally:
            self._polled.put(None)  # tells the main thread no more jobs will come

    def _all_taken(self) -> bool:
        return self.max_jobs is not None and self._taken >= self.max_jobs

    def poll(self, max_jobs: int) -> list[dict]:
        """Lease up to ``max_jobs`` jobs, waiting up to ``poll_wait`` seconds for some.

        A coordinator that stops answers a waiting poll with 204 at once; the next poll waits
        for a coordinator to answer again (a restart), for as long as the agent is not stopped.
        """
        body = {"max_wait_seconds": self.poll_wait, "max_jobs": max_jobs}
        response = self._request("POST", "/v1/miners/poll", json=body, until_stopped=True)
        if response is None or response.status_code == 204:
            return []
        data = response.json()
        return data.get("jobs", [data])

    def _serve(self, reporter: ThreadPoolExecutor) -> None:
        """Run polled jobs until the poller is done and every job is answered: generation jobs join
        their model's continuous batch between steps, embedding jobs run as one batch per arrival."""
        with ExitStack() as stack:
            on_tokens = self._stream if self.tokens is not None else None
            batches = {
                name: stack.enter_context(
                    engine.Generation(
                        model, capacity=self.batch_size, on_tokens=on_tokens, should_stop=self._abort.is_set
                    )
                )
                for name, model in self.models.items()
                if model.spec.task in engine.GENERATION_TASKS
            }
            jobs_by_key: dict[str, dict] = {}
            polling = True
            while polling or any(batches.values()):
                if polling:
                    idle = not any(batches.values())
                    arrived, polling = self._take_polled(wait=idle)
                    if idle and not arrived and self.stopping:
                        break  # the poll in flight is not waited for: ``_leave`` ends what it could take
                    jobs_by_key.update((job["job_id"], job) for job in arrived)
                    self._leases.update((job["job_id"], job.get("lease_token") or "") for job in arrived)
                    for model_name, jobs in _by_model(arrived).items():
                        self._answered(self._start(model_name, jobs, batches), reporter, jobs_by_key)
                for batch in batches.values():
                    if batch:
                        self._answered(batch.step(), reporter, jobs_by_key)

    def _take_polled(self, *, wait: bool) -> tuple[list[dict], bool]:
        """The jobs polled since the last call (waiting a second for one when ``wait``), and
        whether the poller is still running."""
        jobs = []
        try:
            job = self._polled.get(timeout=1) if wait else self._polled.get_nowait()
            while job is not None:
                jobs.append(job)
                job = self._polled.get_nowait()
        except queue.Empty:
            return jobs, True
        return jobs, False

    def _start(self, model_name: str, jobs: list[dict], batches: dict) -> list[engine.Answer]:
        """Start ``jobs`` of one model; returns the answers known at once."""
        items = [(job["job_id"], job["payload"]) for job in jobs]
        model = self.models.get(model_name)
        if model is None:
            error = engine.InferenceError("MODEL_NOT_LOADED", f"This miner has not loaded {model_name}.")
            return [engine.Answer(key=key, result=None, metrics={}, error=error) for key, _ in items]
        if model_name in batches:
            return batches[model_name].add(items)
        return engine.execute(model, items, should_stop=self._abort.is_set)

    def _answered(self, answers: list[engine.Answer], reporter: ThreadPoolExecutor, jobs_by_key: dict) -> None:
        """Hand the answers to the reporting thread and free their room for the poller."""
        if not answers:
            return
        for answer in answers:
            self._leases.pop(answer.key, None)
            reporter.submit(self._report_logging_errors, jobs_by_key.pop(answer.key), answer)
        with self._slots:
            self._inflight -= len(answers)
            self._slots.notify_all()

    def _stream(self, events: list[engine.TokenEvent]) -> None:
        """The engine's new text of one decoding step, handed to the streaming thread."""
        self.tokens.put(
            [
                {
                    "job_id": event.key,
                    "index": event.index,
                    "text": event.text,
                    "completion_tokens": event.completion_tokens,
                    "lease_token": self._leases.get(event.key, ""),
                }
                for event in events
            ]
        )

    def _report_logging_errors(self, job: dict, answer: engine.Answer) -> None:
        if self.tokens is not None:
            # The job's last pieces go out before its result, whose status ends its streams.
            self.tokens.flush(timeout=10)
        try:
            self.report(job, answer)
        except AgentError as error:
            logger.error("could not report job %s: %s", job["job_id"], error)

    def report(self, job: dict, answer: engine.Answer) -> None:
        job_id, lease_token = job["job_id"], job.get("lease_token")
        if answer.error is None:
            path = f"/v1/miners/{job_id}/result"
            body = {"result": answer.result, "metrics": answer.metrics, "lease_token": lease_token}
        else:
            path = f"/v1/miners/{job_id}/fail"
            body = {
                "error_code": answer.error.code,
                "error_message": answer.error.message,
                "metrics": answer.metrics,
                "lease_token": lease_token,
            }
        # A result is worth its whole computation: retried while the coordinator is away, however
        # long, until the agent is told to stop at once (its lease lapsed meanwhile is a 409).
        response = self._request("POST", path, json=body, accept=(409,), until_stopped=True, stop=self._abort)
        if response is None:
            logger.error("job %s not reported: stopped while the coordinator did not answer", job_id)
        elif response.status_code == 409:
            logger.warning("job %s was no longer ours to report: %s", job_id, response.text[:200])
        else:
            self.jobs_done += 1
            outcome = "completed" if answer.error is None else f"failed ({answer.error.code})"
            logger.info("job %s (%s) %s", job_id, job.get("model", ""), outcome)

    def _request(
        self, method: str, path: str, *, accept=(), until_stopped=False, stop: threading.Event | None = None, **kwargs
    ) -> httpx.Response | None:
        """``request_retried`` (``until_stopped``: until ``stop``, the agent's stop unless given); a
        4xx answer other than 429 (unless in ``accept``) is fatal."""
        response = request_retried(
            self.http,
            method,
            path,
            stop=stop or self._stop,
            delays=self.RETRY_DELAYS,
            until_stopped=until_stopped,
            **kwargs,
        )
        if response is None or response.status_code < 400 or response.status_code in accept:
            return response
        raise AgentError(f"{method} {path}: {response.status_code} {response.text[:300]}")


def coordinator_client(
    url: str, api_key: str, *, poll_wait: float, transport: httpx.BaseTransport | None = None, headers=None
) -> httpx.Client:
    """An HTTP client of the coordinator at ``url`` with ``api_key``: a read may take a long poll's
    ``poll_wait`` seconds and 30 more."""
    return httpx.Client(
        base_url=url.rstrip("/"),
        headers={"X-Api-Key": api_key, **(headers or {})},
        timeout=httpx.Timeout(30, read=poll_wait + 30),
        transport=transport,
    )


def request_retried(
    http: httpx.Client,
    method: str,
    path: str,
    *,
    stop: threading.Event,
    delays: tuple = RETRY_DELAYS,
    until_stopped: bool = False,
    error: type[Exception] = AgentError,
    **kwargs,
) -> httpx.Response | None:
    """A request to the coordinator retried through network errors, 5xx and 429 (a coordinator
    restarting, a proxy with no server behind it yet); the first other answer, whatever its status.

    After ``delays`` it raises ``error``, or, ``until_stopped``, goes on every last delay until
    ``stop`` is set (then ``None``; the request is sent once in any case).
    """
    waits = iter(delays)
    while True:
        try:
            response = http.request(method, path, **kwargs)
        except httpx.TransportError as failure:
            problem = str(failure) or type(failure).__name__
        else:
            if response.status_code < 500 and response.status_code != 429:
                return response
            # One line: a proxy's error page is HTML over many.
            problem = f"{response.status_code} {' '.join(response.text[:200].split()) or response.reason_phrase}"
        delay = next(waits, delays[-1] if until_stopped else None)
        if delay is None:
            raise error(f"{method} {path} failed: {problem}")
        logger.warning("%s %s failed (%s); retrying in %ss", method, path, problem, delay)
        if until_stopped:
            if stop.wait(delay):
                return None
        else:
            time.sleep(delay)


# The close code of a coordinator that is stopping (``core.sockets.CLOSE_RESTARTING``): connect again.
CLOSE_RESTARTING = 4503


class TokenStream:
    """Sends decoded text to the coordinator from a thread of its own: as ``job.tokens`` messages
    on a ``ws/miners/?mode=tokens`` socket where the coordinator answers one (``over="auto"``,
    the default), else, or with ``over="http"``, as ``POST /v1/miners/tokens``. A socket that
    fails is given up for HTTP for the rest of the run, but one the coordinator closed with 4503
    (it is restarting) is opened again once the coordinator answers over HTTP again.

    What was decoded while one batch was on its way goes in the next: a batch per round trip
    rather than per token, and the pieces of every running job together (on the socket, a batch
    is answered by the ``pong`` of the ``ping`` that follows it: the coordinator handles a
    socket's messages in order, so its pieces are then published). Streaming is best effort: a
    batch that fails is dropped (the job's result carries its whole text), and a coordinator that
    has no such route (404) is not streamed to again. Jobs the coordinator refuses pieces of (no
    longer this miner's) are streamed no more.
    """

    MAX_BATCH = 4096
    SOCKET_TIMEOUT_SECONDS = 10.0

    def __init__(self, http: httpx.Client, *, over: str = "auto"):
        if over not in ("auto", "http"):
            raise ValueError(f"tokens go over 'auto' or 'http', not {over!r}")
        self.http = http
        self.over = over  # "ws" once a socket is open
        self._socket: ClientConnection | None = None
        self._changed = threading.Condition()
        self._pending: list[dict] = []
        self._queued = 0  # pieces handed over since the start
        self._done = 0  # of those, pieces sent (or dropped)
        self._closing = False
        self._refused: set[str] = set()  # jobs the coordinator says are no longer ours
        self._unsent = 0  # pieces dropped since the coordinator last answered
        # The socket was closed for a restart: open another once the coordinator answers, from then.
        self._reopen_at: float | None = None
        self.enabled = True
        self._thread = threading.Thread(target=self._run, name="miner-tokens", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def put(self, pieces: list[dict]) -> None:
        with self._changed:
            if not self.enabled:
                return
            pieces = [piece for piece in pieces if piece["job_id"] not in self._refused]
            self._pending.extend(pieces)
            self._queued += len(pieces)
            self._changed.notify_all()

    def flush(self, timeout: float) -> bool:
        """Wait until every piece handed over so far has been sent; False past ``timeout``."""
        with self._changed:
            target = self._queued
            return self._changed.wait_for(lambda: self._done >= target or not self._thread.is_alive(), timeout)

    def close(self) -> None:
        self.flush(timeout=5)
        with self._changed:
            self._closing = True
            self._changed.notify_all()
        if self._thread.is_alive():
            self._thread.join(timeout=5)

    def _run(self) -> None:
        if self.over == "auto":
            self._open_socket()
        else:
            logger.info("tokens go over HTTP, as asked (--tokens-over http)")
        try:
            while True:
                with self._changed:
                    self._changed.wait_for(lambda: self._pending or self._closing)
                    if self._closing and not self._pending:
                        return
                    batch, self._pending = self._pending[: self.MAX_BATCH], self._pending[self.MAX_BATCH :]
                if self._socket is not None:
                    self._send_on_socket(batch)
                else:
                    self._send(batch)
                with self._changed:
                    self._done += len(batch)
                    self._changed.notify_all()
        finally:
            if self._socket is not None:
                self._socket.close()

    def _open_socket(self) -> None:
        base = self.http.base_url
        url = base.copy_with(
            scheme="wss" if base.scheme == "https" else "ws",
            raw_path=base.raw_path.rstrip(b"/") + b"/ws/miners/?mode=tokens",
        )
        headers = {name: self.http.headers[name] for name in ("X-Api-Key", "X-Miner-ID")}
        try:
            self._socket = connect(
                str(url), additional_headers=headers, open_timeout=self.SOCKET_TIMEOUT_SECONDS, max_size=2**20
            )
            self._socket.send(json.dumps({"type": "ping"}))
            self._await_pong()
        except (OSError, TimeoutError, WebSocketException, ValueError) as error:
            if self._socket is not None:
                self._socket.close()
            self._socket = None
            if _restarting(error):  # a coordinator still stopping: try again a second later
                logger.info("tokens go over HTTP while the coordinator restarts")
                self._reopen_at = time.monotonic() + 1.0
                return
            quiet = isinstance(error, InvalidHandshake)  # a coordinator without the socket: HTTP it is
            (logger.info if quiet else logger.warning)("tokens go over HTTP: no miner socket (%s)", error)
            return
        self.over = "ws"
        logger.info("tokens go over the miner socket")

    def _send_on_socket(self, batch: list[dict]) -> None:
        try:
            self._socket.send(json.dumps({"type": "job.tokens", "tokens": batch}))
            self._socket.send(json.dumps({"type": "ping"}))
            self._await_pong()
        except (OSError, TimeoutError, WebSocketException) as error:
            if _restarting(error):
                logger.warning(
                    "%d streamed piece(s) not sent, the coordinator is restarting: tokens go over HTTP until it "
                    "answers, then over a new socket",
                    len(batch),
                )
            else:
                logger.warning("%d streamed piece(s) not sent, tokens go over HTTP from now on: %s", len(batch), error)
            self._socket.close()
            self._socket, self.over = None, "http"
            if _restarting(error):
                self._reopen_at = time.monotonic()

    def _await_pong(self) -> None:
        """Read the socket up to the next ``pong``, noting the jobs whose pieces were refused."""
        deadline = time.monotonic() + self.SOCKET_TIMEOUT_SECONDS
        while True:
            message = json.loads(self._socket.recv(timeout=max(0.0, deadline - time.monotonic())))
            kind = message.get("type") if isinstance(message, dict) else None
            if kind == "pong":
                return
            if kind == "job.tokens.refused":
                with self._changed:
                    self._refused.update(message.get("job_ids") or [])
            elif kind == "error":
                logger.warning("streamed pieces refused: %s", message)

    def _send(self, batch: list[dict]) -> None:
        try:
            response = self.http.post("/v1/miners/tokens", json={"tokens": batch})
            unavailable = f"{response.status_code} {response.reason_phrase}" if response.status_code >= 500 else None
        except httpx.HTTPError as error:
            unavailable = str(error)
        if unavailable is not None:
            if not self._unsent:  # one line for an outage, not one per decoding step
                logger.warning("streamed pieces not sent (%s): dropped until the coordinator answers", unavailable)
            self._unsent += len(batch)
            return
        if self._unsent:
            logger.info("the coordinator answers again; %d streamed piece(s) were dropped meanwhile", self._unsent)
            self._unsent = 0
        if response.status_code == 404 and _error_code(response) in (None, "NOT_FOUND"):
            logger.warning("the coordinator takes no streamed tokens (404): results only from now on")
            self.enabled = False
        elif response.status_code >= 400:
            logger.warning("%d streamed piece(s) refused: %s %s", len(batch), response.status_code, response.text[:200])
        else:
            refused = response.json().get("refused_jobs") or []
            with self._changed:
                self._refused.update(refused)
        if self._reopen_at is not None and time.monotonic() >= self._reopen_at:
            # It answers again after a restart: back to a socket, if it opens one.
            self._reopen_at = None
            self._open_socket()


def _restarting(error: Exception) -> bool:
    """Whether ``error`` is the coordinator closing the socket because it is stopping (4503)."""
    return isinstance(error, ConnectionClosed) and error.rcvd is not None and error.rcvd.code == CLOSE_RESTARTING


def _error_code(response: httpx.Response) -> str | None:
    try:
        body = response.json()
    except ValueError:
        return None
    return body.get("error_code") if isinstance(body, dict) else None


def _by_model(jobs: list[dict]) -> dict[str, list[dict]]:
    by_model: dict[str, list[dict]] = {}
    for job in jobs:
        by_model.setdefault(job["model"], []).append(job)
    return by_model
