"""Tasks of the lead core."""

from celery import shared_task

# Merged into settings.CELERY_BEAT_SCHEDULE by the project.
BEAT_SCHEDULE = {
    # The dashboard's preset periods, recounted into the cache while someone uses it.
    "leadops-warm-dashboard": {
        "task": "leadops.tasks.warm_dashboard",
        "schedule": 300.0,
        "options": {"expires": 290},
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
