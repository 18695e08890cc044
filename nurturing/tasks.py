"""Celery tasks of nurturing: each calls one service and is safe to run twice (sends
are claimed by a conditional UPDATE … FOR UPDATE SKIP LOCKED, enrollments are locked
the same way, the send log is unique per lead and step, and tracking events are
idempotent by event_id).

Importable from settings (for BEAT_SCHEDULE): services are imported inside the tasks.
"""

from __future__ import annotations

from celery import shared_task
from celery.schedules import crontab
from django.db import OperationalError

# Merged into settings.CELERY_BEAT_SCHEDULE by the project. Both run every minute; a
# run that waited in the queue past the next one is dropped (expires), not stacked.
BEAT_SCHEDULE = {
    "nurturing-queue-and-send": {
        "task": "nurturing.tasks.queue_and_send",
        "schedule": 60.0,
        "options": {"expires": 55},
    },
    # A safety net: tracking hits left waiting by a worker that died mid-flush.
    "nurturing-flush-tracking": {
        "task": "nurturing.tasks.flush_tracking",
        "schedule": 60.0,
        "options": {"expires": 55},
    },
    # Safety nets of website capture: page views left queued, identified visitors' views
    # not merged yet; and anonymous views older than half a year are let go.
    "capture-drain-page-views": {
        "task": "nurturing.drain_page_views",
        "schedule": 60.0,
        "options": {"expires": 55},
    },
    "capture-merge-identified-views": {
        "task": "nurturing.tasks.merge_identified_views",
        "schedule": crontab(hour=4, minute=0),
    },
    "capture-purge-anonymous-views": {
        "task": "nurturing.tasks.purge_anonymous_views",
        "schedule": crontab(hour=4, minute=30),
    },
}


@shared_task(ignore_result=True)
def queue_and_send() -> dict[str, int]:
    """Beat, every minute: enroll new matches of active tracks, queue the due steps, and
    send up to NURTURING_SEND_RATE_PER_MINUTE mails (a budget shared by every worker)."""
    from nurturing.sending import run_send_cycle

    return run_send_cycle()


@shared_task(
    autoretry_for=(OperationalError,), retry_backoff=True, max_retries=5, ignore_result=True
)
def flush_tracking() -> int:
    """Record a batch of waiting opens and clicks (activities that feed scoring);
    re-enqueues itself while hits remain. Returns how many hits it took."""
    from nurturing.tracking import flush_tracking_hits

    return flush_tracking_hits()


@shared_task(
    name="nurturing.drain_page_views",
    autoretry_for=(OperationalError,),
    retry_backoff=True,
    max_retries=5,
    ignore_result=True,
)
def drain_page_views_task() -> int:
    """Store a batch of queued page views; re-enqueues itself while any remain. Views the
    database refused go back to the queue and the task retries."""
    from nurturing.capture import PageViewsNotStored, drain_page_views

    try:
        return drain_page_views()
    except PageViewsNotStored as exc:
        raise drain_page_views_task.retry(exc=exc, countdown=5, max_retries=5) from exc


@shared_task(ignore_result=True)
def merge_identified_views() -> int:
    """Daily: merge anonymous views of visitors identified since (a safety net)."""
    from nurturing.capture import merge_identified_views as merge

    return merge()


@shared_task(ignore_result=True)
def purge_anonymous_views() -> int:
    """Daily: drop anonymous page views older than 180 days (never identified)."""
    from nurturing.capture import purge_anonymous_views as purge

    return purge(older_than_days=180)
