"""Hand-off figures: the IS queue page, the hand-off list API and the SLA monitor.

    uv run python -m bench.handoff                    # alone: 20k leads, 5k open hand-offs
    uv run python -m bench.handoff --leads 1000000    # 1M leads, 50k open (few events)

`make bench` calls `measure` from run(); run alone, this module builds its own bench
database with few events (the queue does not read events), rescores it so leads have
scores and score reasons, and prints its rows only.

`generate` fills the hand-off tables inside PostgreSQL (INSERT … SELECT over the bench
leads, no row through Python): open first contacts, 40% of them claimed, spread over
the IS reps with a tenth unassigned; a tenth as many open sales answers; twice as many
done hand-offs as history; each assignee's "MQL assigned" notification. Deadlines are
spread evenly over three days of wall time (24 business hours) with 15% already past
due, so a quarter of the running clocks are in their warning quarter when written.

`measure` times, through a real gunicorn on loopback: GET /api/v1/handoffs/ (first page,
assignee=me, sla_state=breached) and GET /queue/ with a logged-in session (mine, team).
Each figure is the p95 of requests sent one after another on one keep-alive connection
(each request's own latency, from sending to the last byte, no queue of the load
generator's making), with gunicorn's own request time (its access log, %(D)s) beside
it, and the engine's time for the same work: EXPLAIN ANALYZE of the hand-off queries
the request runs (captured from one in-process request).
Then one SLA monitor run (`check_slas`) four hours after the data's moment, timed with
the rows it changed, beside one hand-written UPDATE … RETURNING of the same rows.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

from django.db import connection, transaction

# Open first contacts at 1M leads (issue 4); smaller sizes get a quarter of their leads.
MAX_OPEN = 50_000
IS_REPS, SALES_REPS, MANAGERS = 15, 10, 3
# 24 business hours of 9 a day is three working days: about three days of wall time.
IS_SPAN, IS_WARN_BEFORE = timedelta(days=3), timedelta(hours=18)
SALES_SPAN, SALES_WARN_BEFORE = timedelta(days=2), timedelta(hours=12)
BREACHED_SHARE = 0.15  # of the clocks, already past due when the data is written
# The measured monitor run sees four hours of clocks at once: about a tenth of the open
# hand-offs change state. Not far-fetched: business-hour clocks bunch up, since every
# hand-off opened after hours or over a weekend gets the same warning and due instants,
# so the first runs of a working day move a night's or a weekend's MQLs together.
MONITOR_LAG = timedelta(hours=4)
WARM_UP = 20  # requests before each figure's (its connection's worker warms up)
PAGE_GOAL_MS, MONITOR_GOAL_S = 100, 5


@dataclass(frozen=True)
class HandoffData:
    """What `generate` wrote; stored SLA states are true at `now`."""

    now: datetime
    open_inside_sales: int
    open_sales: int
    done: int
    closed_before: int
    is_reps: list[int]
    sales_reps: list[int]
    managers: list[int]


def open_handoffs_for(leads: int) -> int:
    return min(MAX_OPEN, leads // 4)


# --- data -------------------------------------------------------------------------------


def _execute(sql: str, params: dict | None = None) -> int:
    with connection.cursor() as cursor:
        cursor.execute(sql, params or {})
        return cursor.rowcount


def bench_users() -> dict[str, list[int]]:
    """{role: user ids}: IS reps, sales reps and managers named bench-<role>-NN."""
    from django.contrib.auth import get_user_model
    from django.contrib.auth.hashers import make_password
    from django.contrib.auth.models import Group

    from leadops.roles import Role

    users = {}
    roster = ((Role.INSIDE_SALES, IS_REPS), (Role.SALES, SALES_REPS), (Role.MANAGER, MANAGERS))
    for role, count in roster:
        group = Group.objects.get(name=role)
        ids = []
        for number in range(1, count + 1):
            name = f"bench-{role}-{number:02d}"
            user, _ = get_user_model().objects.get_or_create(
                username=name,
                # No password: the bench signs in with tokens and sessions it creates.
                defaults={"email": f"{name}@example.jp", "password": make_password(None)},
            )
            user.groups.add(group)
            ids.append(user.pk)
        users[role] = ids
    return users


# Per picked lead (numbered g): u spreads the deadline, a picks the assignee (a tenth
# unassigned), c picks claimed (40%) and contacted (20%, the SLA met) and the outcome.
_PICKED = """
SELECT b.lead_id, l.source AS lead_source, g,
       (hashint8(g) & 2147483647)::float8 / 2147483647 AS u,
       hashint8(g + 1000003) & 2147483647 AS a, hashint8(g * 31 + 7) & 2147483647 AS c
