"""A worker dies, or loses its database connection, in the middle of a rescore batch:
no lead of the batch is left unscored, and no event is counted twice.

"In the middle" is made deterministic: the test holds one lead's row lock from a
connection of its own, so the drain task has taken the batch's ids off the queue and
waits inside `rescore_leads` when the fault is injected.
"""

from __future__ import annotations

import os
import signal
import time

import pytest
from django.db import transaction
from django.utils import timezone

from scoring.services import queue
from scoring.services.queue import schedule_rescore
from scoring.tasks import recover_dirty_leads
from tests.faults.helpers import (
    RESCORE_TASK,
    backends_waiting_on_a_lock,
    events_scored_twice,
    lead_row_locked,
    pid_running,
    stale_scores,
    terminate_backends,
    wait_for,
)
from tests.scoring.helpers import blank_lead, event, stored
from tests.worker import CeleryWorkers, celery_worker_process  # noqa: F401  (a fixture)

pytestmark = [pytest.mark.slow, pytest.mark.django_db(transaction=True)]

LEADS = 20
SETTLE_SECONDS = 45.0


def _leads_with_events(count: int = LEADS, events: int = 3) -> list:
    leads = [blank_lead() for _ in range(count)]
    for lead in leads:
        for _ in range(events):
            event(lead, "email_open", timezone.now())  # 5 points each
    return leads


def _schedule(leads: list) -> None:
    with transaction.atomic():
        schedule_rescore([lead.pk for lead in leads])


def _batch_blocked_mid_rescore(workers: CeleryWorkers) -> None:
    """Schedule the leads while the first one is locked; return once a worker has taken
    the batch off the queue and waits for that lock."""
    wait_for(
        backends_waiting_on_a_lock, timeout=20, what="the drain to block", log=workers.log_tail
    )
    assert queue.dirty_lead_ids() == set()  # the batch is in the worker's hands


def _settled(leads: list, client) -> bool:
    return (
        all(stored(lead)[1] == 15 for lead in leads)
        and not queue.dirty_lead_ids()
        and not client.exists(queue.FLAG_KEY)
        and not client.zcard(queue.INFLIGHT_KEY)
    )


def _assert_pass(leads: list) -> None:
    assert stale_scores(leads) == []
    assert events_scored_twice() == []


def test_kill_9_of_the_process_running_a_rescore_batch_loses_no_lead(
    empty_rescore_queue,
    celery_worker_process: CeleryWorkers,  # noqa: F811
):
    workers = celery_worker_process
    leads = _leads_with_events()
    with lead_row_locked(leads[0].pk):
        _schedule(leads)
        _batch_blocked_mid_rescore(workers)
        pid = pid_running(workers, RESCORE_TASK)
        assert pid is not None, workers.log_tail()
        os.kill(pid, signal.SIGKILL)
        wait_for(
            lambda: "WorkerLostError" in workers.log() or "signal 9" in workers.log(),
            timeout=20, what="the worker to notice its child died", log=workers.log_tail,
        )  # fmt: skip
    # The task comes back (acks_late + reject_on_worker_lost) with the same id and takes
    # back the batch its first run had claimed.
    wait_for(
        lambda: _settled(leads, empty_rescore_queue),
        timeout=SETTLE_SECONDS, what="every lead rescored", log=workers.log_tail,
    )  # fmt: skip
    _assert_pass(leads)


def test_kill_9_of_a_whole_worker_node_mid_batch_is_recovered_by_the_sweep(
    empty_rescore_queue, monkeypatch, request
):
    # A node killed outright never rejects its message: Redis hands it out again only
    # after the visibility timeout (an hour). The beat's sweep takes back batches whose
    # lease ran out; the lease is shortened here so the test need not wait minutes.
    monkeypatch.setenv("SCORING_DRAIN_LEASE_SECONDS", "3")
    workers: CeleryWorkers = request.getfixturevalue("celery_worker_process")
    leads = _leads_with_events()
    with lead_row_locked(leads[0].pk):
        _schedule(leads)
        _batch_blocked_mid_rescore(workers)
        pid = pid_running(workers, RESCORE_TASK)
        assert pid is not None, workers.log_tail()
        node = next(p for p in workers.processes if _is_parent_of(p.pid, pid))
        os.killpg(node.pid, signal.SIGKILL)
        node.wait(timeout=10)
    # The beat would run the sweep every minute; here it runs until the batch is back.
    deadline = time.monotonic() + SETTLE_SECONDS
    while not _settled(leads, empty_rescore_queue):
        assert time.monotonic() < deadline, "the sweep did not hand the batch back\n" + (
            workers.log_tail()
        )
        recover_dirty_leads.delay()
        time.sleep(1.0)
    _assert_pass(leads)


def _is_parent_of(parent: int, child: int) -> bool:
    with open(f"/proc/{child}/stat") as stat:
        return int(stat.read().rsplit(")", 1)[1].split()[1]) == parent


def test_postgres_connections_terminated_mid_task_lose_no_lead(
    empty_rescore_queue,
    celery_worker_process: CeleryWorkers,  # noqa: F811
):
    workers = celery_worker_process
    leads = _leads_with_events()
    with lead_row_locked(leads[0].pk) as side:
        _schedule(leads)
        _batch_blocked_mid_rescore(workers)
        side_pid = side.info.backend_pid
        assert terminate_backends(set(backends_waiting_on_a_lock()) - {side_pid}) == 1
    wait_for(
        lambda: _settled(leads, empty_rescore_queue),
        timeout=SETTLE_SECONDS, what="the retried task", log=workers.log_tail,
    )  # fmt: skip
    _assert_pass(leads)
