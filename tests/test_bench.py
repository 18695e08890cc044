"""`make bench` at its CI size: every figure is measured and written (whether goals are
met is the bench's report, not this test's), and the data loader's index juggling."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import uuid
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import psycopg
import pytest
from django.db import connection
from django.db.models import Count

from bench import data
from bench.__main__ import render_table

ROOT = Path(__file__).resolve().parent.parent
BENCH_REDIS_DB = 14  # not the bench's default 15: a local `make bench` may be running

# Each figure's row, by the start of its first cell, in the order the run prints them.
FIGURES = [
    "bench data: 3,000 leads, 30,000 events",
    "first scoring of the generated leads",
    "rescore-all on activation (3,000 leads",
    "decay pass (3,000 leads)",
    "event → score visible, offered 100/s, single-event POSTs",
    "event → score visible, offered 1,000/s, in batches of 50",
    "event → score visible, offered 1,000/s, single-event POSTs",
    "bare Celery no-op tasks",
    "single-event POST, offered 1,000/s",
    "batch POST, 1,000 events each",
    "lead list first page (3,000 leads)",
    "hand-off list API, first page",
    "hand-off list API, assignee=me",
    "hand-off list API, sla_state=breached",
    "queue page /queue/, mine",
    "queue page /queue/?view=team",
    "SLA monitor run, 4 h of clocks at once",
    "SLA monitor run, the minute after",
    "newsletter to ",
    "newsletter sending at the configured 100/min",
    "open pixel GET /t/o/",
    "click redirect GET /t/c/",
    "snippet page view POST /capture/pv/ (anonymous)",
    "snippet page view POST /capture/pv/ (identified visitor)",
    "snippet GET /capture/snippet.js",
    "open pixel, offered 300/s",
    "tracking, the deferred part",
    "dashboard /dashboard/, cold",
    "dashboard /dashboard/, from the cache",
]
# Rows whose figure is the engine's own (the LeadOps cell is empty).
LIMIT_ONLY = ("bare Celery no-op tasks",)
NUMBER = re.compile(r"\d+(\.\d+)?")


def _table_rows(block: str) -> list[list[str]]:
    lines = [line for line in block.splitlines() if line.startswith("| ")]
    assert lines[0].startswith("| figure | LeadOps | engine limit | ratio | goal | met |")
    return [[cell.strip() for cell in line.strip("|").split(" | ")] for line in lines[1:]]


def _drop_database(name: str) -> None:
    from leadops.engines import database_url

    admin = urlunsplit(urlsplit(database_url())._replace(path="/postgres"))
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.mark.slow
def test_ci_size_measures_and_writes_every_figure(tmp_path: Path) -> None:
    out = tmp_path / "performance.md"
    out.write_text("# Performance\n\nProse around the blocks is kept.\n")
    database = f"leadops_bench_ci_{uuid.uuid4().hex[:8]}"
    command = [sys.executable, "-m", "bench", "--size", "ci", "--out", str(out)]
    command += ["--database", database, "--redis-db", str(BENCH_REDIS_DB)]
    try:
        result = subprocess.run(
            command, cwd=ROOT, env=os.environ.copy(), capture_output=True, text=True, timeout=600
        )
    finally:
        _drop_database(database)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]

    text = out.read_text()
    assert text.startswith("# Performance\n\nProse around the blocks is kept.\n")
    block = text[text.index("<!-- bench:ci -->") : text.index("<!-- /bench:ci -->")]
    assert '`make bench BENCH_ARGS="--size ci"`' in block
    rows = _table_rows(block)
    assert len(rows) == len(FIGURES)
    for expected, row in zip(FIGURES, rows, strict=True):
        figure, value, limit, ratio, goal, met = row
        assert figure.startswith(expected), (expected, figure)
        measured = limit if figure.startswith(LIMIT_ONLY) else value
        assert NUMBER.search(measured), row
        assert ratio == "—" or float(ratio) > 0, row
        assert met in ("yes", "**no**", "—"), row
        assert goal, row
    # Every HTTP figure got answers (statuses are printed under the table).
    assert '"500"' not in block and "HTTP statuses seen" in block


@pytest.mark.django_db(transaction=True)
def test_without_indexes_drops_and_restores_exactly_what_the_migrations_made() -> None:
    def catalogue() -> set[tuple[str, str]]:
        with connection.cursor() as cursor:
            cursor.execute(
                """SELECT c.relname, pg_get_indexdef(i.indexrelid) FROM pg_index i
                JOIN pg_class c ON c.oid = i.indexrelid
                WHERE i.indrelid = 'leadops_activity'::regclass
                UNION ALL
                SELECT conname, pg_get_constraintdef(oid) FROM pg_constraint
                WHERE conrelid = 'leadops_activity'::regclass"""
            )
            return set(cursor.fetchall())

    before = catalogue()
    with data.without_indexes("leadops_activity", log=lambda *_: None):
        during = {name for name, _definition in catalogue()}
        # Only the primary key (its index and its constraint) stays during the load.
        assert during == {"leadops_activity_pkey"}
    assert catalogue() == before


@pytest.mark.django_db(transaction=True)
def test_generated_events_land_on_generated_leads_with_the_event_mix() -> None:
    from leadops.models import Activity, Lead

    data.generate(leads=50, events=2_000, log=lambda *_: None, workers=2)

    assert Lead.objects.count() == 50
    assert Activity.objects.count() == 2_000
    assert Activity.objects.filter(lead__isnull=True).count() == 0
    types = dict(Activity.objects.values_list("type").annotate(n=Count("id")))
    assert types["page_view"] > types["email_open"] > types["quote_request"] > 0
    assert not Lead.objects.filter(last_activity_at__isnull=True).exists()
    # The foreign key is back: an activity for a lead that does not exist is refused.
    with pytest.raises(Exception, match="foreign key"), connection.cursor() as cursor:
        cursor.execute(
            "INSERT INTO leadops_activity (lead_id, type, occurred_at, properties, event_id,"
            " fingerprint, source, received_at) SELECT max(id) + 1, 'page_view', now(), '{}',"
            " 'orphan', '', 'bench', now() FROM leadops_lead"
        )


def test_rows_without_a_goal_show_a_dash_not_a_verdict() -> None:
    row = {"figure": "f", "value": "1 s", "limit": "—", "ratio": None, "goal": "—"}
    table = render_table([{**row, "met": None, "statuses": {}}])
    assert "| f | 1 s | — | — | — | — |" in table
