from django.apps import AppConfig


class JobsConfig(AppConfig):
    name = "jobs"
    verbose_name = "Jobs"

    def ready(self):
        from core import shutdown
        from core.sockets import close_sockets_for_restart
        from jobs import feed, services, verification, wakeup
        from miners import services as miner_services

        # A stopping process answers its waiting long polls and closes its sockets with 4503.
        shutdown.when_stopping(wakeup.hub.notify_all, closing=close_sockets_for_restart)
        # Meanwhile a miner's results and pieces still come in: requests waiting for them answer.
        shutdown.serve_while_stopping(
            "miner-result", "miner-fail", "miner-results", "miner-tokens", "legacy-miner-result"
        )
        # The network feed announces each miner that registers.
        miner_services.when_registered(feed.publish_miner_online)
        # A verified job is judged, and a canary may follow a job, in the transaction an attempt ends in.
        services.when_jobs_end(verification.attempts_ended)