FROM bench_handoff_leads b JOIN leadops_lead l ON l.id = b.lead_id
WHERE g > %(first)s AND g <= %(last)s"""

_COLUMNS = """lead_id, kind, status, assignee_id, opened_at, due_at, warn_at, sla_state,
    claimed_at, responded_at, closed_at, outcome, reason, comment, bant, opened_reason,
    opened_by_id, lead_source"""

# The stored state is what the monitor would have written at %(now)s.
# A response stops the clock: met in time, breached after the deadline (as _meet_sla).
_STATE = """CASE WHEN responded_at IS NOT NULL
          THEN CASE WHEN responded_at <= due_at THEN 'met' ELSE 'breached' END
     WHEN due_at <= %(now)s THEN 'breached'
     WHEN warn_at <= %(now)s THEN 'warning' ELSE 'on_track' END"""

_OPEN_SQL = f"""
INSERT INTO handoff_handoff ({_COLUMNS})
SELECT lead_id, %(kind)s, CASE WHEN claimed_at IS NULL THEN 'open' ELSE 'claimed' END,
       assignee_id, opened_at, due_at, warn_at, {_STATE}, claimed_at, responded_at, NULL,
       '', '', '', '{{}}'::jsonb, %(reason)s, NULL, lead_source
FROM (
    SELECT t.*, CASE WHEN contacted THEN claimed_at + (%(now)s - claimed_at) / 2
                END AS responded_at
    FROM (
        SELECT s.*, CASE WHEN claimed THEN opened_at + (%(now)s - opened_at) * 0.3
                    END AS claimed_at
        FROM (
            SELECT p.lead_id, p.lead_source, p.due_at, p.due_at - %(span)s AS opened_at,
                   p.due_at - %(warn)s AS warn_at, p.assignee_id,
                   p.assignee_id IS NOT NULL AND mod(p.c, 10) < %(claimed)s AS claimed,
                   p.assignee_id IS NOT NULL AND mod(p.c, 10) < %(contacted)s AS contacted
            FROM (
                SELECT picked.*, %(now)s + (u - %(breached)s) * %(span)s AS due_at,
                       CASE WHEN mod(a, 10) < %(unassigned)s THEN NULL
                            ELSE (%(reps)s::bigint[])[1 + mod(a / 10, %(rep_count)s)]
                       END AS assignee_id
                FROM ({_PICKED}) picked
            ) p
        ) s
    ) t
) r"""

_DONE_SQL = f"""
INSERT INTO handoff_handoff ({_COLUMNS})
SELECT lead_id, kind, 'done', assignee_id, opened_at, opened_at + span,
       opened_at + span - warn, CASE WHEN mod(a, 10) = 0 THEN 'breached' ELSE 'met' END,
       opened_at + interval '2 hours', opened_at + interval '4 hours',
       opened_at + interval '1 day',
       CASE WHEN kind = 'sales' THEN (ARRAY['accepted', 'rejected'])[1 + mod(c / 10, 2)]
            ELSE (ARRAY['qualified', 'returned', 'disqualified'])[1 + mod(c / 10, 3)] END,
       CASE WHEN mod(c / 10, 2) = 1 THEN 'timing' ELSE '' END, '', '{{}}'::jsonb,
       %(reason)s, NULL, lead_source
