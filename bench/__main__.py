"""`make bench`: LeadOps' figures beside the engine's own limits, in one run.

    make bench                          # small size: 20k leads, 200k events
    make bench BENCH_ARGS="--size full" # 1M leads, 20M events (the issue's size)
    make bench BENCH_ARGS="--size ci"   # 3k leads, 30k events, short runs (the CI test)

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

# seconds: of each open-loop figure; limit_rows: rows of the engine-limit inserts;
# batches: of 1,000 events; requests: sequential requests per page/endpoint figure;
# send_minutes / send_rate: beat minutes of newsletter sending at that rate (None: the
# configured NURTURING_SEND_RATE_PER_MINUTE); noop_tasks: bare Celery tasks;
# dashboard_runs: cold and cached page loads per filter set.
SIZES = {
    "ci": {
        "leads": 3_000,
        "events": 30_000,
        "seconds": 0.5,
        "limit_rows": 5_000,
        "batches": 2,
        "list_requests": 60,
        "handoff_requests": 30,
        "requests": 100,
        "send_minutes": 2,
        "send_rate": 100,
        "noop_tasks": 500,
        "dashboard_runs": 1,
    },
    "small": {
        "leads": 20_000,
        "events": 200_000,
        "seconds": 5,
        "limit_rows": 50_000,
        "batches": 20,
        "list_requests": 300,
        "handoff_requests": 150,
        "requests": 300,
        "send_minutes": 2,
        "send_rate": None,
        "noop_tasks": 5_000,
        "dashboard_runs": 3,
    },
    "full": {
        "leads": 1_000_000,
        "events": 20_000_000,
        "seconds": 15,
        "limit_rows": 200_000,
        "batches": 40,
        "list_requests": 300,
        "handoff_requests": 300,
        "requests": 500,
        "send_minutes": 3,
        "send_rate": None,
        "noop_tasks": 20_000,
        "dashboard_runs": 5,
    },
}
BENCH_DB = "leadops_bench"
BENCH_REDIS_DB = 15


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", choices=SIZES, default="small")
    parser.add_argument("--out", default="docs/performance.md")
    parser.add_argument("--no-write", action="store_true", help="print only")
    parser.add_argument(
        "--database", default=BENCH_DB, help="the bench database (dropped and created)"
    )
    parser.add_argument(
        "--redis-db", type=int, default=BENCH_REDIS_DB, help="the bench Redis database (emptied)"
    )
    args = parser.parse_args()
    size = SIZES[args.size]
    _point_django_at_bench_database(args.database, args.redis_db)
    results = run(size, args.size)
    table = render_table(results)
    print("\n" + table)
    if not args.no_write:
        from bench.report import write_report

        write_report(Path(args.out), size_name=args.size, size=size, table=table)
        print(f"\nwritten to {args.out}")


def _point_django_at_bench_database(name: str = BENCH_DB, redis_db: int = BENCH_REDIS_DB) -> None:
    from leadops.engines import database_url, ensure_embedded_engines

    ensure_embedded_engines()
    parts = urlsplit(database_url())
    bench_url = urlunsplit(parts._replace(path=f"/{name}"))
    _recreate_database(parts, name)
    os.environ["DATABASE_URL"] = bench_url
    os.environ["REDIS_URL"] = _bench_redis_url(redis_db)
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "leadops.settings")
    os.environ["DEBUG"] = "true"
    import django

    django.setup()
    from django.core.management import call_command

    call_command("migrate", verbosity=0)


def _bench_redis_url(redis_db: int = BENCH_REDIS_DB) -> str:
    """A database of the configured Redis (15 unless told), emptied: bench queues never
    meet real ones."""
    import redis

    from leadops.engines import redis_url

    url = urlunsplit(urlsplit(redis_url())._replace(path=f"/{redis_db}"))
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
    timings = data.generate(leads=size["leads"], events=size["events"])
    # Generation scores nothing: rescore-all first, so that leads have real scores.
    results = [_generation_row(size, timings), *measure_scoring(size)]
    first_lead = _first_lead_id()
    rows = engine.sample_rows(first_lead, size["leads"], size["limit_rows"], "limit")
    limits = {
        "copy": engine.copy_rate(rows),
        "upsert": engine.upsert_rate(rows),
        "single": engine.single_insert_commit_rate(rows[:3000]),
    }
    engine.drop_scratch()
    print(f"engine limits: {json.dumps({k: round(v) for k, v in limits.items()})}")
    results += measure_api(size, limits, first_lead)
    # Hand-off figures: queue page, hand-off list API, SLA monitor (bench/handoff.py).
    from bench import dashboard, handoff, nurturing

    results += handoff.measure(size, _production_env())
    results += nurturing.measure(size, _production_env())
    # Last: the funnel it adds (two years of transitions and hand-offs) is for it alone.
    print(f"adding two years of funnel to the {size['leads']:,} leads …")
    dashboard.add_funnel()
    results += dashboard.bench_rows(leads=size["leads"], runs=size["dashboard_runs"])
    return results


def _generation_row(size: dict, timings: dict) -> dict:
    seconds = sum(timings.values())
    return {
        "figure": f"bench data: {size['leads']:,} leads, {size['events']:,} events",
        "value": f"{seconds:.1f} s (leads {timings['leads']:.1f} s, events "
        f"{timings['events']:.1f} s, last activity + VACUUM ANALYZE "
        f"{timings['last_activity_and_vacuum']:.1f} s)",
        "limit": "—",
        "ratio": None,
        "goal": "minutes at full size",
        "met": None,
        "statuses": {},
    }


def measure_scoring(size: dict) -> list[dict]:
    from bench import engine, rescore

    first, first_changed, handed_off = rescore.first_scoring()
    print(f"first scoring: {first:.2f} s, {first_changed:,} changed, {handed_off:,} MQLs")
    seconds, changed, marked = rescore.activation_rescore_all()
    print(f"activation rescore-all: {seconds:.2f} s, {changed:,} leads changed, {marked:,} MQLs")
    limit = engine.behavior_write_seconds()
    scratch = engine.behavior_sum_seconds(decayed=True)
    plain = engine.behavior_sum_seconds(decayed=False)
    print(f"hand-written SQL: {limit:.2f} s into the leads, {scratch:.2f} s into a scratch table")
    decay_seconds, decayed = rescore.decay_pass()
    print(f"decay pass: {decay_seconds:.1f} s, {decayed:,} leads changed")
    return [
        {
            "figure": f"first scoring of the generated leads ({handed_off:,} become MQLs)",
            "value": f"{first:.1f} s",
            "limit": "—",
            "ratio": None,
            "goal": "— (setup: every lead scored, each MQL handed off)",
            "met": None,
            "statuses": {},
        },
        {
            "figure": f"rescore-all on activation ({size['leads']:,} leads, "
            f"{size['events']:,} events)",
            "value": f"{seconds:.1f} s ({changed:,} changed, {marked:,} new MQLs)",
            "limit": f"{limit:.1f} s SQL: window + GROUP BY + UPDATE of the leads "
            f"({scratch:.1f} s into a scratch table, {plain:.1f} s undecayed)",
            "ratio": seconds / limit,
            "goal": "≤ 60 s at 1M leads, ≤ 3× the SQL",
            "met": seconds <= 60 and seconds <= 3 * limit,
            "statuses": {},
        },
        {
            "figure": f"decay pass ({size['leads']:,} leads)",
            "value": f"{decay_seconds:.1f} s ({decayed:,} changed)",
            "limit": "—",
            "ratio": None,
            "goal": "≤ 10 s at 1M leads",
            "met": decay_seconds <= 10,
            "statuses": {},
        },
    ]


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
    run_id = uuid.uuid4().hex[:8]
    floor, batch_floor = _floor_posts(size, run_id)
    port = free_port()
    server = start_gunicorn(_production_env(), port)
    base = f"http://127.0.0.1:{port}/api/v1"
    try:
        warm = [json.dumps(_event(i, f"warm-{run_id}", size["leads"])).encode() for i in range(300)]
        open_loop(f"{base}/events/", token, warm, rate=300)
        single = _single_posts(base, token, size, run_id, open_loop)
        batch = _batch_posts(base, token, size, run_id, closed_loop)
        listing = _lead_list(base, token, size, open_loop)
        latency = measure_latency(base, token, size, run_id)
    finally:
        stop_process(server)
    return latency + [
        {
            "figure": "single-event POST, offered 1,000/s",
            "value": f"{single.rate:,.0f} events/s, p95 {single.p95_ms:.1f} ms",
            "limit": f"{floor.rate:,.0f}/s, p95 {floor.p95_ms:.1f} ms: a bare WSGI app storing "
            f"each event with the same statement, same gunicorn; {limits['single']:,.0f}/s "
            "INSERT+UPDATE, 1 tx each, one connection",
            "ratio": single.rate / floor.rate,
            "goal": "≥ 1,000/s, p95 < 25 ms",
            "met": single.rate >= 990 and single.p95_ms < 25,
            "statuses": single.statuses,
        },
        {
            "figure": "batch POST, 1,000 events each",
            "value": f"{batch.rate * 1000:,.0f} events/s",
            "limit": f"{batch_floor.rate * 1000:,.0f}/s: a bare WSGI app storing each batch "
            "with the same two statements (leads by email, activities), same gunicorn; "
            f"{limits['upsert']:,.0f}/s upsert; {limits['copy']:,.0f}/s COPY (a table without "
            "the foreign key to the leads)",
            "ratio": batch.rate / batch_floor.rate,
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


# (offered events/s, events per request, p95 goal in ms or None). At 1,000/s the events
# come in batches of 50 (20 requests/s), as an integration sending that many would: the
# figure is the scoring pipeline's. The same rate as single POSTs is printed too, beside
# no goal: it measures the single-event API's intake (its own row).
LATENCY_RUNS = ((100, 1, 250), (1000, 50, 2000), (1000, 1, None))


def measure_latency(
    base: str, token: str, size: dict, run_id: str, *, first_lead: int = 20
) -> list[dict]:
    """Event → score visible, with a real Celery worker draining the rescore queue; the
    events go to distinct leads from the `first_lead`-th of bench.latency's sequence."""
    from bench import celery_noop, latency
    from bench.http import start_celery, stop_process

    # The same worker runs the bare no-op tasks afterwards, from their own queue.
    worker = start_celery(_production_env(), extra=celery_noop.WORKER_OPTIONS)
    url = f"{base}/events/"
    try:
        # The earlier figures left leads in the queue: the worker drains them first.
        waited = latency.wait_for_empty_queue()
        warm_up = latency.emails_for(first_lead - 20, 20, size["leads"])
        warm = latency.measure(url, token, warm_up, rate=10, run_id=run_id)
        print(f"rescore queue drained in {waited:.1f} s; warm-up p95 {warm.p95_ms:.0f} ms")
        start, rows = first_lead, []
        for rate, batch, goal_ms in LATENCY_RUNS:
            count = int(rate * size["seconds"])
            emails = latency.emails_for(start, count, size["leads"])
            if batch > 1:
                result = latency.measure_batched(
                    url, token, emails, rate=rate, batch=batch, run_id=run_id
                )
            else:
                result = latency.measure(url, token, emails, rate=rate, run_id=run_id)
            rows.append(_latency_row(rate, batch, goal_ms, result))
            start += count
            latency.wait_for_empty_queue()
        rows.append(measure_noop(size))
    finally:
        stop_process(worker)
    return rows


