import logging
import threading
import time

import dramatiq

logger = logging.getLogger(__name__)

# How long the agent waits for the inference host to load its models.
HOST_WAIT_SECONDS = 600


class EmbeddedAgentMiddleware(dramatiq.Middleware):
    """Runs the platform's own agent (``agents.embedded``) beside this worker process's inference
    host, once the host has loaded its models, when ``AGENT_EMBEDDED`` is on."""

    def after_worker_boot(self, broker, worker):
        from django.conf import settings

        if settings.AGENT_EMBEDDED and settings.INFERENCE_MODELS:
            threading.Thread(target=self._start, name="embedded-agent-start", daemon=True).start()

    def _start(self):
        from django.db import connection

        from agents.embedded import start_agent
        from inference.worker import current_host

        deadline = time.monotonic() + HOST_WAIT_SECONDS
        try:
            while time.monotonic() < deadline:
                host = current_host()
                if host is not None:
                    start_agent(host.models)
                    return
                time.sleep(1)
            logger.error("no inference host came up: the embedded agent does not start")
        except Exception:
            logger.exception("the embedded agent could not start")
        finally:
            connection.close()

    def before_worker_shutdown(self, broker, worker):
        from agents.embedded import stop_agent

        stop_agent()
