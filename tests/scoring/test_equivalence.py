"""The set-based SQL engine equals the Python reference on random models, leads and events.

Property-based in spirit: a seeded generator builds random rules (conditions, caps,
windows, daily Nth, negative points, decay settings), random leads and random event
histories (with bursts and equal timestamps), and a random clock; every lead's stored
scores, state and breakdown must equal `compute_lead_score` for it.
"""

import random
import uuid
from datetime import UTC, datetime, timedelta

import pytest

from leadops.models import Activity, Department, EventType, Industry, JobLevel, Lead
from scoring.models import LeadScoreState, ScoreChange
from scoring.reference import compute_lead_score
from scoring.services import rescore_leads
from tests.factories import LeadFactory
from tests.scoring.helpers import make_model

pytestmark = pytest.mark.django_db

START = datetime(2025, 1, 6, 3, 17, tzinfo=UTC)
URLS = [
    "/pricing",
    "https://example.jp/pricing?plan=pro",
    "/Pricing",
    "/case/saas",
    "/case/",
    "/blog/scoring",
    "/",
    "/docs/api",
]
# Weighted like real traffic: mostly page views and email engagement.
TYPES = ["page_view"] * 6 + ["email_open"] * 3 + ["email_click"] * 2 + list(EventType.values)
CONDITIONS = [
    {"key": "url", "op": "contains", "value": "/pricing"},
    {"key": "url", "op": "starts_with", "value": "/case"},
    {"key": "url", "op": "equals", "value": "/"},
    {"key": "url", "op": "in", "value": ["/docs/api", "/blog/scoring"]},
    {"key": "campaign", "op": "equals", "value": "spring"},
    {"key": "campaign", "op": "in", "value": ["summer", "autumn"]},
]
ATTRIBUTE_RULES = [
    {"field": "industry", "operator": "in", "value": ["software", "it_services"]},
    {"field": "industry", "operator": "eq", "value": "finance"},
    {"field": "employee_count", "operator": "gte", "value": 100},
    {"field": "employee_count", "operator": "between", "value": [50, 99]},
    {"field": "employee_count", "operator": "lte", "value": 10},
    {"field": "job_level", "operator": "in", "value": ["executive", "director"]},
    {"field": "department", "operator": "eq", "value": "sales"},
    {"field": "title", "operator": "contains", "value": "director"},
    {"field": "email", "operator": "email_domain_in", "value": ["gmail.com"]},
    {"field": "source", "operator": "in", "value": ["展示会", "API"]},
]


def random_behavior_rule(rng: random.Random) -> dict:
    rule = {
        "event_type": rng.choice(TYPES),
        "conditions": rng.sample(CONDITIONS, rng.choice([0, 0, 1, 1, 2])),
        "points": rng.choice([-30, -5, 1, 5, 7, 10, 25, 50, 99]),
    }
    if rng.random() < 0.3:
        rule["cap_per_lead"] = rng.randint(1, 4)
    if rng.random() < 0.3:
        rule["cap_per_window"], rule["window_days"] = rng.randint(1, 3), rng.randint(1, 10)
    if rng.random() < 0.25:
        rule["daily_nth"] = rng.randint(1, 3)
    return rule


def random_model(rng: random.Random):
    warm = rng.randint(0, 80)
    return make_model(
        attribute=[
            {**rule, "points": rng.randint(-40, 40)}
            for rule in rng.sample(ATTRIBUTE_RULES, rng.randint(0, 6))
        ],
        behavior=[random_behavior_rule(rng) for _ in range(rng.randint(3, 10))],
        warm_threshold=warm,
        hot_threshold=warm + rng.randint(1, 60),
        mql_total=rng.choice([None, 60, 100]),
        mql_behavior=rng.choice([20, 50]),
        mql_attribute=rng.choice([0, 30]),
        decay_grace_days=rng.choice([0, 1, 7, 30]),
        decay_half_life_days=rng.choice([7, 30, 90]),
    )


def random_lead(rng: random.Random) -> Lead:
    return LeadFactory(
        email=f"{uuid.uuid4().hex[:10]}@{rng.choice(['gmail.com', 'example.jp', 'x.co.jp'])}",
        job_level=rng.choice([*JobLevel.values, ""]),
        department=rng.choice([*Department.values, ""]),
        industry=rng.choice([*Industry.values, ""]),
        employee_count=rng.choice([None, 5, 10, 50, 99, 100, 1200]),
        title=rng.choice(["部長", "Sales Director", "DIRECTOR of IT", "manager", ""]),
        source=rng.choice(["展示会", "API", "紹介", ""]),
    )


def random_properties(rng: random.Random) -> dict:
    kind = rng.random()
    if kind < 0.6:
        return {"url": rng.choice(URLS)}
    if kind < 0.8:
        return {"url": rng.choice(URLS), "campaign": rng.choice(["spring", "summer", "x"])}
    if kind < 0.9:
        return {"url": rng.choice([1, None, ["/pricing"]])}  # not text: never matches
    return {}


