"""The external miner agent: a GPU owner's process that joins the network over HTTP.

It needs no database and no broker: it reads the catalog from ``GET /v1/models``, loads the
models it was asked to serve, registers, heartbeats, long-polls for batches of jobs, runs them
on the same engine as the in-cluster workers and posts each result (or failure) under its lease.
"""

import logging
import threading
import time
from collections import defaultdict
from pathlib import Path

import httpx

from inference import engine

logger = logging.getLogger(__name__)


class AgentError(Exception):
    """The agent cannot start (a model it was asked for is unknown, the key is refused…)."""


class MinerAgent:
    """Serve ``models`` for the coordinator at ``url``; ``stop()`` ends after the running batch,
    ``abort()`` ends it now and hands its jobs back to the queue."""

    RETRY_DELAYS = (0.5, 1, 2, 5, 10)

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
        self.http = httpx.Client(
            base_url=url.rstrip("/"),
            headers={"X-Api-Key": api_key, "X-Miner-ID": miner_id},
            timeout=httpx.Timeout(30, read=poll_wait + 30),
            transport=transport,
        )
        self.models: dict[str, engine.LoadedModel] = {}
        self.jobs_done = 0
        self._stop = threading.Event()
        self._abort = threading.Event()
        self._inflight = 0

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
        """Serve until stopped (or ``max_jobs`` ran); returns how many jobs this agent answered."""
        self.load_models()
        self.register()
        beat = threading.Thread(target=self._beat, name="miner-heartbeat", daemon=True)
        beat.start()
        try:
            while not self.stopping:
                jobs = self.poll()
                if jobs:
                    self.run_jobs(jobs)
                if self.max_jobs is not None and self.jobs_done >= self.max_jobs:
                    break
        finally:
            self._stop.set()
            beat.join(timeout=5)
            self.http.close()
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

    def _beat(self) -> None:
        while not self._stop.wait(self.heartbeat_seconds):
            body = {"inflight": self._inflight, "status": "online", "metadata": {"gpu": engine.gpu_info()}}
            try:
                self.http.post("/v1/miners/heartbeat", json=body).raise_for_status()
            except httpx.HTTPError as error:
                logger.warning("heartbeat failed: %s", error)

    # --- work ----------------------------------------------------------------------------

    def poll(self) -> list[dict]:
        """Lease jobs, waiting up to ``poll_wait`` seconds for some.

        A coordinator that stops answers a waiting poll with 204 at once; the next poll waits
        for a coordinator to answer again (a restart), for as long as the agent is not stopped.
        """
        body = {"max_wait_seconds": self.poll_wait, "max_jobs": self.batch_size}
        response = self._request("POST", "/v1/miners/poll", json=body, until_stopped=True)
        if response is None or response.status_code == 204:
            return []
        data = response.json()
        return data.get("jobs", [data])

    def run_jobs(self, jobs: list[dict]) -> None:
        """Run leased jobs, one batch per model, and report every one of them."""
        by_model = defaultdict(list)
        for job in jobs:
            by_model[job["model"]].append(job)
        self._inflight = len(jobs)
        try:
            for model_name, batch in by_model.items():
                model = self.models.get(model_name)
                if model is None:
                    error = engine.InferenceError("MODEL_NOT_LOADED", f"This miner has not loaded {model_name}.")
                    answers = [engine.Answer(key=job["job_id"], result=None, metrics={}, error=error) for job in batch]
                else:
                    answers = engine.execute(
                        model, [(job["job_id"], job["payload"]) for job in batch], should_stop=self._abort.is_set
                    )
                for job, answer in zip(batch, answers, strict=True):
                    self.report(job, answer)
        finally:
            self._inflight = 0

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
        response = self._request("POST", path, json=body, accept=(409,))
        if response.status_code == 409:
            logger.warning("job %s was no longer ours to report: %s", job_id, response.text[:200])
        else:
            self.jobs_done += 1

    def _request(self, method: str, path: str, *, accept=(), until_stopped=False, **kwargs) -> httpx.Response | None:
        """A request retried through network errors, 5xx and 429; another 4xx (unless in ``accept``) is fatal.

        After ``RETRY_DELAYS`` it fails, or, ``until_stopped``, goes on every last delay until the
        agent is stopped (then ``None``).
        """
        delays = iter(self.RETRY_DELAYS)
        while True:
            try:
                response = self.http.request(method, path, **kwargs)
            except httpx.TransportError as error:
                problem = str(error) or type(error).__name__
            else:
                if response.status_code < 400 or response.status_code in accept:
                    return response
                if response.status_code < 500 and response.status_code != 429:
                    raise AgentError(f"{method} {path}: {response.status_code} {response.text[:300]}")
                problem = f"{response.status_code} {response.text[:200]}"
            delay = next(delays, self.RETRY_DELAYS[-1] if until_stopped else None)
            if delay is None:
                raise AgentError(f"{method} {path} failed: {problem}")
            logger.warning("%s %s failed (%s); retrying in %ss", method, path, problem, delay)
            if until_stopped:
                if self._stop.wait(delay):
                    return None
            else:
                time.sleep(delay)
