"""HTTP contract of API v1 (leads, events): status codes, errors, permissions, pages."""

from __future__ import annotations

import json
from datetime import timedelta

import pytest
from django.utils import timezone
from drf_spectacular.validation import validate_schema
from rest_framework.test import APIClient

from leadops import api, serializers
from leadops.api_errors import exception_handler
from leadops.models import Activity, Lead
from tests.factories import ActivityFactory, LeadFactory

pytestmark = pytest.mark.django_db

LEADS = "/api/v1/leads/"
EVENTS = "/api/v1/events/"


@pytest.fixture
def writer(marketer, token_client) -> APIClient:
    return token_client(marketer)


def post_json(client: APIClient, url: str, body: object):
    return client.post(url, body, format="json", HTTP_ACCEPT_LANGUAGE="en")


def event(event_id: str = "ev-1", **fields) -> dict:
    return {"event_id": event_id, "email": "taro@example.jp", "type": "page_view", **fields}


# --- POST /leads/ ---------------------------------------------------------------------


def test_create_lead_returns_201_with_the_lead(writer):
    response = post_json(
        writer,
        LEADS,
        {
            "email": " Taro@Example.JP ",
            "first_name": "太郎",
            "company": "株式会社A",
            "job_level": "director",
        },
    )
    assert response.status_code == 201
    body = response.json()
    assert body["email"] == "taro@example.jp"
    assert body["company"] == "株式会社A"
    assert body["source"] == "API"
    assert body["owner"] is None
    assert isinstance(body["score_breakdown"], list)
    assert Lead.objects.get().email == "taro@example.jp"


def test_post_with_known_email_in_other_case_updates_only_fields_sent(writer):
    lead = LeadFactory(email="taro@example.jp", first_name="太郎", title="部長")
    response = post_json(writer, LEADS, {"email": "TARO@example.jp", "title": "本部長"})
    assert response.status_code == 200
    lead.refresh_from_db()
    assert (lead.title, lead.first_name) == ("本部長", "太郎")
    assert Lead.objects.count() == 1


def test_read_only_fields_are_refused_by_name_and_nothing_is_written(writer):
    body = {"email": "a@example.jp", "score": 99, "stage": "sql", "owner": "x", "id": 5}
    response = post_json(writer, LEADS, {**body, "temperature": "hot", "attribute_score": 1})
    assert response.status_code == 400
    errors = response.json()
    for field in ("score", "stage", "owner", "id", "temperature", "attribute_score"):
        assert "read-only" in errors[field][0]
    assert errors["detail"]
    assert not Lead.objects.exists()


def test_unknown_lead_field_is_refused(writer):
    response = post_json(writer, LEADS, {"email": "a@example.jp", "nickname": "x"})
    assert response.status_code == 400
    assert "Unknown field" in response.json()["nickname"][0]


def test_invalid_lead_values_get_a_message_per_field(writer):
    response = post_json(
        writer,
        LEADS,
        {"email": "not-an-email", "job_level": "ceo", "employee_count": "many", "score": 1},
    )
    assert response.status_code == 400
    errors = response.json()
    assert set(errors) >= {"email", "job_level", "employee_count", "score", "detail"}
    assert "valid email" in errors["email"][0]
    assert "valid choice" in errors["job_level"][0]
    assert "integer" in errors["employee_count"][0]


def test_lead_body_must_be_an_object(writer):
    response = post_json(writer, LEADS, ["a@example.jp"])
    assert response.status_code == 400
    assert response.json()["non_field_errors"]


def test_script_tags_are_stored_verbatim_as_data(writer):
    response = post_json(
        writer, LEADS, {"email": "x@example.jp", "title": "<script>alert(1)</script>"}
    )
    assert response.status_code == 201
    assert response["Content-Type"] == "application/json"
    assert Lead.objects.get().title == "<script>alert(1)</script>"


# --- request-level errors ---------------------------------------------------------------


@pytest.mark.parametrize("url", [LEADS, EVENTS])
def test_malformed_json_is_400_with_a_message(writer, url):
    response = writer.post(url, '{"email": ', content_type="application/json")
    assert response.status_code == 400
    assert "JSON parse error" in response.json()["detail"]


