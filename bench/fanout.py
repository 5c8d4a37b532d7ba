"""WebSocket fan-out: one daphne process with channels-redis, 1,000 concurrent ``ws/dashboard/``
sockets; deliveries per second and p99 from publish to receipt, with nothing lost.

One daphne (``aitbc_site.asgi``, embedded workers off, the channel layer on Redis as production
configures it: one host with a 5,000-connection pool) serves the sockets. A separate process
opens them all with an API key header (``websockets``), reads each one's ``network.stats``
snapshot, then reads every frame. This process publishes events through the channel layer —
``group_send("dashboard", {"type": "dashboard.event", "kind": "bench", "data": {"seq", "sent_at"}})``
— at a fixed rate on a fixed schedule; ``sent_at`` is ``time.monotonic()`` just before the
send (CLOCK_MONOTONIC is shared by all processes on the machine) and latency runs to the
moment the client has read and parsed the frame. Each ``--rates`` value is one phase of
``--seconds``; the first is the headline. Lost = frames expected (events × sockets) − received;
duplicates and out-of-order frames are counted per socket.

Targets (headline phase): >= 1,000 deliveries/s, p99 <= 200 ms, 0 lost.

    .venv/bin/python bench/fanout.py [--sockets 1000] [--rates 2,10,30] [--seconds 15]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing as mp
import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (
    CpuMeter,
    bench_env,
    emit,
    latency_summary_ms,
    load_average,
    log,
    make_key,
    pg_backend_pids,
    target,
)

from aitbc_site.testing.processes import Daphne

TARGET_DELIVERIES_PER_S, TARGET_P99_MS = 1000, 200
BENCH_KIND = "bench"


# --- the sockets' process -------------------------------------------------------------------


def sockets_process(port: int, key: str, count: int, pipe) -> None:
    asyncio.run(_sockets(port, key, count, pipe))


async def _sockets(port: int, key: str, count: int, pipe) -> None:
    from websockets.asyncio.client import connect

    uri = f"ws://127.0.0.1:{port}/ws/dashboard/"
    opening = asyncio.Semaphore(100)

    async def open_one():
        async with opening:
            socket = await connect(
                uri,
                additional_headers={"X-Api-Key": key},
                origin=f"http://127.0.0.1:{port}",
                open_timeout=120,
                ping_interval=None,
                max_queue=None,
            )
            snapshot = json.loads(await socket.recv())
            assert snapshot["kind"] == "network.stats", snapshot
            return socket

    started = time.monotonic()
    opened = await asyncio.gather(*(open_one() for _ in range(count)), return_exceptions=True)
    sockets = [s for s in opened if not isinstance(s, BaseException)]
    errors = sorted({repr(e)[:200] for e in opened if isinstance(e, BaseException)})
    state = {"phase": None, "latencies": [], "counts": [0] * len(sockets), "last_seq": [-1] * len(sockets)}
    state["out_of_order"] = 0

    async def read(index: int, socket) -> None:
        async for frame in socket:
            received = time.monotonic()
            event = json.loads(frame)
            if event.get("kind") != BENCH_KIND:
                continue
            data = event["data"]
            if data["phase"] != state["phase"]:
                continue
            state["latencies"].append(received - data["sent_at"])
            state["counts"][index] += 1
            if data["seq"] <= state["last_seq"][index]:
                state["out_of_order"] += 1
            state["last_seq"][index] = data["seq"]

    readers = [asyncio.create_task(read(i, s)) for i, s in enumerate(sockets)]
    pipe.send({"connected": len(sockets), "failed": count - len(sockets), "errors": errors,
               "open_seconds": round(time.monotonic() - started, 2)})  # fmt: skip
    while True:
        command = await asyncio.to_thread(pipe.recv)
        if command["op"] == "stop":
            break
        if command["op"] == "phase":
            state.update(phase=command["phase"], latencies=[], counts=[0] * len(sockets), out_of_order=0)
            state["last_seq"] = [-1] * len(sockets)
            pipe.send("ready")
        elif command["op"] == "collect":
            expected = command["events"]
            deadline = time.monotonic() + command["grace_seconds"]
            while time.monotonic() < deadline and any(c < expected for c in state["counts"]):
                await asyncio.sleep(0.05)
            counts = state["counts"]
            pipe.send(
                {
                    "latencies": state["latencies"],
                    "received": sum(counts),
                    "sockets_complete": sum(1 for c in counts if c == expected),
                    "sockets_short": sum(1 for c in counts if c < expected),
                    "duplicates": sum(max(0, c - expected) for c in counts),
                    "out_of_order": state["out_of_order"],
                }
            )
    for task in readers:
        task.cancel()
    await asyncio.gather(*(s.close() for s in sockets), return_exceptions=True)


def redis_pids() -> list[int]:
    out = subprocess.run(["pgrep", "-x", "redis-server"], capture_output=True, text=True).stdout
    return [int(pid) for pid in out.split()]


# --- publishing -------------------------------------------------------------------------


async def publish(phase: str, rate: float, count: int) -> dict:
    """``count`` events at ``rate``/s on a fixed schedule; returns how late and how long the sends were."""
    from channels.layers import get_channel_layer

    layer = get_channel_layer()
    send_seconds, late = [], []
    start = time.monotonic() + 0.2
    for seq in range(count):
        scheduled = start + seq / rate
        delay = scheduled - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        sent_at = time.monotonic()
        late.append(max(0.0, sent_at - scheduled))
        data = {"phase": phase, "seq": seq, "sent_at": sent_at}
        await layer.group_send("dashboard", {"type": "dashboard.event", "kind": BENCH_KIND, "data": data})
        send_seconds.append(time.monotonic() - sent_at)
    return {
        "seconds": round(time.monotonic() - start, 2),
        "group_send": latency_summary_ms(send_seconds),
        "schedule_lag": latency_summary_ms(late),
    }


def run_phase(*, pipe, phase: str, rate: float, seconds: float, sockets: int, meter_groups: dict) -> dict:
    events = max(1, int(rate * seconds))
    pipe.send({"op": "phase", "phase": phase})
    assert pipe.recv() == "ready"
    log(f"phase {phase}: {events} events at {rate}/s to {sockets} sockets")
    with CpuMeter(meter_groups) as meter:
        published = asyncio.run(publish(phase, rate, events))
        pipe.send({"op": "collect", "events": events, "grace_seconds": 10})
        result = pipe.recv()
    expected = events * sockets
    latencies = result.pop("latencies")
    # Deliveries over the publishing window plus the time the last ones took to arrive.
    last_latency = max(latencies) if latencies else 0.0
    window = published["seconds"] + last_latency
    deliveries_per_s = round(result["received"] / window, 1) if window else None
    summary = latency_summary_ms(latencies)
    return {
        "rate_events_per_s": rate,
        "events": events,
        "deliveries_expected": expected,
        "deliveries_received": result["received"],
        "lost": expected - result["received"] + result["duplicates"],
        **{k: result[k] for k in ("sockets_complete", "sockets_short", "duplicates", "out_of_order")},
        "deliveries_per_s": deliveries_per_s,
        "latency_publish_to_receipt": summary,
        "publisher": published,
        "cpu": meter.report(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sockets", type=int, default=1000)
    parser.add_argument("--rates", default="2,10,30", help="events/s of each phase; the first is the headline")
    parser.add_argument("--seconds", type=float, default=15, help="publishing time of each phase")
    parser.add_argument("--db", default="aitbc_bench_fanout")
    parser.add_argument("--redis-db", type=int, default=11, help="a Redis database of the benchmark's own")
    parser.add_argument("--keep-db", action="store_true")
    args = parser.parse_args()
    rates = [float(r) for r in args.rates.split(",")]
    extra = {"REDIS_URL": f"redis://127.0.0.1:6379/{args.redis_db}"}

    with bench_env(args.db, keep_db=args.keep_db, extra=extra) as env:
        env.django_setup()
        key = make_key("bench-dashboard", "client")
        daphne = Daphne(env.env).start()
        ctx = mp.get_context("spawn")
        parent_end, child_end = ctx.Pipe()
        client = ctx.Process(target=sockets_process, args=(daphne.port, key, args.sockets, child_end))
        client.start()
        try:
            opened = parent_end.recv()
            log(f"{opened['connected']} sockets open in {opened['open_seconds']} s ({opened['failed']} failed)")
            groups = {
                "daphne": lambda: [daphne.proc.pid],
                "socket_clients": lambda: [client.pid],
                "publisher": lambda: [os.getpid()],
                "redis": redis_pids,
                "postgres": lambda: pg_backend_pids(env.db_name),
            }
            sockets = opened["connected"]
            phases = [
                run_phase(
                    pipe=parent_end, phase=f"r{r:g}", rate=r, seconds=args.seconds, sockets=sockets, meter_groups=groups
                )
                for r in rates
            ]
            parent_end.send({"op": "stop"})
            client.join(timeout=30)
        finally:
            if client.is_alive():
                client.terminate()
                client.join(timeout=5)
            daphne_log = daphne.log(1500)
            daphne.stop()

    headline = phases[0]
    p99 = headline["latency_publish_to_receipt"].get("p99_ms")
    emit(
        {
            "benchmark": "fanout",
            "setup": {
                "server": "1 daphne process, channels-redis (one host, max_connections 5000)",
                "sockets_requested": args.sockets,
                "sockets_connected": opened["connected"],
                "socket_open_errors": opened["errors"],
                "open_seconds": opened["open_seconds"],
                "client": "1 asyncio process, websockets, X-Api-Key header",
            },
            "targets": {
                "deliveries_per_s": target(
                    headline["deliveries_per_s"], TARGET_DELIVERIES_PER_S, higher_is_better=True
                ),
                "p99_ms": target(p99, TARGET_P99_MS, higher_is_better=False),
                "lost": target(headline["lost"], 0, higher_is_better=False),
                "all_sockets_connected": opened["connected"] == args.sockets,
            },
            "phases": phases,
            "daphne_log_tail": daphne_log if opened["failed"] or headline["lost"] else "",
            "load_average": load_average(),
        }
    )


if __name__ == "__main__":
    main()
