"""Dashboard figures: the funnel dashboard's numbers and page at 1M leads.

    uv run python -m bench.dashboard                     # 20k leads
    uv run python -m bench.dashboard --leads 1000000     # the issue's size
    uv run python -m bench.dashboard --reuse             # measure the last data again

Builds its own database (`n4_bench` on the configured server, or --database) and fills
it inside PostgreSQL (INSERT … SELECT, no row through Python), shaped like a team two
years in: leads created evenly over 730 days; 70% enter nurturing, 12% become MQLs
(each with its first-contact hand-off), 40% of those SQLs (a sales hand-off, 35% of them
rejected with a reason and a comment), then SAL, opportunity (50%) and won (40%); a score
ledger of 15 labelled behaviour rows for each MQL lead and one summary row for every
other lead; a score breakdown (attribute rules) for every lead.

Measures, with the cache off: `dashboard_numbers` for each preset (30/90/365 days), with
and without a source filter (median and worst of --runs), the engine's time for each of
its queries (best EXPLAIN ANALYZE), and GET /dashboard/ in-process (rendering included),
cold and from the cache. --plans prints the 365-day plans.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from urllib.parse import urlsplit, urlunsplit

BENCH_DB = "n4_bench"
SOURCE_TRIGGER = "handoff_transition_lead_source"  # handoff migration 0004
GOAL_MS = 500
SOURCES = ("展示会", "ウェビナー", "資料DL", "Web広告", "紹介", "API", "CSV import")


def point_django_at(database: str, *, recreate: bool) -> None:
    """DATABASE_URL's server, database `database` (dropped and created when `recreate`)."""
    import psycopg

    from leadops.engines import database_url, ensure_embedded_engines

    ensure_embedded_engines()
    parts = urlsplit(database_url())
    if recreate:
        admin_url = urlunsplit(parts._replace(path="/postgres"))
        with psycopg.connect(admin_url, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')
            conn.execute(f'CREATE DATABASE "{database}"')
    os.environ["DATABASE_URL"] = urlunsplit(parts._replace(path=f"/{database}"))
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "leadops.settings")
    os.environ["DEBUG"] = "true"
    import django

    django.setup()
    if recreate:
        from django.core.management import call_command

        call_command("migrate", verbosity=0)


# --- data ------------------------------------------------------------------------------------


def _execute(sql: str, params: dict | None = None) -> int:
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute(sql, params or {})
        return cursor.rowcount


# Per lead: uniform numbers from its id (hashint8 of salted ids) decide its path and times.
_PATHS = """
CREATE TABLE bench_paths AS
SELECT id AS lead_id, created_at, source,
       u(id, 1) < 0.70 AS nurtured,
       u(id, 2) < 0.12 AS mql,
       u(id, 3) < 0.40 AS sql,
       u(id, 4) < 0.65 AS accepted,
       u(id, 5) < 0.50 AS opportunity,
       u(id, 6) < 0.40 AS won,
       u(id, 7) AS r,
       created_at + interval '1 hour' AS nurtured_at,
       created_at + (1 + u(id, 8) * 59) * interval '1 day' AS mql_at,
       (0.5 + u(id, 9) * 9.5) * interval '1 day' AS to_sql,
       (1 + u(id, 10) * 47) * interval '1 hour' AS to_answer,
       (1 + u(id, 11) * 13) * interval '1 day' AS to_opportunity,
       (7 + u(id, 12) * 53) * interval '1 day' AS to_close
FROM leadops_lead
"""

_UNIFORM = """
CREATE OR REPLACE FUNCTION u(id bigint, salt int) RETURNS float8 IMMUTABLE LANGUAGE sql AS
$$ SELECT (hashint8(id * 97 + salt) & 2147483647)::float8 / 2147483648 $$
"""

_STAGES = """
CREATE TABLE bench_stages AS
SELECT p.*, p.mql_at + p.to_sql AS sql_at,
       p.mql_at + p.to_sql + p.to_answer AS answer_at,
       p.mql_at + p.to_sql + p.to_answer + p.to_opportunity AS opportunity_at,
       p.mql_at + p.to_sql + p.to_answer + p.to_opportunity + p.to_close AS close_at
FROM bench_paths p
"""

