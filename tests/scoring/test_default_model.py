"""The default model (PRODUCT.md seed template): installed active, every row, worked example."""

from datetime import timedelta

import pytest

from handoff.models import StageTransition
from scoring.models import ModelStatus, ScoringModel
from scoring.services import rescore_leads, score_breakdown_for
from tests.factories import LeadFactory
from tests.scoring.helpers import blank_lead, event, stored

pytestmark = pytest.mark.django_db


def test_default_model_is_the_one_active_model_on_a_fresh_database():
    model = ScoringModel.objects.get(status=ModelStatus.ACTIVE)
    assert ScoringModel.objects.active().count() == 1
    assert (model.warm_threshold, model.hot_threshold) == (50, 70)
    assert (model.mql_total, model.mql_behavior, model.mql_attribute) == (80, 50, 30)
    assert (model.decay_grace_days, model.decay_half_life_days) == (30, 30)
    assert model.attribute_rules.count() == 8
    assert model.behavior_rules.count() == 9
    assert sorted(model.trigger_rules.values_list("event_type", "min_count")) == [
        ("form_submit", 1),
        ("page_view", 3),
        ("quote_request", 1),
        ("trial_signup", 1),
    ]


def test_worked_example_director_in_marketing_at_a_software_company(t0):
    lead = LeadFactory(
        job_level="director", department="marketing", employee_count=120, industry="software"
    )
    rescore_leads([lead.pk], now=t0)
    assert stored(lead) == (70, 0, 70, "hot")
    lead.refresh_from_db()
    assert lead.stage == "new"  # 70: not yet an MQL (total < 80, behaviour < 50)

    event(lead, "page_view", t0 + timedelta(minutes=5), url="https://example.jp/pricing")
    rescore_leads([lead.pk], now=t0 + timedelta(minutes=5))

    assert stored(lead) == (70, 30, 100, "hot")
    lead.refresh_from_db()
    assert lead.stage == "mql"
    transition = StageTransition.objects.get(lead=lead)
    assert (transition.from_stage, transition.to_stage, transition.score_snapshot) == (
        "new",
        "mql",
        100,
    )
    assert {item["rule"]: item["points"] for item in score_breakdown_for(lead)} == {
        "Target industry (software, IT services)": 20,
        "100 employees or more": 15,
        "Executive or director": 25,
        "Marketing, sales or corporate planning": 10,
        "Pricing page view": 30,
    }


@pytest.mark.parametrize(
    ("fields", "points"),
    [
        ({"industry": "software"}, 20),
        ({"industry": "it_services"}, 20),
        ({"industry": "manufacturing"}, 10),
        ({"industry": "finance"}, 10),
        ({"industry": "retail"}, 0),
        ({"employee_count": 100}, 15),
        ({"employee_count": 5000}, 15),
        ({"employee_count": 99}, 10),
        ({"employee_count": 50}, 10),
        ({"employee_count": 49}, 0),
        ({"job_level": "executive"}, 25),
        ({"job_level": "director"}, 25),
        ({"job_level": "manager"}, 15),
        ({"job_level": "staff"}, 5),
        ({"job_level": "other"}, 0),
        ({"department": "marketing"}, 10),
        ({"department": "sales"}, 10),
        ({"department": "management"}, 10),
        ({"department": "it"}, 0),
        ({}, 0),
    ],
)
def test_every_attribute_row_of_the_default_model(t0, fields, points):
    lead = blank_lead(**fields)
    rescore_leads([lead.pk], now=t0)
    assert stored(lead)[0] == points


@pytest.mark.parametrize(
    ("type_", "properties", "points"),
    [
        ("form_submit", {}, 50),
        ("page_view", {"url": "https://example.jp/pricing"}, 30),
        ("webinar_attended", {}, 25),
        ("page_view", {"url": "https://example.jp/case/manufacturing"}, 20),
        ("document_download", {}, 15),
        ("email_click", {}, 10),
        ("email_open", {}, 5),
        ("unsubscribe", {}, -20),
        ("page_view", {"url": "https://example.jp/blog"}, 0),
        ("seminar_attended", {}, 0),
        ("quote_request", {}, 0),
        ("trial_signup", {}, 0),
    ],
)
def test_every_behavior_row_of_the_default_model(t0, type_, properties, points):
    lead = blank_lead()
    event(lead, type_, t0, **properties)
    rescore_leads([lead.pk], now=t0)
    assert stored(lead)[1] == points


@pytest.mark.parametrize(
    ("minutes", "points"),
    [
        ([0, 10], 0),  # two page views: nothing
        ([0, 10, 20], 5),  # the third of the day scores
        ([0, 10, 20, 30, 40, 50], 5),  # once per day
        ([0, 10, 20, 60 * 24, 60 * 24 + 1, 60 * 24 + 2], 10),  # 3 + 3 on two days
        ([0, 10, 60 * 24], 0),  # 2 + 1
    ],
)
def test_third_page_view_of_a_day_scores_once_that_day(t0, minutes, points):
    lead = blank_lead()
    for minute in minutes:
        event(lead, "page_view", t0 + timedelta(minutes=minute), url="https://example.jp/blog")
    rescore_leads([lead.pk], now=t0 + timedelta(days=2))
    assert stored(lead)[1] == points


def test_calendar_day_is_the_tokyo_day_not_the_utc_day(t0):
    # 23:00, 23:30 on 1 April and 00:10 on 2 April in Tokyo: one UTC day, two Tokyo days.
    lead = blank_lead()
    evening = t0.replace(hour=23)
    for minutes in (0, 30, 70):
        event(lead, "page_view", evening + timedelta(minutes=minutes), url="/blog")
    rescore_leads([lead.pk], now=evening + timedelta(hours=2))
    assert stored(lead)[1] == 0


def test_the_default_model_comes_back_after_a_flush():
    from scoring.apps import _ensure_default_model

    ScoringModel.objects.all().delete()
    _ensure_default_model()
    model = ScoringModel.objects.get()
    assert (model.version, model.status, model.behavior_rules.count()) == (1, "active", 9)
    _ensure_default_model()  # idempotent: a database with models is left alone
    assert ScoringModel.objects.count() == 1
