"""HTTP contract of the hand-off API (v1): the queue, its actions, the sales rep's
answers, the lead timeline's lifecycle entries, and the OpenAPI schema."""

from __future__ import annotations

import threading
from collections import Counter
from datetime import timedelta
from pathlib import Path

import pytest
from django.contrib.auth.models import Group
from django.core.management import call_command
from django.db import connection
from django.utils import timezone
from rest_framework.test import APIClient

from handoff import services
from handoff.api import queue_rows
from handoff.models import ContactAttempt, Handoff, LeadNote, StageTransition
from leadops.models import Lead
from scoring.models import ScoreChange
from scoring.services import rescore_leads
from tests.factories import ActivityFactory, LeadFactory

pytestmark = pytest.mark.django_db

HANDOFFS = "/api/v1/handoffs/"
LEADS = "/api/v1/leads/"
CONTRACT_FIELDS = {
    "id",
    "lead",
    "kind",
    "status",
    "assignee",
    "opened_at",
    "due_at",
    "sla_state",
    "claimed_at",
    "responded_at",
    "closed_at",
    "lead_email",
    "lead_name",
    "company",
    "score",
    "temperature",
    "bant",
    "outcome",
    "reason",
    "comment",
    "opened_reason",
}


def open_handoff(**lead_fields) -> Handoff:
    """An open first-contact hand-off, opened the way scoring opens one."""
    lead = LeadFactory(stage="nurturing", **lead_fields)
    services.mark_lead_mql(lead.pk, reason="test")
    return Handoff.objects.get(lead=lead, kind="inside_sales")


def sql_for(rep, *, is_rep) -> Lead:
    """A lead qualified to SQL for `rep` (their sales hand-off is open)."""
    handoff = open_handoff()
    services.qualify_lead(handoff.pk, actor=is_rep, sales_rep=rep)
    return Lead.objects.get(pk=handoff.lead_id)


def post(client: APIClient, url: str, body: object = None):
    return client.post(url, body, format="json", HTTP_ACCEPT_LANGUAGE="en")


def user_in(django_user_model, username: str, role: str):
    user = django_user_model.objects.create_user(username=username, password="pw-Secret-123")
    user.groups.add(Group.objects.get(name=role))
    return user


def due_in(handoff: Handoff, minutes: int) -> None:
    """Put the hand-off's deadline `minutes` from now (warning 30 minutes before it)."""
    due = timezone.now() + timedelta(minutes=minutes)
    Handoff.objects.filter(pk=handoff.pk).update(due_at=due, warn_at=due - timedelta(minutes=30))


@pytest.fixture
def is_client(is_rep, token_client) -> APIClient:
    return token_client(is_rep)


@pytest.fixture
def sales_client(sales_rep, token_client) -> APIClient:
    return token_client(sales_rep)


# --- GET /handoffs/ ---------------------------------------------------------------------------


def test_queue_lists_open_first_contacts_by_due_time(is_client, is_rep, sales_rep):
    later, sooner, soonest = open_handoff(), open_handoff(), open_handoff()
    for handoff, minutes in ((later, 300), (sooner, 200), (soonest, 100)):
        due_in(handoff, minutes)
    done = open_handoff()
    services.disqualify_lead(done.pk, actor=is_rep, reason="student")
    sql_for(sales_rep, is_rep=is_rep)  # its first contact is done, its sales one not listed

    body = is_client.get(HANDOFFS).json()
    assert [row["id"] for row in body["results"]] == [soonest.pk, sooner.pk, later.pk]
    assert body["next"] is None
    row = body["results"][0]
    assert set(row) == CONTRACT_FIELDS
    lead = soonest.lead
    assert row["lead"] == lead.pk
    assert (row["kind"], row["status"], row["assignee"]) == ("inside_sales", "open", "is1")
    assert row["sla_state"] == "on_track"
    assert row["lead_email"] == lead.email
    assert row["lead_name"] == f"{lead.last_name} {lead.first_name}"
    assert row["company"] == lead.account.name
    assert (row["score"], row["temperature"]) == (lead.score, lead.temperature)


def test_sla_state_is_live_between_monitor_runs(is_client):
    running, warned, late = open_handoff(), open_handoff(), open_handoff()
    due_in(running, 120)
    due_in(warned, 10)  # past its warning point
    due_in(late, -1)  # past its deadline; the monitor has not run yet
    assert set(Handoff.objects.values_list("sla_state", flat=True)) == {"on_track"}
    rows = is_client.get(HANDOFFS).json()["results"]
    assert [(row["id"], row["sla_state"]) for row in rows] == [
        (late.pk, "breached"),
        (warned.pk, "warning"),
        (running.pk, "on_track"),
    ]
    only = is_client.get(f"{HANDOFFS}?sla_state=breached,warning").json()["results"]
    assert [row["id"] for row in only] == [late.pk, warned.pk]
    assert [
        row["id"] for row in is_client.get(f"{HANDOFFS}?sla_state=on_track").json()["results"]
    ] == [running.pk]


def test_an_answered_hand_off_keeps_the_state_it_ended_with(is_client, is_rep):
    in_time, late = open_handoff(), open_handoff()
    due_in(in_time, 60)
    due_in(late, -5)
    for handoff in (in_time, late):
        services.log_contact_attempt(handoff.pk, actor=is_rep, channel="call", outcome="reached")
    due_in(in_time, -60)  # its clock stopped: a deadline passing later changes nothing
    met = is_client.get(f"{HANDOFFS}?sla_state=met").json()["results"]
    assert [(row["id"], row["sla_state"]) for row in met] == [(in_time.pk, "met")]
    breached = is_client.get(f"{HANDOFFS}?sla_state=breached").json()["results"]
    assert [(row["id"], row["sla_state"]) for row in breached] == [(late.pk, "breached")]
    assert is_client.get(f"{HANDOFFS}?sla_state=on_track,warning").json()["results"] == []


