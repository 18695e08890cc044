"""Rule semantics on chosen models: caps, windows, conditions, operators, negative points."""

from datetime import UTC, datetime, timedelta

import pytest

from scoring.services import rescore_leads, score_breakdown_for
from tests.scoring.helpers import blank_lead, event, make_model, recompute, stored

pytestmark = pytest.mark.django_db

# A Thursday 00:00 UTC: 7-day windows are aligned to the epoch (a Thursday), so
# [3 April, 10 April) is one window.
WINDOW_START = datetime(2025, 4, 3, tzinfo=UTC)


def behavior_of(lead, model, now) -> int:
    rescore_leads([lead.pk], model=model, now=now)
    behavior = stored(lead)[1]
    assert behavior == recompute(lead, model, now).behavior
    return behavior


def test_cap_per_lead_counts_the_earliest_events(t0):
    model = make_model(behavior=[{"event_type": "email_open", "points": 5, "cap_per_lead": 3}])
    lead = blank_lead()
    for hour in range(5):
        event(lead, "email_open", t0 + timedelta(hours=hour))
    assert behavior_of(lead, model, t0 + timedelta(days=1)) == 15
    assert score_breakdown_for(lead)[0]["count"] == 3


def test_cap_per_window_uses_fixed_windows():
    model = make_model(
        behavior=[
            {"event_type": "email_click", "points": 10, "cap_per_window": 2, "window_days": 7}
        ]
    )
    lead = blank_lead()
    for days in (0, 1, 2, 7.05):  # three in the first window, one in the next
        event(lead, "email_click", WINDOW_START + timedelta(days=days))
    assert behavior_of(lead, model, WINDOW_START + timedelta(days=8)) == 30


def test_caps_per_window_and_per_lead_together():
    model = make_model(
        behavior=[
            {
                "event_type": "email_click",
                "points": 10,
                "cap_per_window": 2,
                "window_days": 7,
                "cap_per_lead": 3,
            }
        ]
    )
    lead = blank_lead()
    for days in (0, 1, 2, 7.1, 7.2, 7.3):
        event(lead, "email_click", WINDOW_START + timedelta(days=days))
    # 2 + 2 within the windows, then at most 3 for the lead.
    assert behavior_of(lead, model, WINDOW_START + timedelta(days=8)) == 30


def test_daily_nth_rule_with_conditions(t0):
    model = make_model(
        behavior=[
            {
                "event_type": "page_view",
                "conditions": [{"key": "url", "op": "starts_with", "value": "/docs/"}],
                "points": 7,
                "daily_nth": 2,
            }
        ]
    )
    lead = blank_lead()
    for minutes, url in ((0, "/docs/a"), (1, "/blog"), (2, "/docs/b"), (3, "/docs/c")):
        event(lead, "page_view", t0 + timedelta(minutes=minutes), url=url)
    assert behavior_of(lead, model, t0) == 7


def test_negative_rule_can_make_the_behavior_score_negative(t0):
    model = make_model(
        attribute=[{"field": "industry", "operator": "eq", "value": "software", "points": 10}],
        behavior=[
            {"event_type": "email_open", "points": 5},
            {"event_type": "unsubscribe", "points": -20},
        ],
    )
    lead = blank_lead(industry="software")
    event(lead, "email_open", t0)
    event(lead, "unsubscribe", t0 + timedelta(minutes=1))
    rescore_leads([lead.pk], model=model, now=t0)
    assert stored(lead) == (10, -15, -5, "cold")
    assert sum(item["points"] for item in score_breakdown_for(lead)) == -5


