"""Bench data: accounts, leads and events generated inside PostgreSQL.

`INSERT … SELECT FROM generate_series` builds the rows without pushing one through
Python; they look like the demo workspace (Japanese B2B mix of industries, sizes, job
levels, event types and URLs). What makes 1M leads / 20M events take minutes, not the
~1,100 s of a plain INSERT … SELECT into the migrated tables:

- the secondary indexes and the foreign keys of leads and activities are dropped before
  the load and built once after it (a sorted index build instead of 20M random B-tree
  inserts; one anti-join validating each foreign key instead of 20M deferred per-row
  trigger checks). Their definitions are read from the catalogue, so whatever the
  migrations define comes back exactly;
- the per-row expressions are cheap: lookups in arrays built once (event type by
  `width_bucket`, the properties JSON prebuilt per URL), integer arithmetic on
  intervals, a hex fingerprint instead of two md5 calls;
- the events are inserted by two connections at once (one per core) in chunks.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager

import psycopg
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
# width_bucket(r, bounds) is the number of bounds ≤ r: the index into EVENT_TYPES - 1.
EVENT_TYPES = (
    "ARRAY['page_view','email_open','email_click','document_download','webinar_attended',"
    "'seminar_attended','form_submit','quote_request','trial_signup','unsubscribe']"
)
EVENT_TYPE_BOUNDS = "ARRAY[0.55,0.75,0.85,0.92,0.96,0.975,0.985,0.99,0.995]::float8[]"
EVENTS_SPAN_SECONDS = 90 * 86400  # events spread over the last 90 days
EVENT_CHUNK = 500_000


def _execute(sql: str, params: list | None = None) -> None:
    with connection.cursor() as cursor:
        cursor.execute(sql, params or [])


def _scalar(sql: str) -> int:
    with connection.cursor() as cursor:
        cursor.execute(sql)
        return cursor.fetchone()[0] or 0


def generate(*, leads: int, events: int, log=print, workers: int | None = None) -> dict:
    """Fill the (empty) bench database; return timings in seconds."""
    timings = {}
    started = time.perf_counter()
    _execute("SET maintenance_work_mem = '512MB'")
    with without_indexes("leadops_lead", log=log):
        _insert_accounts_and_leads(leads)
    timings["leads"] = time.perf_counter() - started
    log(f"  {leads:,} leads in {timings['leads']:.1f} s")
    started = time.perf_counter()
    first_lead = _scalar("SELECT min(id) FROM leadops_lead")
    with without_indexes("leadops_activity", log=log):
        _insert_events(
            first_lead, leads, events, workers=workers or min(2, os.cpu_count() or 1), log=log
        )
    timings["events"] = time.perf_counter() - started
    started = time.perf_counter()
    _execute(
        """UPDATE leadops_lead l SET last_activity_at = a.last
        FROM (SELECT lead_id, max(occurred_at) AS last FROM leadops_activity GROUP BY lead_id) a
        WHERE a.lead_id = l.id"""
    )
    _execute("VACUUM ANALYZE leadops_lead")
    _execute("VACUUM ANALYZE leadops_activity")
    timings["last_activity_and_vacuum"] = time.perf_counter() - started
    log(
        f"  {events:,} events in {timings['events']:.1f} s "
        f"(+ {timings['last_activity_and_vacuum']:.1f} s last activity, VACUUM ANALYZE)"
    )
    return timings


def _insert_accounts_and_leads(leads: int) -> None:
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


# One row per g: h picks the lead, the time and the URL; r (independent) the type. Each
# event is received when it occurred, as an integration sends them.
_EVENTS_SQL = f"""
INSERT INTO leadops_activity (lead_id, type, occurred_at, properties, event_id, fingerprint,
                              source, received_at)
SELECT %(first_lead)s + h %% %(leads)s,
       types[1 + width_bucket(r, {EVENT_TYPE_BOUNDS})],
       at, props[1 + (h >> 4) %% 7],
       'bench-' || g, lpad(to_hex(g), 64, '0'), 'bench', at
