"""A sales rep's token against every object endpoint and list filter: another rep's
leads and hand-offs (and the unowned ones in the IS queue) are 404 or filtered out;
their own are reachable (PRODUCT.md: a sales rep sees only leads assigned to them)."""

from __future__ import annotations

import pytest

from handoff.models import LeadNote

pytestmark = pytest.mark.django_db

LEAD_READS = ("/api/v1/leads/{id}/", "/api/v1/leads/{id}/timeline/")
LEAD_ACTIONS = {
    "accept": None,
    "reject": {"reason": "timing", "comment": "来期に再検討"},
    "opportunity": {"note": ""},
    "won": {"note": ""},
    "lost": {"note": ""},
    "notes": {"body": "見てはいけない"},
}
HANDOFF_ACTIONS = {
    "claim": None,
    "assign": {"assignee": "sales1"},
    "contact": {"channel": "phone", "outcome": "reached", "note": ""},
    "bant": {"bant": {"budget": "x"}},
    "qualify": {"sales_rep": "sales1", "bant": {}},
    "return": {"reason": "timing", "comment": "x"},
    "disqualify": {"reason": "x"},
}
LEAD_FILTERS = (
    "",
    "?stage=sql",
    "?owner=sales2",
    "?owner=sales1",
    "?score_min=0",
    "?score_max=1000",
    "?temperature=cold",
    "?source=展示会",
    "?page_size=200",
)
HANDOFF_FILTERS = (
    "",
    "?kind=sales",
    "?kind=inside_sales,sales",
    "?status=open,claimed,done",
    "?assignee=sales2",
    "?assignee=none",
    "?assignee=me",
    "?sla_state=on_track,warning,breached,met",
)


@pytest.fixture
def rep(sales_rep, token_client):
    return token_client(sales_rep)


def test_other_reps_and_unowned_leads_are_404_on_every_lead_endpoint(world, rep):
    for lead in (world.theirs, world.unowned):
        for url in LEAD_READS:
            assert rep.get(url.format(id=lead.pk)).status_code == 404, url
        for action, body in LEAD_ACTIONS.items():
            response = rep.post(f"/api/v1/leads/{lead.pk}/{action}/", body, format="json")
            assert response.status_code == 404, (action, response.content)
    world.theirs.refresh_from_db()
    assert world.theirs.stage == "sql"  # nothing was written
    assert not LeadNote.objects.filter(lead__in=[world.theirs, world.unowned]).exists()


def test_own_lead_is_reachable(world, rep):
    for url in LEAD_READS:
        assert rep.get(url.format(id=world.mine.pk)).status_code == 200, url


def test_other_reps_hand_offs_are_404_on_every_hand_off_endpoint(world, rep):
    for handoff in (world.their_handoff, world.queue_handoff):
        assert rep.get(f"/api/v1/handoffs/{handoff.pk}/").status_code == 404
        for action, body in HANDOFF_ACTIONS.items():
            response = rep.post(f"/api/v1/handoffs/{handoff.pk}/{action}/", body, format="json")
            assert response.status_code == 404, (action, response.content)
    assert rep.get(f"/api/v1/handoffs/{world.my_handoff.pk}/").status_code == 200


def test_every_lead_filter_shows_only_own_leads(world, rep):
    for query in LEAD_FILTERS:
        response = rep.get(f"/api/v1/leads/{query}")
        assert response.status_code == 200, query
        ids = {lead["id"] for lead in response.json()["results"]}
        assert ids <= {world.mine.pk}, query
        assert world.theirs.pk not in ids and world.unowned.pk not in ids
    mine = rep.get("/api/v1/leads/?owner=sales1").json()["results"]
    assert [lead["id"] for lead in mine] == [world.mine.pk]


def test_every_hand_off_filter_shows_only_own_hand_offs(world, rep):
    for query in HANDOFF_FILTERS:
        response = rep.get(f"/api/v1/handoffs/{query}")
        assert response.status_code == 200, (query, response.content)
        leads = {row["lead"] for row in response.json()["results"]}
        assert leads <= {world.mine.pk}, query
    sales = rep.get("/api/v1/handoffs/?kind=sales").json()["results"]
    assert [row["id"] for row in sales] == [world.my_handoff.pk]


def test_pages_hide_other_reps_leads(world, sales_rep, session_client):
    client = session_client(sales_rep)
    assert client.get(f"/leads/{world.theirs.pk}/").status_code == 404
    assert client.get(f"/leads/{world.unowned.pk}/").status_code == 404
    assert client.get(f"/leads/{world.mine.pk}/").status_code == 200
    inbox = client.get("/inbox/").content.decode()
    assert world.mine.last_name in inbox and world.theirs.last_name not in inbox
    refused = client.post(f"/leads/{world.theirs.pk}/accept/")
    assert refused.status_code in {403, 404}
    world.theirs.refresh_from_db()
    assert world.theirs.stage == "sql"


def test_scoring_api_is_closed_to_sales_reps(rep):
    assert rep.get("/api/v1/scoring/models/").status_code == 403
    assert rep.get("/api/v1/scoring/activations/").status_code == 403
