"""The funnel dashboard's numbers: read-only aggregates in the database, never a walk
over leads in Python.

Six aggregate queries per filter set: the leads created in the period (by source), the
funnel over the stage transitions of the period (each carries its lead's source and the
time its step started, written with it: one covering index, no join), SLA compliance
and the sales answers over the hand-offs (each carries its lead's source too, so a source
filter reads no lead), the scoring rules behind the latest answers
(their leads' ledger), the latest rejections.
`dashboard_numbers` returns plain numbers (no labels, so one cached copy serves every
language); `cached_dashboard_numbers` shares it for a minute per filter set, like the
home page's numbers, and `warm_dashboard_cache` (every few minutes, from beat) recounts
the preset periods while someone uses the page, so those never count cold. Costs at 1M
leads: bench/dashboard.py.

Definitions (the page says them too):

- Funnel: a lead "reached" a stage when it transitioned into it within the period (a
  lead counts once per stage); "Leads" are the leads created within the period.
- Median time per step: for each lead reaching a stage, the time since it entered the
  previous stage (for MQL: since the lead was created), its 50th percentile.
- SLA: hand-offs opened within the period, met (answered in time) against breached
  (answered late, or still unanswered after the deadline); running clocks are pending.
- Sales answers: sales hand-offs accepted or rejected within the period; by source of
  the lead and by the scoring rules that contributed to the lead's score by then.
"""

from __future__ import annotations

import hashlib
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta
from functools import partial
from typing import Any

from django.conf import settings
from django.core.cache import cache
from django.db import connection, transaction
from django.db.models import Count, Q
from django.utils import timezone

from handoff.models import Handoff, HandoffKind, HandoffOutcome, HandoffStatus, SlaState
from handoff.services.stages import FUNNEL_STAGES
from leadops.sql import map_on_own_connections

LEAD_STEP = "lead"
FUNNEL_STEPS = (LEAD_STEP, *FUNNEL_STAGES)
PRESET_DAYS = (30, 90, 365)
DEFAULT_DAYS = 30
LATEST_REJECTIONS = 10
TRACKS_SHOWN = 10
# Counting a period's funnel over a million leads takes a moment: everyone looking at
# the same filters shares one count for a minute. Settings may lower it (0: no cache).
DASHBOARD_CACHE_SECONDS = 60
CACHE_VERSION = 1
ANSWERED = (HandoffOutcome.ACCEPTED, HandoffOutcome.REJECTED)
RULE_SAMPLE = 2000  # latest sales answers whose rules are counted (see answers_by_rule)


@dataclass(frozen=True)
class Filters:
    """One view of the dashboard: a period of whole local days and an optional source."""

    start: date
    end: date  # inclusive
    source: str = ""

    @property
    def days(self) -> int:
        return (self.end - self.start).days + 1

    def bounds(self) -> tuple[datetime, datetime]:
        """[start 00:00, the day after end 00:00) in the current time zone."""
        zone = timezone.get_current_timezone()
        start = datetime.combine(self.start, time.min, tzinfo=zone)
        return start, datetime.combine(self.end + timedelta(days=1), time.min, tzinfo=zone)

    def cache_key(self) -> str:
        # Sources are free text (any script, any length): hashed into the key.
        source = hashlib.sha256(self.source.encode()).hexdigest()[:16] if self.source else "-"
        zone = timezone.get_current_timezone_name()
        return f"leadops:dashboard:v{CACHE_VERSION}:{zone}:{self.start}:{self.end}:{source}"


def preset_filters(days: int, *, today: date, source: str = "") -> Filters:
    """The last `days` days up to and including today."""
    return Filters(start=today - timedelta(days=days - 1), end=today, source=source)


# --- the whole dashboard -----------------------------------------------------------------


def cached_dashboard_numbers(filters: Filters) -> dict[str, Any]:
    """`dashboard_numbers`, shared for DASHBOARD_CACHE_SECONDS per filter set."""
    key = filters.cache_key()
    numbers = cache.get(key)
    if numbers is None:
        numbers = dashboard_numbers(filters)
        seconds = getattr(settings, "DASHBOARD_CACHE_SECONDS", DASHBOARD_CACHE_SECONDS)
        if seconds:
            cache.set(key, numbers, seconds)
    return numbers


