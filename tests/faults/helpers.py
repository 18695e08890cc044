"""Helpers of the fault suite: hold a lead's row lock from outside Django, find and kill
the process running a task, wait for the system to settle, and the pass conditions of
the issue (every score equals a fresh recompute, every event applied once)."""

from __future__ import annotations

import contextlib
import email
import email.policy
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

import psycopg
import pytest
from django.db import connection
from django.utils import timezone

from leadops.celery import app
from leadops.models import Lead
from scoring.models import ScoringModel
from tests.scoring.helpers import recompute
from tests.worker import CeleryWorkers, worker_database_url

RESCORE_TASK = "scoring.tasks.rescore_dirty_leads"


def wait_for(
    condition: Callable[[], object], *, timeout: float, what: str, log: Callable[[], str] = str
) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"Timed out after {timeout:.0f} s waiting for {what}\n{log()}")
        time.sleep(0.2)


@contextlib.contextmanager
def lead_row_locked(lead_id: int) -> Iterator[psycopg.Connection]:
    """Hold the lead's row lock in a connection of our own, so a rescore of it blocks
    (after its ids were taken from the queue: "in the middle of a rescore batch")."""
    with psycopg.connect(worker_database_url()) as side:
        side.execute("SELECT 1 FROM leadops_lead WHERE id = %s FOR UPDATE", [lead_id])
        yield side
        side.rollback()


def backends_waiting_on_a_lock() -> list[int]:
    """Server pids of connections to OUR test database that wait for a lock."""
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT pid FROM pg_stat_activity WHERE datname = current_database() "
            "AND wait_event_type = 'Lock' AND pid <> pg_backend_pid()"
        )
        return [pid for (pid,) in cursor.fetchall()]


def terminate_backends(pids: Iterable[int]) -> int:
    """pg_terminate_backend, only for backends of our own test database."""
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT count(*) FILTER (WHERE pg_terminate_backend(pid)) FROM pg_stat_activity "
            "WHERE datname = current_database() AND pid = ANY(%s)",
            [list(pids)],
        )
        return cursor.fetchone()[0]


def pid_running(workers: CeleryWorkers, task_name: str) -> int | None:
    """The pid of the prefork child running `task_name` right now, if any."""
    replies = app.control.inspect(destination=workers.nodes, timeout=1.0).active() or {}
    for tasks in replies.values():
        for task in tasks:
            if task["name"] == task_name:
                return int(task["worker_pid"])
    return None


def stale_scores(leads: Iterable[Lead]) -> list[tuple[int, tuple, tuple]]:
    """(lead id, stored, fresh recompute) for every lead whose stored score differs."""
    model = ScoringModel.objects.active().get()
    now = timezone.now()
    stale = []
    for lead in leads:
        lead.refresh_from_db()
        fresh = recompute(lead, model, now)
        stored = (lead.attribute_score, lead.behavior_score, lead.score)
        if stored != (fresh.attribute, fresh.behavior, fresh.score):
            stale.append((lead.pk, stored, (fresh.attribute, fresh.behavior, fresh.score)))
    return stale


def events_scored_twice() -> list[tuple[int, int]]:
    """(activity id, ledger rows) for events the ledger counted more than once."""
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT activity_id, count(*) FROM scoring_scorechange WHERE reason = 'event' "
            "GROUP BY activity_id HAVING count(*) > 1"
        )
        return cursor.fetchall()


def mails_written(folder: Path) -> Counter:
    """(recipient, subject) → how many messages the file backend wrote."""
    sent: Counter = Counter()
    for path in folder.glob("*.log"):
        for chunk in path.read_bytes().split(b"\n" + b"-" * 79 + b"\n"):
            if chunk.strip():
                message = email.message_from_bytes(chunk, policy=email.policy.default)
                sent[(str(message["To"]), str(message["Subject"]))] += 1
    return sent
