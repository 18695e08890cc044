"""`make run`: the whole of LeadOps in one command, with the demo workspace.

With DATABASE_URL / REDIS_URL unset it starts the embedded PostgreSQL and Redis
(leadops.engines), prepares the database (migrate, collectstatic, load_demo), then runs
gunicorn, a Celery worker and Celery beat as child processes until Ctrl-C or SIGTERM.
If any child dies the others are stopped and the exit code is 1. Embedded engines this
process started are stopped on the way out; ones that were already running are left.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from types import FrameType

from leadops import engines

BASE_DIR = engines.BASE_DIR
PYTHON = sys.executable
HOST = "127.0.0.1"
SHUTDOWN_TIMEOUT = 20.0
POLL_SECONDS = 0.2
PREPARE_STEPS = (
    ("migrate", "--noinput"),
    ("collectstatic", "--noinput", "--verbosity", "0"),
    # The devserver is a demo server by definition, even if DEBUG is turned off.
    ("load_demo", "--force"),
)
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
_PR_SET_PDEATHSIG = 1


@dataclass
class Child:
    name: str
    process: subprocess.Popen


class _Stop:
    """Set by the signal handlers; the main loop polls it."""

    requested = False


def main() -> int:
    port = _port()
    if _port_open(port):
        return _fail(f"port {port} is already in use; choose another with PORT=8001 make run.")
    for sig in STOP_SIGNALS:
        signal.signal(sig, _request_stop)
    try:
        started = engines.ensure_embedded_engines()
    except (RuntimeError, OSError, subprocess.SubprocessError) as exc:
        return _fail(f"the embedded PostgreSQL or Redis could not start: {exc}")
    try:
        return _serve(port, _child_env())
    finally:
        engines.stop_embedded_engines(started)


def _serve(port: int, env: dict[str, str]) -> int:
    for step in PREPARE_STEPS:
        result = subprocess.run([PYTHON, "manage.py", *step], cwd=BASE_DIR, env=env)
        if _Stop.requested:
            return 0
        if result.returncode != 0:
            return _fail(f"`manage.py {' '.join(step)}` failed (exit {result.returncode}).")
    children = [_spawn(name, command, env) for name, command in _commands(port).items()]
    return _supervise(children, port)


def _commands(port: int) -> dict[str, list[str]]:
    web = [PYTHON, "-m", "gunicorn", "leadops.wsgi", "--bind", f"{HOST}:{port}", "--workers", "2"]
    # No control socket: it lives in the user's home, where two servers would clash.
    web += ["--graceful-timeout", "10", "--access-logfile", "-", "--no-control-socket"]
    # --quiet drops Celery's start-up banners, which would scroll the URLs and logins away.
    celery = [PYTHON, "-m", "celery", "-A", "leadops", "--quiet"]
    schedule = engines.VAR_DIR / "celerybeat-schedule"
    return {
        "web": web,
        "worker": [*celery, "worker", "--concurrency", "2", "-l", "info"],
        "beat": [*celery, "beat", "-l", "info", "-s", str(schedule)],
    }


def _child_env() -> dict[str, str]:
    # Name the servers explicitly, so every child reaches the same database and broker.
    return {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "leadops.settings",
        "DATABASE_URL": engines.database_url(),
        "REDIS_URL": engines.redis_url(),
        "PYTHONUNBUFFERED": "1",
        # Demo mail (notifications, nurture mails) goes to files, not over the banner.
        "EMAIL_BACKEND": os.environ.get(
            "EMAIL_BACKEND", "django.core.mail.backends.filebased.EmailBackend"
        ),
        "EMAIL_FILE_PATH": os.environ.get("EMAIL_FILE_PATH", str(engines.VAR_DIR / "mail")),
    }


def _spawn(name: str, command: list[str], env: dict[str, str]) -> Child:
    # Own process group: a terminal's Ctrl-C reaches only us, and we stop children in
    # order; the death signal stops them too if we are killed without a chance to.
    process = subprocess.Popen(
        command, cwd=BASE_DIR, env=env, process_group=0, preexec_fn=_die_with_parent
    )
    return Child(name, process)


def _die_with_parent() -> None:
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, int(signal.SIGTERM))


def _supervise(children: list[Child], port: int) -> int:
    try:
        return _watch(children, port)
    finally:
        _stop_children(children)


def _watch(children: list[Child], port: int) -> int:
    """Wait for a stop request (0) or a child's death (1), announcing once the web is up."""
    announced = False
    while not _Stop.requested:
        dead = next((child for child in children if child.process.poll() is not None), None)
        if dead is not None:
            code = dead.process.returncode
            return _fail(f"{dead.name} exited unexpectedly (exit {code}); stopping the others.")
        if not announced and _port_open(port):
            announced = _print_banner(port)
        time.sleep(POLL_SECONDS)
    print("devserver: stopping…", flush=True)
    return 0


def _stop_children(children: list[Child]) -> None:
    """SIGTERM each child, wait, then SIGKILL whatever is left of its process group."""
    for child in children:
        with contextlib.suppress(ProcessLookupError):
            child.process.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + SHUTDOWN_TIMEOUT
    for child in children:
        try:
            child.process.wait(timeout=max(deadline - time.monotonic(), 0.1))
        except subprocess.TimeoutExpired:
            print(f"devserver: {child.name} did not stop in time; killing it.", file=sys.stderr)
        # Also reaps grandchildren a dead master left behind (gunicorn or pool workers).
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(child.process.pid, signal.SIGKILL)
        child.process.wait()


def _print_banner(port: int) -> bool:
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "leadops.settings")
    import django

    django.setup()
    from leadops import demo

    url = f"http://{HOST}:{port}/"
    logins = [f"    {demo.ADMIN_USERNAME:<15} superuser"] + [
        f"    {username:<15} {role}" for username, (role, _, _) in demo.DEMO_USERS.items()
    ]
    lines = [
        "",
        f"LeadOps is running at {url}",
        f"  admin:    {url}admin/",
        f"  IS queue: {url}queue/   sales inbox: {url}inbox/   dashboard: {url}dashboard/",
        f"  API docs: {url}api/docs/",
        f"  mail sent by the app is written to {engines.VAR_DIR / 'mail'}/",
        f"  demo logins (password: {demo.DEMO_PASSWORD}):",
        *logins,
        "Press Ctrl-C to stop.",
        "",
    ]
    print("\n".join(lines), flush=True)
    return True


def _request_stop(signum: int, frame: FrameType | None) -> None:
    _Stop.requested = True


def _port() -> int:
    value = os.environ.get("PORT", "8000")
    if not value.isdigit():
        raise SystemExit(f"devserver: PORT must be a port number, not {value!r}.")
    return int(value)


def _port_open(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(0.5)
        return sock.connect_ex((HOST, port)) == 0


def _fail(message: str) -> int:
    print(f"devserver: {message}", file=sys.stderr, flush=True)
    return 1


if __name__ == "__main__":
    sys.exit(main())