def test_json_nested_too_deeply_to_decode_is_400(writer):
    body = "[" * 100_000 + "]" * 100_000
    response = writer.post(EVENTS, body, content_type="application/json")
    assert response.status_code == 400
    assert "detail" in response.json()


@pytest.mark.parametrize("url", [LEADS, EVENTS])
def test_body_over_2_mb_is_413_json(writer, url):
    body = json.dumps(
        {"events": [event(f"e{i}", properties={"pad": "x" * 3000}) for i in range(700)]}
    )
    assert len(body) > 2 * 1024 * 1024
    response = writer.post(url, body, content_type="application/json")
    assert response.status_code == 413
    assert "2 MB" in response.json()["detail"]
    assert not Activity.objects.exists()


def test_request_data_too_big_maps_to_413():
    from django.core.exceptions import RequestDataTooBig

    response = exception_handler(RequestDataTooBig("too big"), {})
    assert response.status_code == 413
    assert response.data["detail"]


@pytest.mark.parametrize("url", [LEADS, EVENTS])
def test_missing_token_is_401(api_client, url):
    response = api_client.post(url, {"email": "a@example.jp"}, format="json")
    assert response.status_code == 401
    assert response["WWW-Authenticate"] == "Token"


def test_invalid_token_is_401(api_client):
    api_client.credentials(HTTP_AUTHORIZATION="Token not-a-real-token")
    assert api_client.get(LEADS).status_code == 401


@pytest.mark.parametrize("url", [LEADS, EVENTS])
def test_sales_rep_may_not_write(sales_rep, token_client, url):
    response = post_json(
        token_client(sales_rep), url, event() if url == EVENTS else {"email": "a@example.jp"}
    )
    assert response.status_code == 403
    assert not Lead.objects.exists()


@pytest.mark.parametrize("role", ["is_rep", "manager"])
def test_inside_sales_and_managers_may_write(request, token_client, role):
    client = token_client(request.getfixturevalue(role))
    assert post_json(client, LEADS, {"email": "a@example.jp"}).status_code == 201
    assert post_json(client, EVENTS, event()).status_code == 202


def test_browser_session_needs_csrf_token(marketer):
    client = APIClient(enforce_csrf_checks=True)
    client.force_login(marketer)
    assert client.post(LEADS, {"email": "a@example.jp"}, format="json").status_code == 403
    client.cookies["csrftoken"] = "a" * 32
    response = client.post(
        LEADS, {"email": "a@example.jp"}, format="json", HTTP_X_CSRFTOKEN="a" * 32
    )
    assert response.status_code == 201


# --- GET /leads/ ------------------------------------------------------------------------


def test_list_filters(writer, sales_rep):
    hot = LeadFactory(stage="mql", temperature="hot", score=85, owner=sales_rep, source="展示会")
    LeadFactory(stage="new", temperature="cold", score=10, source="Web広告")
    LeadFactory(stage="mql", temperature="warm", score=60, source="展示会")

    def emails(query: str) -> set[str]:
        response = writer.get(f"{LEADS}?{query}")
        assert response.status_code == 200
        return {row["email"] for row in response.json()["results"]}

    assert emails("stage=mql&temperature=hot") == {hot.email}
    assert emails("owner=sales1") == {hot.email}
    assert emails("score_min=60&score_max=90") == {hot.email, Lead.objects.get(score=60).email}
    assert emails("source=Web広告") == {Lead.objects.get(score=10).email}
    assert writer.get(f"{LEADS}?stage=bogus").status_code == 400
    assert writer.get(f"{LEADS}?score_min=ten").status_code == 400


def test_list_output_fields(writer, sales_rep):
    LeadFactory(owner=sales_rep, email="a@example.jp")
    row = writer.get(LEADS).json()["results"][0]
    assert row["owner"] == "sales1"
    assert set(row) >= {
        "id", "email", "first_name", "last_name", "company", "title", "job_level",
        "department", "industry", "employee_count", "source", "owner", "stage",
        "attribute_score", "behavior_score", "score", "temperature", "last_activity_at",
        "score_breakdown", "phone", "consent", "unsubscribed", "created_at", "updated_at",
    }  # fmt: skip