def random_times(rng: random.Random, count: int) -> list[datetime]:
    times: list[datetime] = []
    for _ in range(count):
        if times and rng.random() < 0.15:
            times.append(rng.choice(times))  # equal timestamps: ties broken by id
        elif times and rng.random() < 0.4:
            times.append(rng.choice(times) + timedelta(minutes=rng.randint(1, 300)))  # bursts
        else:
            times.append(START + timedelta(seconds=rng.randint(0, 150 * 86400)))
    return times


def add_random_events(rng: random.Random, lead: Lead) -> None:
    Activity.objects.bulk_create(
        Activity(
            lead=lead,
            type=rng.choice(TYPES),
            occurred_at=moment,
            properties=random_properties(rng),
            event_id=uuid.uuid4().hex,
            fingerprint="0" * 64,
        )
        for moment in random_times(rng, rng.choice([0, 1, 3, 8, 15, 30, 50]))
    )


def assert_equal_to_reference(leads: list[Lead], model, now: datetime) -> None:
    states = {s.lead_id: s for s in LeadScoreState.objects.filter(lead__in=leads)}
    for lead in Lead.objects.filter(pk__in=[x.pk for x in leads]):
        expected = compute_lead_score(lead, list(lead.activities.all()), model, now)
        actual = (lead.attribute_score, lead.behavior_score, lead.score, lead.temperature)
        assert actual == (
            expected.attribute,
            expected.behavior,
            expected.score,
            expected.temperature,
        ), lead.pk
        state = states[lead.pk]
        # Same float operations in the same order: equal bit for bit, not just close.
        assert state.behavior_at_last_activity == expected.behavior_at_last_activity
        assert state.last_activity_at == expected.last_activity_at
        assert state.breakdown["a"] == expected.attribute_rule_ids
        assert [tuple(row) for row in state.breakdown["b"]] == expected.behavior_rules


@pytest.mark.parametrize("seed", range(6))
def test_sql_engine_equals_python_reference_on_random_data(seed):
    rng = random.Random(seed)
    model = random_model(rng)
    leads = [random_lead(rng) for _ in range(25)]
    for lead in leads:
        add_random_events(rng, lead)
    now = START + timedelta(days=rng.randint(140, 180), seconds=rng.randint(0, 86400))

    rescore_leads([lead.pk for lead in leads], model=model, now=now)  # the event path
    assert_equal_to_reference(leads, model, now)

    other, later = random_model(rng), now + timedelta(days=rng.randint(0, 30))
    rescore_leads(None, model=other, now=later)  # rescore-all, by id ranges
    assert_equal_to_reference(leads, other, later)


@pytest.mark.parametrize("seed", range(3))
def test_ledger_adds_up_to_the_score_through_any_sequence_of_rescores(seed):
    rng = random.Random(100 + seed)
    model = random_model(rng)
    leads = [random_lead(rng) for _ in range(10)]
    now = START
    for _step in range(4):
        for lead in rng.sample(leads, 5):
            add_random_events(rng, lead)
        now += timedelta(days=rng.randint(0, 60))
        rescore_leads([lead.pk for lead in leads], model=model, now=now)
    for lead in Lead.objects.filter(pk__in=[x.pk for x in leads]):
        points = ScoreChange.objects.filter(lead=lead).values_list("points", flat=True)
        assert sum(points) == lead.score


@pytest.mark.django_db(transaction=True)
def test_rescore_all_in_parallel_chunks_equals_the_reference(settings, monkeypatch):
    # Outside a caller's transaction, rescore-all runs chunks on several connections.
    from leadops import sql
    from scoring.services import rescoring

    settings.SCORING_PARALLEL_CHUNKS = 2
    monkeypatch.setattr(rescoring, "MIN_RANGE_WIDTH", 4)
    threads = set()
    run_chunk = sql._in_own_connection

    def spy(rescore, leads):
        import threading

        threads.add(threading.current_thread().name)
        return run_chunk(rescore, leads)

    monkeypatch.setattr(sql, "_in_own_connection", spy)
    rng = random.Random(7)
    model = random_model(rng)
    leads = [random_lead(rng) for _ in range(25)]
    for lead in leads:
        add_random_events(rng, lead)
    now = START + timedelta(days=150)

    result = rescore_leads(None, model=model, now=now)

    assert result.leads == 25
    assert len(threads) == 2 and all(name.startswith("chunk") for name in threads)
    assert_equal_to_reference(leads, model, now)


def test_rescore_all_reads_activities_in_order_and_gives_the_planner_back(settings):
    # Range chunks turn the planner's index scans off for their scoring statement alone;
    # the rest of the caller's transaction keeps its own settings.
    from django.db import connection, transaction

    rng = random.Random(11)
    model = random_model(rng)
    leads = [random_lead(rng) for _ in range(6)]
    for lead in leads:
        add_random_events(rng, lead)
    now = START + timedelta(days=150)
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute("SET LOCAL enable_indexscan = off")
        rescore_leads(None, model=model, now=now)
        cursor.execute(
            "SELECT current_setting('enable_bitmapscan'), current_setting('enable_indexscan')"
        )
        assert cursor.fetchone() == ("on", "off")
    assert_equal_to_reference(leads, model, now)