FROM (
    SELECT picked.*, %(now)s - u * interval '180 days' - interval '1 day' AS opened_at,
           CASE WHEN mod(c, 5) = 0 THEN 'sales' ELSE 'inside_sales' END AS kind,
           CASE WHEN mod(c, 5) = 0 THEN (%(sales)s::bigint[])[1 + mod(a, %(sales_count)s)]
                ELSE (%(reps)s::bigint[])[1 + mod(a, %(rep_count)s)] END AS assignee_id,
           CASE WHEN mod(c, 5) = 0 THEN %(sales_span)s ELSE %(is_span)s END AS span,
           CASE WHEN mod(c, 5) = 0 THEN %(sales_warn)s ELSE %(is_warn)s END AS warn
    FROM ({_PICKED}) picked
) d"""

_NOTIFICATIONS_SQL = """
INSERT INTO handoff_notification (recipient_id, kind, event_key, lead_id, handoff_id,
    title, body, created_at, read_at)
SELECT h.assignee_id, 'mql_assigned', 'mql_assigned:' || h.id, h.lead_id, h.id,
       'New MQL: ' || l.last_name || ' ' || l.first_name, '', h.opened_at,
       CASE WHEN h.status = 'done' OR mod(h.id, 10) < 7 THEN h.opened_at + interval '1 hour'
       END
FROM handoff_handoff h JOIN leadops_lead l ON l.id = h.lead_id
WHERE h.kind = 'inside_sales' AND h.assignee_id IS NOT NULL AND h.opened_at < %(now)s
ON CONFLICT (event_key, recipient_id) DO NOTHING"""

# Clocks already past their warning point or deadline were announced when they moved
# (one notice each is enough for the monitor's safety net to find them told).
_SLA_NOTICES_SQL = """
INSERT INTO handoff_notification (recipient_id, kind, event_key, lead_id, handoff_id,
    title, body, created_at)
SELECT COALESCE(h.assignee_id, %(first_rep)s), 'sla_' || h.sla_state,
       'sla_' || h.sla_state || ':' || h.id, h.lead_id, h.id, 'SLA ' || h.sla_state, '',
       %(now)s
