"""Explanations: where a lead's points come from, rule by rule, and the behaviour reset."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from django.db import transaction
from django.utils import timezone

from leadops.models import Lead
from scoring.models import AttributeRule, BehaviorRule, ChangeReason, LeadScoreState
from scoring.services.rescoring import rescore_leads

DECAY_LABEL = "decay"


def rule_catalog(
    attribute_ids: set[int], behavior_ids: set[int]
) -> tuple[dict[int, tuple[str, int]], dict[int, str]]:
    """({attribute rule id: (label, points)}, {behaviour rule id: label})."""
    attributes = {
        pk: (label, points)
        for pk, label, points in AttributeRule.objects.filter(pk__in=attribute_ids).values_list(
            "pk", "label", "points"
        )
    }
    behaviors = dict(BehaviorRule.objects.filter(pk__in=behavior_ids).values_list("pk", "label"))
    return attributes, behaviors


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
