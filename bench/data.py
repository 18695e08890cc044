"""Bench data: accounts, leads and events generated inside PostgreSQL.

`INSERT … SELECT FROM generate_series` builds 1M leads / 20M events in minutes without
pushing a row through Python; the rows look like the demo workspace (Japanese B2B mix
of industries, sizes, job levels, event types and URLs).
"""

from __future__ import annotations

import time

from django.db import connection

INDUSTRIES = (
    "ARRAY['software','it_services','manufacturing','finance','retail',"
    "'healthcare','education','public','other']"
)
JOB_LEVELS = "ARRAY['executive','director','manager','staff','staff','other']"
DEPARTMENTS = "ARRAY['marketing','sales','management','it','other']"
SIZES = "ARRAY[8, 30, 60, 120, 350, 1200, 5000]"
SOURCES = "ARRAY['展示会','ウェビナー','資料DL','Web広告','紹介','API','CSV import']"
URLS = (
    "ARRAY['/pricing','/case/manufacturing','/case/saas','/blog/ma-basics',"
    "'/features','/','/blog/scoring']"
)

# Weighted event mix: mostly page views and email engagement, a few strong signals.
EVENT_TYPE_SQL = """
CASE
  WHEN r < 0.55 THEN 'page_view'
  WHEN r < 0.75 THEN 'email_open'
  WHEN r < 0.85 THEN 'email_click'
  WHEN r < 0.92 THEN 'document_download'
  WHEN r < 0.96 THEN 'webinar_attended'
  WHEN r < 0.975 THEN 'seminar_attended'
  WHEN r < 0.985 THEN 'form_submit'
  WHEN r < 0.99 THEN 'quote_request'
  WHEN r < 0.995 THEN 'trial_signup'
  ELSE 'unsubscribe'
END
"""


def _execute(sql: str, params: list | None = None) -> None:
    with connection.cursor() as cursor:
        cursor.execute(sql, params or [])


def _scalar(sql: str) -> int:
    with connection.cursor() as cursor:
        cursor.execute(sql)
        return cursor.fetchone()[0] or 0


def generate(*, leads: int, events: int, chunk: int = 1_000_000, log=print) -> dict:
    """Fill the (empty) bench database; return timings in seconds."""
    timings = {}
    started = time.perf_counter()
    accounts = max(1, leads // 20)
    _execute(
        f"""INSERT INTO leadops_account (name, domain, industry, employee_count, created_at)
        SELECT 'ベンチ株式会社' || g, 'bench' || g || '.example.jp',
               ({INDUSTRIES})[1 + g %% 9], ({SIZES})[1 + (g * 7) %% 7], now()
        FROM generate_series(1, %s) g""",
        [accounts],
    )
    first_account = _scalar("SELECT min(id) FROM leadops_account")
    _execute(
        f"""INSERT INTO leadops_lead (email, first_name, last_name, account_id, title, job_level,
            department, industry, employee_count, phone, region, source, stage, attribute_score,
            behavior_score, score, temperature, consent, unsubscribed, created_at, updated_at)
        SELECT 'lead' || g || '@bench' || (g %% %s) || '.example.jp', '太郎', '山田' || g,
               %s + g %% %s, '部長', ({JOB_LEVELS})[1 + g %% 6], ({DEPARTMENTS})[1 + (g / 7) %% 5],
               ({INDUSTRIES})[1 + (g %% %s) %% 9], ({SIZES})[1 + ((g %% %s) * 7) %% 7], '', '',
               ({SOURCES})[1 + (g / 3) %% 7], 'new', 0, 0, 0, 'cold', false, false, now(), now()
        FROM generate_series(1, %s) g""",
        [accounts, first_account, accounts, accounts, accounts, leads],
    )
    timings["leads"] = time.perf_counter() - started
    log(f"  {leads:,} leads in {timings['leads']:.1f} s")
    started = time.perf_counter()
    first_lead = _scalar("SELECT min(id) FROM leadops_lead")
    for offset in range(0, events, chunk):
        _insert_events(first_lead, leads, offset, min(chunk, events - offset))
        log(f"  events {min(offset + chunk, events):,}/{events:,}")
    _execute(
        """UPDATE leadops_lead l SET last_activity_at = a.last
        FROM (SELECT lead_id, max(occurred_at) AS last FROM leadops_activity GROUP BY lead_id) a
        WHERE a.lead_id = l.id"""
    )
    _execute("VACUUM ANALYZE leadops_lead")
    _execute("VACUUM ANALYZE leadops_activity")
    timings["events"] = time.perf_counter() - started
    log(f"  {events:,} events in {timings['events']:.1f} s")
    return timings


def _insert_events(first_lead: int, leads: int, offset: int, count: int) -> None:
    _execute(
        f"""INSERT INTO leadops_activity (lead_id, type, occurred_at, properties, event_id,
            fingerprint, source, received_at)
        SELECT %s + (hashint %% %s), {EVENT_TYPE_SQL},
               now() - (((hashint >> 8) %% 7776000) || ' seconds')::interval,
               jsonb_build_object('url', 'https://example.jp' || ({URLS})[1 + (hashint >> 4) %% 7]),
               'bench-' || g, md5(g::text) || md5(g::text), 'bench', now()
        FROM (
            SELECT g, hashint8(g)::bigint & 2147483647 AS hashint,
                   ((hashint8(g * 7919 + 13)::bigint & 2147483647) %% 1000) / 1000.0 AS r
            FROM generate_series(%s::bigint, %s::bigint) g
        ) s""",
        [first_lead, leads, offset + 1, offset + count],
    )
