from django.apps import AppConfig


class SwarmConfig(AppConfig):
    name = "swarm"
    verbose_name = "Swarms"

    def ready(self):
        from jobs import services as job_services
        from swarm import services

        # A share's job that ends advances its coordinated task.
        job_services.when_finished(services.tasks_advance_for_jobs)
