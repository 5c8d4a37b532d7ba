"""gunicorn's settings for the coordinator: gunicorn reads ``gunicorn.conf.py`` from the directory
it starts in (or take it with ``-c``)."""

# gunicorn's control socket (``gunicornc``) is not used: every instance on a host would otherwise
# open the same default path (``$XDG_RUNTIME_DIR/gunicorn.ctl`` or ``~/.gunicorn/gunicorn.ctl``),
# each one taking it from the last and a stopping one removing it from under the others.
control_socket_disable = True


def post_worker_init(worker):
    # On SIGTERM a worker stops accepting and waits for its requests in flight: the long polls
    # among them are answered at once (204), so the worker stops in about a second.
    from core import shutdown

    shutdown.on_sigterm(shutdown.stop_waiting)