FROM handoff_handoff h
WHERE h.status <> 'done' AND h.responded_at IS NULL AND h.sla_state IN ('warning', 'breached')
ON CONFLICT (event_key, recipient_id) DO NOTHING"""


@transaction.atomic
def generate(*, open_handoffs: int, now: datetime | None = None, log=print) -> HandoffData:
    """Write `open_handoffs` open first contacts (plus sales answers, history and
    notifications) over the bench leads; hand-offs left open by earlier figures are
    closed first, so the counts are exactly these. Returns what was written."""
    from django.utils import timezone

    now = now or timezone.now()
    started = time.perf_counter()
    users = bench_users()
    closed = _execute(
        "UPDATE handoff_handoff SET status = 'done', outcome = 'closed', closed_at = %(now)s"
        " WHERE status <> 'done'",
        {"now": now},
    )
    sales = open_handoffs // 10
    counts = (open_handoffs, sales, 2 * (open_handoffs + sales))
    _pick_leads(sum(counts))
    opened, answers, history = _write_handoffs(now, counts, users)
    _set_lead_stages()
    notes = _execute(_NOTIFICATIONS_SQL, {"now": now})
    notes += _execute(_SLA_NOTICES_SQL, {"now": now, "first_rep": users["inside_sales"][0]})
    _execute("DROP TABLE bench_handoff_leads")
    for table in ("handoff_handoff", "handoff_notification", "leadops_lead"):
        _execute(f"ANALYZE {table}")
    log(
        f"  hand-offs: {opened:,} open first contacts, {answers:,} open sales answers, "
        f"{history:,} done, {notes:,} notifications in {time.perf_counter() - started:.1f} s"
        f" ({closed:,} left open by earlier figures closed)"
    )
    roles = (users["inside_sales"], users["sales"], users["manager"])
    return HandoffData(now, opened, answers, history, closed, *roles)


def _write_handoffs(
    now: datetime, counts: tuple[int, int, int], users: dict[str, list[int]]
) -> tuple[int, int, int]:
    """Rows inserted (open first contacts, open sales answers, done), over the picked
    leads in that order of g."""
    first_contacts, sales, done = counts
    is_reps, sales_reps = users["inside_sales"], users["sales"]
    base = {"now": now, "breached": BREACHED_SHARE, "reason": "MQL rule met (bench)"}
    is_team = {"reps": is_reps, "rep_count": len(is_reps)}
    # First contacts: a tenth unassigned, 40% claimed, 20% contacted (the SLA met).
    opened = _execute(
        _OPEN_SQL,
        {**base, **is_team, "first": 0, "last": first_contacts, "kind": "inside_sales"}
        | {"span": IS_SPAN, "warn": IS_WARN_BEFORE, "unassigned": 1, "claimed": 4}
        | {"contacted": 2},
    )
    # Sales answers: each with its sales rep, none answered yet.
    answers = _execute(
        _OPEN_SQL,
        {**base, "reps": sales_reps, "rep_count": len(sales_reps), "kind": "sales"}
        | {"first": first_contacts, "last": first_contacts + sales, "span": SALES_SPAN}
        | {"warn": SALES_WARN_BEFORE, "unassigned": 0, "claimed": 0, "contacted": 0},
    )
    history = _execute(
        _DONE_SQL,
        {**base, **is_team, "sales": sales_reps, "sales_count": len(sales_reps)}
        | {"first": first_contacts + sales, "last": first_contacts + sales + done}
        | {"is_span": IS_SPAN, "is_warn": IS_WARN_BEFORE}
        | {"sales_span": SALES_SPAN, "sales_warn": SALES_WARN_BEFORE},
    )
    return opened, answers, history


def _pick_leads(count: int) -> None:
    """A temp table of `count` leads spread over the whole id range, numbered g = 1…"""
    _execute(
        """CREATE TEMP TABLE bench_handoff_leads AS
        SELECT lead_id, row_number() OVER (ORDER BY h, lead_id) AS g
        FROM (SELECT id AS lead_id, hashint8(id) AS h FROM leadops_lead
              ORDER BY h, id LIMIT %(count)s) picked""",
        {"count": count},
    )


def _set_lead_stages() -> None:
    """Leads with an open first contact are MQLs; with an open sales answer, SQLs owned
    by that sales rep."""
    _execute(
        """UPDATE leadops_lead l SET stage = 'mql' FROM handoff_handoff h
        WHERE h.lead_id = l.id AND h.kind = 'inside_sales' AND h.status <> 'done'"""
    )
    _execute(
        """UPDATE leadops_lead l SET stage = 'sql', owner_id = h.assignee_id
        FROM handoff_handoff h
        WHERE h.lead_id = l.id AND h.kind = 'sales' AND h.status <> 'done'"""
    )


def vacuum() -> None:
    """As autovacuum would leave the tables: visibility map set, statistics fresh."""
    for table in ("handoff_handoff", "handoff_notification", "leadops_lead"):
        _execute(f"VACUUM ANALYZE {table}")


# --- the SLA monitor ----------------------------------------------------------------------


_RUNNING = "status <> 'done' AND responded_at IS NULL"

# The same rows as check_slas's two UPDATEs, in one statement: the engine's own cost.
_HAND_WRITTEN_UPDATE = f"""
UPDATE handoff_handoff
SET sla_state = CASE WHEN due_at <= %(now)s THEN 'breached' ELSE 'warning' END
WHERE {_RUNNING} AND (
    (sla_state = 'on_track' AND warn_at <= %(now)s)
    OR (sla_state IN ('on_track', 'warning') AND due_at <= %(now)s))