_TRANSITIONS = """
INSERT INTO handoff_stagetransition (lead_id, from_stage, to_stage, actor_id, reason,
                                     score_snapshot, created_at, lead_source)
SELECT lead_id, from_stage, to_stage, NULL, reason, 80, at, source
FROM bench_stages s
CROSS JOIN LATERAL (VALUES
    ('new', 'nurturing', s.nurtured_at, s.nurtured, 'Enrolled in nurturing'),
    (CASE WHEN s.nurtured THEN 'nurturing' ELSE 'new' END, 'mql', s.mql_at, s.mql,
     'MQL rule met with a score of 85'),
    ('mql', 'sql', s.sql_at, s.mql AND s.sql, 'Qualified by IS'),
    ('mql', 'nurturing', s.sql_at, s.mql AND NOT s.sql AND s.r < 0.4, 'Timing: not now'),
    ('mql', 'disqualified', s.sql_at, s.mql AND NOT s.sql AND s.r >= 0.9, 'Wrong fit'),
    ('sql', 'sal', s.answer_at, s.mql AND s.sql AND s.accepted, 'Accepted by sales'),
    ('sql', 'nurturing', s.answer_at, s.mql AND s.sql AND NOT s.accepted,
     'Timing: not now: 来期に再検討'),
    ('sal', 'opportunity', s.opportunity_at, s.mql AND s.sql AND s.accepted AND s.opportunity,
     ''),
    ('opportunity', CASE WHEN s.won THEN 'won' ELSE 'lost' END, s.close_at,
     s.mql AND s.sql AND s.accepted AND s.opportunity AND s.r < 0.7, '')
) AS t(from_stage, to_stage, at, happened, reason)
WHERE t.happened AND t.at <= now()
ORDER BY t.at
"""

# First contacts (one per MQL) answered 85% in time; sales hand-offs (one per SQL)
# accepted or rejected with a weighted reason and a comment.
_HANDOFFS = """
INSERT INTO handoff_handoff (lead_id, kind, status, assignee_id, opened_at, due_at, warn_at,
    sla_state, claimed_at, responded_at, closed_at, outcome, reason, comment, bant,
    opened_reason, opened_by_id, lead_source)
SELECT lead_id, kind,
       CASE WHEN closed_at <= now() THEN 'done' ELSE 'claimed' END,
       assignee_id, opened_at, opened_at + span, opened_at + span * 0.75,
       CASE WHEN responded_at > now() THEN 'on_track'
            WHEN responded_at <= opened_at + span THEN 'met' ELSE 'breached' END,
       opened_at + interval '30 minutes',
       CASE WHEN responded_at <= now() THEN responded_at END,
       CASE WHEN closed_at <= now() THEN closed_at END,
       CASE WHEN closed_at <= now() THEN outcome ELSE '' END,
       CASE WHEN closed_at <= now() THEN reason ELSE '' END,
       CASE WHEN closed_at <= now() AND outcome = 'rejected'
            THEN '予算化は来期の見込み。' || lead_id ELSE '' END,
       '{}'::jsonb, 'bench', NULL, source
FROM (
    SELECT lead_id, 'inside_sales' AS kind, mql_at AS opened_at, interval '3 days' AS span,
           (%(is_reps)s::bigint[])[1 + (lead_id %% %(is_count)s)] AS assignee_id,
           mql_at + CASE WHEN u(lead_id, 13) < 0.85 THEN interval '5 hours'
                         ELSE interval '4 days' END AS responded_at,
           CASE WHEN sql THEN sql_at ELSE mql_at + to_sql END AS closed_at,
           CASE WHEN sql THEN 'qualified' WHEN r < 0.9 THEN 'returned' ELSE 'disqualified'
           END AS outcome, '' AS reason, source
    FROM bench_stages WHERE mql AND mql_at <= now()
    UNION ALL
    SELECT lead_id, 'sales', sql_at, interval '2 days',
           (%(sales_reps)s::bigint[])[1 + (lead_id %% %(sales_count)s)],
           answer_at, answer_at,
           CASE WHEN accepted THEN 'accepted' ELSE 'rejected' END,
           CASE WHEN accepted THEN ''
                ELSE (ARRAY['timing', 'timing', 'no_budget', 'not_decision_maker',
                            'wrong_fit', 'duplicate', 'other'])[1 + (lead_id %% 7)] END,
           source
    FROM bench_stages WHERE mql AND sql AND sql_at <= now()
) h
"""