def test_filters_by_status_assignee_and_kind(
    is_client, is_rep, sales_rep, django_user_model, token_client
):
    other_is = user_in(django_user_model, "is2", "inside_sales")
    mine, theirs, nobodys = open_handoff(), open_handoff(), open_handoff()
    Handoff.objects.filter(pk=mine.pk).update(assignee=is_rep)
    Handoff.objects.filter(pk=theirs.pk).update(assignee=other_is)
    Handoff.objects.filter(pk=nobodys.pk).update(assignee=None)
    services.claim_handoff(mine.pk, actor=is_rep)
    lead = sql_for(sales_rep, is_rep=is_rep)

    def ids(query: str) -> set[int]:
        response = is_client.get(f"{HANDOFFS}?{query}")
        assert response.status_code == 200, response.json()
        return {row["id"] for row in response.json()["results"]}

    assert ids("assignee=me&status=claimed") == {mine.pk}
    assert ids("assignee=none") == {nobodys.pk}
    assert ids("assignee=is2") == {theirs.pk}
    assert ids("status=open") == {theirs.pk, nobodys.pk}
    assert ids("status=open,claimed") == {mine.pk, theirs.pk, nobodys.pk}
    qualified = Handoff.objects.get(lead=lead, kind="inside_sales")
    assert ids("status=done") == {qualified.pk}
    assert ids("status=done,open,claimed") == {mine.pk, theirs.pk, nobodys.pk, qualified.pk}
    sales = Handoff.objects.get(lead=lead, kind="sales")
    assert ids("kind=sales") == {sales.pk}
    assert ids("kind=sales&assignee=sales1") == {sales.pk}
    everything = ids("kind=inside_sales,sales&status=open,claimed,done")
    assert everything == {mine.pk, theirs.pk, nobodys.pk, qualified.pk, sales.pk}
    rows = token_client(sales_rep).get(f"{HANDOFFS}?kind=sales&assignee=me").json()["results"]
    assert [row["id"] for row in rows] == [sales.pk]


@pytest.mark.parametrize(
    ("query", "field"),
    [
        ("status=closed", "status"),
        ("status=open,nope", "status"),
        ("kind=marketing", "kind"),
        ("sla_state=late", "sla_state"),
        ("assignee=nobody-by-that-name", "assignee"),
        ("page_size=0", "page_size"),
        ("page_size=1000", "page_size"),
        ("page_size=many", "page_size"),
        ("cursor=zzz", "cursor"),
        ("cursor=WyIyMDI2LTAxLTA1VDA5OjAwOjAwIiwgNV0=", "cursor"),  # a time without its zone
    ],
)
def test_unknown_filter_values_are_400_naming_the_field(is_client, query, field):
    response = is_client.get(f"{HANDOFFS}?{query}", HTTP_ACCEPT_LANGUAGE="en")
    assert response.status_code == 400
    body = response.json()
    assert set(body) == {"detail", field}
    assert body[field][0]


def test_blank_filters_mean_the_defaults(is_client):
    handoff = open_handoff()
    blank = "status=&kind=&assignee=&sla_state=&cursor=&page_size="
    rows = is_client.get(f"{HANDOFFS}?{blank}").json()["results"]
    assert [row["id"] for row in rows] == [handoff.pk]


def test_unknown_values_are_listed_with_the_valid_ones(is_client):
    body = is_client.get(f"{HANDOFFS}?status=open,later", HTTP_ACCEPT_LANGUAGE="en").json()
    assert body["status"] == ["Unknown value later. Use open, claimed, done (comma-separated)."]