RETURNING id, assignee_id, kind"""


def monitor_due(at: datetime) -> dict[str, int]:
    """How many hand-offs a monitor run at `at` will warn and breach."""
    with connection.cursor() as cursor:
        cursor.execute(
            f"""SELECT
                count(*) FILTER (WHERE sla_state = 'on_track' AND warn_at <= %(at)s
                                 AND due_at > %(at)s),
                count(*) FILTER (WHERE sla_state IN ('on_track', 'warning')
                                 AND due_at <= %(at)s)
            FROM handoff_handoff WHERE {_RUNNING}""",
            {"at": at},
        )
        warned, breached = cursor.fetchone()
    return {"warned": warned, "breached": breached}


def hand_written_update_seconds(at: datetime) -> tuple[float, int]:
    """Seconds and rows of the hand-written UPDATE … RETURNING, rolled back after, so
    the monitor then finds the same work."""
    with transaction.atomic():
        started = time.perf_counter()
        with connection.cursor() as cursor:
            cursor.execute(_HAND_WRITTEN_UPDATE, {"now": at})
            rows = len(cursor.fetchall())
        seconds = time.perf_counter() - started
        transaction.set_rollback(True)
    return seconds, rows


def time_monitor(at: datetime) -> tuple[float, dict[str, int]]:
    """Seconds of one `check_slas(now=at)`, commit and after-commit enqueues included,
    and what it returned."""
    from handoff.services import check_slas

    started = time.perf_counter()
    moved = check_slas(now=at)
    return time.perf_counter() - started, moved


def _notifications_since(moment: datetime) -> tuple[int, int]:
    from handoff.models import Delivery, Notification

    return (
        Notification.objects.filter(created_at__gte=moment).count(),
        Delivery.objects.filter(created_at__gte=moment).count(),
    )


def measure_monitor(data: HandoffData) -> list[dict]:
    """The monitor's catch-up run MONITOR_LAG after the data's moment beside the
    hand-written UPDATE of the same rows, then the next minute's (steady-state) run."""
    from django.utils import timezone

    from handoff.services.sla import announce_missed_sla_changes

    at = data.now + MONITOR_LAG
    due = monitor_due(at)  # also reads the rows into the cache for both runs below
    limit, limit_rows = hand_written_update_seconds(at)
    before = timezone.now()
    seconds, moved = time_monitor(at)
    # The run enqueues its announcements for the workers; none runs during this figure,
    # so the same fan-out is timed here, inline, as the workers would do it together.
    fanout_started = time.perf_counter()
    announce_missed_sla_changes(now=at, grace=timedelta(0), limit=10**7)
    fanout = time.perf_counter() - fanout_started
    notes, deliveries = _notifications_since(before)
    next_seconds, next_moved = time_monitor(at + timedelta(minutes=1))
    changed = moved["warned"] + moved["breached"]
    print(
        f"SLA monitor: {changed:,} changed in {seconds:.2f} s (expected {due}); "
        f"hand-written UPDATE {limit:.3f} s for {limit_rows:,} rows; "
        f"next minute {next_seconds * 1000:.0f} ms ({next_moved})"
    )
    open_count = f"{data.open_inside_sales + data.open_sales:,} open"
    goal = f"≤ {MONITOR_GOAL_S} s over 50,000 open"
    return [
        {
            "figure": f"SLA monitor run, 4 h of clocks at once ({open_count})",
            "value": f"{seconds:.2f} s: {moved['warned']:,} warned, {moved['breached']:,} "
            f"breached (then in workers: {fanout:.1f} s for {notes:,} notifications, "
            f"{deliveries:,} deliveries)",
            "limit": f"{limit:.2f} s one UPDATE … RETURNING of the {limit_rows:,} rows",
            "ratio": seconds / limit if limit else None,
            "goal": goal,
            "met": seconds <= MONITOR_GOAL_S and changed == due["warned"] + due["breached"],
            "statuses": {},
        },
        {
            "figure": f"SLA monitor run, the minute after ({open_count})",
            "value": f"{next_seconds * 1000:.0f} ms: {next_moved['warned']:,} warned, "
            f"{next_moved['breached']:,} breached",
            "limit": "—",
            "ratio": None,
            "goal": goal,
            "met": next_seconds <= MONITOR_GOAL_S,
            "statuses": {},
        },
    ]


