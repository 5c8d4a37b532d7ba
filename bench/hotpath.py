"""Where a request's CPU goes on the hot routes: in-process, through the WSGI application
gunicorn serves (every middleware, URL routing, DRF), on one PostgreSQL connection.

Routes, each `--requests` (2,000) times after 100 warm-up, in interleaved rounds:

- *submit*: ``POST /v1/jobs`` (a client key, the CLI's body);
- *poll + result*: ``POST /v1/miners/poll`` (``X-Miner-ID``) then ``POST /v1/miners/{id}/result``
  for the job it got (counted as one cycle);
- *poll 10 + results*: ``POST /v1/miners/poll {"max_jobs": 10}`` then the ten results in one
  ``POST /v1/miners/results`` (one request per result where the server has no such route), per job;
- *health*: ``GET /health/live``, the bare request of ``floors.py``.

Reports, per route, the CPU time of this thread per request (``time.thread_time``: waits on
PostgreSQL and Redis excluded, the driver's work included), the statements each ran and the wall
time. ``--profile`` adds cProfile's top functions per route, by own time and by cumulative time
(the profiler's clock is the thread's CPU time), ``--pstats DIR`` writes each route's profile for
``pstats``. ``--pieces`` instead times the functions ``PIECES`` names (the thread's CPU inside
each, callees included, and its calls per cycle), without a profiler's overhead on every call.
Rate limits are off as in the other benchmarks unless ``--throttle``.

    .venv/bin/python bench/hotpath.py [--requests 2000] [--profile] [--pstats DIR] [--pieces] [--throttle] [--routes submit,health]
"""

from __future__ import annotations

import argparse
import cProfile
import io
import json
import os
import pstats
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import SUBMIT_BODY, bench_env, emit, load_average, log, make_key, make_miner, prefill_jobs

RESULT = {"result": {"output": "hello there", "usage": {"prompt_tokens": 1, "completion_tokens": 2}}}
METRICS = {"duration_ms": 5, "units": 3}


class Caller:
    """Calls the WSGI application as gunicorn does, with a hand-built environ."""

    def __init__(self):
        from django.core.wsgi import get_wsgi_application

        self.app = get_wsgi_application()

    def __call__(self, method: str, path: str, headers: dict, body: dict | None = None) -> tuple[int, bytes]:
        raw = json.dumps(body).encode() if body is not None else b""
        environ = {
            "REQUEST_METHOD": method,
            "PATH_INFO": path,
            "SCRIPT_NAME": "",
            "QUERY_STRING": "",
            "SERVER_NAME": "127.0.0.1",
            "SERVER_PORT": "8000",
            "SERVER_PROTOCOL": "HTTP/1.1",
            "REMOTE_ADDR": "127.0.0.1",
            "HTTP_HOST": "127.0.0.1:8000",
            "wsgi.input": io.BytesIO(raw),
            "wsgi.errors": sys.stderr,
            "wsgi.url_scheme": "http",
            "wsgi.multithread": True,
            "wsgi.multiprocess": True,
            "wsgi.run_once": False,
            "wsgi.version": (1, 0),
        }
        if body is not None:
            environ["CONTENT_TYPE"], environ["CONTENT_LENGTH"] = "application/json", str(len(raw))
        for name, value in headers.items():
            environ["HTTP_" + name.upper().replace("-", "_")] = value
        statuses = []
        chunks = self.app(environ, lambda status, headers, exc_info=None: statuses.append(status))
        content = b"".join(chunks)
        if hasattr(chunks, "close"):
            chunks.close()
        return int(statuses[0].split(" ", 1)[0]), content


