"""Mass assignment: no write endpoint lets a caller set what LeadOps owns (score,
stage, owner, ids, timestamps, a model's status). Each key is either refused with a 400
that names it (the lead, event and action bodies) or, where the OpenAPI schema marks it
readOnly (scoring models), ignored."""

from __future__ import annotations

import pytest

from handoff.models import Handoff
from leadops.models import Activity, Lead
from scoring.models import ScoringModel

pytestmark = pytest.mark.django_db

LEAD_OWNED_FIELDS = {
    "id": 999_999,
    "owner": "sales2",
    "stage": "won",
    "score": 100,
    "attribute_score": 100,
    "behavior_score": 100,
    "temperature": "hot",
    "unsubscribed": True,
    "last_activity_at": "2030-01-01T00:00:00Z",
    "created_at": "2000-01-01T00:00:00Z",
    "updated_at": "2000-01-01T00:00:00Z",
    "score_breakdown": [],
}


def test_lead_create_refuses_every_owned_field_by_name(manager, token_client):
    client = token_client(manager)
    for field, value in LEAD_OWNED_FIELDS.items():
        body = {"email": f"mass-{field}@example.jp", field: value}
        response = client.post("/api/v1/leads/", body, format="json")
        assert response.status_code == 400, field
        assert field in response.json(), field
        assert not Lead.objects.filter(email=body["email"]).exists()


def test_lead_update_cannot_change_owned_fields(world, manager, token_client):
    client = token_client(manager)
    body = {"email": world.mine.email, "first_name": "花子", "owner": "sales2", "stage": "won"}
    response = client.post("/api/v1/leads/", body, format="json")
    assert response.status_code == 400
    assert set(response.json()) >= {"owner", "stage"}
    lead = Lead.objects.get(pk=world.mine.pk)
    assert (lead.first_name, lead.owner_id, lead.stage) == (
        world.mine.first_name,
        world.mine.owner_id,
        "sql",
    )


@pytest.mark.parametrize("field", ["score", "stage", "owner", "id", "created_at", "fingerprint"])
def test_an_event_with_an_owned_field_is_refused_by_name(manager, token_client, field):
    client = token_client(manager)
    event = {"event_id": f"mass-{field}", "email": "mass@example.jp", "type": "page_view"}
    response = client.post("/api/v1/events/", {**event, field: 1}, format="json")
    assert response.status_code == 400
    assert field in response.json()
    assert not Activity.objects.filter(event_id=event["event_id"]).exists()
    batch = client.post("/api/v1/events/", {"events": [{**event, field: 1}]}, format="json")
    assert batch.status_code == 202
    assert batch.json()["accepted"] == 0
    assert field in batch.json()["errors"][0]["errors"]


HANDOFF_ACTIONS = {
    "claim": {},
    "assign": {"assignee": "is1"},
    "contact": {"channel": "phone", "outcome": "reached"},
    "bant": {"bant": {"budget": "1000万円"}},
    "qualify": {"sales_rep": "sales1", "bant": {}},
    "return": {"reason": "timing", "comment": "来期"},
    "disqualify": {"reason": "competitor"},
}
OWNED_HANDOFF_KEYS = {"status": "done", "assignee": "manager1", "due_at": "2000-01-01T00:00:00Z"}


@pytest.mark.parametrize("action", HANDOFF_ACTIONS)
def test_hand_off_actions_refuse_owned_keys_by_name(world, is_rep, token_client, action):
    client = token_client(is_rep)
    before = Handoff.objects.values().get(pk=world.queue_handoff.pk)
    for key, value in OWNED_HANDOFF_KEYS.items():
        if key in HANDOFF_ACTIONS[action]:
            continue
        body = {**HANDOFF_ACTIONS[action], key: value}
        url = f"/api/v1/handoffs/{world.queue_handoff.pk}/{action}/"
        response = client.post(url, body, format="json")
        assert response.status_code == 400, (action, key, response.content)
        assert key in response.json(), (action, key)
    assert Handoff.objects.values().get(pk=world.queue_handoff.pk) == before


LEAD_ACTIONS = {
    "accept": {},
    "reject": {"reason": "timing", "comment": "来期"},
    "notes": {"body": "メモ"},
}


@pytest.mark.parametrize("action", LEAD_ACTIONS)
def test_lead_actions_refuse_owned_keys_by_name(world, sales_rep, token_client, action):
    client = token_client(sales_rep)
    for key in ("stage", "owner", "score", "author", "id"):
        body = {**LEAD_ACTIONS[action], key: "x"}
        response = client.post(f"/api/v1/leads/{world.mine.pk}/{action}/", body, format="json")
        assert response.status_code == 400, (action, key, response.content)
        assert key in response.json(), (action, key)
    lead = Lead.objects.get(pk=world.mine.pk)
    assert (lead.stage, lead.owner_id) == ("sql", sales_rep.pk)


def test_scoring_model_create_ignores_read_only_fields(marketer, token_client):
    """status, version, id and timestamps are readOnly in the schema: a new model is a
    draft with the next version whatever the body says."""
    client = token_client(marketer)
    active = ScoringModel.objects.get(status="active")
    model = client.get(f"/api/v1/scoring/models/{active.pk}/").json()
    body = {
        **model,
        "id": 999_999,
        "version": 999,
        "status": "active",
        "based_on": active.pk,
        "created_at": "2000-01-01T00:00:00Z",
        "activated_at": "2000-01-01T00:00:00Z",
    }
    response = client.post("/api/v1/scoring/models/", body, format="json")
    assert response.status_code == 201, response.content
    created = ScoringModel.objects.get(pk=response.json()["id"])
    assert created.pk != 999_999 and created.version != 999
    assert created.status == "draft" and created.activated_at is None
    assert created.created_at.year > 2000
    assert ScoringModel.objects.get(status="active").pk == active.pk
    schema = client.get("/api/schema/?format=json").json()
    properties = schema["components"]["schemas"]["ScoringModel"]["properties"]
    for field in ("id", "version", "status", "created_at", "activated_at", "based_on"):
        assert properties[field].get("readOnly") is True, field
