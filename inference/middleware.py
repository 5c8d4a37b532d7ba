import threading

import dramatiq


class InferenceHostMiddleware(dramatiq.Middleware):
    """Runs this worker process's in-cluster inference host (``INFERENCE_MODELS``) while it lives.

    The host starts in the background: loading models takes seconds (the first conversion of a
    GGUF model longer), and the embedded server must not wait for it to answer requests.
    """

    def after_worker_boot(self, broker, worker):
        from django.conf import settings

        if settings.INFERENCE_MODELS:
            threading.Thread(target=self._start, name="inference-host-start", daemon=True).start()

    def _start(self):
        import logging

        from django.db import connection

        from inference.worker import start_host

        try:
            start_host()
        except Exception:
            logging.getLogger(__name__).exception("the inference host could not start")
        finally:
            connection.close()

    def before_worker_shutdown(self, broker, worker):
        from inference.worker import stop_host

        stop_host()