def routes(call: Caller, client_key: str, miner_key: str, miner_id: str) -> dict:
    client = {"X-Api-Key": client_key}
    miner = {"X-Api-Key": miner_key, "X-Miner-ID": miner_id}

    def submit():
        status, _ = call("POST", "/v1/jobs", client, SUBMIT_BODY)
        assert status == 201, status
        return 1

    def poll_result():
        status, body = call("POST", "/v1/miners/poll", miner, {})
        assert status == 200, status
        job = json.loads(body)
        status, _ = call(
            "POST",
            f"/v1/miners/{job['job_id']}/result",
            miner,
            {**RESULT, "metrics": METRICS, "lease_token": job["lease_token"]},
        )
        assert status == 200, status
        return 1

    # The ten results in one request where the server takes them so (POST /v1/miners/results).
    batched = call("POST", "/v1/miners/results", miner, {"results": []})[0] not in (404, 405)

    def poll10_results():
        status, body = call("POST", "/v1/miners/poll", miner, {"max_jobs": 10})
        assert status == 200, status
        jobs = json.loads(body)["jobs"]
        reports = [{**RESULT, "metrics": METRICS, "lease_token": job["lease_token"]} for job in jobs]
        if batched:
            results = [{**report, "job_id": job["job_id"]} for job, report in zip(jobs, reports, strict=True)]
            status, _ = call("POST", "/v1/miners/results", miner, {"results": results})
            assert status == 200, status
        for job, report in zip(jobs, reports, strict=True) if not batched else ():
            status, _ = call("POST", f"/v1/miners/{job['job_id']}/result", miner, report)
            assert status == 200, status
        return len(jobs)

    def health():
        status, _ = call("GET", "/health/live", {})
        assert status == 200, status
        return 1

    return {"submit": submit, "poll + result": poll_result, "poll 10 + results": poll10_results, "health": health}


class StatementCounter:
    """Counts the statements run on this thread's connections (pooled ones included)."""

    def __init__(self):
        self.count = 0

    def __call__(self, execute, sql, params, many, context):
        self.count += 1
        return execute(sql, params, many, context)


STATEMENTS = StatementCounter()


# The pieces ``--pieces`` times: (module, attribute path), each the CPU inside it, callees included.
PIECES = [
    ("django.core.handlers.wsgi", "WSGIHandler.__call__"),
    ("django.core.handlers.wsgi", "WSGIRequest.__init__"),
    ("django.core.handlers.base", "BaseHandler.resolve_request"),
    ("django.dispatch.dispatcher", "Signal.send"),
    ("django.http.response", "HttpResponseBase.close"),
    ("rest_framework.views", "APIView.dispatch"),
    ("rest_framework.views", "APIView.initialize_request"),
    ("rest_framework.views", "APIView.perform_authentication"),
    ("rest_framework.views", "APIView.perform_content_negotiation"),
    ("rest_framework.views", "APIView.check_permissions"),
    ("rest_framework.views", "APIView.check_throttles"),
    ("rest_framework.views", "APIView.finalize_response"),
    ("rest_framework.request", "Request._load_data_and_files"),
    ("django.template.response", "SimpleTemplateResponse.render"),
    ("core.versioned", "guard_call"),
    ("psycopg", "Cursor.execute"),
    ("django.db.backends.base.base", "BaseDatabaseWrapper.connect"),
    ("django.db.backends.base.base", "BaseDatabaseWrapper.close"),
    ("jobs.services", "job_submit"),
    ("jobs.services", "job_claim"),
    ("jobs.services", "_announce"),
    ("jobs.services", "jobs_complete"),
    ("jobs.services", "_charge_and_sign"),
    ("jobs.services", "_store_completions"),
    ("jobs.receipts", "receipts_sign"),
    ("webhooks.services", "deliveries_record"),
    ("jobs.events", "publish_job_statuses"),
    ("core.crypto.signing", "signed_document"),
    ("core.crypto.signing", "commitment"),
    ("core.crypto.signing", "new_salt"),
    ("jobs.receipts", "client_pseudonym"),
    ("jobs.services", "_complete_postgres"),
    ("jobs.services", "_claim_postgres"),
    ("jobs.services", "_jobs_changed"),
    ("jobs.services", "_publish_statuses"),
    ("jobs.feed", "publish_jobs_changed"),
    ("miners.api.authentication", "MinerKeyAuthentication.authenticate"),
    ("accounts.api.authentication", "ApiKeyAuthentication.authenticate"),
    ("jobs.api.miner_views", "PollView.post"),
    ("jobs.api.miner_views", "JobReportView.accept_result"),
    ("jobs.api.views", "JobSubmitView.post"),
    ("django.db.transaction", "Atomic.__exit__"),
    ("django.db.transaction", "Atomic.__enter__"),
]


