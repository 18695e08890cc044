"""Celery tasks of scoring: each takes ids, calls one service, and is safe to run twice.

Importable from settings (for BEAT_SCHEDULE): services are imported inside the tasks.
"""

from __future__ import annotations

from celery import shared_task
from celery.schedules import crontab
from django.db import OperationalError

# Merged into settings.CELERY_BEAT_SCHEDULE by the project.
BEAT_SCHEDULE = {
    "scoring-decay-daily": {
        "task": "scoring.tasks.decay_scores",
        "schedule": crontab(hour=3, minute=30),
    },
    # A safety net: leads left in the dirty set by a worker that died mid-drain.
    "scoring-drain-dirty-leads": {
        "task": "scoring.tasks.rescore_dirty_leads",
        "schedule": 300.0,
    },
}


@shared_task(
    autoretry_for=(OperationalError,), retry_backoff=True, max_retries=5, ignore_result=True
)
def rescore_dirty_leads() -> int:
    """Rescore a batch of leads marked dirty by events or edits; re-enqueues while any remain."""
    from scoring.services import drain_dirty_leads

    return drain_dirty_leads()


@shared_task(bind=True, max_retries=5, ignore_result=True)
def run_activation(self, job_id: int) -> None:
    """Rescore every lead for an activation; a retry resumes after the last chunk done."""
    from scoring.services import fail_activation_job, run_activation_job

    try:
        run_activation_job(job_id)
    except OperationalError as exc:
        if self.request.retries < self.max_retries:
            raise self.retry(exc=exc, countdown=2**self.request.retries) from exc
        fail_activation_job(job_id, error=str(exc))
        raise
    except Exception as exc:
        fail_activation_job(job_id, error=repr(exc))
        raise


@shared_task(autoretry_for=(OperationalError,), retry_backoff=True, max_retries=3)
def decay_scores() -> int:
    """The daily decay pass over inactive leads."""
    from scoring.services import apply_decay

    return apply_decay()
