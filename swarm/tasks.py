import dramatiq

from swarm import services


@dramatiq.actor(queue_name="housekeeping", time_limit=60_000, max_retries=0)
def advance_swarm_tasks() -> None:
    services.tasks_advance_running()