def test_keyset_pages_cover_ties_once_in_due_order(is_client):
    handoffs = [open_handoff() for _ in range(7)]
    moment = timezone.now() + timedelta(hours=5)
    expected = []
    for i, handoff in enumerate(reversed(handoffs)):
        # Ties on due_at (a bulk activation opens thousands at one instant): the id
        # breaks them, and no page may repeat or skip a row.
        due = moment + timedelta(minutes=i // 3)
        Handoff.objects.filter(pk=handoff.pk).update(due_at=due, warn_at=due)
        expected.append((due, handoff.pk))
    seen, url, pages = [], f"{HANDOFFS}?page_size=3", 0
    while url:
        page = is_client.get(url).json()
        assert len(page["results"]) <= 3
        seen += [row["id"] for row in page["results"]]
        url, pages = page["next"], pages + 1
    assert seen == [pk for _due, pk in sorted(expected)]
    assert pages == 3


def test_queue_query_count_does_not_grow_with_the_page(is_client, django_assert_num_queries):
    # The token with its roles (one query) + the page with lead, company and assignee
    # joined (one query), whatever the number of rows.
    for _ in range(3):
        open_handoff()
    with django_assert_num_queries(2):
        assert len(is_client.get(HANDOFFS).json()["results"]) == 3
    for _ in range(27):
        open_handoff()
    with django_assert_num_queries(2):
        assert len(is_client.get(f"{HANDOFFS}?sla_state=on_track,warning").json()["results"]) == 30
    with django_assert_num_queries(3):  # + the assignee's username looked up
        assert len(is_client.get(f"{HANDOFFS}?assignee=is1").json()["results"]) == 30


@pytest.mark.parametrize(
    ("filters", "index"),
    [({}, "handoff_open_due"), ({"assignee": "me"}, "handoff_open_assignee_due")],
)
def test_queue_query_rides_the_partial_indexes_without_sorting(
    is_rep, django_user_model, filters, index
):
    # Whether the query *can* be answered in due order straight off an index: with
    # sorting, bitmap and sequential scans priced out, only an index whose predicate
    # and columns fit the query's is left. 400 hand-offs over 20 reps, analysed, so the
    # planner prefers the narrower index when both fit.
    reps = [is_rep] + [user_in(django_user_model, f"is{i}", "inside_sales") for i in range(2, 21)]
    leads = Lead.objects.bulk_create(
        Lead(email=f"queue{i}@example.jp", stage="nurturing") for i in range(400)
    )
    services.mark_leads_mql({lead.pk: "test" for lead in leads})
    start = timezone.now()
    for i, handoff in enumerate(Handoff.objects.order_by("pk")):
        due = start + timedelta(minutes=i)
        Handoff.objects.filter(pk=handoff.pk).update(
            assignee=reps[i % len(reps)], due_at=due, warn_at=due
        )
    with connection.cursor() as cursor:
        cursor.execute("ANALYZE handoff_handoff")
        for plan_kind in ("seqscan", "bitmapscan", "sort"):
            cursor.execute(f"SET LOCAL enable_{plan_kind} = off")
    last = Handoff.objects.order_by("due_at", "pk")[10]
    for after in (None, (last.due_at, last.pk)):
        plan = queue_rows(is_rep, filters, now=timezone.now(), after=after)[:51].explain()
        assert index in plan
        assert "Sort" not in plan


def test_sales_rep_sees_only_hand_offs_of_own_leads(
    is_rep, sales_rep, other_sales_rep, token_client
):
    mine = sql_for(sales_rep, is_rep=is_rep)
    theirs = sql_for(other_sales_rep, is_rep=is_rep)
    open_handoff()
    client = token_client(sales_rep)
    rows = client.get(f"{HANDOFFS}?kind=sales,inside_sales&status=open,claimed,done").json()
    assert {row["lead"] for row in rows["results"]} == {mine.pk}
    theirs_handoff = Handoff.objects.get(lead=theirs, kind="sales")
    assert client.get(f"{HANDOFFS}{theirs_handoff.pk}/").status_code == 404
    mine_handoff = Handoff.objects.get(lead=mine, kind="sales")
    assert client.get(f"{HANDOFFS}{mine_handoff.pk}/").status_code == 200


@pytest.mark.parametrize("role", ["marketer", "manager", "is_rep"])
def test_marketers_managers_and_is_read_every_hand_off(role, request, token_client, sales_rep):
    handoff = open_handoff()
    owned = sql_for(sales_rep, is_rep=request.getfixturevalue("is_rep"))
    client = token_client(request.getfixturevalue(role))
    rows = client.get(f"{HANDOFFS}?kind=inside_sales,sales&status=open,claimed,done").json()
    assert {row["lead"] for row in rows["results"]} == {handoff.lead_id, owned.pk}
    assert client.get(f"{HANDOFFS}{handoff.pk}/").status_code == 200


def test_anonymous_callers_get_401(api_client):
    handoff = open_handoff()
    assert api_client.get(HANDOFFS).status_code == 401
    assert post(api_client, f"{HANDOFFS}{handoff.pk}/claim/").status_code == 401


def test_fast_handoff_representation_equals_drfs_field_by_field_output(is_rep, sales_rep):
    from rest_framework import serializers as drf_serializers

    from handoff.serializers import HandoffSerializer

    bare = open_handoff(account=None)
    Handoff.objects.filter(pk=bare.pk).update(assignee=None)
    lead = sql_for(sales_rep, is_rep=is_rep)
    # The qualified one is done: BANT, every time set, an outcome, a comment.
    full = Handoff.objects.get(lead=lead, kind="inside_sales")
    Handoff.objects.filter(pk=full.pk).update(bant={"budget": "あり"}, comment="<i>x</i>")
    context = {"now": timezone.now()}
    for pk in (bare.pk, full.pk, Handoff.objects.get(lead=lead, kind="sales").pk):
        for handoff in (
            Handoff.objects.select_related("lead__account", "assignee").get(pk=pk),
            queue_rows(
                is_rep,
                {"status": ["open", "claimed", "done"], "kind": ["inside_sales", "sales"]},
                now=context["now"],
                after=None,
            ).get(pk=pk),
        ):
            serializer = HandoffSerializer(handoff, context=context)
            fast = serializer.data
            slow = drf_serializers.ModelSerializer.to_representation(serializer, handoff)
            assert dict(fast) == dict(slow)
            assert list(fast) == list(slow)


# --- GET /handoffs/{id}/ ----------------------------------------------------------------------


def test_detail_has_bant_outcome_reason_and_comment(is_client, is_rep):
    handoff = open_handoff()
    services.save_bant(handoff.pk, actor=is_rep, bant={"budget": "500万円", "need": "MA"})
    services.return_to_nurturing(handoff.pk, actor=is_rep, reason="timing", comment="来期")
    body = is_client.get(f"{HANDOFFS}{handoff.pk}/").json()
    assert body["bant"] == {"budget": "500万円", "need": "MA"}
    assert (body["status"], body["outcome"]) == ("done", "returned")
    assert (body["reason"], body["comment"]) == ("timing", "来期")
    assert body["closed_at"] is not None
    assert is_client.get(f"{HANDOFFS}999999/").status_code == 404
    assert is_client.get(f"{HANDOFFS}abc/").status_code == 404


# --- POST /handoffs/{id}/claim/ and the roles -------------------------------------------------


def test_is_rep_claims_and_a_second_claim_is_409(
    is_client, is_rep, django_user_model, token_client
):
    handoff = open_handoff()
    response = post(is_client, f"{HANDOFFS}{handoff.pk}/claim/")
    assert response.status_code == 200
    body = response.json()
    assert (body["id"], body["status"], body["assignee"]) == (handoff.pk, "claimed", "is1")
    assert body["claimed_at"] is not None
    other = token_client(user_in(django_user_model, "is2", "inside_sales"))
    response = post(other, f"{HANDOFFS}{handoff.pk}/claim/")
    assert response.status_code == 409
    assert "already taken" in response.json()["detail"]


def test_manager_may_work_the_queue(manager, token_client):
    handoff = open_handoff()
    Handoff.objects.filter(pk=handoff.pk).update(assignee=None)
    response = post(token_client(manager), f"{HANDOFFS}{handoff.pk}/claim/")
    assert response.status_code == 200
    assert response.json()["assignee"] == "manager1"


def test_marketer_reads_but_every_queue_action_is_403(marketer, token_client, sales_rep):
    handoff = open_handoff()
    client = token_client(marketer)
    assert client.get(f"{HANDOFFS}{handoff.pk}/").status_code == 200
    bodies = {
        "claim": None,
        "assign": {"assignee": "is1"},
        "contact": {"channel": "call", "outcome": "reached"},
        "bant": {"bant": {"need": "x"}},
        "qualify": {"sales_rep": "sales1"},
        "return": {"reason": "timing"},
        "disqualify": {"reason": "student"},
    }
    for name, body in bodies.items():
        response = post(client, f"{HANDOFFS}{handoff.pk}/{name}/", body)
        assert response.status_code == 403, name
        assert "inside sales" in response.json()["detail"]
    handoff.refresh_from_db()
    assert (handoff.status, handoff.lead.stage) == ("open", "mql")


def test_sales_rep_gets_403_on_own_leads_hand_off_and_404_on_others(
    is_rep, sales_rep, other_sales_rep, sales_client
):
    own_lead = sql_for(sales_rep, is_rep=is_rep)
    own_first_contact = Handoff.objects.get(lead=own_lead, kind="inside_sales")
    others = Handoff.objects.get(lead=sql_for(other_sales_rep, is_rep=is_rep), kind="sales")
    anybody = open_handoff()
    assert post(sales_client, f"{HANDOFFS}{own_first_contact.pk}/claim/").status_code == 403
    assert post(sales_client, f"{HANDOFFS}{others.pk}/claim/").status_code == 404
    assert post(sales_client, f"{HANDOFFS}{anybody.pk}/claim/").status_code == 404


def test_a_sales_hand_off_is_not_worked_from_the_queue(is_client, is_rep, sales_rep):
    lead = sql_for(sales_rep, is_rep=is_rep)
    sales = Handoff.objects.get(lead=lead, kind="sales")
    response = post(is_client, f"{HANDOFFS}{sales.pk}/claim/")
    assert response.status_code == 409
    assert f"/api/v1/leads/{lead.pk}/accept/" in response.json()["detail"]


def test_a_closed_hand_off_is_409(is_client, is_rep):
    handoff = open_handoff()
    services.disqualify_lead(handoff.pk, actor=is_rep, reason="competitor")
    for name, body in (("claim", None), ("contact", {"channel": "call", "outcome": "reached"})):
        response = post(is_client, f"{HANDOFFS}{handoff.pk}/{name}/", body)
        assert response.status_code == 409
        assert response.json() == {"detail": "This hand-off is already closed."}


# --- assign, contact, bant --------------------------------------------------------------------


def test_assign_to_an_is_rep(is_client, django_user_model):
    user_in(django_user_model, "is2", "inside_sales")
    handoff = open_handoff()
    response = post(is_client, f"{HANDOFFS}{handoff.pk}/assign/", {"assignee": "is2"})
    assert response.status_code == 200
    assert (response.json()["assignee"], response.json()["status"]) == ("is2", "open")


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({}, "This field is required."),
        ({"assignee": "ghost"}, 'No active user is named "ghost".'),
        ({"assignee": "sales1"}, "Choose an active inside sales rep."),
    ],
)
def test_assign_needs_an_active_is_rep(is_client, sales_rep, body, message):
    handoff = open_handoff()
    response = post(is_client, f"{HANDOFFS}{handoff.pk}/assign/", body)
    assert response.status_code == 400
    assert response.json()["assignee"] == [message]
    assert Handoff.objects.get(pk=handoff.pk).assignee.username == "is1"


