"""End to end through real processes: 50 concurrent events for one lead, ingested by 50
threads (each its own database connection), rescored by real Celery workers on Redis,
sum exactly, in far fewer tasks than events (the rescore queue coalesces)."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import pytest
from django.db import connection
from django.utils import timezone

from leadops.ingest import ingest_events
from leadops.models import Lead
from scoring.models import ScoringModel
from scoring.services.queue import FLAG_KEY, dirty_lead_ids
from tests.factories import LeadFactory
from tests.scoring.conftest import CELERY_QUEUE
from tests.scoring.helpers import recompute, stored
from tests.worker import CeleryWorkers, celery_worker_process  # noqa: F401  (a fixture)

pytestmark = [pytest.mark.slow, pytest.mark.django_db(transaction=True)]

EVENTS = 50
# page_view is left out: its "3rd and later page view of a day" rule depends on order.
POINTS = {"email_open": 5, "document_download": 15}
RESCORE_TASK = "scoring.tasks.rescore_dirty_leads"
SETTLE_TIMEOUT_SECONDS = 60.0


def _events(lead: Lead) -> list[dict]:
    types = list(POINTS)
    return [
        {"event_id": f"w-{uuid.uuid4().hex}", "lead_id": lead.pk, "type": types[i % len(types)]}
        for i in range(EVENTS)
    ]


def _ingest_concurrently(events: list[dict]) -> int:
    """Each event in its own thread and connection, all released at once; total accepted.

    No retries: a deadlock between ingest and rescoring (there was one, fixed by locking
    leads FOR NO KEY UPDATE everywhere) must fail this test.
    """
    start = threading.Barrier(len(events))

    def send(event: dict) -> int:
        try:
            start.wait(timeout=30)
            return ingest_events([event], actor=None).accepted
        finally:
            connection.close()  # the thread's own connection

    with ThreadPoolExecutor(max_workers=len(events)) as pool:
        return sum(pool.map(send, events))


def _wait_for(condition: Callable[[], bool], workers: CeleryWorkers) -> None:
    deadline = time.monotonic() + SETTLE_TIMEOUT_SECONDS
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail("The workers did not settle in time:\n" + workers.log_tail())
        time.sleep(0.2)


def test_50_concurrent_events_for_one_lead_sum_exactly_through_a_real_worker(
    clean_queue,
    celery_worker_process: CeleryWorkers,  # noqa: F811
):
    workers = celery_worker_process
    # The worked example: attribute 20 + 15 + 25 + 10 = 70.
    lead = LeadFactory(
        job_level="director", department="marketing", employee_count=120, industry="software"
    )
    events = _events(lead)
    expected_behavior = sum(POINTS[event["type"]] for event in events)  # 25 × 5 + 25 × 15

    assert _ingest_concurrently(events) == EVENTS

    def settled() -> bool:
        received = workers.task_lines(RESCORE_TASK, "received")
        return (
            stored(lead)[1] == expected_behavior
            and not dirty_lead_ids()
            and not clean_queue.exists(FLAG_KEY)
            and clean_queue.llen(CELERY_QUEUE) == 0
            and received == workers.task_lines(RESCORE_TASK, "succeeded")
        )

    _wait_for(settled, workers)
    reference = recompute(lead, ScoringModel.objects.active().get(), timezone.now())
    assert stored(lead)[:3] == (70, 500, 570)
    assert stored(lead)[:3] == (reference.attribute, reference.behavior, reference.score)
    assert lead.activities.count() == EVENTS
    # Coalesced: a task per burst of events, not per event (all of them succeeded).
    rescores = workers.task_lines(RESCORE_TASK, "succeeded")
    assert 1 <= rescores <= EVENTS // 5, workers.log_tail()