class Pieces:
    """Wraps each of ``PIECES`` to add up this thread's CPU inside it (``time.thread_time``) and its
    calls, per route; a function also bound by name in other modules is replaced there too. A
    wrapper costs ~1 µs a call, counted in the pieces around it."""

    def __init__(self, names):
        import importlib

        self.route = None
        self.totals: dict[str, dict[str, list]] = {}
        self.restore = []
        for module_name, path in names:
            owner = importlib.import_module(module_name)
            *parents, attr = path.split(".")
            for parent in parents:
                owner = getattr(owner, parent)
            original = owner.__dict__[attr]
            wrapped = self.wrap(f"{module_name}.{path}", original)
            self.restore.append((owner, attr, original))
            setattr(owner, attr, wrapped)
            if not parents:  # a function: where other modules imported it by name
                for module in list(sys.modules.values()):
                    if module is not owner and getattr(module, attr, None) is original:
                        self.restore.append((module, attr, original))
                        setattr(module, attr, wrapped)

    def wrap(self, name, original):
        import functools

        pieces = self

        @functools.wraps(original)
        def timed(*args, **kwargs):
            route = pieces.route
            if route is None:
                return original(*args, **kwargs)
            start = time.thread_time()
            try:
                return original(*args, **kwargs)
            finally:
                total = pieces.totals.setdefault(route, {}).setdefault(name, [0.0, 0])
                total[0] += time.thread_time() - start
                total[1] += 1

        return timed

    def stop(self):
        for owner, attr, original in reversed(self.restore):
            setattr(owner, attr, original)

    def report(self, route: str, per: int) -> list[str]:
        ranked = sorted(self.totals.get(route, {}).items(), key=lambda item: -item[1][0])
        return [f"{1e6 * cpu / per:8.1f} µs {calls / per:5.2f} calls  {name}" for name, (cpu, calls) in ranked]


def measure(name: str, route, *, iterations: int, profiler: cProfile.Profile | None, pieces=None) -> dict:
    from django.db import connection

    queries_before = STATEMENTS.count
    done, cpu, wall, process = 0, 0.0, 0.0, 0.0
    samples = []
    for _ in range(iterations):
        t0, c0, p0 = time.perf_counter(), time.thread_time(), time.process_time()
        if profiler:
            profiler.enable()
        if pieces:
            pieces.route = name
        with connection.execute_wrapper(STATEMENTS):
            n = route()
        if pieces:
            pieces.route = None
        if profiler:
            profiler.disable()
        c1, p1, t1 = time.thread_time(), time.process_time(), time.perf_counter()
        done += n
        cpu += c1 - c0
        wall += t1 - t0
        process += p1 - p0
        samples.append((c1 - c0) / n)
    statements = STATEMENTS.count - queries_before
    return {"done": done, "cpu": cpu, "wall": wall, "process": process, "statements": statements, "samples": samples}


