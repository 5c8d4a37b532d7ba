"""Webhook delivery latency: how soon after a job's end is committed does its endpoint get it?

Production-shaped on loopback: PostgreSQL, Dramatiq on Redis with one ``manage.py rundramatiq``
worker process on the ``webhooks`` queue, and an HTTP endpoint in this process. This process
ends jobs with the real service (``jobs.services.job_cancel``: the event is recorded in the
cancellation's transaction, and its message sent once it commits) and stamps
``time.monotonic()`` as soon as the service returns, i.e. just after COMMIT; the endpoint stamps
the moment the signed POST arrives (CLOCK_MONOTONIC is shared by the processes of one machine).
Each delivery is checked with ``standardwebhooks``' ``Webhook.verify``. One job at a time.

Target: p50 <= 100 ms.

    .venv/bin/python bench/webhooks.py [--iterations 100] [--redis-db 4] [--worker-timeout-ms 1000]
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import MODEL, bench_env, emit, latency_summary_ms, load_average, log, target

from aitbc_site.testing.processes import DramatiqWorker


class Endpoint:
    """The receiving end: each POST's arrival time and its request, by the job it is about."""

    def __init__(self):
        self.arrived: dict[str, tuple[float, bytes, dict]] = {}
        self.event = threading.Condition()
        endpoint = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                at = time.monotonic()
                body = self.rfile.read(int(self.headers["content-length"]))
                self.send_response(204)
                self.end_headers()
                job_id = json.loads(body)["data"].get("job_id", "")
                with endpoint.event:
                    endpoint.arrived[job_id] = (at, body, dict(self.headers))
                    endpoint.event.notify_all()

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def wait_for(self, job_id: str, timeout: float) -> tuple[float, bytes, dict] | None:
        deadline = time.monotonic() + timeout
        with self.event:
            while job_id not in self.arrived and time.monotonic() < deadline:
                self.event.wait(deadline - time.monotonic())
            return self.arrived.get(job_id)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--iterations", type=int, default=100)
    parser.add_argument("--redis-db", type=int, default=4)
    parser.add_argument("--db", default="aitbc_bench_webhooks")
    parser.add_argument(
        "--worker-timeout-ms",
        type=int,
        default=1000,
        help="dramatiq_worker_timeout of the worker: caps its idle broker poll (1000, dramatiq's default)",
    )
    args = parser.parse_args()

    redis_url = f"redis://127.0.0.1:6379/{args.redis_db}"
    extra = {"DRAMATIQ_BROKER_URL": redis_url, "REDIS_URL": redis_url, "WEBHOOKS_ALLOW_PRIVATE": "true"}
    with bench_env(args.db, pool=False, extra=extra) as env:
        env.django_setup()
        from standardwebhooks.webhooks import Webhook

        from accounts.services import user_get_or_create
        from jobs.services import job_cancel, job_submit
        from webhooks.services import endpoint_create

        endpoint = Endpoint()
        client = user_get_or_create(username="bench-webhooks-client")
        _, secret = endpoint_create(owner=client, url=endpoint.url, events=["job.cancelled"])
        verifier = Webhook(secret)
        worker_env = {**env.env, "dramatiq_worker_timeout": str(args.worker_timeout_ms)}
        worker = DramatiqWorker(worker_env, queues=["webhooks"], threads=2, name="dramatiq-webhooks").start()
        latencies, lost = [], 0
        try:
            # A first delivery warms the worker's connections; it is not counted.
            for n in range(args.iterations + 1):
                job = job_submit(client=client, model=MODEL, payload={"prompt": f"hi {n}"}).job
                job_cancel(job_id=job.pk)
                committed_at = time.monotonic()
                arrived = endpoint.wait_for(str(job.pk), timeout=10)
                if arrived is None:
                    lost += 1
                    continue
                at, body, headers = arrived
                verifier.verify(body, headers)
                if n:
                    latencies.append(at - committed_at)
        finally:
            worker.kill()
            endpoint.server.shutdown()
    summary = latency_summary_ms(latencies)
    log(f"webhook delivery after commit: {summary}")
    emit(
        {
            "benchmark": "webhook delivery after commit (job.cancelled, Dramatiq on Redis, one worker process)",
            "latency": summary,
            "lost": lost,
            "dramatiq_worker_timeout_ms": args.worker_timeout_ms,
            "p50": target(summary.get("p50_ms"), 100, higher_is_better=False),
            "load_average": load_average(),
        }
    )


if __name__ == "__main__":
    main()
