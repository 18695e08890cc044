"""A real Celery worker for tests: `celery_worker_process` starts worker processes, waits
until they answer a ping, and stops them (SIGTERM, then SIGKILL) when the test ends.

Use it from a test module with `from tests.worker import celery_worker_process` and
`@pytest.mark.django_db(transaction=True)`: the worker is another process, so it sees
only committed rows.

Where the worker connects, and why nothing is overridden in the test process:

- PostgreSQL: DATABASE_URL with the database name replaced by pytest-django's test
  database (`connection.settings_dict["NAME"]`, read once the test database is set up).
- Redis: the suite's own REDIS_URL, unchanged. It is already per suite (like
  TEST_DB_NAME), so the test process's `schedule_rescore` (its Redis client and the
  Celery app's broker, both built from REDIS_URL) talks to the worker's broker as is.
  A fixed "test" Redis db shared by every suite would be worse: two suites running at
  once would consume each other's tasks against the wrong database. Instead the
  default Celery queue is emptied before the worker starts and after it stops, so the
  worker never runs tasks left behind by other tests.

The fixture requests `transactional_db`, so the workers stop before pytest-django
flushes the tables (no worker connection or task is left to race the flush).
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote, urlsplit, urlunsplit

import pytest
import redis

from leadops.celery import app
from leadops.engines import BASE_DIR, database_url, redis_url

WORKER_NODES = 2  # two worker processes …
WORKER_CONCURRENCY = 2  # … of two prefork children each
START_TIMEOUT_SECONDS = 60.0
STOP_TIMEOUT_SECONDS = 20.0


@dataclass
class CeleryWorkers:
    """The running worker processes, their node names and log files."""

    nodes: list[str]
    processes: list[subprocess.Popen]
    log_paths: list[Path]

    def log(self) -> str:
        return "\n".join(path.read_text(errors="replace") for path in self.log_paths)

    def log_tail(self, chars: int = 4000) -> str:
        return self.log()[-chars:]

    def task_lines(self, task_name: str, outcome: str) -> int:
        """How many log lines say task `task_name` was `outcome` ("received", "succeeded")."""
        marker = f"{task_name}["
        return sum(1 for line in self.log().splitlines() if marker in line and outcome in line)


def worker_database_url() -> str:
    """DATABASE_URL naming pytest-django's test database instead of the configured one."""
    from django.db import connection

    parts = urlsplit(database_url())
    return urlunsplit(parts._replace(path="/" + quote(connection.settings_dict["NAME"])))


def _clear_default_queue(url: str | None = None) -> None:
    redis.Redis.from_url(url or redis_url()).delete(app.conf.task_default_queue)


def _start_node(node: str, log_path: Path, broker_url: str) -> subprocess.Popen:
    env = {
        **os.environ,
        "DATABASE_URL": worker_database_url(),
        "REDIS_URL": broker_url,
        "DJANGO_SETTINGS_MODULE": "leadops.settings",
        "PYTHONUNBUFFERED": "1",
    }
    # Gossip, mingle and heartbeats only slow the start; remote control (ping) stays on.
    command = [
        sys.executable, "-m", "celery", "-A", "leadops", "worker",
        "--pool", "prefork", "--concurrency", str(WORKER_CONCURRENCY),
        "-l", "info", "-n", node, "--without-gossip", "--without-mingle", "--without-heartbeat",
    ]  # fmt: skip
    with open(log_path, "ab") as log:
        # A session of its own: stopping the group also ends the prefork children.
        return subprocess.Popen(
            command, cwd=BASE_DIR, env=env, stdout=log, stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL, start_new_session=True,
        )  # fmt: skip


def _wait_until_answering(workers: CeleryWorkers, broker_url: str) -> None:
    """Return once every node answers a ping; fail (never skip) if one dies or is silent."""
    deadline = time.monotonic() + START_TIMEOUT_SECONDS
    while time.monotonic() < deadline:
        for process in workers.processes:
            if process.poll() is not None:
                pytest.fail(
                    f"Celery worker exited with {process.returncode} on start:\n"
                    + workers.log_tail()
                )
        if broker_url != redis_url():
            # Another broker (a fault test's own Redis): the node's log says it is ready.
            if all(
                f"{node} ready." in path.read_text(errors="replace")
                for node, path in zip(workers.nodes, workers.log_paths, strict=True)
            ):
                return
            time.sleep(0.2)
            continue
        replies = app.control.ping(destination=workers.nodes, timeout=1.0)
        if set(workers.nodes) <= {node for reply in replies for node in reply}:
            return
    pytest.fail(
        f"Celery workers did not answer a ping within {START_TIMEOUT_SECONDS:.0f} s:\n"
        + workers.log_tail()
    )


def _stop(process: subprocess.Popen) -> None:
    """SIGTERM (warm shutdown: running tasks finish), then SIGKILL to the whole group."""
    with contextlib.suppress(ProcessLookupError):
        process.send_signal(signal.SIGTERM)
    with contextlib.suppress(subprocess.TimeoutExpired):
        process.wait(timeout=STOP_TIMEOUT_SECONDS)
    # The group id is the worker's pid (its own session): children left behind die too.
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, signal.SIGKILL)
    process.wait(timeout=STOP_TIMEOUT_SECONDS)


@contextlib.contextmanager
def running_workers(
    log_dir: Path, *, broker_url: str | None = None, nodes: int = WORKER_NODES
) -> Iterator[CeleryWorkers]:
    """Worker nodes on the test database and `broker_url` (default: the suite's Redis),
    answering pings when entered, stopped on exit. The environment of the test process
    is passed on (tests set extra variables with monkeypatch.setenv)."""
    broker_url = broker_url or redis_url()
    _clear_default_queue(broker_url)
    run = uuid.uuid4().hex[:8]
    names = [f"test-{run}-{i}@{socket.gethostname()}" for i in range(nodes)]
    log_paths = [log_dir / f"celery-worker-{run}-{i}.log" for i in range(nodes)]
    workers = CeleryWorkers(nodes=names, processes=[], log_paths=log_paths)
    try:
        for node, log_path in zip(names, log_paths, strict=True):
            workers.processes.append(_start_node(node, log_path, broker_url))
        _wait_until_answering(workers, broker_url)
        yield workers
    finally:
        for process in workers.processes:
            _stop(process)
        with contextlib.suppress(redis.RedisError):
            _clear_default_queue(broker_url)


@pytest.fixture
def celery_worker_process(transactional_db, tmp_path: Path) -> Iterator[CeleryWorkers]:
    """Real `celery -A leadops worker` processes on the test database and the suite's Redis."""
    with running_workers(tmp_path) as workers:
        yield workers