@pytest.mark.parametrize(
    ("condition", "properties", "matches"),
    [
        ({"op": "equals", "value": "/pricing"}, {"url": "/pricing"}, True),
        ({"op": "equals", "value": "/pricing"}, {"url": "/pricing/"}, False),
        ({"op": "contains", "value": "/pricing"}, {"url": "https://x.jp/pricing?a=1"}, True),
        ({"op": "contains", "value": "/Pricing"}, {"url": "https://x.jp/pricing"}, False),
        ({"op": "starts_with", "value": "https://"}, {"url": "https://x.jp/"}, True),
        ({"op": "starts_with", "value": "https://"}, {"url": "http://x.jp/"}, False),
        ({"op": "in", "value": ["/a", "/b"]}, {"url": "/b"}, True),
        ({"op": "in", "value": ["/a", "/b"]}, {"url": "/c"}, False),
        # Not text: never matches, even when its JSON spelling would.
        ({"op": "equals", "value": "123"}, {"url": 123}, False),
        ({"op": "contains", "value": "1"}, {"url": [1]}, False),
        ({"op": "contains", "value": "/pricing"}, {}, False),
        # User text is never a pattern: %, _ and \ are plain characters.
        ({"op": "contains", "value": "%"}, {"url": "/pricing"}, False),
        ({"op": "contains", "value": "50%_off"}, {"url": "/sale/50%_off"}, True),
        ({"op": "starts_with", "value": "_"}, {"url": "a"}, False),
        ({"op": "equals", "value": "a'b\\c"}, {"url": "a'b\\c"}, True),
    ],
)
def test_property_conditions(t0, condition, properties, matches):
    model = make_model(
        behavior=[
            {
                "event_type": "page_view",
                "conditions": [{"key": "url", **condition}],
                "points": 9,
            }
        ]
    )
    lead = blank_lead()
    event(lead, "page_view", t0, **properties)
    assert behavior_of(lead, model, t0) == (9 if matches else 0)


def test_all_conditions_of_a_rule_must_hold(t0):
    model = make_model(
        behavior=[
            {
                "event_type": "email_click",
                "conditions": [
                    {"key": "campaign", "op": "equals", "value": "spring"},
                    {"key": "url", "op": "contains", "value": "/pricing"},
                ],
                "points": 12,
            }
        ]
    )
    lead = blank_lead()
    event(lead, "email_click", t0, campaign="spring", url="/pricing")
    event(lead, "email_click", t0, campaign="summer", url="/pricing")
    event(lead, "email_click", t0, campaign="spring", url="/blog")
    assert behavior_of(lead, model, t0) == 12


@pytest.mark.parametrize(
    ("rule", "fields", "matches"),
    [
        (
            {"field": "title", "operator": "contains", "value": "Director"},
            {"title": "IT DIRECTOR"},
            True,
        ),
        ({"field": "title", "operator": "contains", "value": "部長"}, {"title": "営業部長"}, True),
        ({"field": "title", "operator": "contains", "value": "cto"}, {"title": "CEO"}, False),
        ({"field": "source", "operator": "eq", "value": "展示会"}, {"source": "展示会"}, True),
        ({"field": "source", "operator": "in", "value": ["紹介", "API"]}, {"source": "API"}, True),
        (
            {
                "field": "email",
                "operator": "email_domain_in",
                "value": ["Gmail.com", "@yahoo.co.jp"],
            },
            {"email": "someone@yahoo.co.jp"},
            True,
        ),
        (
            {"field": "email", "operator": "email_domain_in", "value": ["gmail.com"]},
            {"email": "someone@gmail.com.example.jp"},
            False,
        ),
        ({"field": "employee_count", "operator": "lte", "value": 10}, {"employee_count": 10}, True),
        (
            {"field": "employee_count", "operator": "lte", "value": 10},
            {"employee_count": None},
            False,
        ),
        (
            {"field": "employee_count", "operator": "in", "value": [5, 8]},
            {"employee_count": 8},
            True,
        ),
        ({"field": "employee_count", "operator": "eq", "value": 8}, {"employee_count": 9}, False),
    ],
)
def test_attribute_operators(t0, rule, fields, matches):
    model = make_model(attribute=[{**rule, "points": -7}])
    lead = blank_lead(**fields)
    rescore_leads([lead.pk], model=model, now=t0)
    assert stored(lead)[0] == (-7 if matches else 0)
    assert recompute(lead, model, t0).attribute == stored(lead)[0]


def test_temperature_and_mql_rule_follow_the_model_thresholds(t0):
    model = make_model(
        attribute=[{"field": "industry", "operator": "eq", "value": "finance", "points": 40}],
        behavior=[{"event_type": "email_open", "points": 20}],
        warm_threshold=30,
        hot_threshold=60,
        mql_total=None,
        mql_behavior=20,
        mql_attribute=40,
    )
    lead = blank_lead(industry="finance")
    rescore_leads([lead.pk], model=model, now=t0)
    lead.refresh_from_db()
    assert (lead.score, lead.temperature, lead.stage) == (40, "warm", "new")
    event(lead, "email_open", t0)
    rescore_leads([lead.pk], model=model, now=t0)
    lead.refresh_from_db()
    assert (lead.score, lead.temperature, lead.stage) == (60, "hot", "mql")