# 15 labelled behaviour rows per MQL lead before its MQL (rule labels of the active
# model), one unlabelled summary row for every other lead; inserted in random order so
# a lead's rows are scattered over the heap as years of ingest leave them.
_LEDGER = """
INSERT INTO scoring_scorechange (lead_id, rule_id, rule_label, activity_id, points,
                                 model_version, reason, created_at)
SELECT lead_id, NULL, label, NULL, points, 1, reason, at FROM (
    SELECT s.lead_id, r.label, r.points, 'event' AS reason,
           s.mql_at - (n * interval '2 days') AS at, hashint8(s.lead_id * 31 + n) AS shuffle
    FROM bench_stages s
    CROSS JOIN generate_series(1, 15) n
    JOIN LATERAL (
        SELECT label, points FROM scoring_behaviorrule
        WHERE model_id = %(model)s AND points > 0
        ORDER BY hashint8(id * 7 + s.lead_id * 13 + n) LIMIT 1
    ) r ON true
    WHERE s.mql
    UNION ALL
    SELECT s.lead_id, '', 40, 'recalculation', s.created_at, hashint8(s.lead_id)
    FROM bench_stages s WHERE NOT s.mql
) rows
ORDER BY shuffle
"""

_STATES = """
INSERT INTO scoring_leadscorestate (lead_id, model_version, behavior_at_last_activity,
    last_activity_at, breakdown, computed_at, behavior_reset_at)
SELECT s.lead_id, %(version)s, 30, NULL,
       jsonb_build_object('a', coalesce((
           SELECT jsonb_agg(a.id) FROM scoring_attributerule a
           WHERE a.model_id = %(model)s AND a.points > 0 AND u(s.lead_id * 17 + a.id, 14) < 0.4
       ), '[]'::jsonb), 'b', '[]'::jsonb),
       now(), NULL
FROM bench_stages s
WHERE NOT EXISTS (SELECT 1 FROM scoring_leadscorestate x WHERE x.lead_id = s.lead_id)
"""


def generate(*, leads: int, log=print) -> dict[str, int]:
    """Fill the (empty) bench database; returns the row counts."""
    from bench import data

    data.generate(leads=leads, events=0, log=log)
    return add_funnel(log=log)


def add_funnel(*, log=print) -> dict[str, int]:
    """Two years of funnel over the bench leads (their creation dates and sources are
    spread first); score states only for leads without one (`make bench` rescored them
    all already). Returns the row counts."""
    from bench.handoff import bench_users
    from handoff.services.stages import refresh_funnel_facts
    from scoring.models import ScoringModel

    started = time.perf_counter()
    # The trigger copying a lead's new source onto its transitions would run once per
    # lead here; every transition's funnel facts are recomputed below instead.
    _execute(f"ALTER TABLE leadops_lead DISABLE TRIGGER {SOURCE_TRIGGER}")
    try:
        _execute(
            "UPDATE leadops_lead SET created_at = now() - (hashint8(id) & 2147483647) "
            "%% (730 * 86400) * interval '1 second', "
            f"source = (ARRAY{list(SOURCES)!r})[1 + (hashint8(id * 3) & 2147483647) %% 7]"
        )
    finally:
        _execute(f"ALTER TABLE leadops_lead ENABLE TRIGGER {SOURCE_TRIGGER}")
    # What the earlier figures wrote is not a team's history: `make bench` scores freshly
    # generated leads, so nearly all of them became MQLs within the same minutes, and
    # the hand-off figures added a million closed hand-offs. The funnel replaces it
    # (CASCADE: the hand-offs' contact attempts, notifications and webhook deliveries).
    _execute("TRUNCATE handoff_stagetransition, handoff_handoff CASCADE")
    _execute(_UNIFORM)
    _execute(_PATHS)
    _execute(_STAGES)
    counts = {"transitions": _execute(_TRANSITIONS)}
    # Written as transition_lead writes them (the leads' creation times and sources just
    # changed, so the transitions of earlier figures are recomputed too).
    counts["funnel_facts"] = refresh_funnel_facts()
    users = bench_users()
    counts["handoffs"] = _execute(
        _HANDOFFS,
        {
            "is_reps": users["inside_sales"],
            "is_count": len(users["inside_sales"]),
            "sales_reps": users["sales"],
            "sales_count": len(users["sales"]),
        },
    )
    model = ScoringModel.objects.active().get()
    counts["ledger"] = _execute(_LEDGER, {"model": model.pk})
    counts["score_states"] = _execute(_STATES, {"model": model.pk, "version": model.version})
    _execute("DROP TABLE bench_stages")
    _execute("DROP TABLE bench_paths")
    for table in (
        "leadops_lead",
        "handoff_stagetransition",
        "handoff_handoff",
        "scoring_scorechange",
        "scoring_leadscorestate",
    ):
        _execute(f"VACUUM ANALYZE {table}")
    log(f"  {json.dumps(counts)} in {time.perf_counter() - started:.1f} s")
    return counts