FROM (
    SELECT g, h, r, %(now)s - ((h >> 8) %% {EVENTS_SPAN_SECONDS}) * interval '1 second' AS at
    FROM (
        SELECT g, hashint8(g) & 2147483647 AS h,
               ((hashint8(g * 7919 + 13) & 2147483647) %% 1000) / 1000.0::float8 AS r
        FROM generate_series(%(first)s::bigint, %(last)s::bigint) g
    ) hashed
) s,
(SELECT {EVENT_TYPES} AS types,
        array_agg(jsonb_build_object('url', 'https://example.jp' || url) ORDER BY n) AS props
 FROM unnest({URLS}) WITH ORDINALITY AS u (url, n)) c
"""


def _insert_events(first_lead: int, leads: int, events: int, *, workers: int, log=print) -> None:
    """Chunks of EVENT_CHUNK rows, `workers` connections inserting at once."""
    if events <= 0:
        return
    from django.utils import timezone

    now = timezone.now()
    chunks = [
        {"first_lead": first_lead, "leads": leads, "now": now, "first": first, "last": last}
        for first in range(1, events + 1, EVENT_CHUNK)
        for last in [min(events, first + EVENT_CHUNK - 1)]
    ]
    settings = connection.settings_dict
    # The database Django is connected to (in tests, the test database).
    conninfo = {
        "dbname": settings["NAME"],
        "host": settings["HOST"] or None,
        "port": settings["PORT"] or None,
        "user": settings["USER"] or None,
        "password": settings["PASSWORD"] or None,
    }

    def insert(params: dict) -> int:
        with psycopg.connect(autocommit=True, **conninfo) as conn:
            conn.execute(_EVENTS_SQL, params)
        return params["last"]

    with ThreadPoolExecutor(max_workers=workers) as pool:
        for done, last in enumerate(pool.map(insert, chunks), start=1):
            if done % max(1, len(chunks) // 10) == 0 or done == len(chunks):
                log(f"  events {last:,}/{events:,}")


@contextmanager
def without_indexes(table: str, *, log=print) -> Iterator[None]:
    """Drop `table`'s secondary indexes, unique and foreign-key constraints (its primary
    key stays: other tables' foreign keys use it); recreate them all after the block."""
    with connection.cursor() as cursor:
        cursor.execute(
            """SELECT conname, pg_get_constraintdef(oid) FROM pg_constraint
            WHERE conrelid = %s::regclass AND contype IN ('u', 'f') ORDER BY contype DESC""",
            [table],
        )
        constraints = cursor.fetchall()
        cursor.execute(
            """SELECT c.relname, pg_get_indexdef(i.indexrelid) FROM pg_index i
            JOIN pg_class c ON c.oid = i.indexrelid
            WHERE i.indrelid = %s::regclass AND NOT i.indisprimary
              AND NOT EXISTS (SELECT 1 FROM pg_constraint k WHERE k.conindid = i.indexrelid)""",
            [table],
        )
        indexes = cursor.fetchall()
        for name, _definition in constraints:
            cursor.execute(f'ALTER TABLE {table} DROP CONSTRAINT "{name}"')
        for name, _definition in indexes:
            cursor.execute(f'DROP INDEX "{name}"')
    yield
    started = time.perf_counter()
    with connection.cursor() as cursor:
        # Unique constraints first (u sorts after f, hence DESC above), then the indexes,
        # then the foreign keys: each validated by one query over the whole table.
        for _name, definition in indexes:
            cursor.execute(definition)
        for name, definition in constraints:
            cursor.execute(f'ALTER TABLE {table} ADD CONSTRAINT "{name}" {definition}')
    log(
        f"  {table}: {len(indexes)} indexes and {len(constraints)} constraints rebuilt "
        f"in {time.perf_counter() - started:.1f} s"
    )
