"""`GET /health/`: database, broker, workers and scheduler, checked for real."""

from __future__ import annotations

import time

import pytest
import redis
from celery.signals import task_failure
from django.utils import timezone

from handoff.models import Handoff
from leadops import health
from leadops.tasks import heartbeat
from tests.factories import LeadFactory
from tests.worker import CeleryWorkers, celery_worker_process  # noqa: F401  (a fixture)


@pytest.fixture(autouse=True)
def no_heartbeat_yet():
    client = health._redis()
    client.delete(health.HEARTBEAT_KEY, health.FAILURES_KEY.format(hour=health._hour()))
    yield
    client.delete(health.HEARTBEAT_KEY, health.FAILURES_KEY.format(hour=health._hour()))


def open_handoff(**fields) -> Handoff:
    now = timezone.now()
    values = {"kind": "inside_sales", "opened_at": now, "due_at": now, "warn_at": now}
    return Handoff.objects.create(lead=LeadFactory(), **(values | fields))


@pytest.mark.django_db
def test_without_a_worker_the_report_is_degraded_and_names_what_fails(client):
    response = client.get("/health/")

    assert response.status_code == 503
    body = response.json()
    assert body["status"] == "degraded"
    assert body["failing"] == ["scheduler", "workers"]
    assert body["checks"]["database"]["ok"] is True
    assert body["checks"]["broker"]["ok"] is True
    assert body["checks"]["workers"]["error"] == "no worker answered a ping"


@pytest.mark.django_db
def test_the_report_counts_breaches_backlogs_and_failed_tasks(client):
    open_handoff(sla_state="breached")
    open_handoff(sla_state="on_track")
    health._redis().sadd(health.DIRTY_LEADS_KEY, 999_999_001, 999_999_002)
    task_failure.send(sender=heartbeat, task_id="t1", exception=RuntimeError("boom"))
    task_failure.send(sender=heartbeat, task_id="t2", exception=RuntimeError("boom"))
    try:
        body = client.get("/health/").json()
    finally:
        health._redis().srem(health.DIRTY_LEADS_KEY, 999_999_001, 999_999_002)

    assert body["checks"]["database"]["open_handoffs_breached"] == 1
    assert body["checks"]["broker"]["leads_waiting_for_rescore"] >= 2
    assert body["checks"]["broker"]["task_failures_last_hour"] == 2


@pytest.mark.django_db
def test_a_dead_broker_answers_503_quickly(client, monkeypatch):
    unreachable = redis.Redis(port=1, socket_connect_timeout=1, socket_timeout=1)
    monkeypatch.setattr(health, "_redis", lambda: unreachable)

    started = time.monotonic()
    response = client.get("/health/")

    assert time.monotonic() - started < 5
    assert response.status_code == 503
    checks = response.json()["checks"]
    assert checks["database"]["ok"] is True
    assert checks["broker"]["ok"] is False
    assert "ConnectionError" in checks["broker"]["error"]
    assert checks["workers"]["error"] == "unknown: the broker does not answer"


@pytest.mark.django_db
def test_a_stale_heartbeat_marks_the_scheduler_down(client):
    health._redis().set(health.HEARTBEAT_KEY, time.time() - health.HEARTBEAT_STALE_SECONDS - 5)

    scheduler = client.get("/health/").json()["checks"]["scheduler"]

    assert scheduler["ok"] is False
    assert scheduler["heartbeat_age_s"] > health.HEARTBEAT_STALE_SECONDS


@pytest.mark.slow
def test_with_a_worker_running_the_heartbeat_everything_is_ok(
    client,
    celery_worker_process: CeleryWorkers,  # noqa: F811
):
    heartbeat.delay()
    deadline = time.monotonic() + 30
    while health._redis().get(health.HEARTBEAT_KEY) is None and time.monotonic() < deadline:
        time.sleep(0.1)

    response = client.get("/health/")

    body = response.json()
    assert response.status_code == 200, body
    assert body["status"] == "ok"
    assert len(body["checks"]["workers"]["nodes"]) == len(celery_worker_process.nodes)
    assert body["checks"]["scheduler"]["heartbeat_age_s"] < 30


@pytest.mark.django_db
def test_only_get_and_head(client):
    assert client.post("/health/").status_code == 405