def test_contact_attempt_meets_the_sla_and_claims(is_client):
    handoff = open_handoff()
    body = {"channel": "call", "outcome": "left_message", "note": "留守電"}
    response = post(is_client, f"{HANDOFFS}{handoff.pk}/contact/", body)
    assert response.status_code == 200
    answer = response.json()
    assert (answer["status"], answer["sla_state"]) == ("claimed", "met")
    assert answer["responded_at"] is not None
    attempt = ContactAttempt.objects.get()
    assert (attempt.channel, attempt.outcome, attempt.note) == ("call", "left_message", "留守電")


def test_contact_with_bad_choices_is_400_per_field(is_client):
    handoff = open_handoff()
    body = {"channel": "fax", "outcome": "maybe", "notes": "typo"}
    response = post(is_client, f"{HANDOFFS}{handoff.pk}/contact/", body)
    assert response.status_code == 400
    errors = response.json()
    assert "notes" in errors and "Unknown field" in errors["notes"][0]
    response = post(
        is_client, f"{HANDOFFS}{handoff.pk}/contact/", {"channel": "fax", "outcome": "maybe"}
    )
    errors = response.json()
    assert errors["channel"] == ["Choose one of: call, email, meeting."]
    assert errors["outcome"][0].startswith("Choose one of: reached,")
    assert not ContactAttempt.objects.exists()
    assert Handoff.objects.get(pk=handoff.pk).status == "open"


def test_bant_is_merged(is_client):
    handoff = open_handoff()
    assert (
        post(is_client, f"{HANDOFFS}{handoff.pk}/bant/", {"bant": {"budget": "あり"}}).status_code
        == 200
    )
    response = post(is_client, f"{HANDOFFS}{handoff.pk}/bant/", {"bant": {"need": "リード管理"}})
    assert response.json()["bant"] == {"budget": "あり", "need": "リード管理"}


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"bant": ["budget"]}, "bant"),
        ({"bant": {"money": "x"}}, "bant"),
        ({"bant": {"budget": 5}}, "bant.budget"),
        ({}, "bant"),
    ],
)
def test_bad_bant_is_400(is_client, body, field):
    handoff = open_handoff()
    response = post(is_client, f"{HANDOFFS}{handoff.pk}/bant/", body)
    assert response.status_code == 400
    assert field in response.json()
    assert Handoff.objects.get(pk=handoff.pk).bant == {}


def test_a_body_that_is_not_an_object_is_400(is_client):
    handoff = open_handoff()
    response = post(is_client, f"{HANDOFFS}{handoff.pk}/return/", ["timing"])
    assert response.status_code == 400
    assert response.json()["non_field_errors"]
    bad_json = is_client.post(
        f"{HANDOFFS}{handoff.pk}/return/", "{not json", content_type="application/json"
    )
    assert bad_json.status_code == 400


