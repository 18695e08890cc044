"""Helpers for the scoring tests: draft models with chosen rules, events, recomputes."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from leadops.models import Activity, Lead
from scoring.models import (
    AttributeRule,
    BehaviorRule,
    LeadScoreState,
    ScoringModel,
    TriggerRule,
)
from scoring.reference import LeadScore, compute_lead_score
from scoring.services import next_version
from tests.factories import ActivityFactory, LeadFactory

BLANK_LEAD = {"job_level": "", "department": "", "industry": "", "employee_count": None}


def make_model(
    *,
    attribute: list[dict[str, Any]] = (),
    behavior: list[dict[str, Any]] = (),
    triggers: list[dict[str, Any]] = (),
    **fields: Any,
) -> ScoringModel:
    """A draft model with these rules (dicts of rule fields), validated like the admin."""
    model = ScoringModel(name="test", version=next_version(), **fields)
    model.full_clean(exclude=["version"])
    model.save()
    for rule_class, rows in (
        (AttributeRule, attribute),
        (BehaviorRule, behavior),
        (TriggerRule, triggers),
    ):
        for row in rows:
            label = row.get("label") or f"rule-{uuid.uuid4().hex[:8]}"
            values = {k: v for k, v in row.items() if k != "label"}
            rule = rule_class(model=model, label=label, **values)
            rule.full_clean()
            rule.save()
    return model


def blank_lead(**fields: Any) -> Lead:
    """A lead no default attribute rule matches (attribute score 0)."""
    return LeadFactory(**{**BLANK_LEAD, **fields})


def event(lead: Lead, type_: str, at: datetime, **properties: Any) -> Activity:
    return ActivityFactory(lead=lead, type=type_, occurred_at=at, properties=properties)


def recompute(lead: Lead, model: Any, now: datetime) -> LeadScore:
    """The Python reference's result for the lead as it is stored now."""
    lead = Lead.objects.get(pk=lead.pk)
    state = LeadScoreState.objects.filter(lead=lead).first()
    return compute_lead_score(
        lead,
        list(lead.activities.all()),
        model,
        now,
        behavior_reset_at=state.behavior_reset_at if state else None,
    )


def stored(lead: Lead) -> tuple[int, int, int, str]:
    lead.refresh_from_db()
    return lead.attribute_score, lead.behavior_score, lead.score, lead.temperature