# Recounting the presets in the background while someone uses the dashboard: at 1M leads
# a cold count takes seconds on a small machine, a cached one milliseconds.
VIEWED_KEY = f"leadops:dashboard:v{CACHE_VERSION}:viewed"
WARM_WHILE_VIEWED_SECONDS = 15 * 60
# How often beat should run the recount: the three presets cost seconds of database
# time at 1M leads (bench/dashboard.py), too much to spend every minute.
WARM_EVERY_SECONDS = 5 * 60


def note_dashboard_viewed() -> None:
    """The dashboard was looked at: keep its presets warm for the next quarter hour."""
    cache.set(VIEWED_KEY, 1, WARM_WHILE_VIEWED_SECONDS)


def warm_dashboard_cache(*, today: date | None = None, every: int = WARM_EVERY_SECONDS) -> int:
    """Recount each preset period (all sources) into the cache; beat runs it `every`
    seconds.

    Only while someone has viewed the dashboard in the last quarter hour, so an idle
    team costs nothing. Each entry outlives the next run, so a preset view never counts
    cold. Returns how many presets were counted.
    """
    seconds = getattr(settings, "DASHBOARD_CACHE_SECONDS", DASHBOARD_CACHE_SECONDS)
    if not seconds or not cache.get(VIEWED_KEY):
        return 0
    today = today or timezone.localdate()
    for days in PRESET_DAYS:
        filters = preset_filters(days, today=today)
        cache.set(filters.cache_key(), dashboard_numbers(filters), 2 * every + 30)
    return len(PRESET_DAYS)


def dashboard_numbers(filters: Filters, *, now: datetime | None = None) -> dict[str, Any]:
    """Every section's numbers for one filter set: six aggregate queries whatever the
    data size, run side by side (see `_count_sections`)."""
    now = now or timezone.now()
    sections = {
        "funnel": funnel,
        "sla": partial(sla_compliance, now=now),
        "answers": sales_answers,
        "by_rule": answers_by_rule,
        "latest_rejections": latest_rejections,
    }
    counted = _count_sections(sections, filters)
    answers = counted.pop("answers")
    answered = sum(row["n"] for row in answers)
    return {
        "computed_at": now,
        **counted,
        "by_source": answers_by_source(answers),
        "reasons": rejection_reasons(answers),
        "rule_sample": {"answers": answered, "counted": min(answered, RULE_SAMPLE)},
    }


def _count_sections(
    sections: dict[str, Callable[[Filters], Any]], filters: Filters
) -> dict[str, Any]:
    """{name: section(filters)}. Each query keeps one PostgreSQL backend (one core) busy,
    so a cold page runs them on DASHBOARD_PARALLEL_QUERIES connections at once (threads);
    inside a caller's transaction (tests) they run one after another in it."""
    workers = settings.DASHBOARD_PARALLEL_QUERIES
    if workers <= 1 or connection.in_atomic_block:
        with transaction.atomic():
            _tune_session()
            return {name: section(filters) for name, section in sections.items()}
    names = list(sections)
    results = map_on_own_connections(
        partial(_count_section, filters=filters),
        [sections[name] for name in names],
        workers=workers,
        name="dashboard",
    )
    return dict(zip(names, results, strict=True))


def _count_section(section: Callable[[Filters], Any], *, filters: Filters) -> Any:
    _tune_session()
    return section(filters)


def _tune_session() -> None:
    # For this transaction only. JIT compiles these aggregates for longer than they run
    # (0.1–1.6 s measured at 1M leads, for queries of a few hundred ms), and a year of
    # transitions sorts and hashes in memory with more than the 4 MB default.
    _fetch("SELECT set_config('jit', 'off', true), set_config('work_mem', '64MB', true)", {})


# --- funnel -------------------------------------------------------------------------------

