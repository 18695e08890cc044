"""Replays and redeliveries: 1,000 events sent three times at once, every rescore and
delivery task delivered again, and events written in a transaction that then rolls
back. Pass: each event stored and scored once, every score equals a fresh recompute,
each notification and mail once, and nothing at all for the rolled-back events.
"""

from __future__ import annotations

import random
import uuid
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from django.db import connection, transaction

from handoff.models import Delivery, Handoff, Notification
from handoff.tasks import deliver_pending
from leadops import ingest
from leadops.ingest import ingest_events
from leadops.models import Activity, Lead
from leadops.roles import assign_role
from scoring.services import queue
from scoring.tasks import rescore_dirty_leads
from tests.faults.helpers import (
    RESCORE_TASK,
    events_scored_twice,
    mails_written,
    stale_scores,
    wait_for,
)
from tests.worker import CeleryWorkers, celery_worker_process  # noqa: F401  (a fixture)

pytestmark = [pytest.mark.slow, pytest.mark.django_db(transaction=True)]

EVENTS = 1000
LEADS = 100
TYPES = ["email_open"] * 5 + ["document_download"] * 3 + ["webinar_attended", "form_submit"]


@pytest.fixture
def workers_mailing_to(tmp_path: Path, monkeypatch, request) -> tuple[CeleryWorkers, Path]:
    mail_dir = tmp_path / "mail"
    mail_dir.mkdir()
    monkeypatch.setenv("EMAIL_BACKEND", "django.core.mail.backends.filebased.EmailBackend")
    monkeypatch.setenv("EMAIL_FILE_PATH", str(mail_dir))
    return request.getfixturevalue("celery_worker_process"), mail_dir


def _batch() -> list[dict]:
    rng = random.Random(6)
    return [
        {
            "event_id": f"replay-{i}",
            "email": f"replay-{rng.randrange(LEADS)}@example.jp",
            "type": rng.choice(TYPES),
            "properties": {"n": i},
        }
        for i in range(EVENTS)
    ]


def _ingest(events: list[dict]):
    try:
        return ingest_events(events)
    finally:
        connection.close()  # the thread's own connection


def _queue_idle() -> bool:
    client = queue.redis_client()
    return not (
        client.scard(queue.DIRTY_KEY)
        or client.exists(queue.FLAG_KEY)
        or client.zcard(queue.INFLIGHT_KEY)
        or client.llen("celery")
        or Delivery.objects.filter(status__in=["pending", "sending"]).exists()
    )


def test_1000_events_replayed_three_times_with_forced_redelivery(
    empty_rescore_queue, workers_mailing_to, django_user_model
):
    workers, mail_dir = workers_mailing_to
    rep = django_user_model.objects.create_user(username="rep", email="rep@example.jp")
    assign_role(rep, role="inside_sales")
    events = _batch()

    with ThreadPoolExecutor(max_workers=3) as pool:
        results = list(pool.map(_ingest, [events] * 3))
    assert sum(r.accepted for r in results) == EVENTS
    assert sum(r.duplicates for r in results) == 2 * EVENTS
    assert all(r.errors == [] for r in results)
    wait_for(_queue_idle, timeout=60, what="the first pass", log=workers.log_tail)

    # Forced redelivery: the same rescore task id three times (as a broker redelivers
    # after a lost ack), every lead marked dirty again, every delivery task sent again.
    leads = list(Lead.objects.filter(email__startswith="replay-"))
    for _ in range(3):
        rescore_dirty_leads.apply_async(task_id="replayed-drain")
    with transaction.atomic():
        queue.schedule_rescore([lead.pk for lead in leads])
    delivery_ids = list(Delivery.objects.values_list("pk", flat=True))
    for _ in range(2):
        deliver_pending.delay(delivery_ids)
    wait_for(
        lambda: _queue_idle() and workers.task_lines("deliver_pending", "succeeded") >= 2,
        timeout=60, what="the redelivered tasks", log=workers.log_tail,
    )  # fmt: skip

    assert Activity.objects.filter(event_id__startswith="replay-").count() == EVENTS
    assert events_scored_twice() == []
    assert stale_scores(leads) == []
    handoffs = Counter(Handoff.objects.values_list("lead_id", "kind"))
    assert handoffs and set(handoffs.values()) == {1}
    notifications = Counter(Notification.objects.values_list("event_key", "recipient_id"))
    assert len(notifications) == len(handoffs) and set(notifications.values()) == {1}
    assert set(Delivery.objects.values_list("status", "attempts")) == {("sent", 1)}
    mails = mails_written(mail_dir)
    assert len(mails) == len(notifications) and set(mails.values()) == {1}, mails
    assert workers.task_lines(RESCORE_TASK, "received") >= 3


def _phantom_events(lead: Lead) -> list[dict]:
    return [
        {"event_id": f"phantom-{uuid.uuid4().hex}", "email": "phantom@example.jp",
         "type": "form_submit"},
        {"event_id": f"phantom-{uuid.uuid4().hex}", "lead_id": lead.pk, "type": "form_submit"},
    ]  # fmt: skip


def test_events_in_a_rolled_back_transaction_start_no_task(
    empty_rescore_queue,
    celery_worker_process: CeleryWorkers,  # noqa: F811
    monkeypatch,
):
    workers = celery_worker_process
    lead = Lead.objects.create(email="existing@example.jp")
    received = workers.task_lines(RESCORE_TASK, "received")

    # The caller's transaction fails after ingest wrote the events …
    with pytest.raises(RuntimeError), transaction.atomic():
        assert ingest_events(_phantom_events(lead)).accepted == 2
        raise RuntimeError("the caller's next step failed")

    # … and ingest's own transaction fails after the activity insert.
    def fail(accepted):
        raise RuntimeError("failed after the insert")

    monkeypatch.setattr(ingest, "_mark_unsubscribed", fail)
    with pytest.raises(RuntimeError):
        ingest_events(_phantom_events(lead))

    assert not Activity.objects.filter(event_id__startswith="phantom-").exists()
    assert not Lead.objects.filter(email="phantom@example.jp").exists()
    assert queue.dirty_lead_ids() == set()
    assert empty_rescore_queue.llen("celery") == 0
    assert workers.task_lines(RESCORE_TASK, "received") == received
    assert not Handoff.objects.exists()