def test_cursor_pagination_walks_all_leads_newest_first(writer):
    ids = [lead.id for lead in LeadFactory.create_batch(5)]
    seen, url = [], f"{LEADS}?page_size=2"
    while url:
        page = writer.get(url).json()
        assert len(page["results"]) <= 2
        seen += [row["id"] for row in page["results"]]
        url = page["next"]
    assert seen == sorted(ids, reverse=True)


def test_page_size_defaults_to_50_and_caps_at_200(writer):
    Lead.objects.bulk_create(Lead(email=f"bulk{i}@example.jp") for i in range(205))
    assert len(writer.get(LEADS).json()["results"]) == 50
    assert len(writer.get(f"{LEADS}?page_size=1000").json()["results"]) == 200


def test_list_query_count_does_not_grow_with_leads(
    writer, sales_rep, django_assert_num_queries, monkeypatch
):
    # Scoring's batched breakdown is called once per page (its own queries are its
    # business); everything else is the token with its roles (one query) + the page
    # (account and owner joined).
    pages: list[list[int]] = []

    def breakdowns(leads):
        pages.append([lead.pk for lead in leads])
        return {lead.pk: [{"rule": "r", "points": 1, "count": 1}] for lead in leads}

    monkeypatch.setattr(serializers, "_score_breakdown_functions", lambda: (breakdowns, None))
    LeadFactory.create_batch(3, owner=sales_rep)
    with django_assert_num_queries(2):
        assert len(writer.get(LEADS).json()["results"]) == 3
    LeadFactory.create_batch(30, owner=sales_rep)
    with django_assert_num_queries(2):
        rows = writer.get(LEADS).json()["results"]
    assert len(rows) == 33 and len(pages) == 2 and len(pages[1]) == 33
    assert rows[0]["score_breakdown"] == [{"rule": "r", "points": 1, "count": 1}]


def test_breakdown_comes_from_scoring_per_lead_when_not_batched(writer, monkeypatch):
    lead = LeadFactory()
    single = lambda lead: [{"rule": f"lead {lead.pk}", "points": 5, "count": 2}]  # noqa: E731
    monkeypatch.setattr(serializers, "_score_breakdown_functions", lambda: (None, single))
    expected = [{"rule": f"lead {lead.pk}", "points": 5, "count": 2}]
    assert writer.get(LEADS).json()["results"][0]["score_breakdown"] == expected
    assert writer.get(f"{LEADS}{lead.id}/").json()["score_breakdown"] == expected


def test_no_breakdown_without_scoring(writer, monkeypatch):
    LeadFactory()
    monkeypatch.setattr(serializers, "_score_breakdown_functions", lambda: (None, None))
    assert writer.get(LEADS).json()["results"][0]["score_breakdown"] == []


def test_sales_rep_lists_only_own_leads(sales_rep, other_sales_rep, token_client):
    mine = LeadFactory(owner=sales_rep)
    LeadFactory(owner=other_sales_rep)
    LeadFactory(owner=None)
    results = token_client(sales_rep).get(LEADS).json()["results"]
    assert [row["id"] for row in results] == [mine.id]


# --- GET /leads/{id}/ and timeline ------------------------------------------------------


def test_detail(writer):
    lead = LeadFactory(email="a@example.jp")
    response = writer.get(f"{LEADS}{lead.id}/")
    assert response.status_code == 200
    assert response.json()["email"] == "a@example.jp"
    assert writer.get(f"{LEADS}999999/").status_code == 404
    assert writer.get(f"{LEADS}abc/").status_code == 404


def test_sales_rep_gets_404_for_leads_of_others(sales_rep, other_sales_rep, token_client):
    client = token_client(sales_rep)
    mine, theirs = LeadFactory(owner=sales_rep), LeadFactory(owner=other_sales_rep)
    assert client.get(f"{LEADS}{mine.id}/").status_code == 200
    assert client.get(f"{LEADS}{mine.id}/timeline/").status_code == 200
    assert client.get(f"{LEADS}{theirs.id}/").status_code == 404
    assert client.get(f"{LEADS}{theirs.id}/timeline/").status_code == 404


