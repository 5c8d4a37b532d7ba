from django.apps import AppConfig


class JobsConfig(AppConfig):
    name = "jobs"
    verbose_name = "Jobs"

    def ready(self):
        from core import shutdown
        from jobs import wakeup
        from jobs.consumers import close_sockets_for_restart

        # A stopping process answers its waiting long polls and closes its sockets with 4503.
        shutdown.when_stopping(wakeup.hub.notify_all, closing=close_sockets_for_restart)
