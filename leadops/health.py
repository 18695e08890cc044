"""What `GET /health/` reports: the database, the broker, the workers and the scheduler,
and the backlogs an operator watches (queue depth, rescore backlog, SLA breaches, task
failures in the last hour).

Each check is bounded in time (a dead Redis or a hung worker must not hang the health
check itself) and reports an error as data, never as an exception.

Workers answer a Celery control ping (the broadcast waits `WORKER_PING_TIMEOUT`). The
scheduler is seen through the heartbeat task that beat enqueues every 30 seconds
(`leadops.tasks.BEAT_SCHEDULE`) and a worker runs: a fresh heartbeat means beat, broker
and a worker all work end to end. Task failures are counted per hour in Redis by a
`task_failure` signal handler (in `leadops.tasks`, loaded by every worker).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import redis
from django.db import connection, transaction

from leadops.engines import bounded_redis

HEARTBEAT_KEY = "leadops:health:heartbeat"
# Two missed beats and a slow queue are tolerated before the scheduler counts as down.
HEARTBEAT_STALE_SECONDS = 150
FAILURES_KEY = "leadops:health:task-failures:{hour}"
FAILURES_TTL_SECONDS = 2 * 3600
WORKER_PING_TIMEOUT = 1.0
REDIS_TIMEOUT_SECONDS = 1.0
CELERY_QUEUE = "celery"
DIRTY_LEADS_KEY = "scoring:dirty"


def health_report() -> dict[str, Any]:
    """Every check, and an overall status: "ok", or "degraded" naming what is wrong."""
    checks = {"database": _timed(check_database), "broker": _timed(check_broker)}
    if checks["broker"]["ok"]:
        checks["workers"] = _timed(check_workers)
        checks["scheduler"] = _timed(check_scheduler)
    else:
        # Pinging workers through a dead broker would only wait on its retries.
        unknown = {"ok": False, "error": "unknown: the broker does not answer"}
        checks["workers"], checks["scheduler"] = dict(unknown), dict(unknown)
    failing = sorted(name for name, check in checks.items() if not check["ok"])
    return {
        "status": "degraded" if failing else "ok",
        "failing": failing,
        "checks": checks,
        "time": datetime.now(UTC).isoformat(timespec="seconds"),
    }


def _timed(check: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    started = time.perf_counter()
    try:
        result = check()
    except Exception as error:  # noqa: BLE001 — a health check reports, it does not raise
        result = {"ok": False, "error": f"{type(error).__name__}: {error}"}
    result["ms"] = round((time.perf_counter() - started) * 1000, 1)
    return result


def check_database() -> dict[str, Any]:
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute("SET LOCAL statement_timeout = 2000")
        cursor.execute(
            "SELECT count(*) FROM handoff_handoff WHERE status <> 'done' AND sla_state = 'breached'"
        )
        (breached,) = cursor.fetchone()
    return {"ok": True, "open_handoffs_breached": breached}


def check_broker() -> dict[str, Any]:
    client = _redis()
    pipe = client.pipeline()
    pipe.ping()
    pipe.llen(CELERY_QUEUE)
    pipe.scard(DIRTY_LEADS_KEY)
    pipe.get(FAILURES_KEY.format(hour=_hour()))
    pipe.get(FAILURES_KEY.format(hour=_hour(-1)))
    _pong, queued, dirty, failed_now, failed_before = pipe.execute()
    return {
        "ok": True,
        "queued_tasks": queued,
        "leads_waiting_for_rescore": dirty,
        "task_failures_last_hour": int(failed_now or 0) + int(failed_before or 0),
    }


def check_workers() -> dict[str, Any]:
    from leadops.celery import app

    replies = app.control.ping(timeout=WORKER_PING_TIMEOUT) or []
    nodes = sorted(name for reply in replies for name in reply)
    if not nodes:
        return {"ok": False, "nodes": [], "error": "no worker answered a ping"}
    return {"ok": True, "nodes": nodes}


def check_scheduler() -> dict[str, Any]:
    raw = _redis().get(HEARTBEAT_KEY)
    if raw is None:
        return {"ok": False, "error": "no heartbeat yet: is celery beat running?"}
    age = max(0.0, time.time() - float(raw))
    result: dict[str, Any] = {"ok": age <= HEARTBEAT_STALE_SECONDS, "heartbeat_age_s": round(age)}
    if not result["ok"]:
        result["error"] = "the last heartbeat is stale: is celery beat (or every worker) down?"
    return result


def record_heartbeat() -> None:
    """Run by the heartbeat task: beat enqueued it and a worker ran it, just now."""
    _redis().set(HEARTBEAT_KEY, time.time(), ex=HEARTBEAT_STALE_SECONDS * 10)


def record_task_failure() -> None:
    """Count a failed task in the current hour's bucket (best effort: Redis may be down)."""
    try:
        key = FAILURES_KEY.format(hour=_hour())
        pipe = _redis().pipeline()
        pipe.incr(key)
        pipe.expire(key, FAILURES_TTL_SECONDS)
        pipe.execute()
    except redis.RedisError:
        pass


def _hour(offset: int = 0) -> int:
    return int(time.time() // 3600) + offset


def _redis() -> redis.Redis:
    return bounded_redis(REDIS_TIMEOUT_SECONDS, retries=0)