def test_timeline_lists_activities_newest_first(writer):
    lead = LeadFactory()
    now = timezone.now()
    old = ActivityFactory(lead=lead, occurred_at=now - timedelta(days=2), type="email_open")
    new = ActivityFactory(lead=lead, occurred_at=now, properties={"url": "/pricing"})
    ActivityFactory()  # another lead's
    body = writer.get(f"{LEADS}{lead.id}/timeline/").json()
    assert [entry["event_id"] for entry in body["results"]] == [new.event_id, old.event_id]
    first = body["results"][0]
    assert first["kind"] == "activity"
    assert first["type"] == "page_view"
    assert first["properties"] == {"url": "/pricing"}
    assert set(first) >= {"at", "occurred_at", "source"}
    assert body["next"] is None


def test_timeline_pages_merge_several_kinds_without_gaps(writer, monkeypatch):
    # A second kind of entry (as score changes will be) over the same rows: pages must
    # cover every (kind, row) pair once, in order, even with equal timestamps.
    lead = LeadFactory()
    moment = timezone.now()
    for i in range(7):
        ActivityFactory(lead=lead, occurred_at=moment - timedelta(hours=i // 3))
    second = api.TimelineSource(
        "score_change",
        lambda lead: lead.activities.all(),
        "occurred_at",
        api.ActivityEntrySerializer,
    )
    monkeypatch.setattr(api, "TIMELINE_SOURCES", [*api.TIMELINE_SOURCES, second])
    seen, url = [], f"{LEADS}{lead.id}/timeline/?page_size=3"
    while url:
        page = writer.get(url).json()
        seen += [(entry["at"], entry["kind"], entry["event_id"]) for entry in page["results"]]
        url = page["next"]
    assert len(seen) == len(set(seen)) == 14
    assert [at for at, _kind, _id in seen] == sorted((at for at, _k, _i in seen), reverse=True)


def test_timeline_bad_cursor_is_400(writer):
    lead = LeadFactory()
    assert writer.get(f"{LEADS}{lead.id}/timeline/?cursor=zzz").status_code == 400


# --- POST /events/ ----------------------------------------------------------------------


def test_single_event_is_accepted_with_202(writer):
    response = post_json(writer, EVENTS, event(properties={"url": "/pricing"}))
    assert response.status_code == 202
    assert response.json() == {"accepted": 1, "duplicates": 0, "errors": []}
    activity = Activity.objects.get()
    assert activity.properties == {"url": "/pricing"}
    assert activity.lead.email == "taro@example.jp"


def test_event_for_unknown_email_creates_the_lead(writer):
    post_json(writer, EVENTS, event(email="New@Example.jp"))
    lead = Lead.objects.get()
    assert (lead.email, lead.source) == ("new@example.jp", "API")
    assert lead.last_activity_at is not None


def test_resending_an_event_is_a_duplicate_and_another_body_an_error(writer):
    assert post_json(writer, EVENTS, event()).json()["accepted"] == 1
    assert post_json(writer, EVENTS, event()).json() == {
        "accepted": 0,
        "duplicates": 1,
        "errors": [],
    }
    response = post_json(writer, EVENTS, event(type="form_submit"))
    assert response.status_code == 400
    assert "different body" in response.json()["event_id"][0]
    assert Activity.objects.count() == 1


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"type": "phone_call"}, "type"),
        ({"email": "not-an-email"}, "email"),
        ({"occurred_at": "1999-12-31T23:59:59Z"}, "occurred_at"),
        ({"occurred_at": "yesterday"}, "occurred_at"),
        ({"properties": {"blob": "x" * 17_000}}, "properties"),
        ({"properties": {"a": {"b": {"c": {"d": {"e": {"f": 1}}}}}}}, "properties"),
        ({"properties": ["not", "an", "object"]}, "properties"),
        ({"event_id": "x" * 201}, "event_id"),
        ({"event_id": None}, "event_id"),
        ({"lead_id": 1}, "lead_id"),
        ({"colour": "red"}, "colour"),
    ],
)
def test_invalid_single_event_is_400_with_a_message_per_field(writer, fields, field):
    response = post_json(writer, EVENTS, event(**fields))
    assert response.status_code == 400
    body = response.json()
    assert body[field] and body["detail"]
    assert not Activity.objects.exists() and not Lead.objects.exists()


