"""Agents: task assignment throughput, and what a workflow adds per step beyond its jobs.

1. Assignment: ``--agents`` (100) agents registered, ``--tasks`` (3,000) tasks queued through
   ``task_submit``, then ``tasks_assign`` (the service every poll, submission and housekeeping run
   calls; each pass chooses agents for up to 200 tasks and leases them in one statement) until
   every task is assigned: tasks/s, under each strategy.
2. Workflow overhead: ``--executions`` (50) executions of a three-step fan-out/fan-in workflow on an
   off-engine catalog model; a miner in this process claims and completes each step's job at once
   (``job_claim``, ``jobs_complete``), so the jobs' own run time is nil and what is measured is the
   execution's: the advance each completion sets off after commit (taking the step in, starting the
   steps now ready, or completing the execution with its signed receipt), timed per step (wall and
   this thread's CPU), with the statements it sends, after one untimed execution.

    .venv/bin/python bench/agents.py [--agents 100] [--tasks 3000] [--executions 50] [--db aitbc_bench]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import bench_env, emit, latency_summary_ms, load_average, log, target

TARGET_TASKS_PER_S = 1000
TARGET_P50_MS, TARGET_P99_MS = 10, 50
MODEL = "bench-model"


def assignment_phase(args) -> dict:
    from django.conf import settings

    from accounts.services import user_get_or_create
    from agents.models import Agent
    from agents.services import agent_register, task_submit, tasks_assign
    from jobs.models import Job, JobStatus
    from jobs.services import jobs_release_for_miner

    owner = user_get_or_create(username="bench-agent-owner")
    client = user_get_or_create(username="bench-agent-client")
    agents = [
        agent_register(
            owner=owner,
            agent_id=f"bench-{n}",
            agent_type="worker",
            capabilities=["text-generation"],
            max_concurrent_tasks=max(1, args.tasks // args.agents + 1),
        )
        for n in range(args.agents)
    ]
    # Busy while the tasks are queued: they are all waiting when the timing starts.
    Agent.objects.update(status="busy")
    log(f"{len(agents)} agents registered; queueing {args.tasks} tasks")
    for _ in range(args.tasks):
        task_submit(client=client, task_data={"task_type": "text-generation", "prompt": "hi"}, priority="normal")
    figures = {}
    for strategy in ("least_connections", "weighted_round_robin", "capability_match"):
        settings.AGENT_LB_STRATEGY = strategy
        Agent.objects.update(status="active")
        started = time.perf_counter()
        assigned = 0
        while True:
            done = tasks_assign()
            if not done:
                break
            assigned += done
        seconds = time.perf_counter() - started
        rate = assigned / seconds if seconds else 0
        figures[strategy] = {"assigned": assigned, "seconds": round(seconds, 3), "tasks_per_s": round(rate, 1)}
        log(f"{strategy}: {assigned} tasks in {seconds:.2f}s ({rate:.0f}/s)")
        Agent.objects.update(status="busy")
        for agent in Agent.objects.select_related("miner"):  # back to the queue for the next strategy
            jobs_release_for_miner(miner=agent.miner, reason="bench", blame=False)
        Job.objects.filter(status=JobStatus.QUEUED).update(attempt=0, max_attempts=1000)
    worst = min(f["tasks_per_s"] for f in figures.values())
    return {"strategies": figures, "target": target(worst, TARGET_TASKS_PER_S, higher_is_better=True)}


def workflow_phase(args) -> dict:
    from django.db import connection

    from accounts.services import user_get_or_create
    from agents import services
    from catalog.models import CatalogModel
    from jobs import services as job_services
    from jobs.models import Job, JobStatus
    from jobs.services import Outcome, job_claim, jobs_complete
    from miners.capabilities import Capabilities
    from miners.services import miner_register

    CatalogModel.objects.update_or_create(
        name=MODEL, defaults={"task": "text-generation", "source_kind": "hub", "source": "bench/model"}
    )
    owner = user_get_or_create(username="bench-wf-miner")
    miner, _ = miner_register(
        owner=owner, miner_id="bench-wf-miner", capabilities=Capabilities(models=(MODEL,), max_concurrent_jobs=64)
    )
    client = user_get_or_create(username="bench-wf-client")
    step = {"type": "inference", "model": MODEL, "params": {"max_tokens": 8}}
    workflow = services.workflow_create(
        owner=client,
        name="bench",
        steps={
            "a": {**step, "prompt": "one {{inputs.topic}}"},
            "b": {**step, "prompt": "two {{inputs.topic}}"},
            "c": {**step, "prompt": "{{steps.a.output}} {{steps.b.output}}"},
        },
        dependencies={"c": ["a", "b"]},
    )
    advances: list[float] = []
    cpu_times: list[float] = []
    statements = [0]
    listener = services.executions_advance_for_jobs

    def count(execute, sql, params, many, context):
        statements[0] += 1
        return execute(sql, params, many, context)

    def timed(jobs):
        started, cpu = time.perf_counter(), time.thread_time()
        with connection.execute_wrapper(count):
            listener(jobs)
        advances.append(time.perf_counter() - started)
        cpu_times.append(time.thread_time() - cpu)

    job_services._finished_listeners[:] = [timed if f is listener else f for f in job_services._finished_listeners]
    for n in range(-1, args.executions):  # execution -1 warms up (first-use costs), untimed
        if n == 0:
            advances.clear()
            cpu_times.clear()
            statements[0] = 0
        execution = services.workflow_execute(workflow=workflow, client=client, inputs={"topic": str(n)})
        while True:
            jobs = job_claim(miner=miner, limit=8)
            if not jobs:
                break
            for job in jobs:  # each completion its own commit, as miners report
                jobs_complete(miner=miner, outcomes=[Outcome(job_id=job.pk, result={"text": "ok"}, job=job)])
        execution.refresh_from_db()
        if execution.status != "completed":
            raise SystemExit(f"execution {execution.pk} is {execution.status}: {execution.error}")
    steps = Job.objects.filter(status=JobStatus.COMPLETED, model=MODEL).count() - 3  # less the warm-up's
    summary = latency_summary_ms(advances)
    return {
        "executions": args.executions,
        "steps": steps,
        "advance_per_step_ms": summary,
        # What the load of a shared machine inflates least: the advance's own CPU time (this
        # thread's, PostgreSQL's not included) and the statements it sends (BEGIN and COMMIT not
        # counted).
        "advance_cpu_per_step_ms": latency_summary_ms(cpu_times),
        "statements_per_step": round(statements[0] / len(advances), 2),
        "p50": target(summary.get("p50_ms"), TARGET_P50_MS, higher_is_better=False),
        "p99": target(summary.get("p99_ms"), TARGET_P99_MS, higher_is_better=False),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--agents", type=int, default=100)
    parser.add_argument("--tasks", type=int, default=3000)
    parser.add_argument("--executions", type=int, default=50)
    parser.add_argument("--db", default="aitbc_bench")
    parser.add_argument("--keep-db", action="store_true")
    args = parser.parse_args()
    result: dict = {"benchmark": "agents", "machine": {"cpus": os.cpu_count(), "loadavg_start": load_average()}}
    with bench_env(args.db, keep_db=args.keep_db, pool=False) as env:
        env.django_setup()
        result["assignment"] = assignment_phase(args)
        result["workflow"] = workflow_phase(args)
    result["machine"]["loadavg_end"] = load_average()
    emit(result)


if __name__ == "__main__":
    main()
