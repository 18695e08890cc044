"""The wiring between the lead core and scoring: API events, lead edits and the admin
all reach the rescore queue, and a drain makes the score visible in the API."""

import pytest

from leadops.models import Lead
from scoring.tasks import rescore_dirty_leads
from tests.factories import LeadFactory

pytestmark = pytest.mark.django_db

WORKED_EXAMPLE = {
    "email": "bucho@example.co.jp",
    "company": "株式会社ソフト",
    "job_level": "director",
    "department": "marketing",
    "industry": "software",
    "employee_count": 120,
}


def test_api_lead_then_pricing_view_scores_the_worked_example(
    clean_queue, token_client, marketer, django_capture_on_commit_callbacks
):
    client = token_client(marketer)
    with django_capture_on_commit_callbacks(execute=True):
        assert client.post("/api/v1/leads/", WORKED_EXAMPLE, format="json").status_code == 201
    rescore_dirty_leads()
    lead = Lead.objects.get(email="bucho@example.co.jp")
    assert (lead.attribute_score, lead.behavior_score) == (70, 0)

    event = {
        "event_id": "w-1",
        "email": lead.email,
        "type": "page_view",
        "properties": {"url": "https://example.co.jp/pricing"},
    }
    with django_capture_on_commit_callbacks(execute=True):
        assert client.post("/api/v1/events/", event, format="json").status_code == 202
    rescore_dirty_leads()

    body = client.get(f"/api/v1/leads/{lead.pk}/").json()
    assert (body["attribute_score"], body["behavior_score"], body["score"]) == (70, 30, 100)
    assert body["temperature"] == "hot" and body["stage"] == "mql"
    assert sum(item["points"] for item in body["score_breakdown"]) == 100


def test_admin_edit_of_a_lead_rescores_its_attribute_part(
    clean_queue, client, admin_user, django_capture_on_commit_callbacks
):
    lead = LeadFactory(job_level="staff", department="other", industry="other", employee_count=10)
    client.force_login(admin_user)
    form = {
        "email": lead.email,
        "first_name": lead.first_name,
        "last_name": lead.last_name,
        "job_level": "executive",
        "department": "other",
        "industry": "other",
        "employee_count": 10,
        "source": lead.source,
        "stage": lead.stage,
        "activities-TOTAL_FORMS": 0,
        "activities-INITIAL_FORMS": 0,
    }
    with django_capture_on_commit_callbacks(execute=True):
        response = client.post(f"/admin/leadops/lead/{lead.pk}/change/", form)
    assert response.status_code == 302, response.content[:2000]
    rescore_dirty_leads()
    lead.refresh_from_db()
    assert lead.job_level == "executive" and lead.attribute_score == 25
