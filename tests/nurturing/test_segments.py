"""Segments: the allowlist (every field and operator), refusals, and counts on real rows."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.core.exceptions import ValidationError
from django.db import connection
from django.utils import timezone

from leadops.models import Lead
from nurturing import segments
from nurturing.segments import (
    clean_conditions,
    count_and_sample,
    describe_conditions,
    segment_queryset,
    validate_conditions,
)
from tests.factories import ActivityFactory, LeadFactory

pytestmark = pytest.mark.django_db


@pytest.fixture
def people(django_user_model) -> dict[str, Lead]:
    """Five leads whose memberships below are worked out by hand."""
    alice = django_user_model.objects.create_user("alice", is_staff=True)
    bob = django_user_model.objects.create_user("bob", is_staff=True)
    rows = {
        "a": dict(job_level="director", department="marketing", industry="software",
                  employee_count=120, region="東京都", source="展示会", title="部長",
                  score=90, attribute_score=60, behavior_score=30, temperature="hot",
                  stage="nurturing", owner=alice, unsubscribed=False, consent=True),
        "b": dict(job_level="staff", department="sales", industry="finance",
                  employee_count=30, region="大阪府", source="ウェビナー", title="担当",
                  score=20, attribute_score=10, behavior_score=10, temperature="cold",
                  stage="new", owner=None, unsubscribed=False, consent=False),
        "c": dict(job_level="manager", department="it", industry="manufacturing",
                  employee_count=60, region="東京都", source="資料DL", title="マネージャー",
                  score=55, attribute_score=40, behavior_score=15, temperature="warm",
                  stage="mql", owner=bob, unsubscribed=False, consent=True),
        "d": dict(job_level="executive", department="management", industry="software",
                  employee_count=5000, region="関西", source="展示会", title="代表取締役",
                  score=75, attribute_score=70, behavior_score=5, temperature="hot",
                  stage="sql", owner=alice, unsubscribed=True, consent=True),
        "e": dict(job_level="other", department="other", industry="retail",
                  employee_count=None, region="", source="紹介", title="",
                  score=0, attribute_score=0, behavior_score=0, temperature="cold",
                  stage="nurturing", owner=None, unsubscribed=True, consent=False),
    }  # fmt: skip
    leads = {key: LeadFactory(email=f"{key}@example.jp", **fields) for key, fields in rows.items()}
    now = timezone.now()
    ActivityFactory(lead=leads["a"], type="page_view", occurred_at=now - timedelta(days=2))
    ActivityFactory(lead=leads["b"], type="email_open", occurred_at=now - timedelta(days=40))
    ActivityFactory(lead=leads["c"], type="form_submit", occurred_at=now - timedelta(days=1))
    ActivityFactory(lead=leads["e"], type="page_view", occurred_at=now - timedelta(days=10))
    return leads


def members(conditions: list[dict]) -> set[str]:
    return {
        email.split("@")[0]
        for email in segment_queryset(conditions).values_list("email", flat=True)
    }


def cond(field: str, op: str, value) -> dict:
    return {"field": field, "op": op, "value": value}


# Every field with every operator it allows, and the leads it selects, worked out by hand.
CASES = [
    (cond("job_level", "eq", "director"), {"a"}),
    (cond("job_level", "in", ["staff", "manager"]), {"b", "c"}),
    (cond("department", "eq", "marketing"), {"a"}),
    (cond("department", "in", ["it", "sales"]), {"b", "c"}),
    (cond("industry", "eq", "software"), {"a", "d"}),
    (cond("industry", "in", ["finance", "retail"]), {"b", "e"}),
    (cond("employee_count", "gte", 100), {"a", "d"}),
    (cond("employee_count", "lte", 60), {"b", "c"}),
    (cond("employee_count", "between", [30, 120]), {"a", "b", "c"}),
    (cond("region", "eq", "東京都"), {"a", "c"}),
    (cond("region", "in", ["大阪府", "関西"]), {"b", "d"}),
    (cond("region", "contains", "東京"), {"a", "c"}),
    (cond("source", "eq", "展示会"), {"a", "d"}),
    (cond("source", "in", ["紹介", "ウェビナー"]), {"b", "e"}),
    (cond("source", "contains", "dl"), {"c"}),
    (cond("title", "eq", "担当"), {"b"}),
    (cond("title", "in", ["部長", "担当"]), {"a", "b"}),
    (cond("title", "contains", "取締役"), {"d"}),
    (cond("score", "gte", 75), {"a", "d"}),
    (cond("score", "lte", 20), {"b", "e"}),
    (cond("score", "between", [20, 75]), {"b", "c", "d"}),
    (cond("attribute_score", "gte", 60), {"a", "d"}),
    (cond("attribute_score", "lte", 10), {"b", "e"}),
    (cond("attribute_score", "between", [40, 60]), {"a", "c"}),
    (cond("behavior_score", "gte", 15), {"a", "c"}),
    (cond("behavior_score", "lte", 5), {"d", "e"}),
    (cond("behavior_score", "between", [10, 30]), {"a", "b", "c"}),
    (cond("temperature", "eq", "hot"), {"a", "d"}),
    (cond("temperature", "in", ["cold", "warm"]), {"b", "c", "e"}),
    (cond("stage", "eq", "nurturing"), {"a", "e"}),
    (cond("stage", "in", ["new", "mql"]), {"b", "c"}),
    (cond("owner", "eq", "alice"), {"a", "d"}),
    (cond("owner", "empty", None), {"b", "e"}),
    (cond("unsubscribed", "is", True), {"d", "e"}),
    (cond("unsubscribed", "is", False), {"a", "b", "c"}),
    (cond("consent", "is", True), {"a", "c", "d"}),
    (cond("consent", "is", False), {"b", "e"}),
    (cond("activity", "has", {"type": "page_view", "days": 7}), {"a"}),
    (cond("activity", "has", {"type": "page_view", "days": 30}), {"a", "e"}),
    (cond("activity", "has", {"type": "", "days": 7}), {"a", "c"}),
    (cond("activity", "has", {"type": "email_open", "days": 60}), {"b"}),
    (cond("activity", "has_not", {"type": "", "days": 30}), {"b", "d"}),
    (cond("activity", "has_not", {"type": "page_view", "days": 30}), {"b", "c", "d"}),
]


@pytest.mark.parametrize(("condition", "expected"), CASES)
def test_each_allowlisted_field_and_operator_selects_the_hand_computed_leads(
    people, condition, expected
):
    assert validate_conditions([condition]) == [[]]
    assert members([condition]) == expected


def test_the_cases_cover_every_field_and_operator_of_the_allowlist():
    covered = {(c["field"], c["op"]) for c, _expected in CASES}
    allowed = {(name, op) for name, spec in segments.FIELDS.items() for op in spec.ops}
    assert covered == allowed


def test_conditions_combine_with_and(people):
    conditions = [cond("industry", "eq", "software"), cond("unsubscribed", "is", False)]
    assert members(conditions) == {"a"}
    conditions.append(cond("activity", "has", {"type": "page_view", "days": 7}))
    assert members(conditions) == {"a"}
    assert members([cond("temperature", "eq", "hot"), cond("stage", "eq", "new")]) == set()


def test_no_conditions_is_every_lead(people):
    assert members([]) == {"a", "b", "c", "d", "e"}


def test_values_are_normalised_labels_numbers_and_duplicates(people):
    cleaned = clean_conditions(
        [
            cond("job_level", "eq", "DIRECTOR (部長・事業部長)"),
            cond("industry", "in", ["software", " Software ", "finance"]),
            cond("score", "between", ["20", " 75"]),
            cond("region", "eq", "  東京都 "),
            cond("activity", "has", {"type": "page_view", "days": "7"}),
        ]
    )
    assert cleaned == [
        cond("job_level", "eq", "director"),
        cond("industry", "in", ["software", "finance"]),
        cond("score", "between", [20, 75]),
        cond("region", "eq", "東京都"),
        cond("activity", "has", {"type": "page_view", "days": 7}),
    ]


BAD = [
    # fields outside the allowlist, including ORM paths and SQL
    (cond("owner__password", "eq", "x"), "is not a field segments can filter on"),
    (cond("email", "eq", "a@example.jp"), "is not a field segments can filter on"),
    (cond("id; DROP TABLE leadops_lead", "eq", 1), "is not a field segments can filter on"),
    (cond(["job_level"], "eq", "director"), "is not a field segments can filter on"),
    # operators the field does not take
    (cond("employee_count", "contains", "1"), "cannot be used with employee count"),
    (cond("job_level", "regex", ".*"), "cannot be used with job level"),
    (cond("score", "exact", 3), "cannot be used with score"),
    (cond("unsubscribed", "eq", True), "cannot be used with unsubscribed"),
    # values
    (cond("job_level", "eq", "ceo"), "is not a valid job level"),
    (cond("stage", "in", ["new", "nope"]), "is not a valid stage"),
    (cond("stage", "in", []), "needs a list of 1 to"),
    (cond("stage", "in", "new"), "needs a list of 1 to"),
    (cond("score", "gte", "a lot"), "is not a whole number"),
    (cond("score", "gte", 1.5), "is not a whole number"),
    (cond("score", "gte", True), "is not a whole number"),
    (cond("score", "between", [80, 20]), "must not be above the second"),
    (cond("score", "between", [1]), "needs two numbers"),
    (cond("title", "eq", ""), "as text of 1 to 200 characters"),
    (cond("title", "contains", "x" * 201), "as text of 1 to 200 characters"),
    (cond("consent", "is", "maybe"), "is either true or false"),
    (cond("owner", "eq", "nobody-here"), "Nobody has the user name"),
    (cond("owner", "empty", "alice"), "takes no value"),
    (cond("activity", "has", {"type": "page_view", "days": 0}), "from 1 to 3650"),
    (cond("activity", "has", {"type": "page_view"}), "from 1 to 3650"),
    (cond("activity", "has", {"type": "visit", "days": 3}), "is not an event type"),
    (cond("activity", "has", {"type": "", "days": 3, "sql": "1"}), "An activity condition is"),
    ({"field": "score", "op": "gte", "value": 1, "lookup": "x"}, "Unknown keys lookup"),
    ("score >= 1", "must be an object"),
]


@pytest.mark.parametrize(("condition", "message"), BAD)
def test_bad_conditions_get_a_sentence_and_build_no_query(db, condition, message):
    errors = validate_conditions([cond("score", "gte", 1), condition])
    assert errors[0] == []
    assert len(errors[1]) == 1 and message in errors[1][0]
    with pytest.raises(ValidationError) as raised:
        segment_queryset([condition])
    assert raised.value.messages[0].startswith("Condition 1: ")


def test_the_whole_list_is_checked(db):
    assert "must be a list" in validate_conditions({"field": "score"})[0][0]
    too_many = [cond("score", "gte", 1)] * (segments.MAX_CONDITIONS + 1)
    assert "at most 30 conditions" in validate_conditions(too_many)[0][0]
    with pytest.raises(ValidationError, match="at most 30 conditions"):
        clean_conditions(too_many)


def test_values_are_data_never_sql(people):
    hostile = "'; DROP TABLE leadops_lead; --"
    assert members([cond("source", "eq", hostile)]) == set()
    assert members([cond("title", "contains", "%")]) == set()
    assert members([cond("region", "in", [hostile, "東京都"])]) == {"a", "c"}
    assert Lead.objects.count() == 5


def test_count_and_sample_counts_mailable_leads_and_shows_the_best_scores(people):
    preview = count_and_sample([], limit=3)
    assert preview.exact is True
    assert preview.count == 5
    # Not unsubscribed and in stage new or nurturing: a and b (c is an MQL, d and e opted out).
    assert preview.mailable == 2
    assert [lead.email for lead in preview.sample] == [
        "a@example.jp",
        "d@example.jp",
        "c@example.jp",
    ]

    hot = count_and_sample([cond("temperature", "eq", "hot")])
    assert (hot.count, hot.mailable) == (2, 1)
    assert {lead.email for lead in hot.sample} == {"a@example.jp", "d@example.jp"}


def test_a_big_segment_samples_the_first_leads_found_instead_of_sorting(people, monkeypatch):
    monkeypatch.setattr(segments, "SAMPLE_BY_SCORE_BELOW", 3)
    preview = count_and_sample([], limit=2)
    assert (preview.count, preview.by_score, len(preview.sample)) == (5, False, 2)
    small = count_and_sample([cond("temperature", "eq", "hot")], limit=2)
    assert small.by_score is True
    assert [lead.email for lead in small.sample] == ["a@example.jp", "d@example.jp"]


def test_count_and_sample_respects_a_base_queryset(people):
    preview = count_and_sample([], base=Lead.objects.filter(owner__username="alice"))
    assert preview.count == 2 and {lead.email for lead in preview.sample} == {
        "a@example.jp",
        "d@example.jp",
    }


def test_a_count_that_takes_too_long_falls_back_to_the_planner_estimate(
    people, settings, monkeypatch
):
    settings.NURTURING_SEGMENT_COUNT_TIMEOUT_MS = 100

    def slow_count(queryset):
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_sleep(2)")  # cancelled by the statement timeout
        return {"count": -1, "mailable": -1}

    monkeypatch.setattr(segments, "_exact_counts", slow_count)
    with connection.cursor() as cursor:
        cursor.execute("SHOW statement_timeout")
        before = cursor.fetchone()[0]
    preview = count_and_sample([cond("industry", "eq", "software")])
    assert preview.exact is False and preview.mailable is None
    assert preview.count >= 1  # PostgreSQL's estimate, never the cancelled answer
    assert {lead.email for lead in preview.sample} == {"a@example.jp", "d@example.jp"}
    with connection.cursor() as cursor:
        cursor.execute("SHOW statement_timeout")
        assert cursor.fetchone()[0] == before
    assert Lead.objects.count() == 5  # the transaction is still usable


def test_conditions_read_as_a_sentence(db, django_user_model):
    text = describe_conditions(
        [
            cond("job_level", "in", ["director", "executive"]),
            cond("score", "between", [20, 75]),
            cond("activity", "has_not", {"type": "", "days": 30}),
            cond("unsubscribed", "is", False),
        ]
    )
    assert text == (
        "job level is one of Director (部長・事業部長), Executive / board (経営層・役員)"
        " and score between (inclusive) 20 and 75"
        " and did not do any activity in the last 30 days"
        " and unsubscribed is (yes / no) no"
    )
    assert describe_conditions([]) == "every lead"
    assert describe_conditions([cond("nope", "eq", 1)]) == "(invalid conditions)"