_LEADS_SQL = """
SELECT l.source, count(*)
FROM leadops_lead l
WHERE l.created_at >= %(start)s AND l.created_at < %(end)s
  AND (%(source)s = '' OR l.source = %(source)s)
GROUP BY l.source
"""

# Per lead and stage, the first transition into the stage within the period (the one
# whose previous entry into the stage, if any, is older than the period), timed from the
# lead's latest entry into the previous funnel stage before it, or from the lead's
# creation for MQL. Both facts are written on the transition with it (StageTransition),
# so this reads the period's rows from one covering index: no lead, no earlier
# transition. Grouping sets give each source and the total.
_FUNNEL_SQL = """
SELECT grouping(t.lead_source) = 1, t.lead_source, t.to_stage, count(*),
       percentile_cont(0.5) WITHIN GROUP (
           ORDER BY extract(epoch FROM t.created_at - t.previous_step_at)::float8)
FROM handoff_stagetransition t
WHERE t.to_stage = ANY(%(stages)s)
  AND t.created_at >= %(start)s AND t.created_at < %(end)s
  AND (t.previous_entry_at IS NULL OR t.previous_entry_at < %(start)s)
  AND (%(source)s = '' OR t.lead_source = %(source)s)
GROUP BY GROUPING SETS ((t.lead_source, t.to_stage), (t.to_stage))
"""


def funnel(filters: Filters) -> dict[str, Any]:
    """{"total": {step: [count, median seconds]}, "by_source": {source: {step: …}}}.

    Steps are "lead" (leads created in the period; no median) and the funnel stages.
    Medians are None where no lead reached the step (or its previous step is unknown).
    """
    params = _params(filters) | {"stages": [str(s) for s in FUNNEL_STAGES]}
    total: dict[str, list] = {LEAD_STEP: [0, None]}
    by_source: dict[str, dict[str, list]] = defaultdict(dict)
    for source, count in _fetch(_LEADS_SQL, params):
        by_source[source][LEAD_STEP] = [count, None]
        total[LEAD_STEP][0] += count
    for is_total, source, stage, count, median in _fetch(_FUNNEL_SQL, params):
        target = total if is_total else by_source[source]
        target[stage] = [count, median]
    return {"total": total, "by_source": dict(by_source)}


def funnel_steps(counts: dict[str, list]) -> list[dict[str, Any]]:
    """The funnel in order: [{step, count, rate (from the previous step), median}]."""
    steps, previous = [], None
    for step in FUNNEL_STEPS:
        count, median = counts.get(step, [0, None])
        rate = count / previous if previous else None
        steps.append({"step": step, "count": count, "rate": rate, "median": median})
        previous = count
    return steps


# --- SLA compliance -------------------------------------------------------------------------


def sla_compliance(filters: Filters, *, now: datetime) -> list[dict[str, Any]]:
    """Per kind and assignee, the hand-offs opened in the period: met, breached, pending.

    Breached includes clocks past their deadline that the monitor has not marked yet,
    as the pages show them. Closed without an answer (another stage change) is neither.
    """
    start, end = filters.bounds()
    handoffs = Handoff.objects.filter(opened_at__gte=start, opened_at__lt=end)
    if filters.source:
        handoffs = handoffs.filter(lead_source=filters.source)
    running = Q(responded_at__isnull=True) & ~Q(status=HandoffStatus.DONE)
    breached = Q(sla_state=SlaState.BREACHED) | (running & Q(due_at__lte=now))
    pending = running & Q(due_at__gt=now) & ~Q(sla_state=SlaState.BREACHED)
    rows = (
        handoffs.order_by()
        .values("kind", "assignee_id", "assignee__username")
        .annotate(
            met=Count("pk", filter=Q(sla_state=SlaState.MET)),
            breached=Count("pk", filter=breached),
            pending=Count("pk", filter=pending),
        )
    )
    return sorted(
        (
            {
                "kind": row["kind"],
                "assignee": row["assignee__username"],
                "met": row["met"],
                "breached": row["breached"],
                "pending": row["pending"],
            }
            for row in rows
        ),
        key=lambda r: (r["kind"], r["assignee"] is None, r["assignee"] or ""),
    )