# --- pages and API over HTTP --------------------------------------------------------------


@dataclass(frozen=True)
class Probe:
    figure: str
    path: str
    user_id: int
    page: bool  # an HTML page (session cookie) rather than the API (token)


def probes(data: HandoffData) -> list[Probe]:
    rep, manager = data.is_reps[0], data.managers[0]
    count = f"{data.open_inside_sales:,} open"
    return [
        Probe(f"hand-off list API, first page ({count})", "/api/v1/handoffs/", manager, False),
        Probe(
            "hand-off list API, assignee=me (IS rep)", "/api/v1/handoffs/?assignee=me", rep, False
        ),
        Probe(
            "hand-off list API, sla_state=breached",
            "/api/v1/handoffs/?sla_state=breached",
            manager,
            False,
        ),
        Probe(f"queue page /queue/, mine (IS rep; {count})", "/queue/", rep, True),
        Probe("queue page /queue/?view=team (IS rep)", "/queue/?view=team", rep, True),
    ]


def _token(user_id: int) -> str:
    from rest_framework.authtoken.models import Token

    return Token.objects.get_or_create(user_id=user_id)[0].key


def session_cookie(user_id: int, secret_key: str) -> str:
    """`sessionid=…` of a session logged in as the user, signed with the server's key
    (the bench process runs with another): as if the user had signed in."""
    from importlib import import_module

    from django.conf import settings
    from django.contrib.auth import (
        BACKEND_SESSION_KEY,
        HASH_SESSION_KEY,
        SESSION_KEY,
        get_user_model,
    )
    from django.test.utils import override_settings

    user = get_user_model().objects.get(pk=user_id)
    with override_settings(SECRET_KEY=secret_key):
        session = import_module(settings.SESSION_ENGINE).SessionStore()
        session[SESSION_KEY] = str(user.pk)
        session[BACKEND_SESSION_KEY] = _session_backend()
        session[HASH_SESSION_KEY] = user.get_session_auth_hash()
        session.save()
    return f"{settings.SESSION_COOKIE_NAME}={session.session_key}"


def _session_backend() -> str:
    """The backend a password sign-in records in the session: the first one that can
    load users (a lockout guard in front of it only refuses sign-ins)."""
    from django.conf import settings
    from django.contrib.auth import load_backend

    for path in settings.AUTHENTICATION_BACKENDS:
        if hasattr(load_backend(path), "get_user"):
            return path
    raise RuntimeError("no authentication backend can load a user")


async def _sequential_gets(url: str, headers: dict, count: int, log: AccessLog):
    """WARM_UP GETs, then `count` GETs one after another on one keep-alive connection:
    each request's latency alone, from sending it to its last byte, with no queue of the
    load generator's making. Redirects are not followed: a lost session shows as 302."""
    import aiohttp

    from bench.http import LoadResult, percentile

    latencies: list[float] = []
    statuses: dict[int, int] = {}
    connector = aiohttp.TCPConnector(limit=1)
    async with aiohttp.ClientSession(connector=connector, headers=headers) as session:
        for index in range(WARM_UP + count):
            if index == WARM_UP:
                log.skip()
                start = time.perf_counter()
            sent = time.perf_counter()
            async with session.get(url, allow_redirects=False) as response:
                await response.read()
            if index >= WARM_UP:
                statuses[response.status] = statuses.get(response.status, 0) + 1
                if response.status < 300:
                    latencies.append((time.perf_counter() - sent) * 1000)
        seconds = time.perf_counter() - start
    p50, p95 = percentile(latencies, 0.5), percentile(latencies, 0.95)
    return LoadResult(count, len(latencies), seconds, p50, p95, statuses)


