"""Tasks of the lead core."""

from celery import shared_task
from celery.signals import task_failure

# Merged into settings.CELERY_BEAT_SCHEDULE by the project.
BEAT_SCHEDULE = {
    # The dashboard's preset periods, recounted into the cache while someone uses it.
    "leadops-warm-dashboard": {
        "task": "leadops.tasks.warm_dashboard",
        "schedule": 300.0,
        "options": {"expires": 290},
    },
    # Read by /health/: proves beat, broker and a worker work end to end.
    "leadops-heartbeat": {
        "task": "leadops.tasks.heartbeat",
        "schedule": 30.0,
        "options": {"expires": 25},
    },
}


@shared_task
def ping() -> str:
    """Answer "pong": lets a smoke test or an operator see that a worker runs tasks."""
    return "pong"


@shared_task(ignore_result=True)
def warm_dashboard() -> int:
    """Recount the dashboard's preset periods into the cache while someone uses it."""
    from leadops.dashboard import warm_dashboard_cache

    return warm_dashboard_cache()


@shared_task(ignore_result=True)
def heartbeat() -> None:
    """Beat enqueues this and a worker runs it: `/health/` reads how long ago that was."""
    from leadops.health import record_heartbeat

    record_heartbeat()


@task_failure.connect
def count_task_failure(**_kwargs) -> None:
    """Every failed task counts towards `/health/`'s "task failures in the last hour"."""
    from leadops.health import record_task_failure

    record_task_failure()
