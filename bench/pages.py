"""Server-side time of pages on an existing bench database, in-process (no HTTP).

    uv run python -m bench.pages /queue/ "/queue/?view=team"            # leadops_bench
    uv run python -m bench.pages --database dash_bench --user bench-manager-01 /dashboard/

For re-measuring a page after a change without rebuilding the data: it migrates the
database, logs in as a bench user (`bench.handoff.bench_users`, default the first IS rep)
with Django's test client and prints p50 / p95 of `--count` requests after `--warm-up`
ones. The figure leaves out HTTP and gunicorn (a few ms); `make bench` measures through
gunicorn.
"""

from __future__ import annotations

import argparse
import os
import time
from urllib.parse import urlsplit, urlunsplit


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("paths", nargs="+")
    parser.add_argument("--database", default="leadops_bench")
    parser.add_argument("--user", default="bench-inside_sales-01")
    parser.add_argument("--count", type=int, default=30)
    parser.add_argument("--warm-up", type=int, default=5)
    args = parser.parse_args()
    _point_django_at(args.database)
    from django.contrib.auth.models import User
    from django.core.management import call_command
    from django.test import Client

    call_command("migrate", verbosity=0)
    user = User.objects.filter(username=args.user).first()
    if user is None:
        raise SystemExit(f"No user {args.user!r} in {args.database}: run make bench first.")
    client = Client()
    client.force_login(user)
    for path in args.paths:
        print(_measure(client, path, count=args.count, warm_up=args.warm_up))


def _point_django_at(database: str) -> None:
    """Django on the existing bench database `database`; a clear exit when it is missing."""
    import psycopg

    from leadops.engines import database_url

    url = urlunsplit(urlsplit(database_url())._replace(path=f"/{database}"))
    try:
        psycopg.connect(url, connect_timeout=10).close()
    except psycopg.OperationalError as exc:
        raise SystemExit(
            f"Cannot open the bench database {database!r} ({str(exc).strip()}). Build it "
            "first: `make bench` (leadops_bench), or `--build` where the tool offers it."
        ) from exc
    os.environ["DATABASE_URL"] = url
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "leadops.settings")
    os.environ["DEBUG"] = "true"  # static files without a manifest
    os.environ["ALLOWED_HOSTS"] = "testserver"
    import django

    django.setup()


def _measure(client, path: str, *, count: int, warm_up: int) -> str:
    for _ in range(warm_up):
        response = client.get(path)
        if response.status_code != 200:
            raise SystemExit(f"{path}: HTTP {response.status_code}")
    times = []
    for _ in range(count):
        started = time.perf_counter()
        client.get(path)
        times.append((time.perf_counter() - started) * 1000)
    times.sort()
    p50, p95 = times[len(times) // 2], times[min(len(times) - 1, int(len(times) * 0.95))]
    return f"{path}: p50 {p50:.1f} ms, p95 {p95:.1f} ms ({count} requests, in-process)"


if __name__ == "__main__":
    main()