# --- measuring --------------------------------------------------------------------------------


def explain(sql: str, *, runs: int = 3, plan: bool = False) -> float:
    """Best EXPLAIN ANALYZE execution time of one query in ms (and its plan printed),
    with the session settings the dashboard runs its queries with."""
    from django.db import connection, transaction

    from leadops.dashboard import _tune_session

    times = []
    with transaction.atomic(), connection.cursor() as cursor:
        _tune_session()
        for _ in range(runs):
            cursor.execute(f"EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) {sql}")
            result = cursor.fetchone()[0]
            result = json.loads(result) if isinstance(result, str) else result
            times.append(result[0]["Execution Time"])
        if plan:
            cursor.execute(f"EXPLAIN (ANALYZE, BUFFERS) {sql}")
            print("\n".join(row[0] for row in cursor.fetchall()))
    return min(times)


def numbers_ms(filters) -> float:
    """One cold `dashboard_numbers` run as configured (its queries side by side), in ms."""
    from leadops.dashboard import dashboard_numbers

    started = time.perf_counter()
    dashboard_numbers(filters)
    return (time.perf_counter() - started) * 1000


def numbers_queries(filters) -> list[str]:
    """The SQL one `dashboard_numbers` run sends: run one query after another on this
    thread's connection, where the capture sees them (side by side, each runs on a
    connection of its own thread)."""
    from django.db import connection
    from django.test.utils import CaptureQueriesContext, override_settings

    from leadops.dashboard import dashboard_numbers

    with override_settings(DASHBOARD_PARALLEL_QUERIES=1), CaptureQueriesContext(connection) as c:
        dashboard_numbers(filters)
    statements = [q["sql"] for q in c.captured_queries]
    # Only the reads: not BEGIN/COMMIT, nor the session settings.
    return [
        s for s in statements if s.lstrip().startswith(("SELECT", "WITH")) and "set_config" not in s
    ]


def label_of(sql: str) -> str:
    for marker, name in (
        ("FROM handoff_stagetransition t", "funnel"),
        ("WITH answered", "rules"),
        ("FROM leadops_lead l", "leads"),
        ("LIMIT 10", "latest"),
        ('"sla_state"', "sla"),
        ('AS "n"', "answers"),
    ):
        if marker in sql:
            return name
    return "other"


def measure_numbers(filters, *, runs: int, plans: bool) -> dict:
    timings = [numbers_ms(filters) for _ in range(runs)]
    queries = numbers_queries(filters)
    engine = {label_of(sql): round(explain(sql, plan=plans), 1) for sql in queries}
    return {
        "median_ms": round(statistics.median(timings), 1),
        "max_ms": round(max(timings), 1),
        "queries": len(queries),
        "engine_ms": engine,
    }


def measure_page(query: str, *, runs: int) -> dict:
    """GET /dashboard/?query in-process as a manager: cold (cache cleared) and cached."""
    from django.contrib.auth import get_user_model
    from django.core.cache import cache
    from django.test import Client

    client = Client(HTTP_HOST="127.0.0.1")
    client.force_login(get_user_model().objects.get(username="bench-manager-01"))
    cold, warm = [], []
    for _ in range(runs):
        cache.clear()
        for bucket in (cold, warm):
            started = time.perf_counter()
            response = client.get(f"/dashboard/?{query}")
            bucket.append((time.perf_counter() - started) * 1000)
            assert response.status_code == 200, response.status_code
    return {
        "cold_median_ms": round(statistics.median(cold), 1),
        "cold_max_ms": round(max(cold), 1),
        "cached_median_ms": round(statistics.median(warm), 1),
    }


def measure(*, runs: int, plans: bool) -> list[dict]:
    from django.utils import timezone

    from leadops.dashboard import preset_filters

    today = timezone.localdate()
    # The process's first page loads the templates and URLconf (~1 s here), which a
    # running server did long ago: one load first, not counted.
    measure_page("days=30", runs=1)
    rows = []
    for days in (30, 90, 365):
        for source in ("", SOURCES[0]):
            filters = preset_filters(days, today=today, source=source)
            row = {"days": days, "source": source or "(all)"}
            row |= measure_numbers(filters, runs=runs, plans=plans and days == 365)
            query = f"days={days}" + (f"&source={source}" if source else "")
            row |= measure_page(query, runs=runs)
            row["met"] = row["cold_max_ms"] <= GOAL_MS
            rows.append(row)
            print(json.dumps(row, ensure_ascii=False))
    return rows