# --- qualify, return, disqualify --------------------------------------------------------------


def test_qualify_answers_the_new_sales_hand_off(is_client, sales_rep):
    handoff = open_handoff()
    bant = {"budget": "500万円", "authority": "部長", "need": "MA", "timeline": "3ヶ月"}
    response = post(
        is_client, f"{HANDOFFS}{handoff.pk}/qualify/", {"sales_rep": "sales1", "bant": bant}
    )
    assert response.status_code == 200
    sales = response.json()
    assert sales["id"] != handoff.pk
    assert (sales["kind"], sales["status"], sales["assignee"]) == ("sales", "claimed", "sales1")
    assert sales["bant"] == bant
    assert sales["sla_state"] == "on_track"
    lead = Lead.objects.get(pk=handoff.lead_id)
    assert (lead.stage, lead.owner) == ("sql", sales_rep)
    first = Handoff.objects.get(pk=handoff.pk)
    assert (first.status, first.outcome) == ("done", "qualified")


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({}, "This field is required."),
        ({"sales_rep": ""}, "This field may not be blank."),
        ({"sales_rep": "ghost"}, 'No active user is named "ghost".'),
        ({"sales_rep": "is1"}, "Choose an active user in the sales team."),
        ({"sales_rep": "marketer1"}, "Choose an active user in the sales team."),
    ],
)
def test_qualify_without_a_sales_rep_is_400_and_writes_nothing(is_client, marketer, body, message):
    handoff = open_handoff()
    response = post(is_client, f"{HANDOFFS}{handoff.pk}/qualify/", body)
    assert response.status_code == 400
    assert response.json()["sales_rep"] == [message]
    assert response.json()["detail"]
    assert Lead.objects.get(pk=handoff.lead_id).stage == "mql"
    assert not Handoff.objects.filter(kind="sales").exists()


def test_qualify_an_inactive_sales_rep_is_400(is_client, sales_rep):
    sales_rep.is_active = False
    sales_rep.save()
    handoff = open_handoff()
    response = post(is_client, f"{HANDOFFS}{handoff.pk}/qualify/", {"sales_rep": "sales1"})
    assert response.status_code == 400
    assert "sales_rep" in response.json()


def test_qualifying_a_lead_that_is_already_sql_is_409(is_client, is_rep, sales_rep):
    handoff = open_handoff()
    services.qualify_lead(handoff.pk, actor=is_rep, sales_rep=sales_rep)
    response = post(is_client, f"{HANDOFFS}{handoff.pk}/qualify/", {"sales_rep": "sales1"})
    assert response.status_code == 409
    assert response.json()["detail"]
    assert Handoff.objects.filter(kind="sales").count() == 1


def test_an_action_the_leads_stage_does_not_allow_is_409(is_client, is_rep, sales_rep):
    # The lead left MQL (disqualified elsewhere) while its hand-off still looked open.
    handoff = open_handoff()
    services.transition_lead(handoff.lead_id, to_stage="disqualified", reason="x", actor=is_rep)
    response = post(is_client, f"{HANDOFFS}{handoff.pk}/qualify/", {"sales_rep": "sales1"})
    assert response.status_code == 409
    assert response.json() == {"detail": "A lead in stage Disqualified cannot move to SQL."}
    assert not Handoff.objects.filter(kind="sales").exists()
    response = post(is_client, f"{HANDOFFS}{handoff.pk}/disqualify/", {"reason": "again"})
    assert response.status_code == 409
    assert "cannot move" in response.json()["detail"]


def test_return_to_nurturing(is_client):
    handoff = open_handoff()
    response = post(
        is_client,
        f"{HANDOFFS}{handoff.pk}/return/",
        {"reason": "unreachable", "comment": "3回不通"},
    )
    assert response.status_code == 200
    body = response.json()
    assert (body["status"], body["outcome"], body["reason"]) == ("done", "returned", "unreachable")
    lead = Lead.objects.get(pk=handoff.lead_id)
    assert (lead.stage, lead.behavior_score) == ("nurturing", 0)


@pytest.mark.parametrize(
    ("body", "field"),
    [({}, "reason"), ({"reason": ""}, "reason"), ({"reason": "bored"}, "reason")],
)
def test_return_needs_a_known_reason(is_client, body, field):
    handoff = open_handoff()
    response = post(is_client, f"{HANDOFFS}{handoff.pk}/return/", body)
    assert response.status_code == 400
    assert list(response.json()) == ["detail", field]
    assert Lead.objects.get(pk=handoff.lead_id).stage == "mql"


def test_disqualify(is_client):
    handoff = open_handoff()
    assert post(is_client, f"{HANDOFFS}{handoff.pk}/disqualify/", {}).status_code == 400
    response = post(is_client, f"{HANDOFFS}{handoff.pk}/disqualify/", {"reason": "  "})
    assert response.json()["reason"] == ["Say why this lead is disqualified."]
    response = post(is_client, f"{HANDOFFS}{handoff.pk}/disqualify/", {"reason": "学生"})
    assert response.status_code == 200
    assert response.json()["outcome"] == "disqualified"
    assert Lead.objects.get(pk=handoff.lead_id).stage == "disqualified"


# --- the sales rep's answers ------------------------------------------------------------------


def test_sales_rep_accepts_own_sql_once(is_rep, sales_rep, sales_client):
    lead = sql_for(sales_rep, is_rep=is_rep)
    response = post(sales_client, f"{LEADS}{lead.pk}/accept/")
    assert response.status_code == 200
    body = response.json()
    assert (body["id"], body["stage"], body["owner"]) == (lead.pk, "sal", "sales1")
    again = post(sales_client, f"{LEADS}{lead.pk}/accept/")
    assert again.status_code == 409
    assert again.json() == {"detail": "This lead is not waiting for a sales answer."}
    sales = Handoff.objects.get(lead=lead, kind="sales")
    assert (sales.status, sales.outcome, sales.sla_state) == ("done", "accepted", "met")


