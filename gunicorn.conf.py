"""gunicorn's settings for the coordinator: gunicorn reads ``gunicorn.conf.py`` from the directory
it starts in (or take it with ``-c``)."""


def post_worker_init(worker):
    # On SIGTERM a worker stops accepting and waits for its requests in flight: the long polls
    # among them are answered at once (204), so the worker stops in about a second.
    from core import shutdown

    shutdown.on_sigterm(shutdown.stop_waiting)
