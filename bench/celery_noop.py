"""The engine limit for LeadOps' asynchronous work: how many bare tasks Celery runs a second.

The bench's worker is started with WORKER_OPTIONS (this module imported; the default
queue and the bench's own, which nothing else uses) and runs `bench.noop` tasks that only
count themselves in Redis (one INCR: the least a task can do to be counted). The bench
enqueues N of them and waits until the counter says all ran: tasks/s end to end, with
the real broker and worker on the same machine as everything else.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from functools import lru_cache

import redis
from celery import shared_task

from leadops.engines import redis_url

QUEUE = "bench_noop"
TASK = "bench.noop"
COUNTER_KEY = "bench:noop:done"
WORKER_OPTIONS = ("-Q", f"celery,{QUEUE}", "-I", "bench.celery_noop")


@lru_cache(maxsize=1)
def _redis() -> redis.Redis:
    return redis.Redis.from_url(redis_url())


@shared_task(name=TASK, ignore_result=True)
def noop() -> None:
    _redis().incr(COUNTER_KEY)


@dataclass(frozen=True)
class NoopResult:
    tasks: int
    enqueue_rate: float  # tasks/s the producer got into the broker
    rate: float  # tasks/s from the first enqueue to the last task run
    seconds: float


def _wait_for(count: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while int(_redis().get(COUNTER_KEY) or 0) < count:
        if time.monotonic() > deadline:
            raise RuntimeError(f"the no-op worker ran fewer than {count} tasks in {timeout} s")
        time.sleep(0.01)


def measure(tasks: int, *, warm: int = 8) -> NoopResult:
    """With a worker started with WORKER_OPTIONS: warm it up, enqueue `tasks` no-ops
    and time them all run."""
    from leadops.celery import app

    _redis().delete(COUNTER_KEY)
    # A few first: the worker is up and each pool process has run a task.
    for _ in range(warm):
        app.send_task(TASK, queue=QUEUE)
    _wait_for(warm, timeout=120)
    started = time.perf_counter()
    for _ in range(tasks):
        app.send_task(TASK, queue=QUEUE)
    enqueued = time.perf_counter() - started
    _wait_for(warm + tasks, timeout=300)
    seconds = time.perf_counter() - started
    return NoopResult(tasks, tasks / enqueued, tasks / seconds, seconds)
