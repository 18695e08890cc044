"""Processes the fault suite starts and breaks: a Redis server of its own (never the
machine's shared one) and a gunicorn web server on the test database."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import redis

from leadops.engines import BASE_DIR
from tests.worker import worker_database_url

START_TIMEOUT_SECONDS = 30.0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _wait(condition, *, what: str, log: Path) -> None:
    deadline = time.monotonic() + START_TIMEOUT_SECONDS
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"{what} did not start:\n" + log.read_text(errors="replace")[-3000:])
        time.sleep(0.1)


@dataclass
class OwnRedis:
    """redis-server on a free port, without persistence: a restart loses everything,
    the worst case for the queues that live in it."""

    port: int
    log_path: Path
    process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def client(self) -> redis.Redis:
        return redis.Redis.from_url(self.url, socket_timeout=2, socket_connect_timeout=2)

    def _answers(self) -> bool:
        try:
            return bool(self.client().ping())
        except redis.RedisError:
            return False

    def start(self) -> None:
        command = ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1",
                   "--save", "", "--appendonly", "no"]  # fmt: skip
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                command, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
            )
        _wait(self._answers, what="redis-server", log=self.log_path)

    def pause(self) -> None:
        """SIGSTOP: connections stay open and nothing answers (a hung server)."""
        self.process.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        self.process.send_signal(signal.SIGCONT)

    def kill(self) -> None:
        """kill -9: connections refused until `start` brings back an empty server."""
        self.process.send_signal(signal.SIGCONT)
        self.process.kill()
        self.process.wait(timeout=10)


@contextlib.contextmanager
def own_redis(log_dir: Path) -> Iterator[OwnRedis]:
    server = OwnRedis(port=free_port(), log_path=log_dir / "redis.log")
    server.start()
    try:
        yield server
    finally:
        if server.process is not None and server.process.poll() is None:
            server.kill()


@dataclass
class WebServer:
    port: int
    process: subprocess.Popen
    log_path: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def log_tail(self, chars: int = 4000) -> str:
        return self.log_path.read_text(errors="replace")[-chars:]


@contextlib.contextmanager
def gunicorn(log_dir: Path, *, redis_url: str, workers: int = 2) -> Iterator[WebServer]:
    """gunicorn serving LeadOps on the test database and `redis_url`."""
    port = free_port()
    log_path = log_dir / "gunicorn.log"
    env = {**os.environ, "DATABASE_URL": worker_database_url(), "REDIS_URL": redis_url,
           "DJANGO_SETTINGS_MODULE": "leadops.settings", "PYTHONUNBUFFERED": "1"}  # fmt: skip
    command = [sys.executable, "-m", "gunicorn", "leadops.wsgi", "--config", "gunicorn.conf.py",
               "--bind", f"127.0.0.1:{port}", "--workers", str(workers), "--threads", "4",
               "--timeout", "60"]  # fmt: skip
    with open(log_path, "ab") as log:
        process = subprocess.Popen(
            command, cwd=BASE_DIR, env=env, stdout=log, stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL, start_new_session=True,
        )  # fmt: skip
    server = WebServer(port=port, process=process, log_path=log_path)

    def answers() -> bool:
        if process.poll() is not None:
            pytest.fail("gunicorn exited:\n" + server.log_tail())
        with socket.socket() as sock:
            return sock.connect_ex(("127.0.0.1", port)) == 0

    try:
        _wait(answers, what="gunicorn", log=log_path)
        yield server
    finally:
        with contextlib.suppress(ProcessLookupError):
            process.send_signal(signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(timeout=20)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=10)