def test_accepting_someone_elses_lead_is_404(is_rep, other_sales_rep, sales_client):
    lead = sql_for(other_sales_rep, is_rep=is_rep)
    for name, body in (
        ("accept", None),
        ("reject", {"reason": "timing", "comment": "x"}),
        ("opportunity", {}),
        ("notes", {"body": "x"}),
    ):
        assert post(sales_client, f"{LEADS}{lead.pk}/{name}/", body).status_code == 404, name
    assert Lead.objects.get(pk=lead.pk).stage == "sql"
    assert post(sales_client, f"{LEADS}999999/accept/").status_code == 404


@pytest.mark.parametrize("role", ["is_rep", "manager"])
def test_only_the_assigned_rep_answers_an_sql(role, request, is_rep, sales_rep, token_client):
    lead = sql_for(sales_rep, is_rep=is_rep)
    client = token_client(request.getfixturevalue(role))
    response = post(client, f"{LEADS}{lead.pk}/accept/")
    assert response.status_code == 403
    assert "Only the sales rep" in response.json()["detail"]


def test_marketer_may_not_answer_or_write_notes(marketer, is_rep, sales_rep, token_client):
    lead = sql_for(sales_rep, is_rep=is_rep)
    client = token_client(marketer)
    for name, body in (
        ("accept", None),
        ("reject", {"reason": "timing", "comment": "x"}),
        ("opportunity", {}),
        ("won", {}),
        ("lost", {}),
        ("notes", {"body": "x"}),
    ):
        response = post(client, f"{LEADS}{lead.pk}/{name}/", body)
        assert response.status_code == 403, name
        assert "reads leads" in response.json()["detail"]
    assert not LeadNote.objects.exists()


def test_reject_sends_the_lead_back_with_its_behaviour_score_reset(is_rep, sales_rep, sales_client):
    lead = sql_for(sales_rep, is_rep=is_rep)
    Lead.objects.filter(pk=lead.pk).update(behavior_score=40, score=110)
    body = {"reason": "no_budget", "comment": "予算は来期"}
    response = post(sales_client, f"{LEADS}{lead.pk}/reject/", body)
    assert response.status_code == 200
    answer = response.json()
    assert (answer["stage"], answer["owner"], answer["behavior_score"]) == ("nurturing", None, 0)
    sales = Handoff.objects.get(lead=lead, kind="sales")
    assert (sales.outcome, sales.reason, sales.comment) == ("rejected", "no_budget", "予算は来期")


@pytest.mark.parametrize(
    ("body", "errors"),
    [
        ({"comment": "x"}, {"reason": ["This field is required."]}),
        ({"reason": "", "comment": "x"}, {"reason": ["Choose a reason."]}),
        (
            {"reason": "too_small", "comment": "x"},
            {
                "reason": [
                    "Choose one of: timing, no_budget, not_decision_maker, wrong_fit, "
                    "duplicate, other."
                ]
            },
        ),
        ({"reason": "timing"}, {"comment": ["This field is required."]}),
        (
            {"reason": "timing", "comment": "  "},
            {"comment": ["Add a comment so marketing knows what to change."]},
        ),
    ],
)
def test_reject_needs_a_known_reason_and_a_comment(is_rep, sales_rep, sales_client, body, errors):
    lead = sql_for(sales_rep, is_rep=is_rep)
    response = post(sales_client, f"{LEADS}{lead.pk}/reject/", body)
    assert response.status_code == 400
    answer = response.json()
    assert answer.pop("detail")
    assert answer == errors
    lead.refresh_from_db()
    assert (lead.stage, lead.owner) == ("sql", sales_rep)


def test_accept_after_reject(is_rep, sales_rep, sales_client, manager, token_client):
    lead = sql_for(sales_rep, is_rep=is_rep)
    post(sales_client, f"{LEADS}{lead.pk}/reject/", {"reason": "timing", "comment": "来年"})
    # The rep gave the lead back: it is no longer theirs to see.
    assert post(sales_client, f"{LEADS}{lead.pk}/accept/").status_code == 404
    # Anyone who still sees it is told the lead is not waiting for an answer.
    response = post(token_client(manager), f"{LEADS}{lead.pk}/accept/")
    assert response.status_code == 409
    assert Lead.objects.get(pk=lead.pk).stage == "nurturing"


def test_opportunity_then_won_or_lost(is_rep, sales_rep, sales_client):
    won, lost = sql_for(sales_rep, is_rep=is_rep), sql_for(sales_rep, is_rep=is_rep)
    assert post(sales_client, f"{LEADS}{won.pk}/opportunity/").status_code == 409  # not SAL yet
    for lead in (won, lost):
        post(sales_client, f"{LEADS}{lead.pk}/accept/")
        response = post(sales_client, f"{LEADS}{lead.pk}/opportunity/", {"note": "商談化"})
        assert (response.status_code, response.json()["stage"]) == (200, "opportunity")
    assert post(sales_client, f"{LEADS}{won.pk}/won/", {"note": "受注"}).json()["stage"] == "won"
    assert post(sales_client, f"{LEADS}{lost.pk}/lost/").json()["stage"] == "lost"
    assert post(sales_client, f"{LEADS}{won.pk}/lost/").status_code == 409
    transition = StageTransition.objects.filter(lead=won).latest("created_at")
    assert (transition.to_stage, transition.reason, transition.actor) == ("won", "受注", sales_rep)
    assert post(sales_client, f"{LEADS}{won.pk}/won/", {"notes": "typo"}).status_code == 400


def test_is_rep_may_not_move_a_sales_reps_opportunity(is_rep, sales_rep, sales_client, is_client):
    lead = sql_for(sales_rep, is_rep=is_rep)
    post(sales_client, f"{LEADS}{lead.pk}/accept/")
    response = post(is_client, f"{LEADS}{lead.pk}/opportunity/")
    assert response.status_code == 403
    assert Lead.objects.get(pk=lead.pk).stage == "sal"