class AccessLog:
    """gunicorn's access log reduced to "status microseconds" per request: the server's
    own request time (from the request parsed to the response written)."""

    FORMAT = "%(s)s %(D)s"

    def __init__(self) -> None:
        handle, name = tempfile.mkstemp(prefix="bench-access-", suffix=".log")
        os.close(handle)
        self.path = Path(name)
        self.offset = 0

    def gunicorn_args(self) -> str:
        # GUNICORN_CMD_ARGS overrides the settings file's accesslog = /dev/null.
        return f"--access-logfile {self.path} --access-logformat '{self.FORMAT}'"

    def skip(self) -> None:
        self.offset = self.path.stat().st_size

    def read_ms(self) -> list[float]:
        """Request times (ms) of the 2xx lines written since the last skip/read."""
        time.sleep(0.3)  # the workers' last lines
        with self.path.open() as log:
            log.seek(self.offset)
            lines = log.read().splitlines()
            self.offset = log.tell()
        fields = [line.split() for line in lines if line.strip()]
        return [int(us) / 1000 for status, us in fields if status.startswith("2")]


def run_probe(probe: Probe, base: str, credentials: dict, count: int, log: AccessLog):
    """(client LoadResult, server p50 ms, server p95 ms) for one probe."""
    from bench.http import percentile

    own = credentials[probe.user_id]
    headers = (
        {"Cookie": own["cookie"]} if probe.page else {"Authorization": f"Token {own['token']}"}
    )
    result = asyncio.run(_sequential_gets(base + probe.path, headers, count, log))
    server = log.read_ms()
    return result, percentile(server, 0.5), percentile(server, 0.95)


def check_page(url: str, cookie: str) -> int:
    """Rows the queue page shows (a page that lost its session would show none)."""
    import urllib.request

    # The bench's own gunicorn on loopback: an http:// URL built above, never user input.
    request = urllib.request.Request(url, headers={"Cookie": cookie})  # noqa: S310
    with urllib.request.urlopen(request, timeout=30) as response:  # noqa: S310
        return response.read().decode().count('class="queue-row')


def _static_up_to_date() -> bool:
    from django.conf import settings
    from django.contrib.staticfiles.finders import get_finders

    manifest = Path(settings.STATIC_ROOT) / "staticfiles.json"
    if not manifest.exists():
        return False
    built = manifest.stat().st_mtime
    for finder in get_finders():
        for path, storage in finder.list([]):
            if Path(storage.path(path)).stat().st_mtime > built:
                return False
    return True


# --- the engine's time for the same queries ------------------------------------------------


def explain_ms(sql: str, runs: int = 3) -> float:
    """The best of `runs` EXPLAIN ANALYZE execution times of one query, in ms."""
    times = []
    with connection.cursor() as cursor:
        for _ in range(runs):
            # Per-node timing would cost more than the query on aggregates over many rows.
            cursor.execute(f"EXPLAIN (ANALYZE, TIMING OFF, FORMAT JSON) {sql}")
            plan = cursor.fetchone()[0]
            plan = json.loads(plan) if isinstance(plan, str) else plan
            times.append(plan[0]["Execution Time"])
    return min(times)


def handoff_queries(path: str, user_id: int) -> list[str]:
    """The SELECTs on hand-offs one in-process request of `path` runs, as executed:
    the second request, so what the view caches between requests is left out."""
    from django.contrib.auth import get_user_model
    from django.test import Client
    from django.test.utils import CaptureQueriesContext

    client = Client(HTTP_HOST="127.0.0.1")
    client.force_login(get_user_model().objects.get(pk=user_id))
    client.get(path)
    with CaptureQueriesContext(connection) as captured:
        response = client.get(path)
    if response.status_code != 200:
        raise RuntimeError(f"{path} answered {response.status_code} in-process")
    return [
        q["sql"]
        for q in captured.captured_queries
        if q["sql"].lstrip().upper().startswith("SELECT") and '"handoff_handoff"' in q["sql"]
    ]


def engine_ms(path: str, user_id: int) -> tuple[float, float]:
    """(keyset page query ms, every other hand-off query of the request ms)."""
    keyset = other = 0.0
    for sql in handoff_queries(path, user_id):
        if "ORDER BY" in sql and "LIMIT" in sql:
            keyset += explain_ms(sql)
        else:
            other += explain_ms(sql)
    return keyset, other


