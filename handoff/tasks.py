"""Celery tasks of the hand-off: each takes ids (or nothing), calls one service, and is
safe to run twice (deliveries are claimed by a conditional UPDATE, the SLA monitor moves
each hand-off once).

Importable from settings (for BEAT_SCHEDULE): services are imported inside the tasks.
"""

from __future__ import annotations

from celery import shared_task
from django.db import OperationalError

# Merged into settings.CELERY_BEAT_SCHEDULE by the project. Both run every minute; a
# run that waited in the queue past the next one is dropped (expires), not stacked.
BEAT_SCHEDULE = {
    "handoff-check-slas": {
        "task": "handoff.tasks.check_slas",
        "schedule": 60.0,
        "options": {"expires": 55},
    },
    "handoff-retry-due-deliveries": {
        "task": "handoff.tasks.retry_due_deliveries",
        "schedule": 60.0,
        "options": {"expires": 55},
    },
}


@shared_task(
    autoretry_for=(OperationalError,), retry_backoff=True, max_retries=5, ignore_result=True
)
def deliver_pending(delivery_ids: list[int]) -> dict[str, int]:
    """Send these deliveries (emails, webhook posts) that are due; others are skipped."""
    from handoff.notifications import deliver_many

    return deliver_many(delivery_ids)


@shared_task(ignore_result=True)
def retry_due_deliveries() -> int:
    """Beat, every minute: enqueue deliveries whose retry time has come or whose worker
    died mid-send, and any whose task was lost. Returns how many were enqueued."""
    from handoff.notifications import enqueue_due_deliveries

    return enqueue_due_deliveries()


@shared_task(ignore_result=True)
def check_slas() -> dict[str, int]:
    """Beat, every minute: the SLA monitor (warnings at 75%, breaches escalated)."""
    from handoff.services import check_slas as run_sla_monitor

    return run_sla_monitor()


@shared_task(
    autoretry_for=(OperationalError,), retry_backoff=True, max_retries=5, ignore_result=True
)
def announce_sla_change(kind: str, handoff_ids: list[int]) -> int:
    """Notify about hand-offs the SLA monitor just moved to warning or breached."""
    from handoff.services.sla import announce_sla_change as announce

    return announce(kind, handoff_ids)
