"""Crossing into MQL and hand-off triggers go through handoff.services.mark_lead_mql."""

from datetime import timedelta

import pytest

from handoff.models import StageTransition
from handoff.services import transition_lead
from scoring.models import ScoreChange
from scoring.services import rescore_leads
from tests.scoring.helpers import blank_lead, event, make_model

pytestmark = pytest.mark.django_db
PRICING = {"url": "https://example.jp/pricing"}


def stage_of(lead) -> str:
    lead.refresh_from_db()
    return lead.stage


@pytest.mark.parametrize("type_", ["form_submit", "quote_request", "trial_signup"])
def test_default_triggers_hand_over_a_lead_whatever_its_score(t0, type_):
    lead = blank_lead()
    event(lead, type_, t0)
    result = rescore_leads([lead.pk], now=t0)
    assert stage_of(lead) == "mql"
    assert result.marked_mql == [lead.pk]
    transition = StageTransition.objects.get(lead=lead)
    assert transition.reason.startswith("Hand-off trigger")
    trigger_row = ScoreChange.objects.get(lead=lead, reason="trigger")
    assert trigger_row.points == 0 and trigger_row.activity.type == type_


def test_third_pricing_view_within_seven_days_triggers(t0):
    model = make_model(
        behavior=[{"event_type": "page_view", "points": 1}],
        triggers=[
            {
                "event_type": "page_view",
                "conditions": [{"key": "url", "op": "contains", "value": "/pricing"}],
                "min_count": 3,
                "within_days": 7,
            }
        ],
    )
    lead = blank_lead()
    for days in (0, 4, 8):  # never three within 7 days
        event(lead, "page_view", t0 + timedelta(days=days), **PRICING)
        rescore_leads([lead.pk], model=model, now=t0 + timedelta(days=days))
    event(lead, "page_view", t0 + timedelta(days=8), url="/blog")  # not a pricing page
    rescore_leads([lead.pk], model=model, now=t0 + timedelta(days=8))
    assert stage_of(lead) == "new"

    event(lead, "page_view", t0 + timedelta(days=9), **PRICING)  # days 4, 8, 9
    rescore_leads([lead.pk], model=model, now=t0 + timedelta(days=9))
    assert stage_of(lead) == "mql"


def test_a_trigger_fires_once_per_event(t0):
    lead = blank_lead()
    event(lead, "trial_signup", t0)
    rescore_leads([lead.pk], now=t0)
    transition_lead(lead.pk, to_stage="nurturing", reason="not ready yet")
    event(lead, "email_open", t0 + timedelta(hours=1))
    rescore_leads([lead.pk], now=t0 + timedelta(hours=1))
    assert stage_of(lead) == "nurturing"  # the old signup does not hand it over again


def test_leads_past_mql_are_not_moved_back(t0):
    lead = blank_lead(stage="sql")
    event(lead, "form_submit", t0)
    event(lead, "webinar_attended", t0)
    result = rescore_leads([lead.pk], now=t0)
    assert stage_of(lead) == "sql"
    assert result.marked_mql == []
    assert not StageTransition.objects.filter(lead=lead).exists()


def test_crossing_the_mql_rule_by_score_moves_a_nurturing_lead(t0):
    lead = blank_lead(stage="nurturing", industry="software", department="sales")  # 30
    event(lead, "webinar_attended", t0)  # 25
    rescore_leads([lead.pk], now=t0)
    assert stage_of(lead) == "nurturing"
    event(lead, "page_view", t0 + timedelta(minutes=1), **PRICING)  # behaviour 55 ≥ 50
    rescore_leads([lead.pk], now=t0 + timedelta(minutes=1))
    assert stage_of(lead) == "mql"
    transition = StageTransition.objects.get(lead=lead)
    assert transition.reason == "MQL rule met with a score of 85"
    assert transition.score_snapshot == 85


def test_a_lead_sent_back_while_still_above_the_rule_is_not_re_qualified_at_once(t0):
    lead = blank_lead(industry="software", department="sales")
    event(lead, "webinar_attended", t0)
    event(lead, "page_view", t0, **PRICING)
    rescore_leads([lead.pk], now=t0)
    assert stage_of(lead) == "mql"
    transition_lead(lead.pk, to_stage="nurturing", reason="no budget this year")
    event(lead, "email_open", t0 + timedelta(hours=1))
    rescore_leads([lead.pk], now=t0 + timedelta(hours=1))
    # Only a crossing (not meeting the rule → meeting it) hands a lead over.
    assert stage_of(lead) == "nurturing"
