"""The default scoring model (PRODUCT.md, from the seed template), active on a fresh database.

Installed by the data migration scoring/0002 and, should a test flush empty the tables,
again after migrate/flush (post_migrate) when no model exists at all.

Worked example: a director in marketing at a 120-person software company has attribute
20 + 15 + 25 + 10 = 70; one pricing-page view makes behaviour 30, total 100: hot, MQL.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from django.utils import timezone

ATTRIBUTE_RULES = [
    ("Target industry (software, IT services)", "industry", "in", ["software", "it_services"], 20),
    (
        "Semi-target industry (manufacturing, finance)",
        "industry",
        "in",
        ["manufacturing", "finance"],
        10,
    ),
    ("100 employees or more", "employee_count", "gte", 100, 15),
    ("50–99 employees", "employee_count", "between", [50, 99], 10),
    ("Executive or director", "job_level", "in", ["executive", "director"], 25),
    ("Manager", "job_level", "eq", "manager", 15),
    ("Staff", "job_level", "eq", "staff", 5),
    (
        "Marketing, sales or corporate planning",
        "department",
        "in",
        ["marketing", "sales", "management"],
        10,
    ),
]
PRICING = [{"key": "url", "op": "contains", "value": "/pricing"}]
CASE_STUDY = [{"key": "url", "op": "contains", "value": "/case"}]
BEHAVIOR_RULES = [
    # (label, event type, conditions, points, daily_nth)
    ("Form submit", "form_submit", [], 50, None),
    ("Pricing page view", "page_view", PRICING, 30, None),
    ("Webinar attended", "webinar_attended", [], 25, None),
    ("Case study page view", "page_view", CASE_STUDY, 20, None),
    ("Document download", "document_download", [], 15, None),
    ("Email click", "email_click", [], 10, None),
    ("Email open", "email_open", [], 5, None),
    ("3rd page view of the day (once a day)", "page_view", [], 5, 3),
    ("Unsubscribe", "unsubscribe", [], -20, None),
]
TRIGGERS = [
    # (label, event type, conditions, min_count, within_days)
    ("Form submit", "form_submit", [], 1, None),
    ("Quote request", "quote_request", [], 1, None),
    ("Trial signup", "trial_signup", [], 1, None),
    ("3rd pricing page view within 7 days", "page_view", PRICING, 3, 7),
]


def install_default_model(get_model: Callable[[str, str], Any]) -> bool:
    """Create the default model, active, when there is no model at all; True if created.

    `get_model` is `apps.get_model` (the data migration's historical models, or the
    app registry after a flush).
    """
    ScoringModel = get_model("scoring", "ScoringModel")
    if ScoringModel.objects.exists():
        return False
    model = ScoringModel.objects.create(
        name="Default model (seed template)",
        version=1,
        status="active",
        activated_at=timezone.now(),
        description="Attribute × behaviour model of the seed template (PRODUCT.md).",
    )
    AttributeRule = get_model("scoring", "AttributeRule")
    AttributeRule.objects.bulk_create(
        AttributeRule(
            model=model,
            position=i,
            label=label,
            field=field,
            operator=op,
            value=value,
            points=points,
        )
        for i, (label, field, op, value, points) in enumerate(ATTRIBUTE_RULES)
    )
    BehaviorRule = get_model("scoring", "BehaviorRule")
    BehaviorRule.objects.bulk_create(
        BehaviorRule(
            model=model,
            position=i,
            label=label,
            event_type=event_type,
            conditions=conditions,
            points=points,
            daily_nth=daily_nth,
        )
        for i, (label, event_type, conditions, points, daily_nth) in enumerate(BEHAVIOR_RULES)
    )
    TriggerRule = get_model("scoring", "TriggerRule")
    TriggerRule.objects.bulk_create(
        TriggerRule(
            model=model,
            position=i,
            label=label,
            event_type=event_type,
            conditions=conditions,
            min_count=min_count,
            within_days=within_days,
        )
        for i, (label, event_type, conditions, min_count, within_days) in enumerate(TRIGGERS)
    )
    return True
