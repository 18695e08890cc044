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
    # The safety net: batches of a worker that died mid-drain, leads marked dirty in a
    # Redis that lost its data, a drain task lost with the broker (see services/queue.py).
    "scoring-recover-dirty-leads": {
        "task": "scoring.tasks.recover_dirty_leads",
        "schedule": 60.0,
        "options": {"expires": 55},
    },
}


@shared_task(
    bind=True,
    autoretry_for=(OperationalError,),
    retry_backoff=True,
    max_retries=5,
    ignore_result=True,
)
def rescore_dirty_leads(self) -> int:
    """Rescore a batch of leads marked dirty by events or edits; re-enqueues while any remain.

    The task id names the batch in flight: redelivered after its worker died, the task
    takes back the batch its first run had claimed.
    """
    from scoring.services import drain_dirty_leads

    return drain_dirty_leads(task_id=self.request.id)


@shared_task(
    autoretry_for=(OperationalError,), retry_backoff=True, max_retries=3, ignore_result=True
)
def recover_dirty_leads() -> int:
    """Beat, every minute: put back batches of dead workers and, after Redis lost its
    data, re-mark recently active leads; enqueue a drain when leads are waiting."""
    from scoring.services.queue import recover_dirty_leads as recover

    return recover()


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