def top_functions(profiler: cProfile.Profile, per: int, *, sort: str, limit: int = 25) -> list[str]:
    stats = pstats.Stats(profiler)
    rows = []
    key = 2 if sort == "own" else 3
    for func, values in sorted(stats.stats.items(), key=lambda item: -item[1][key])[:limit]:
        filename, line, name = func
        short = filename.rsplit("site-packages/", 1)[-1].replace(str(Path(__file__).resolve().parent.parent) + "/", "")
        rows.append(f"{1e6 * values[key] / per:8.1f} µs  {short}:{line}({name})")
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=2000, help="cycles per route")
    parser.add_argument(
        "--rounds", type=int, default=4, help="the routes' cycles split into this many interleaved rounds"
    )
    parser.add_argument("--profile", action="store_true")
    parser.add_argument("--pstats", help="write each route's profile (pstats) into this directory")
    parser.add_argument("--pieces", action="store_true", help="the CPU inside each of PIECES, per cycle")
    parser.add_argument("--throttle", action="store_true", help="rate limits on (very high): the Redis counter is paid")
    parser.add_argument(
        "--routes",
        help="comma-separated routes to run (default: all): submit, poll + result, poll 10 + results, health",
    )
    parser.add_argument("--redis-db", type=int, default=0, help="the Redis database the app uses")
    parser.add_argument("--db", default="aitbc_hotpath")
    parser.add_argument("--keep-db", action="store_true")
    args = parser.parse_args()
    result: dict = {"benchmark": "hotpath", "machine": {"cpus": os.cpu_count(), "loadavg_start": load_average()}}
    extra = {"REDIS_URL": f"redis://127.0.0.1:6379/{args.redis_db}"}
    with bench_env(args.db, keep_db=args.keep_db, throttle=args.throttle, extra=extra) as env:
        env.django_setup()
        from django.db import connection

        client_key = make_key("bench-client", "client")
        miner_key = make_key("bench-owner-0", "miner")
        miner = make_miner("bench-owner-0", "bench-miner-0")
        prefill_jobs(args.requests * 12 + 2000)
        call = Caller()
        named = routes(call, client_key, miner_key, miner.miner_id)
        if args.routes:
            named = {name: named[name] for name in args.routes.split(",")}
        for route in named.values():  # warm up: imports, prepared statements, caches
            for _ in range(100 // 10):
                route()
        # CPU time, not wall time: the profile shows what the request costs, not what it waits on.
        profilers = {
            name: cProfile.Profile(time.thread_time) if args.profile or args.pstats else None for name in named
        }
        pieces = Pieces(PIECES) if args.pieces else None
        totals = {
            name: {"done": 0, "cpu": 0.0, "wall": 0.0, "process": 0.0, "statements": 0, "samples": []} for name in named
        }
        per_round = max(1, args.requests // args.rounds)
        for _ in range(args.rounds):
            for name, route in named.items():
                iterations = per_round if name != "poll 10 + results" else max(1, per_round // 10)
                got = measure(name, route, iterations=iterations, profiler=profilers[name], pieces=pieces)
                for field in ("done", "cpu", "wall", "process", "statements"):
                    totals[name][field] += got[field]
                totals[name]["samples"] += got["samples"]
        if pieces:
            pieces.stop()
        connection.close()
        routes_out = {}
        for name, total in totals.items():
            per = total["done"]
            routes_out[name] = {
                "cycles": per,
                "cpu_ms_per_cycle": round(1000 * total["cpu"] / per, 3),
                "cpu_ms_per_cycle_median": round(1000 * statistics.median(total["samples"]), 3),
                "process_cpu_ms_per_cycle": round(1000 * total["process"] / per, 3),
                "wall_ms_per_cycle": round(1000 * total["wall"] / per, 3),
                "statements_per_cycle": round(total["statements"] / per, 2),
            }
            log(f"{name}: {routes_out[name]}")
            profiler = profilers[name]
            if profiler and args.profile:
                routes_out[name]["top_own_us"] = top_functions(profiler, per, sort="own")
                routes_out[name]["top_cumulative_us"] = top_functions(profiler, per, sort="cumulative")
            if pieces:
                routes_out[name]["pieces"] = pieces.report(name, per)
            if profiler and args.pstats:
                Path(args.pstats).mkdir(parents=True, exist_ok=True)
                profiler.dump_stats(Path(args.pstats, f"{name.replace(' + ', '-').replace(' ', '')}.pstats"))
        result["routes"] = routes_out
    result["notes"] = [
        "cpu: this thread's CPU per cycle (time.thread_time), waits on PostgreSQL and Redis excluded; "
        "PostgreSQL's own CPU is not counted",
        "process_cpu: the whole process's (time.process_time): with the threads the requests hand work to "
        "(the job events' sender)",
        "poll 10 + results: per job (one poll of ten, then ten results)",
        "with --profile or --pstats the figures include cProfile's overhead: compare runs made alike",
    ]
    result["machine"]["loadavg_end"] = load_average()
    emit(result)


if __name__ == "__main__":
    main()
