"""HTTP load against a real gunicorn: open-loop rates, latencies from the scheduled time.

Latency is measured from when a request was due, not when it was sent, so a server that
falls behind shows it in p95 instead of quietly lowering the offered rate.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import aiohttp

SETTINGS_FILE = Path(__file__).with_name("gunicorn_settings.py")


@dataclass
class LoadResult:
    requests: int
    ok: int
    seconds: float
    p50_ms: float
    p95_ms: float
    statuses: dict

    @property
    def rate(self) -> float:
        return self.ok / self.seconds if self.seconds else 0.0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_gunicorn(
    env: dict,
    port: int,
    workers: int = 3,
    threads: int = 4,
    app: str = "leadops.wsgi:application",
) -> subprocess.Popen:
    command = [
        sys.executable,
        "-m",
        "gunicorn",
        app,
        "--bind",
        f"127.0.0.1:{port}",
        "--workers",
        str(workers),
        "--threads",
        str(threads),
        "--worker-class",
        "gthread",
        "--keep-alive",
        "30",
        "--log-level",
        "warning",
        # Without -c gunicorn reads ./gunicorn.conf.py, whose accesslog "-" prints a line
        # per request into the bench output.
        "--config",
        str(SETTINGS_FILE),
    ]
    process = subprocess.Popen(command, env=env, start_new_session=True)
    _wait_until_up(port, process)
    return process


def start_celery(env: dict, concurrency: int = 2, extra: tuple[str, ...] = ()) -> subprocess.Popen:
    """A real Celery worker in its own process group, stopped with `stop_process`;
    `extra` are more worker options (e.g. -Q queue, -I module)."""
    command = [sys.executable, "-m", "celery", "-A", "leadops", "--quiet", "worker"]
    command += ["--concurrency", str(concurrency), "-l", "warning", "--without-heartbeat"]
    command += ["--without-gossip", "--without-mingle", *extra]
    return subprocess.Popen(command, env=env, start_new_session=True)


def stop_process(process: subprocess.Popen) -> None:
    """SIGTERM to the main process (gunicorn's and Celery's graceful stop: they stop their
    own children), then SIGKILL to whatever of its process group is left."""
    if process.poll() is None:
        process.terminate()
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(timeout=20)
    with contextlib.suppress(ProcessLookupError):  # else the whole group is gone
        os.killpg(process.pid, signal.SIGKILL)


def _wait_until_up(port: int, process: subprocess.Popen, seconds: float = 30) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError("gunicorn exited during start-up")
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.1)
    raise RuntimeError("gunicorn did not start listening")


def percentile(values: list[float], fraction: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


async def _open_loop(url, token, bodies, rate, method, concurrency, on_sent=None) -> LoadResult:
    latencies: list[float] = []
    statuses: dict[int, int] = {}
    limit = asyncio.Semaphore(concurrency)
    headers = {"Authorization": f"Token {token}", "Content-Type": "application/json"}
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector, headers=headers) as session:
        start = time.perf_counter()

        async def one(index: int, body: bytes | None) -> None:
            due = start + index / rate
            await asyncio.sleep(max(0.0, due - time.perf_counter()))
            async with limit:
                if on_sent:
                    on_sent(index, due, time.perf_counter())
                target = url[index] if isinstance(url, list) else url
                async with session.request(method, target, data=body) as response:
                    await response.read()
                    statuses[response.status] = statuses.get(response.status, 0) + 1
                    if response.status < 300:
                        latencies.append((time.perf_counter() - due) * 1000)

        await asyncio.gather(*(one(i, b) for i, b in enumerate(bodies)))
        seconds = time.perf_counter() - start
    return LoadResult(
        len(bodies),
        len(latencies),
        seconds,
        percentile(latencies, 0.5),
        percentile(latencies, 0.95),
        statuses,
    )


def open_loop(
    url: str | list[str],
    token: str,
    bodies: list,
    *,
    rate: float,
    method: str = "POST",
    concurrency: int = 64,
    on_sent: Callable[[int, float, float], None] | None = None,
) -> LoadResult:
    """Send `bodies` at `rate` per second (open loop); None bodies for GETs. `url` may
    be a list: one URL per request.

    `on_sent(index, due, sent)` is called as each request goes out (perf_counter times).
    """
    return asyncio.run(_open_loop(url, token, bodies, rate, method, concurrency, on_sent))


def closed_loop(
    url: str, token: str, bodies: list, *, concurrency: int, method: str = "POST"
) -> LoadResult:
    """Send `bodies` as fast as `concurrency` clients can: the throughput ceiling."""
    return asyncio.run(_open_loop(url, token, bodies, 1e9, method, concurrency))


@dataclass(frozen=True)
class Request:
    """One request of a sequential run: path (under the base URL), headers, body."""

    method: str
    path: str
    headers: dict
    body: bytes | None = None


async def _sequential(base: str, requests: list[Request], warm_up: int, on_start) -> LoadResult:
    latencies: list[float] = []
    statuses: dict[int, int] = {}
    connector = aiohttp.TCPConnector(limit=1)
    async with aiohttp.ClientSession(connector=connector) as session:
        start = time.perf_counter()
        for index, request in enumerate(requests):
            if index == warm_up:
                if on_start:
                    on_start()
                start = time.perf_counter()
            sent = time.perf_counter()
            async with session.request(
                request.method,
                base + request.path,
                headers=request.headers,
                data=request.body,
                allow_redirects=False,
            ) as response:
                await response.read()
            if index >= warm_up:
                statuses[response.status] = statuses.get(response.status, 0) + 1
                if response.status < 400:
                    latencies.append((time.perf_counter() - sent) * 1000)
        seconds = time.perf_counter() - start
    measured = max(0, len(requests) - warm_up)
    return LoadResult(
        measured,
        len(latencies),
        seconds,
        percentile(latencies, 0.5),
        percentile(latencies, 0.95),
        statuses,
    )


def sequential(
    base: str, requests: list[Request], *, warm_up: int = 20, on_start=None
) -> LoadResult:
    """Send `requests` one after another on one keep-alive connection: each request's own
    latency, from sending it to its last byte, with no queue of the load generator's
    making. The first `warm_up` are not counted (`on_start()` is called after them).
    Redirects are not followed; a status below 400 counts as answered."""
    return asyncio.run(_sequential(base, requests, warm_up, on_start))
