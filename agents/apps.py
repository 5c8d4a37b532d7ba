from django.apps import AppConfig


class AgentsConfig(AppConfig):
    name = "agents"
    verbose_name = "Agents"

    def ready(self):
        from agents import services
        from jobs import services as job_services

        # A step's job that ends advances its workflow execution.
        job_services.when_finished(services.executions_advance_for_jobs)
