"""`make bench`: LeadOps' figures beside the engine's own limits, in one run.

    make bench                          # small size (CI): 20k leads, 200k events
    make bench BENCH_ARGS="--size full" # 1M leads, 20M events

It builds a separate database (`leadops_bench`) on the configured PostgreSQL server,
generates data inside PostgreSQL, measures the engine limits, starts gunicorn and
measures the API, prints a table and writes it into docs/performance.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

SIZES = {
    "small": {"leads": 20_000, "events": 200_000, "seconds": 5, "limit_rows": 50_000},
    "full": {"leads": 1_000_000, "events": 20_000_000, "seconds": 15, "limit_rows": 200_000},
}
BENCH_DB = "leadops_bench"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", choices=SIZES, default="small")
    parser.add_argument("--out", default="docs/performance.md")
    parser.add_argument("--no-write", action="store_true", help="print only")
    args = parser.parse_args()
    size = SIZES[args.size]
    _point_django_at_bench_database()
    results = run(size, args.size)
    table = render_table(results)
    print("\n" + table)
    if not args.no_write:
        from bench.report import write_report

        write_report(Path(args.out), size_name=args.size, size=size, table=table)
        print(f"\nwritten to {args.out}")


def _point_django_at_bench_database() -> None:
    from leadops.engines import database_url, ensure_embedded_engines

    ensure_embedded_engines()
    parts = urlsplit(database_url())
    bench_url = urlunsplit(parts._replace(path=f"/{BENCH_DB}"))
    _recreate_database(parts, BENCH_DB)
    os.environ["DATABASE_URL"] = bench_url
    os.environ["REDIS_URL"] = _bench_redis_url()
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "leadops.settings")
    os.environ["DEBUG"] = "true"
    import django

    django.setup()
    from django.core.management import call_command

    call_command("migrate", verbosity=0)


def _bench_redis_url() -> str:
    """Database 15 of the configured Redis, emptied: bench queues never meet real ones."""
    import redis

    from leadops.engines import redis_url

    url = urlunsplit(urlsplit(redis_url())._replace(path="/15"))
    redis.Redis.from_url(url).flushdb()
    return url


def _recreate_database(parts, name: str) -> None:
    import psycopg

    admin_url = urlunsplit(parts._replace(path="/postgres"))
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        conn.execute(f'CREATE DATABASE "{name}"')


def run(size: dict, size_name: str) -> list[dict]:
    from bench import data, engine

    print(f"generating {size['leads']:,} leads and {size['events']:,} events …")
    data.generate(leads=size["leads"], events=size["events"])
    first_lead = _first_lead_id()
    rows = engine.sample_rows(first_lead, size["leads"], size["limit_rows"], "limit")
    results = []
    limits = {
        "copy": engine.copy_rate(rows),
        "upsert": engine.upsert_rate(rows),
        "single": engine.single_insert_commit_rate(rows[:3000]),
    }
    engine.drop_scratch()
    print(f"engine limits: {json.dumps({k: round(v) for k, v in limits.items()})}")
    results += measure_api(size, limits, first_lead)
    return results


def _first_lead_id() -> int:
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute("SELECT min(id) FROM leadops_lead")
        return cursor.fetchone()[0]


def _bench_token() -> str:
    from django.contrib.auth.models import Group, User
    from rest_framework.authtoken.models import Token

    user, _ = User.objects.get_or_create(username="bench-integration")
    user.groups.add(Group.objects.get(name="marketer"))
    return Token.objects.get_or_create(user=user)[0].key


def _event(index: int, prefix: str, leads: int) -> dict:
    # The same address scheme as bench.data, so events land on existing leads.
    number = 1 + (index * 7919) % leads
    return {
        "event_id": f"{prefix}-{index}",
        "email": f"lead{number}@bench{number % max(1, leads // 20)}.example.jp",
        "type": "page_view",
        "occurred_at": datetime.now(UTC).isoformat(),
        "properties": {"url": "https://example.jp/pricing", "title": "料金"},
    }


def measure_api(size: dict, limits: dict, first_lead: int) -> list[dict]:
    from bench.http import closed_loop, free_port, open_loop, start_gunicorn, stop_process

    token = _bench_token()
    port = free_port()
    server = start_gunicorn(_production_env(), port)
    base = f"http://127.0.0.1:{port}/api/v1"
    run_id = uuid.uuid4().hex[:8]
    try:
        warm = [json.dumps(_event(i, f"warm-{run_id}", size["leads"])).encode() for i in range(300)]
        open_loop(f"{base}/events/", token, warm, rate=300)
        single = _single_posts(base, token, size, run_id, open_loop)
        batch = _batch_posts(base, token, size, run_id, closed_loop)
        listing = _lead_list(base, token, open_loop)
    finally:
        stop_process(server)
    return [
        {
            "figure": "single-event POST, offered 1,000/s",
            "value": f"{single.rate:,.0f} events/s, p95 {single.p95_ms:.1f} ms",
            "limit": f"{limits['single']:,.0f}/s (INSERT+UPDATE, 1 tx each)",
            "ratio": single.rate / limits["single"],
            "goal": "≥ 1,000/s, p95 < 25 ms",
            "met": single.rate >= 990 and single.p95_ms < 25,
            "statuses": single.statuses,
        },
        {
            "figure": "batch POST, 1,000 events each",
            "value": f"{batch.rate * 1000:,.0f} events/s",
            "limit": f"{limits['upsert']:,.0f}/s upsert; {limits['copy']:,.0f}/s COPY",
            "ratio": batch.rate * 1000 / limits["upsert"],
            "goal": "≥ 20,000 events/s",
            "met": batch.rate * 1000 >= 20_000,
            "statuses": batch.statuses,
        },
        {
            "figure": f"lead list first page ({size['leads']:,} leads)",
            "value": f"p95 {listing.p95_ms:.1f} ms",
            "limit": "—",
            "ratio": None,
            "goal": "p95 < 30 ms",
            "met": listing.p95_ms < 30,
            "statuses": listing.statuses,
        },
    ]


def _production_env() -> dict:
    """The server runs as in production (DEBUG off), only without TLS in front."""
    return {
        **os.environ,
        "DEBUG": "false",
        "SECRET_KEY": os.environ.get("SECRET_KEY") or "bench-" + "k" * 60,
        "ALLOWED_HOSTS": "127.0.0.1",
        "SECURE_SSL_REDIRECT": "false",
    }


def _single_posts(base, token, size, run_id, open_loop):
    count = 1000 * size["seconds"]
    bodies = [
        json.dumps(_event(i, f"single-{run_id}", size["leads"])).encode() for i in range(count)
    ]
    return open_loop(f"{base}/events/", token, bodies, rate=1000)


def _batch_posts(base, token, size, run_id, closed_loop):
    batches = 40 if size["leads"] > 100_000 else 20
    bodies = [
        json.dumps(
            {
                "events": [
                    _event(b * 1000 + i, f"batch-{run_id}", size["leads"]) for i in range(1000)
                ]
            }
        ).encode()
        for b in range(batches)
    ]
    return closed_loop(f"{base}/events/", token, bodies, concurrency=3)


def _lead_list(base, token, open_loop):
    urls = [None] * 300
    return open_loop(f"{base}/leads/", token, urls, rate=50, method="GET", concurrency=8)


def render_table(results: list[dict]) -> str:
    lines = [
        "| figure | LeadOps | engine limit | ratio | goal | met |",
        "|---|---|---|---|---|---|",
    ]
    for row in results:
        ratio = f"{row['ratio']:.2f}" if row["ratio"] is not None else "—"
        met = "yes" if row["met"] else "**no**"
        cells = [row["figure"], row["value"], row["limit"], ratio, row["goal"], met]
        lines.append("| " + " | ".join(cells) + " |")
    statuses = {row["figure"]: row["statuses"] for row in results}
    lines.append("")
    lines.append(f"HTTP statuses seen: {json.dumps(statuses, ensure_ascii=False)}")
    lines.append(
        f"Machine: {os.cpu_count()} cores, {platform.python_version()}, {sys.platform}; "
        f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC"
    )
    return "\n".join(lines)


if __name__ == "__main__":
    started = time.perf_counter()
    main()
    print(f"bench finished in {time.perf_counter() - started:.0f} s")