# --- the figures --------------------------------------------------------------------------


def _probe_row(probe: Probe, result, server: tuple[float, float], engine: tuple[float, float]):
    keyset, other = engine
    limit = f"{keyset:.1f} ms EXPLAIN ANALYZE of the keyset query"
    if other:
        limit += f" (+ {other:.1f} ms its other hand-off queries)"
    return {
        "figure": probe.figure,
        "value": f"p95 {result.p95_ms:.1f} ms on loopback (gunicorn's own request time: "
        f"p50 {server[0]:.1f} ms, p95 {server[1]:.1f} ms)",
        "limit": limit,
        "ratio": result.p95_ms / (keyset + other) if keyset + other else None,
        "goal": f"p95 ≤ {PAGE_GOAL_MS} ms at 1M leads, 50,000 open",
        "met": result.ok == result.requests and result.p95_ms <= PAGE_GOAL_MS,
        "statuses": result.statuses,
    }


def collect_static(env: dict) -> None:
    """Pages need the hashed static files' manifest when DEBUG is off, as in the image;
    skipped when the manifest is newer than every static file (it takes ~10 s)."""
    if _static_up_to_date():
        return
    command = [sys.executable, "manage.py", "collectstatic", "--noinput", "--verbosity", "0"]
    subprocess.run(command, env=env, check=True, cwd=Path(__file__).resolve().parent.parent)


def measure_http(data: HandoffData, env: dict, count: int) -> list[dict]:
    from bench.http import free_port, start_gunicorn, stop_process

    log = AccessLog()
    credentials = {
        user_id: {"token": _token(user_id), "cookie": session_cookie(user_id, env["SECRET_KEY"])}
        for user_id in {p.user_id for p in probes(data)}
    }
    engine = {p.path: engine_ms(p.path, p.user_id) for p in probes(data)}
    collect_static(env)
    port = free_port()
    server = start_gunicorn({**env, "GUNICORN_CMD_ARGS": log.gunicorn_args()}, port)
    base = f"http://127.0.0.1:{port}"
    rows = []
    try:
        shown = check_page(f"{base}/queue/", credentials[data.is_reps[0]]["cookie"])
        print(f"queue page through gunicorn shows {shown} rows")
        for probe in probes(data):
            result, *server_ms = run_probe(probe, base, credentials, count, log)
            rows.append(_probe_row(probe, result, tuple(server_ms), engine[probe.path]))
            print(f"{probe.figure}: {rows[-1]['value']}; {rows[-1]['limit']}")
    finally:
        stop_process(server)
        log.path.unlink(missing_ok=True)
    return rows


def measure(size: dict, env: dict) -> list[dict]:
    """The hand-off figures for `make bench`: data, pages and API, then the monitor."""
    print(f"generating hand-offs for {size['leads']:,} leads …")
    data = generate(open_handoffs=open_handoffs_for(size["leads"]))
    vacuum()
    count = size.get("handoff_requests") or max(150, 20 * size["seconds"])
    rows = measure_http(data, env, count)
    return rows + measure_monitor(data)


def main() -> None:
    """Only the hand-off figures, on a bench database with few events."""
    import argparse

    from bench import __main__ as bench_main
    from bench import data, rescore

    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("--leads", type=int, default=20_000)
    parser.add_argument("--events", type=int, default=None, help="default: 2 per lead")
    args = parser.parse_args()
    bench_main._point_django_at_bench_database()
    data.generate(leads=args.leads, events=args.events or 2 * args.leads)
    seconds, changed = rescore.rescore_all()
    print(f"rescore-all: {seconds:.1f} s, {changed:,} leads changed")
    size = {"leads": args.leads, "seconds": 15 if args.leads >= 1_000_000 else 5}
    results = measure(size, bench_main._production_env())
    print("\n" + bench_main.render_table(results))


if __name__ == "__main__":
    main()
