"""Two `celery beat` schedulers (each with its own schedule file) and a worker run for
two minutes over hand-offs whose SLAs warn and breach meanwhile and a step-mail track
that is due: every notification, email and nurture send happens exactly once.

Mail goes through Django's file-based backend into a folder of the test (the worker is
another process), where the test reads every message back.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from datetime import timedelta
from pathlib import Path

import pytest
from django.utils import timezone

from handoff.models import Delivery, Handoff, Notification
from handoff.services import mark_lead_mql
from leadops.engines import BASE_DIR, redis_url
from leadops.roles import assign_role
from nurturing.models import EmailSend, Enrollment, Step, Track
from tests.factories import LeadFactory
from tests.faults.helpers import mails_written
from tests.worker import running_workers, worker_database_url

pytestmark = [pytest.mark.slow, pytest.mark.django_db(transaction=True)]

TICKS = 2  # minutes each scheduler runs the every-minute tasks
RUN_TIMEOUT_SECONDS = 60 * TICKS + 45
SLA_TASK = "handoff-check-slas"


def _user(django_user_model, username: str, role: str):
    user = django_user_model.objects.create_user(
        username=username, email=f"{username}@example.jp", password="pw-Secret-123"
    )
    assign_role(user, role=role)
    return user


def _handoff() -> Handoff:
    lead = LeadFactory(stage="nurturing")
    mark_lead_mql(lead.pk, reason="test")
    return Handoff.objects.get(lead=lead)


def _set_clocks(clocks: dict[str, tuple[timedelta, timedelta]], handoffs: dict) -> None:
    """Warning and due times from now: the schedulers' first minute ends ~60 s after
    they start, the second ~120 s after."""
    now = timezone.now()
    for name, (warn_in, due_in) in clocks.items():
        Handoff.objects.filter(pk=handoffs[name].pk).update(
            warn_at=now + warn_in, due_at=now + due_in
        )


def _step_track(leads: int) -> Track:
    track = Track.objects.create(
        name="faults", kind="step", status="active", enrollment_rule="manual"
    )
    for position in (1, 2):  # the second step is due as soon as the first went out
        Step.objects.create(
            track=track, position=position, delay_hours=0,
            subject_ja=f"ご案内 {position}", body_ja="{{ lead.last_name }} 様",
        )  # fmt: skip
    now = timezone.now()
    Enrollment.objects.bulk_create(
        Enrollment(track=track, lead=lead, enrolled_at=now, next_position=1, next_send_at=now)
        for lead in LeadFactory.create_batch(leads, stage="nurturing")
    )
    return track


@contextlib.contextmanager
def _beats(tmp_path: Path, count: int):
    env = {**os.environ, "DATABASE_URL": worker_database_url(), "REDIS_URL": redis_url(),
           "DJANGO_SETTINGS_MODULE": "leadops.settings", "PYTHONUNBUFFERED": "1"}  # fmt: skip
    logs = [tmp_path / f"beat-{i}.log" for i in range(count)]
    processes = []
    for i, log_path in enumerate(logs):
        command = [sys.executable, "-m", "celery", "-A", "leadops", "beat", "-l", "info",
                   "-s", str(tmp_path / f"beat-{i}-schedule"), "--pidfile", ""]  # fmt: skip
        with open(log_path, "ab") as log:
            processes.append(subprocess.Popen(
                command, cwd=BASE_DIR, env=env, stdout=log, stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL, start_new_session=True,
            ))  # fmt: skip
    try:
        yield logs
    finally:
        for process in processes:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait(timeout=10)


def _sent_count(log: Path, entry: str) -> int:
    return log.read_text(errors="replace").count(f"Sending due task {entry} ")


def _settled() -> bool:
    return not (
        Delivery.objects.filter(status__in=["pending", "sending"]).exists()
        or EmailSend.objects.filter(status__in=["queued", "sending"]).exists()
    )


def test_two_beat_schedulers_for_two_minutes_send_everything_once(
    tmp_path: Path, monkeypatch, django_user_model
):
    mail_dir = tmp_path / "mail"
    mail_dir.mkdir()
    monkeypatch.setenv("EMAIL_BACKEND", "django.core.mail.backends.filebased.EmailBackend")
    monkeypatch.setenv("EMAIL_FILE_PATH", str(mail_dir))
    _user(django_user_model, "rep", "inside_sales")
    _user(django_user_model, "boss", "manager")
    minute = timedelta(minutes=1)
    clocks = {  # (warning in, due in): at the first tick, at the second
        "warn now": (-minute, 60 * minute),
        "breached now": (-2 * minute, -minute),
        "warn now, breach next": (-minute, 1.5 * minute),
        "warn next": (1.25 * minute, 60 * minute),
    }
    handoffs = {name: _handoff() for name in clocks}
    track = _step_track(leads=5)

    with running_workers(tmp_path, nodes=1) as workers, _beats(tmp_path, 2) as beat_logs:
        _set_clocks(clocks, handoffs)
        deadline = time.monotonic() + RUN_TIMEOUT_SECONDS
        while min(_sent_count(log, SLA_TASK) for log in beat_logs) < TICKS:
            assert time.monotonic() < deadline, "\n".join(p.read_text() for p in beat_logs)
            time.sleep(1)
        # Both schedulers fired every minute: each task ran twice per minute.
        deadline = time.monotonic() + 60
        while (
            not _settled()
            or workers.task_lines("handoff.tasks.check_slas", "succeeded") < 2 * TICKS
        ):
            assert time.monotonic() < deadline, workers.log_tail()
            time.sleep(1)

    states = {name: Handoff.objects.get(pk=h.pk).sla_state for name, h in handoffs.items()}
    assert states == {
        "warn now": "warning",
        "breached now": "breached",
        "warn now, breach next": "breached",
        "warn next": "warning",
    }
    kinds = Counter(Notification.objects.values_list("kind", "recipient__username"))
    assert kinds == {
        ("mql_assigned", "rep"): 4,
        ("sla_warning", "rep"): 3,
        ("sla_breached", "rep"): 2,
        ("sla_breached", "boss"): 2,
    }
    assert set(Delivery.objects.values_list("status", "attempts")) == {("sent", 1)}
    mails = mails_written(mail_dir)
    assert set(mails.values()) == {1}, mails
    # One email per notification, one per nurture step and lead.
    assert len(mails) == Notification.objects.count() + 2 * 5
    sends = list(EmailSend.objects.filter(track=track).values_list("status", flat=True))
    assert sends == ["sent"] * 10