def sla_totals(rows: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    """One kind's rows summed, with the share met of the decided ones."""
    totals = {name: sum(r[name] for r in rows if r["kind"] == kind) for name in _SLA_COUNTS}
    return {**totals, "share": share(totals["met"], totals["met"] + totals["breached"])}


_SLA_COUNTS = ("met", "breached", "pending")


def share(part: int, whole: int) -> float | None:
    return part / whole if whole else None


# --- sales answers: rejection reasons by source and by scoring rule ----------------------


def sales_answers(filters: Filters) -> list[dict[str, Any]]:
    """[{source, outcome, reason, count}] of sales hand-offs answered in the period."""
    start, end = filters.bounds()
    answers = Handoff.objects.filter(
        kind=HandoffKind.SALES, outcome__in=ANSWERED, closed_at__gte=start, closed_at__lt=end
    )
    if filters.source:
        answers = answers.filter(lead_source=filters.source)
    rows = answers.order_by().values("lead_source", "outcome", "reason").annotate(n=Count("pk"))
    return [
        {"source": r["lead_source"], "outcome": r["outcome"], "reason": r["reason"], "n": r["n"]}
        for r in rows
    ]


def _answer_summary() -> dict[str, Any]:
    return {"accepted": 0, "rejected": 0, "reasons": {}}


def _add_answer(summary: dict[str, Any], outcome: str, reason: str, n: int) -> None:
    if outcome == HandoffOutcome.ACCEPTED:
        summary["accepted"] += n
    else:
        summary["rejected"] += n
        summary["reasons"][reason] = summary["reasons"].get(reason, 0) + n


def answers_by_source(answers: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """[{source, accepted, rejected, reasons: {code: n}}], most rejected first."""
    by_source: dict[str, dict[str, Any]] = defaultdict(_answer_summary)
    for row in answers:
        _add_answer(by_source[row["source"]], row["outcome"], row["reason"], row["n"])
    return _most_rejected([{"source": s, **summary} for s, summary in by_source.items()])


def rejection_reasons(answers: list[dict[str, Any]]) -> dict[str, int]:
    """{reason code: rejections} over every source."""
    reasons: dict[str, int] = {}
    for row in answers:
        if row["outcome"] == HandoffOutcome.REJECTED:
            reasons[row["reason"]] = reasons.get(row["reason"], 0) + row["n"]
    return reasons


def _most_rejected(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return sorted(rows, key=lambda r: (-r["rejected"], -r["accepted"], str(r.get("label", ""))))


# Which rules brought the answered leads: the behaviour rules and hand-off triggers of
# the lead's ledger up to the answer (positive points; the reset on rejection does not
# erase the ledger), and the positive attribute rules of its score breakdown (attribute
# points never reset). Each rule counts once per answered hand-off.
_RULES_SQL = """
WITH answered AS (
    SELECT h.id, h.lead_id, h.outcome, h.reason, h.closed_at
    FROM handoff_handoff h
    WHERE h.kind = 'sales' AND h.outcome = ANY(%(answered)s)
      AND h.closed_at >= %(start)s AND h.closed_at < %(end)s
      AND (%(source)s = '' OR h.lead_source = %(source)s)
    ORDER BY h.closed_at DESC, h.id DESC
    LIMIT %(sample)s
), contributed AS (
    SELECT a.id, a.outcome, a.reason,
           CASE WHEN sc.reason = 'trigger' THEN 'trigger' ELSE 'behavior' END AS kind,
           sc.rule_label AS label
    FROM answered a
    JOIN scoring_scorechange sc ON sc.lead_id = a.lead_id
    WHERE sc.created_at <= a.closed_at AND sc.rule_label <> ''
      AND ((sc.reason = 'event' AND sc.points > 0) OR sc.reason = 'trigger')
    UNION
    SELECT a.id, a.outcome, a.reason, 'attribute', r.label
    FROM answered a
    JOIN scoring_leadscorestate st ON st.lead_id = a.lead_id
    CROSS JOIN LATERAL jsonb_array_elements_text(
        CASE WHEN jsonb_typeof(st.breakdown -> 'a') = 'array'
             THEN st.breakdown -> 'a' ELSE '[]'::jsonb END
    ) AS e(rule_id)
    JOIN scoring_attributerule r ON r.id = e.rule_id::bigint
    WHERE r.points > 0
)
SELECT kind, label, outcome, reason, count(*)
FROM contributed
GROUP BY kind, label, outcome, reason
"""


def answers_by_rule(filters: Filters) -> list[dict[str, Any]]:
    """[{kind: attribute|behavior|trigger, label, accepted, rejected, reasons}], most
    rejected first: the rules that bring leads sales rejects (the feedback loop).

    Over the RULE_SAMPLE latest answers of the period: each answer walks its lead's
    ledger (a dozen rows or more), so a year of answers at 1M leads would cost seconds;
    the latest thousands give the same picture, and the page says when it is a sample.
    """
    params = _params(filters) | {"answered": [str(a) for a in ANSWERED], "sample": RULE_SAMPLE}
    by_rule: dict[tuple[str, str], dict[str, Any]] = defaultdict(_answer_summary)
    for kind, label, outcome, reason, n in _fetch(_RULES_SQL, params):
        _add_answer(by_rule[(kind, label)], outcome, reason, n)
    return _most_rejected(
        [{"kind": kind, "label": label, **summary} for (kind, label), summary in by_rule.items()]
    )


def latest_rejections(filters: Filters) -> list[dict[str, Any]]:
    """The newest rejections in the period with their comments: what sales said."""
    start, end = filters.bounds()
    rejected = Handoff.objects.filter(
        kind=HandoffKind.SALES,
        outcome=HandoffOutcome.REJECTED,
        closed_at__gte=start,
        closed_at__lt=end,
    )
    if filters.source:
        rejected = rejected.filter(lead_source=filters.source)
    rows = rejected.select_related("lead", "assignee").order_by("-closed_at", "-id")
    return [
        {
            "lead_id": h.lead_id,
            "lead": str(h.lead),
            "source": h.lead.source,
            "reason": h.reason,
            "comment": h.comment,
            "at": h.closed_at,
            "by": h.assignee.get_username() if h.assignee else None,
        }
        for h in rows[:LATEST_REJECTIONS]
    ]


# --- nurturing tracks ---------------------------------------------------------------------


def cached_track_kpis() -> list[dict[str, Any]]:
    """`track_kpis_summary`, shared for a minute (it does not depend on the filters)."""
    key = f"leadops:dashboard:v{CACHE_VERSION}:tracks"
    tracks = cache.get(key)
    if tracks is None:
        tracks = track_kpis_summary()
        seconds = getattr(settings, "DASHBOARD_CACHE_SECONDS", DASHBOARD_CACHE_SECONDS)
        if seconds:
            cache.set(key, tracks, seconds)
    return tracks


def track_kpis_summary(limit: int = TRACKS_SHOWN) -> list[dict[str, Any]]:
    """The newest tracks that have left draft, each with its KPIs since it started.

    `nurturing.sending.track_kpis` counts each track (a few queries per track), so the
    dashboard shows the `limit` newest; the track's admin page has the rest.
    """
    from nurturing import sending
    from nurturing.models import Track, TrackStatus

    track_kpis = getattr(sending, "track_kpis", None)
    if track_kpis is None:
        return []
    tracks = Track.objects.exclude(status=TrackStatus.DRAFT).order_by("-created_at", "-id")
    return [
        {**track, "kpis": track_kpis(track["id"])["track"]}
        for track in tracks.values("id", "name", "kind", "status")[:limit]
    ]


# --- helpers ----------------------------------------------------------------------------------


def _params(filters: Filters) -> dict[str, Any]:
    start, end = filters.bounds()
    return {"start": start, "end": end, "source": filters.source}


def _fetch(sql: str, params: dict[str, Any]) -> list[tuple]:
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        return cursor.fetchall()