def test_notes_are_returned_as_data_not_markup(is_rep, sales_rep, sales_client, is_client):
    lead = sql_for(sales_rep, is_rep=is_rep)
    script = '<script>alert("x")</script> 折り返し希望'
    response = post(sales_client, f"{LEADS}{lead.pk}/notes/", {"body": script})
    assert response.status_code == 201
    assert response["Content-Type"] == "application/json"
    entry = response.json()
    assert (entry["kind"], entry["body"], entry["author"]) == ("note", script, "sales1")
    assert set(entry) == {"kind", "at", "id", "body", "author"}
    assert post(is_client, f"{LEADS}{lead.pk}/notes/", {"body": "IS memo"}).status_code == 201
    timeline = is_client.get(f"{LEADS}{lead.pk}/timeline/").json()["results"]
    notes = [e for e in timeline if e["kind"] == "note"]
    assert [e["body"] for e in notes] == ["IS memo", script]


@pytest.mark.parametrize("body", [{}, {"body": ""}, {"body": "   "}])
def test_an_empty_note_is_400(is_client, body):
    lead = LeadFactory()
    response = post(is_client, f"{LEADS}{lead.pk}/notes/", body)
    assert response.status_code == 400
    assert "body" in response.json()
    assert not LeadNote.objects.exists()


# --- CSRF -------------------------------------------------------------------------------------


def test_a_session_post_without_csrf_token_is_403(is_rep):
    handoff = open_handoff()
    client = APIClient(enforce_csrf_checks=True)
    client.force_login(is_rep)
    assert client.get(HANDOFFS).status_code == 200  # reading needs no token
    response = post(client, f"{HANDOFFS}{handoff.pk}/claim/")
    assert response.status_code == 403
    assert "CSRF" in response.json()["detail"]
    assert Handoff.objects.get(pk=handoff.pk).status == "open"
    # The same request with the token passes: it was the token that was missing.
    client.cookies["csrftoken"] = "a" * 32
    response = client.post(f"{HANDOFFS}{handoff.pk}/claim/", HTTP_X_CSRFTOKEN="a" * 32)
    assert response.status_code == 200


def test_token_clients_need_no_csrf_token(is_rep):
    from rest_framework.authtoken.models import Token

    handoff = open_handoff()
    client = APIClient(enforce_csrf_checks=True)
    client.credentials(HTTP_AUTHORIZATION=f"Token {Token.objects.create(user=is_rep).key}")
    assert post(client, f"{HANDOFFS}{handoff.pk}/claim/").status_code == 200


# --- the whole path and the timeline ------------------------------------------------------------


def test_full_path_mql_to_sql_rejected_to_nurturing_and_mql_again(
    is_rep, sales_rep, is_client, sales_client
):
    # 部長, marketing, software, 120 people: attribute 70 in the default model.
    lead = LeadFactory(stage="nurturing")
    ActivityFactory(lead=lead, type="form_submit", properties={})
    rescore_leads([lead.pk])  # the form is a hand-off trigger: MQL
    queue = is_client.get(f"{HANDOFFS}?assignee=me").json()["results"]
    assert [row["lead"] for row in queue] == [lead.pk]
    first = queue[0]["id"]

    assert post(is_client, f"{HANDOFFS}{first}/claim/").status_code == 200
    contact = {"channel": "call", "outcome": "reached", "note": "予算あり"}
    assert post(is_client, f"{HANDOFFS}{first}/contact/", contact).status_code == 200
    qualify = {"sales_rep": "sales1", "bant": {"budget": "あり", "need": "MA"}}
    sales = post(is_client, f"{HANDOFFS}{first}/qualify/", qualify).json()
    inbox = sales_client.get(f"{HANDOFFS}?kind=sales&assignee=me").json()["results"]
    assert [row["id"] for row in inbox] == [sales["id"]]

    reject = {"reason": "timing", "comment": "半年後に再検討"}
    answer = post(sales_client, f"{LEADS}{lead.pk}/reject/", reject).json()
    assert (answer["stage"], answer["behavior_score"], answer["score"]) == ("nurturing", 0, 70)
    assert sales_client.get(f"{HANDOFFS}?kind=sales&assignee=me").json()["results"] == []

    ActivityFactory(lead=lead, properties={"url": "https://example.jp/pricing"})
    rescore_leads([lead.pk])  # behaviour 30 + attribute 70: the MQL rule again
    lead.refresh_from_db()
    assert (lead.stage, lead.behavior_score, lead.score) == ("mql", 30, 100)
    queue = is_client.get(HANDOFFS).json()["results"]
    assert [(row["lead"], row["status"]) for row in queue] == [(lead.pk, "open")]
    assert queue[0]["id"] not in (first, sales["id"])

    timeline = is_client.get(f"{LEADS}{lead.pk}/timeline/?page_size=200").json()["results"]
    transitions = [(e["from_stage"], e["to_stage"]) for e in timeline if e["kind"] == "transition"]
    assert transitions == [
        ("nurturing", "mql"),
        ("sql", "nurturing"),
        ("mql", "sql"),
        ("nurturing", "mql"),
    ]