def measure_noop(size: dict) -> dict:
    """The engine limit beside event → score: bare Celery tasks on the same worker."""
    from bench import celery_noop

    result = celery_noop.measure(size["noop_tasks"])
    print(
        f"Celery no-op: {result.tasks:,} tasks at {result.rate:,.0f}/s "
        f"(enqueued at {result.enqueue_rate:,.0f}/s)"
    )
    return {
        "figure": f"bare Celery no-op tasks (Celery ×2, {result.tasks:,} tasks)",
        "value": "—",
        "limit": f"{result.rate:,.0f} tasks/s run (enqueued at {result.enqueue_rate:,.0f}/s)",
        "ratio": None,
        "goal": "—",
        "met": None,
        "statuses": {},
    }


def _latency_row(rate: int, batch: int, goal_ms: int | None, result) -> dict:
    sending = f"in batches of {batch}" if batch > 1 else "single-event POSTs"
    return {
        "figure": f"event → score visible, offered {rate:,}/s, {sending} (Celery ×2)",
        "value": f"p50 {result.p50_ms:.0f} ms, p95 {result.p95_ms:.0f} ms from due time "
        f"(p95 {result.p95_sent_ms:.0f} ms from send; sent {result.send_rate:,.0f}/s); "
        f"{result.missing:,}/{result.sent:,} not seen in 10 s",
        "limit": "—",
        "ratio": None,
        "goal": f"p95 ≤ {goal_ms:,} ms" if goal_ms else "— (the single-event API's intake)",
        "met": result.missing == 0 and result.p95_ms <= goal_ms if goal_ms else None,
        "statuses": result.statuses,
    }


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
    count = int(1000 * size["seconds"])
    bodies = [
        json.dumps(_event(i, f"single-{run_id}", size["leads"])).encode() for i in range(count)
    ]
    return open_loop(f"{base}/events/", token, bodies, rate=1000)