def warm_seconds() -> float:
    """One `warm_dashboard_cache` run (the three presets, all sources), in seconds."""
    from leadops.dashboard import note_dashboard_viewed, warm_dashboard_cache

    note_dashboard_viewed()
    started = time.perf_counter()
    warm_dashboard_cache()
    return time.perf_counter() - started


def table_sizes() -> dict[str, int]:
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute(
            """SELECT relname, reltuples::bigint FROM pg_class WHERE relname = ANY(%s)""",
            [
                [
                    "leadops_lead",
                    "handoff_stagetransition",
                    "handoff_handoff",
                    "scoring_scorechange",
                    "scoring_leadscorestate",
                ]
            ],
        )
        return dict(cursor.fetchall())


def bench_rows(*, leads: int, runs: int, log=print) -> list[dict]:
    """The dashboard's rows for `make bench`: the worst cold page (cache cleared before
    each) over the presets with and without a source filter, beside the engine's time
    for that page's queries; the cached page; the background recount of the presets."""
    from django.conf import settings

    settings.DASHBOARD_CACHE_SECONDS = 60  # nothing from the cache unless said so
    rows = measure(runs=runs, plans=False)
    worst = max(rows, key=lambda row: row["cold_max_ms"])
    engine = sum(worst["engine_ms"].values())
    cold = [row["cold_median_ms"] for row in rows]
    cached = max(row["cached_median_ms"] for row in rows)
    recount = warm_seconds()
    log(f"dashboard: worst cold {worst['cold_max_ms']:.0f} ms, cached ≤ {cached:.0f} ms")
    source = "all sources" if worst["source"] == "(all)" else f"source {worst['source']}"
    goal = f"≤ {GOAL_MS} ms at 1M leads"
    return [
        {
            "figure": f"dashboard /dashboard/, cold ({leads:,} leads; 30/90/365 days, all "
            "sources or one; cache cleared before each)",
            "value": f"worst {worst['cold_max_ms']:.0f} ms ({worst['days']} days, {source}); "
            f"medians {min(cold):.0f}–{max(cold):.0f} ms (in-process, rendering included; "
            f"{runs} load{'s' if runs > 1 else ''} per filter set)",
            "limit": f"{engine:.0f} ms EXPLAIN ANALYZE of its {worst['queries']} queries",
            "ratio": worst["cold_max_ms"] / engine if engine else None,
            "goal": goal,
            "met": worst["cold_max_ms"] <= GOAL_MS,
            "statuses": {},
        },
        {
            "figure": "dashboard /dashboard/, from the cache (presets are recounted in the "
            "background while the page is in use)",
            "value": f"medians ≤ {cached:.0f} ms; the background recount of the 3 presets "
            f"takes {recount:.1f} s",
            "limit": "—",
            "ratio": None,
            "goal": goal,
            "met": cached <= GOAL_MS,
            "statuses": {},
        },
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--leads", type=int, default=20_000)
    parser.add_argument("--database", default=BENCH_DB)
    parser.add_argument("--reuse", action="store_true", help="measure the existing data")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--plans", action="store_true", help="print the 365-day plans")
    args = parser.parse_args()
    point_django_at(args.database, recreate=not args.reuse)
    from django.conf import settings

    # Every run below counts: nothing from the cache unless a row says "cached".
    settings.DASHBOARD_CACHE_SECONDS = 60
    if not args.reuse:
        print(f"generating {args.leads:,} leads with their funnel …")
        generate(leads=args.leads)
    if args.reuse:
        # A database built before the funnel facts existed: migrate fills them (set-based).
        from django.core.management import call_command

        call_command("migrate", verbosity=0)
    print(f"tables: {json.dumps(table_sizes())}")
    rows = measure(runs=args.runs, plans=args.plans)
    print(f"background recount of the presets (beat, every minute): {warm_seconds():.1f} s")
    worst = max(row["cold_max_ms"] for row in rows)
    print(f"\nworst cold page: {worst:.0f} ms (goal ≤ {GOAL_MS} ms)")
    sys.exit(0 if all(row["met"] for row in rows) else 1)


if __name__ == "__main__":
    main()