def test_timeline_shows_every_kind_in_order_with_its_shape(
    is_rep, sales_rep, is_client, sales_client
):
    lead = LeadFactory(stage="nurturing")
    ActivityFactory(lead=lead, type="form_submit", properties={})
    rescore_leads([lead.pk])
    handoff = Handoff.objects.get(lead=lead)
    steps = [
        ("contact", {"channel": "email", "outcome": "no_answer", "note": "<b>送付</b>"}),
        ("qualify", {"sales_rep": "sales1"}),
    ]
    for name, body in steps:
        assert post(is_client, f"{HANDOFFS}{handoff.pk}/{name}/", body).status_code == 200
    post(sales_client, f"{LEADS}{lead.pk}/notes/", {"body": "来週訪問"})
    post(sales_client, f"{LEADS}{lead.pk}/accept/")

    entries = is_client.get(f"{LEADS}{lead.pk}/timeline/").json()["results"]
    kinds = [entry["kind"] for entry in entries]
    assert kinds[:5] == ["transition", "note", "transition", "contact_attempt", "transition"]
    assert set(kinds) == {"transition", "note", "contact_attempt", "score_change", "activity"}
    assert [entry["at"] for entry in entries] == sorted((e["at"] for e in entries), reverse=True)
    accepted, note, qualified, contact, mql = entries[:5]
    lead.refresh_from_db()
    assert accepted == {
        "kind": "transition",
        "at": accepted["at"],
        "id": StageTransition.objects.get(lead=lead, to_stage="sal").pk,
        "from_stage": "sql",
        "to_stage": "sal",
        "actor": "sales1",
        "reason": "Accepted by sales",
        "score": lead.score,
    }
    assert (qualified["from_stage"], qualified["to_stage"], qualified["actor"]) == (
        "mql",
        "sql",
        "is1",
    )
    assert (mql["from_stage"], mql["to_stage"], mql["actor"]) == ("nurturing", "mql", None)
    assert mql["reason"].startswith("Hand-off trigger")
    assert note == {
        "kind": "note",
        "at": note["at"],
        "id": note["id"],
        "body": "来週訪問",
        "author": "sales1",
    }
    assert contact == {
        "kind": "contact_attempt",
        "at": contact["at"],
        "id": contact["id"],
        "channel": "email",
        "outcome": "no_answer",
        "note": "<b>送付</b>",
        "actor": "is1",
    }
    changes = [entry for entry in entries if entry["kind"] == "score_change"]
    assert changes, "the form submit scored"
    assert set(changes[0]) == {
        "kind",
        "at",
        "id",
        "points",
        "reason",
        "rule",
        "activity_id",
        "model_version",
    }
    form_points = [c for c in changes if c["reason"] == "event"]
    activity_id = lead.activities.get().pk
    assert [(c["points"], c["activity_id"]) for c in form_points] == [(50, activity_id)]


def test_timeline_pages_through_all_kinds_and_queries_stay_bounded(
    is_rep, sales_rep, is_client, django_assert_num_queries
):
    lead = LeadFactory(stage="nurturing")
    for _ in range(3):
        ActivityFactory(lead=lead, type="email_click", properties={})
    rescore_leads([lead.pk])  # attribute 70 + behaviour 30: an MQL
    handoff = Handoff.objects.get(lead=lead)
    for i in range(3):
        services.log_contact_attempt(handoff.pk, actor=is_rep, channel="call", outcome="no_answer")
        services.add_lead_note(lead.pk, author=is_rep, body=f"memo {i}")
    url = f"{LEADS}{lead.pk}/timeline/"
    whole = is_client.get(f"{url}?page_size=200").json()["results"]
    counts = [
        ("activity", 3),
        ("score_change", ScoreChange.objects.filter(lead=lead).count()),
        ("transition", 1),
        ("contact_attempt", 3),
        ("note", 3),
    ]
    assert counts[1][1] >= 3  # one per scored event at least
    assert Counter(entry["kind"] for entry in whole) == dict(counts)
    seen, page_url = [], f"{url}?page_size=2"
    while page_url:
        page = is_client.get(page_url).json()
        seen += page["results"]
        page_url = page["next"]
    assert seen == whole
    # The token + the lead + one query per kind of entry, however many entries.
    with django_assert_num_queries(7):
        is_client.get(f"{url}?page_size=200")
    for i in range(5):
        services.add_lead_note(lead.pk, author=is_rep, body=f"more {i}")
    with django_assert_num_queries(7):
        assert len(is_client.get(f"{url}?page_size=200").json()["results"]) == len(whole) + 5


# --- concurrency --------------------------------------------------------------------------------


@pytest.mark.django_db(transaction=True)
def test_two_concurrent_accepts_have_exactly_one_winner(is_rep, sales_rep):
    from rest_framework.authtoken.models import Token

    lead = sql_for(sales_rep, is_rep=is_rep)
    key = Token.objects.create(user=sales_rep).key
    barrier = threading.Barrier(2)
    codes: list[int] = []

    def accept() -> None:
        client = APIClient()
        client.credentials(HTTP_AUTHORIZATION=f"Token {key}")
        try:
            barrier.wait(timeout=10)
            codes.append(post(client, f"{LEADS}{lead.pk}/accept/").status_code)
        finally:
            connection.close()

    threads = [threading.Thread(target=accept) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert sorted(codes) == [200, 409]
    assert Lead.objects.get(pk=lead.pk).stage == "sal"
    assert StageTransition.objects.filter(lead=lead, to_stage="sal").count() == 1
    assert Handoff.objects.get(lead=lead, kind="sales").outcome == "accepted"


# --- OpenAPI ------------------------------------------------------------------------------------


def test_schema_generates_without_warnings_and_documents_the_hand_off(tmp_path: Path):
    import yaml

    target = tmp_path / "schema.yml"
    call_command("spectacular", "--validate", "--fail-on-warn", "--file", str(target))
    schema = yaml.safe_load(target.read_text())
    paths = schema["paths"]
    for action in ("claim", "assign", "contact", "bant", "qualify", "return", "disqualify"):
        assert set(paths[f"/api/v1/handoffs/{{id}}/{action}/"]["post"]["responses"]) >= {
            "200",
            "400",
            "403",
            "404",
            "409",
        }
    for action in ("accept", "reject", "opportunity", "won", "lost", "notes"):
        assert f"/api/v1/leads/{{id}}/{action}/" in paths
    queue = paths["/api/v1/handoffs/"]["get"]
    assert {p["name"] for p in queue["parameters"]} >= {"status", "assignee", "sla_state", "kind"}
    reject = schema["components"]["schemas"]["Reject"]
    assert set(reject["required"]) == {"reason", "comment"}
    assert schema["components"]["schemas"]["Qualify"]["required"] == ["sales_rep"]
