"""Explanations: where a lead's points come from, rule by rule, and the behaviour reset."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from django.db import transaction
from django.db.models import F, Sum, Window
from django.utils import timezone
from django.utils.translation import gettext as _

from leadops.models import EventType, Lead
from scoring.models import (
    AttributeRule,
    BehaviorRule,
    ChangeReason,
    LeadScoreState,
    ModelStatus,
    ScoreChange,
)
from scoring.services.rescoring import rescore_leads

DECAY_LABEL = "decay"


def rule_catalog(
    attribute_ids: set[int], behavior_ids: set[int]
) -> tuple[dict[int, tuple[str, int]], dict[int, str]]:
    """({attribute rule id: (label, points)}, {behaviour rule id: label}).

    Rules of active and archived models never change, so they are cached per process:
    a page of leads costs no query for labels once they are known.
    """
    missing_a = attribute_ids - _ATTRIBUTES.keys()
    missing_b = behavior_ids - _BEHAVIORS.keys()
    if missing_a:
        rows = AttributeRule.objects.filter(pk__in=missing_a)
        _remember(_ATTRIBUTES, rows.values_list("pk", "label", "points", "model__status"))
    if missing_b:
        rows = BehaviorRule.objects.filter(pk__in=missing_b)
        _remember(_BEHAVIORS, rows.values_list("pk", "label", "model__status"))
    attributes = {pk: _ATTRIBUTES[pk][:2] for pk in attribute_ids if pk in _ATTRIBUTES}
    behaviors = {pk: _BEHAVIORS[pk][0] for pk in behavior_ids if pk in _BEHAVIORS}
    _forget_drafts(attribute_ids, behavior_ids)
    return attributes, behaviors


_ATTRIBUTES: dict[int, tuple] = {}
_BEHAVIORS: dict[int, tuple] = {}


def _remember(cache: dict[int, tuple], rows) -> None:
    for pk, *values in rows:
        cache[pk] = tuple(values)  # (…, model status)


def _forget_drafts(attribute_ids: set[int], behavior_ids: set[int]) -> None:
    # A draft's rules may still change: used once, not kept.
    for cache, ids in ((_ATTRIBUTES, attribute_ids), (_BEHAVIORS, behavior_ids)):
        for pk in ids:
            if pk in cache and cache[pk][-1] == ModelStatus.DRAFT:
                del cache[pk]


def breakdown_items(
    breakdown: dict[str, Any], catalog: tuple[dict[int, tuple[str, int]], dict[int, str]]
) -> list[dict[str, Any]]:
    """[{rule, points, count}] for the rules in a stored breakdown (behaviour undecayed)."""
    attributes, behaviors = catalog
    items = [
        {"rule": attributes[pk][0], "points": attributes[pk][1], "count": 1}
        for pk in breakdown.get("a", [])
        if pk in attributes
    ]
    items += [
        {"rule": behaviors[pk], "points": points, "count": count}
        for pk, count, points in breakdown.get("b", [])
        if pk in behaviors
    ]
    return items


def score_breakdown_for(lead: Lead) -> list[dict[str, Any]]:
    """Why the lead has its score: [{rule, points, count}], adding up to attribute + behaviour.

    Behaviour rules show their points as earned; the "decay" entry is what time took off
    since (or, for a lead whose negative points faded, gave back).
    """
    try:
        breakdown = lead.score_state.breakdown
    except LeadScoreState.DoesNotExist:
        return []
    catalog = rule_catalog(set(breakdown.get("a", [])), {row[0] for row in breakdown.get("b", [])})
    items = breakdown_items(breakdown, catalog)
    earned = sum(points for _pk, _count, points in breakdown.get("b", []))
    if lead.behavior_score != earned:
        items.append({"rule": DECAY_LABEL, "points": lead.behavior_score - earned, "count": 0})
    return items


@transaction.atomic
def reset_behavior_score(lead_id: int, *, now: datetime | None = None) -> None:
    """Events up to now stop counting for this lead (a rejected SQL earns its way back)."""
    now = now or timezone.now()
    LeadScoreState.objects.update_or_create(
        lead_id=lead_id,
        defaults={"behavior_reset_at": now},
        create_defaults={"behavior_reset_at": now, "model_version": 0, "computed_at": now},
    )
    rescore_leads([lead_id], now=now, reason=ChangeReason.RESET)


# --- the ledger over time (read-only: the lead page's table and chart) -------------------

HISTORY_LIMIT = 50
CHART_DAYS = 90
# A lead with more changes than this in the chart's period shows its newest ones only.
CHART_POINT_LIMIT = 2000


def score_history(
    lead: Lead, *, since: datetime | None = None, limit: int = HISTORY_LIMIT
) -> list[dict[str, Any]]:
    """The lead's newest ledger rows, newest first, each with the score it left behind.

    One query: the ledger's points add up to the score, so the score after a row is
    today's score minus every newer row's points (a window sum, newest first).
    """
    rows = ScoreChange.objects.for_lead(lead.pk)
    if since is not None:
        rows = rows.filter(created_at__gte=since)
    newer = Window(Sum("points"), order_by=[F("created_at").desc(), F("id").desc()])
    rows = rows.annotate(newer_and_own=newer, activity_type=F("activity__type"))
    return [_history_entry(row, lead.score) for row in rows[:limit]]


def _history_entry(row: ScoreChange, current_score: int) -> dict[str, Any]:
    return {
        "at": row.created_at,
        "why": row.describe(),
        "reason": row.reason,
        "activity_type": _event_label(row.activity_type),
        "points": row.points,
        "score_after": current_score - row.newer_and_own + row.points,
    }


def _event_label(event_type: str | None) -> str:
    return str(EventType(event_type).label) if event_type in EventType.values else ""


# The chart's frame in SVG user units: plot area inside margins for the axis labels.
CHART_WIDTH, CHART_HEIGHT = 640, 220
CHART_LEFT, CHART_RIGHT, CHART_TOP, CHART_BOTTOM = 48, 16, 12, 28


def score_chart(lead: Lead, *, now: datetime | None = None, days: int = CHART_DAYS) -> dict:
    """The total score over the last `days`, as geometry for an inline SVG (one query).

    A step line: the score holds until a ledger row changes it, then jumps.
    """
    end = now or timezone.now()
    start = end - timedelta(days=days)
    history = score_history(lead, since=start, limit=CHART_POINT_LIMIT)[::-1]
    steps = _score_steps(history, current=lead.score, start=start, end=end)
    chart = _chart_geometry(steps, start=start, end=end)
    chart.update(days=days, changes=len(history), first=steps[0][1], last=lead.score)
    return chart


def _score_steps(
    history: list[dict[str, Any]], *, current: int, start: datetime, end: datetime
) -> list[tuple[datetime, int]]:
    # Oldest first; the score before the period is the first row's score minus its points.
    steps = [(start, history[0]["score_after"] - history[0]["points"] if history else current)]
    for entry in history:
        steps += [(entry["at"], steps[-1][1]), (entry["at"], entry["score_after"])]
    return [*steps, (end, current)]


def _chart_geometry(
    steps: list[tuple[datetime, int]], *, start: datetime, end: datetime
) -> dict[str, Any]:
    scores = [score for _at, score in steps]
    low, high = min(0, *scores), max(10, *scores)
    plot_w = CHART_WIDTH - CHART_LEFT - CHART_RIGHT
    plot_h = CHART_HEIGHT - CHART_TOP - CHART_BOTTOM
    span = (end - start).total_seconds()

    def x(at: datetime) -> float:
        return CHART_LEFT + plot_w * min(max((at - start).total_seconds() / span, 0.0), 1.0)

    def y(score: float) -> float:
        return CHART_TOP + plot_h * (high - score) / (high - low)

    middle = start + (end - start) / 2
    return {
        "width": CHART_WIDTH,
        "height": CHART_HEIGHT,
        "left": CHART_LEFT,
        "right": CHART_WIDTH - CHART_RIGHT,
        "top": CHART_TOP,
        "bottom": CHART_TOP + plot_h,
        "label_y": CHART_HEIGHT - 8,
        "points": " ".join(f"{x(at):.1f},{y(score):.1f}" for at, score in steps),
        "y_ticks": [{"y": round(y(v), 1), "value": v} for v in sorted({low, 0, high})],
        "x_ticks": [{"x": round(x(at), 1), "at": at} for at in (start, middle, end)],
    }


def lead_explanation(lead: Lead, *, now: datetime | None = None) -> dict[str, Any]:
    """All the lead page shows about its score: breakdown, newest ledger rows, chart."""
    breakdown = [
        {**item, "rule": _("decay") if _is_decay(item) else item["rule"]}
        for item in score_breakdown_for(lead)
    ]
    return {
        "breakdown": breakdown,
        "history": score_history(lead),
        "history_limit": HISTORY_LIMIT,
        "chart": score_chart(lead, now=now),
    }


def _is_decay(item: dict[str, Any]) -> bool:
    return item["rule"] == DECAY_LABEL and item["count"] == 0
