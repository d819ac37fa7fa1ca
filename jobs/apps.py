"""App configuration for jobs: the reactions the domain services register with the engine, the worker hooks."""

from __future__ import annotations

from django.apps import AppConfig


class JobsConfig(AppConfig):
    name = "jobs"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        # These modules import the models, which exist only once the app registry is ready.
        from jobs import chains, dependencies, worker
        from jobs.engine import hooks

        hooks.register_start_check("dependencies", dependencies.check_can_start)
        # Order matters: the chain follows a retry before dependants are considered.
        hooks.register_finish_handler("chains", chains.member_finished_hook)
        hooks.register_finish_handler("dependencies", dependencies.downstream_hook)
        worker.connect()  # the engine's Celery worker hooks (recovery, warm pool processes)
