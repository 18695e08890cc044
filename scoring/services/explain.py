"""Explanations: where a lead's points come from, rule by rule, and the behaviour reset."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from django.db import transaction
from django.utils import timezone

from leadops.models import Lead
from scoring.models import AttributeRule, BehaviorRule, ChangeReason, LeadScoreState, ModelStatus
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
