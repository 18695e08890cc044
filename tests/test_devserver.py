"""`make run` (python -m leadops.devserver): the smoke test starts the real thing on the
embedded engines in a fresh folder; the others check how it stops its children."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

import psutil
import psycopg
import pytest
from celery import Celery

from leadops import devserver

ROOT = Path(__file__).resolve().parent.parent
START_TIMEOUT = 120
STOP_TIMEOUT = 30


def _free_ports(count: int) -> list[int]:
    sockets = [socket.socket() for _ in range(count)]
    for sock in sockets:
        sock.bind(("127.0.0.1", 0))
    ports = [sock.getsockname()[1] for sock in sockets]
    for sock in sockets:
        sock.close()
    return ports


def _status(url: str) -> int | None:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:  # noqa: S310 (loopback http)
            return response.status
    except urllib.error.HTTPError as exc:
        return exc.code
    except OSError:
        return None


def _port_open(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.5)
        return sock.connect_ex(("127.0.0.1", port)) == 0


class Devserver:
    """One `python -m leadops.devserver` in its own var dir and ports, output to a file."""

    def __init__(self, var_dir: Path, log: Path) -> None:
        self.pg_port, self.redis_port, self.port = _free_ports(3)
        self.log = log
        self.env = {
            key: value
            for key, value in os.environ.items()
            if key not in ("DATABASE_URL", "REDIS_URL")
        } | {
            "LEADOPS_VAR_DIR": str(var_dir),
            "EMBEDDED_PG_PORT": str(self.pg_port),
            "EMBEDDED_REDIS_PORT": str(self.redis_port),
            "PORT": str(self.port),
            "LEADOPS_DEMO_LEADS": "200",
            "LEADOPS_DEMO_ACCOUNTS": "20",
            "LEADOPS_DEMO_DAYS": "14",
        }
        self.url = f"http://127.0.0.1:{self.port}/"
        self.redis_url = f"redis://127.0.0.1:{self.redis_port}/0"
        with open(self.log, "wb") as out:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "leadops.devserver"],
                cwd=ROOT,
                env=self.env,
                stdout=out,
                stderr=subprocess.STDOUT,
            )

    def output(self) -> str:
        return self.log.read_text(errors="replace")[-6000:]

    def wait_until_ready(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT
        while _status(self.url + "healthz/") != 200:
            assert self.process.poll() is None, f"devserver exited:\n{self.output()}"
            assert time.monotonic() < deadline, f"not up in {START_TIMEOUT}s:\n{self.output()}"
            time.sleep(0.5)

    def cleanup(self, children: list[psutil.Process]) -> None:
        """After a failed test: leave no process or server behind."""
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        for child in children:
            with contextlib.suppress(psutil.NoSuchProcess):
                child.kill()
        stop = "from leadops.engines import stop_embedded_engines as s; s(['postgres', 'redis'])"
        if _port_open(self.pg_port) or _port_open(self.redis_port):
            subprocess.run([sys.executable, "-c", stop], cwd=ROOT, env=self.env, timeout=60)


def _ping_worker(redis_url: str) -> str:
    with Celery("smoke", broker=redis_url, backend=redis_url) as app:
        return app.send_task("leadops.tasks.ping").get(timeout=30)


def _count_demo_leads(port: int) -> int:
    conninfo = f"host=127.0.0.1 port={port} user=postgres dbname=leadops"
    with psycopg.connect(conninfo) as conn:
        return conn.execute("SELECT count(*) FROM leadops_lead").fetchone()[0]


@pytest.fixture
def var_dir():
    """A fresh var dir outside pytest's tmp root.

    As root, PostgreSQL runs as another user who must traverse the path; every pytest
    session that starts resets /tmp/pytest-of-<user> to 0700, which would lock it out.
    """
    path = Path(tempfile.mkdtemp(prefix="leadops-smoke-"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.mark.slow
def test_make_run_serves_works_and_stops_cleanly(var_dir, tmp_path):
    server = Devserver(var_dir, log=tmp_path / "devserver.log")
    children: list[psutil.Process] = []
    try:
        server.wait_until_ready()
        children = psutil.Process(server.process.pid).children(recursive=True)

        assert _status(server.url + "admin/login/") == 200
        assert _status(server.url + "api/docs/") == 200
        assert _ping_worker(server.redis_url) == "pong"
        assert _count_demo_leads(server.pg_port) == 200
        assert len(children) >= 3  # gunicorn, worker, beat (and their own children)

        server.process.send_signal(signal.SIGTERM)
        assert server.process.wait(timeout=STOP_TIMEOUT) == 0, server.output()
        _, alive = psutil.wait_procs(children, timeout=5)
        assert alive == [], server.output()
        ports = (server.pg_port, server.redis_port, server.port)
        assert not any(_port_open(port) for port in ports), server.output()
        output = server.log.read_text(errors="replace")  # the banner comes first
        assert f"{server.url}admin/" in output and f"{server.url}api/docs/" in output
        assert "demo-sales" in output and "password: leadops-demo" in output
    finally:
        server.cleanup(children)


def _child(name: str, code: str) -> devserver.Child:
    process = subprocess.Popen([sys.executable, "-c", code], process_group=0)
    return devserver.Child(name, process)


def test_a_dying_child_stops_the_others_and_fails(monkeypatch, capsys):
    monkeypatch.setattr(devserver._Stop, "requested", False)
    survivor = _child("web", "import time; time.sleep(60)")
    dying = _child("worker", "raise SystemExit(3)")

    code = devserver._supervise([survivor, dying], port=_free_ports(1)[0])

    assert code == 1
    assert survivor.process.poll() is not None
    assert "worker exited unexpectedly (exit 3)" in capsys.readouterr().err


def test_a_stop_request_stops_every_child_and_succeeds(monkeypatch):
    monkeypatch.setattr(devserver._Stop, "requested", True)
    children = [_child("web", "import time; time.sleep(60)") for _ in range(2)]

    assert devserver._supervise(children, port=_free_ports(1)[0]) == 0
    assert all(child.process.returncode is not None for child in children)


def test_a_child_ignoring_sigterm_is_killed_after_the_timeout(monkeypatch):
    monkeypatch.setattr(devserver, "SHUTDOWN_TIMEOUT", 1.0)
    stubborn = _child(
        "beat",
        "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
        "print('ready', flush=True); time.sleep(60)",
    )
    time.sleep(0.5)  # let it install its handler

    started = time.monotonic()
    devserver._stop_children([stubborn])

    assert stubborn.process.returncode == -signal.SIGKILL
    assert time.monotonic() - started < 10


def test_refuses_a_port_in_use_before_starting_anything(monkeypatch, capsys):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        monkeypatch.setenv("PORT", str(busy.getsockname()[1]))

        assert devserver.main() == 1
    assert "already in use" in capsys.readouterr().err


def test_children_reach_the_same_servers(monkeypatch):
    monkeypatch.delenv("DATABASE_URL", raising=False)
    monkeypatch.delenv("REDIS_URL", raising=False)

    env = devserver._child_env()

    assert env["DATABASE_URL"] == devserver.engines.EMBEDDED_DATABASE_URL
    assert env["REDIS_URL"] == devserver.engines.EMBEDDED_REDIS_URL
    assert env["DJANGO_SETTINGS_MODULE"] == "leadops.settings"


def test_a_failing_preparation_step_stops_before_serving(monkeypatch, capsys):
    monkeypatch.setattr(devserver._Stop, "requested", False)
    monkeypatch.setattr(devserver, "PREPARE_STEPS", (("no_such_command",),))
    spawned = []
    monkeypatch.setattr(devserver, "_spawn", lambda *args: spawned.append(args))

    assert devserver._serve(_free_ports(1)[0], devserver._child_env()) == 1
    assert spawned == []
    assert "`manage.py no_such_command` failed" in capsys.readouterr().err