def _floor_posts(size, run_id):
    """The single-event and batch figures against bench/floor_ingest.py: what storing the
    events costs this machine without a framework (same gunicorn, load and statements)."""
    from bench.http import closed_loop, free_port, open_loop, start_gunicorn, stop_process

    port = free_port()
    server = start_gunicorn(_production_env(), port, app="bench.floor_ingest:application")
    try:
        url = f"http://127.0.0.1:{port}/events/"
        warm = [
            json.dumps(_event(i, f"floor-warm-{run_id}", size["leads"])).encode()
            for i in range(300)
        ]
        open_loop(url, "-", warm, rate=300)
        base = url.removesuffix("/events/")
        single = _single_posts(base, "-", size, f"floor-{run_id}", open_loop)
        batch = _batch_posts(base, "-", size, f"floor-{run_id}", closed_loop)
        return single, batch
    finally:
        stop_process(server)


def _batch_posts(base, token, size, run_id, closed_loop):
    batches = size["batches"]
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


def _lead_list(base, token, size, open_loop):
    # Warm-up first, as for the events: each gunicorn worker's first lead-list requests
    # import and set up what the list needs (~150 ms each here, seconds when Python has
    # no bytecode cache), which is a worker's start, not the list's steady cost.
    warm = [None] * 60
    open_loop(f"{base}/leads/", token, warm, rate=50, method="GET", concurrency=8)
    urls = [None] * size["list_requests"]
    return open_loop(f"{base}/leads/", token, urls, rate=50, method="GET", concurrency=8)


def render_table(results: list[dict]) -> str:
    lines = [
        "| figure | LeadOps | engine limit | ratio | goal | met |",
        "|---|---|---|---|---|---|",
    ]
    for row in results:
        ratio = f"{row['ratio']:.2f}" if row["ratio"] is not None else "—"
        met = "—" if row["met"] is None else "yes" if row["met"] else "**no**"
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
