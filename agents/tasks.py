import dramatiq

from agents import services


@dramatiq.actor(queue_name="housekeeping", time_limit=60_000, max_retries=0)
def mark_stale_agents() -> None:
    services.agents_mark_stale()


@dramatiq.actor(queue_name="housekeeping", time_limit=60_000, max_retries=0)
def assign_waiting_tasks() -> None:
    services.tasks_assign()


@dramatiq.actor(queue_name="housekeeping", time_limit=60_000, max_retries=0)
def advance_executions() -> None:
    services.executions_advance_running()