def test_event_more_than_a_day_in_the_future_is_refused(writer):
    future = (timezone.now() + timedelta(days=1, minutes=5)).isoformat()
    response = post_json(writer, EVENTS, event(occurred_at=future))
    assert response.status_code == 400
    assert "future" in response.json()["occurred_at"][0]


def test_batch_accepts_valid_items_and_reports_the_others_by_index(writer):
    body = {
        "events": [
            event("a"),
            event("b", type="nope"),
            "not an object",
            event("c", occurred_at="2026-01-01T09:00:00+09:00"),
            event("a"),
        ]
    }
    response = post_json(writer, EVENTS, body)
    assert response.status_code == 202
    result = response.json()
    assert (result["accepted"], result["duplicates"]) == (2, 1)
    assert [error["index"] for error in result["errors"]] == [1, 2]
    assert "type" in result["errors"][0]["errors"]
    assert set(Activity.objects.values_list("event_id", flat=True)) == {"a", "c"}


def test_batch_over_1000_is_refused_whole(writer):
    body = {"events": [event(f"e{i}") for i in range(1001)]}
    response = post_json(writer, EVENTS, body)
    assert response.status_code == 400
    assert "1000" in response.json()["events"][0]
    assert not Activity.objects.exists() and not Lead.objects.exists()


@pytest.mark.parametrize("body", [[event()], {"events": "x"}, {"events": [], "extra": 1}, 5])
def test_wrong_envelope_is_400(writer, body):
    assert post_json(writer, EVENTS, body).status_code == 400


def test_event_script_tags_are_stored_verbatim(writer):
    script = "<script>alert('x')</script>"
    post_json(writer, EVENTS, event(properties={"title": script}, source=script))
    activity = Activity.objects.get()
    assert activity.properties["title"] == script
    assert activity.source == script


def test_unsubscribe_event_sets_the_flag(writer):
    post_json(writer, EVENTS, event(type="unsubscribe"))
    assert Lead.objects.get().unsubscribed is True


# --- OpenAPI ----------------------------------------------------------------------------


def test_schema_is_valid_and_lists_the_v1_paths(api_client):
    response = api_client.get("/api/schema/", HTTP_ACCEPT="application/vnd.oai.openapi+json")
    assert response.status_code == 200
    schema = json.loads(response.content)
    validate_schema(schema)
    for path in (
        "/api/v1/leads/",
        "/api/v1/leads/{id}/",
        "/api/v1/leads/{id}/timeline/",
        "/api/v1/events/",
    ):
        assert path in schema["paths"]
    events = schema["paths"]["/api/v1/events/"]["post"]
    assert "202" in events["responses"]
    assert {"200", "201"} <= set(schema["paths"]["/api/v1/leads/"]["post"]["responses"])


def test_docs_page_is_served_without_cdn(api_client):
    response = api_client.get("/api/docs/")
    assert response.status_code == 200
    assert b"cdn" not in response.content.lower()


@pytest.mark.django_db
def test_fast_lead_representation_equals_drfs_field_by_field_output(sales_rep):
    from rest_framework import serializers as drf_serializers

    from leadops.serializers import LeadSerializer

    with_everything = LeadFactory(owner=sales_rep, last_activity_at=timezone.now(), phone="03")
    bare = LeadFactory(account=None, owner=None, last_activity_at=None)
    for lead in (with_everything, bare):
        fast = LeadSerializer(lead).data
        slow = drf_serializers.ModelSerializer.to_representation(LeadSerializer(lead), lead)
        assert dict(fast) == dict(slow)
        assert list(fast) == list(slow)
