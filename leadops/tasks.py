"""Tasks of the lead core."""

from celery import shared_task


@shared_task
def ping() -> str:
    """Answer "pong": lets a smoke test or an operator see that a worker runs tasks."""
    return "pong"
