"""HTTP contract of /api/v1/scoring/: roles, JSON shapes, validation, 202/409/400."""

import pytest

from scoring.models import ActivationJob, ModelStatus, ScoringModel

pytestmark = [pytest.mark.django_db, pytest.mark.urls("tests.scoring.urls")]
BASE = "/api/v1/scoring/models/"

DRAFT = {
    "name": "Spring 2025",
    "warm_threshold": 40,
    "hot_threshold": 60,
    "mql_total": 70,
    "mql_behavior": 40,
    "mql_attribute": 20,
    "decay_grace_days": 14,
    "decay_half_life_days": 30,
    "attribute_rules": [
        {
            "label": "Target",
            "field": "industry",
            "operator": "in",
            "value": ["software"],
            "points": 20,
        },
    ],
    "behavior_rules": [
        {
            "label": "Pricing",
            "event_type": "page_view",
            "conditions": [{"key": "url", "op": "contains", "value": "/pricing"}],
            "points": 30,
            "cap_per_lead": 3,
        },
        {"label": "Unsubscribe", "event_type": "unsubscribe", "points": -20},
    ],
    "trigger_rules": [{"label": "Form", "event_type": "form_submit"}],
}


def test_list_and_detail_show_rules_and_thresholds(token_client, marketer):
    client = token_client(marketer)
    listed = client.get(BASE)
    assert listed.status_code == 200
    default = listed.json()[0]
    assert (default["version"], default["status"], default["hot_threshold"]) == (1, "active", 70)
    assert len(default["attribute_rules"]) == 8 and len(default["behavior_rules"]) == 9
    pricing = next(r for r in default["behavior_rules"] if r["label"] == "Pricing page view")
    assert pricing["conditions"] == [{"key": "url", "op": "contains", "value": "/pricing"}]
    detail = client.get(f"{BASE}{default['id']}/")
    assert detail.status_code == 200 and detail.json() == default


@pytest.mark.parametrize("role", ["is_rep", "sales_rep"])
def test_other_roles_are_refused(token_client, request, role):
    user = request.getfixturevalue(role)
    assert token_client(user).get(BASE).status_code == 403


def test_anonymous_is_refused(api_client):
    assert api_client.get(BASE).status_code == 401


def test_create_a_draft_from_json(token_client, marketer):
    response = token_client(marketer).post(BASE, DRAFT, format="json")
    assert response.status_code == 201, response.json()
    body = response.json()
    assert body["status"] == "draft" and body["version"] == 2
    assert [r["label"] for r in body["behavior_rules"]] == ["Pricing", "Unsubscribe"]
    assert body["trigger_rules"][0]["min_count"] == 1
    assert ScoringModel.objects.get(pk=body["id"]).created_by == marketer


@pytest.mark.parametrize(
    ("change", "field", "message"),
    [
        (
            {
                "attribute_rules": [
                    {"label": "x", "field": "salary", "operator": "eq", "value": 1, "points": 5}
                ]
            },
            "attribute_rules",
            "Unknown lead field",
        ),
        (
            {
                "attribute_rules": [
                    {
                        "label": "x",
                        "field": "employee_count",
                        "operator": "gte",
                        "value": "many",
                        "points": 5,
                    }
                ]
            },
            "attribute_rules",
            "whole num",
        ),
        (
            {"behavior_rules": [{"label": "x", "event_type": "email_open", "points": 5000}]},
            "behavior_rules",
            "-1000 to 1000",
        ),
        (
            {
                "behavior_rules": [
                    {
                        "label": "x",
                        "event_type": "page_view",
                        "points": 5,
                        "conditions": [{"key": "url", "op": "equals", "value": 3}],
                    }
                ]
            },
            "behavior_rules",
            "must be text",
        ),
        ({"hot_threshold": 10}, "hot_threshold", "higher than the warm"),
    ],
)
def test_bad_drafts_are_400_with_a_message_and_nothing_written(
    token_client, marketer, change, field, message
):
    before = ScoringModel.objects.count()
    response = token_client(marketer).post(BASE, {**DRAFT, **change}, format="json")
    assert response.status_code == 400
    assert field in response.json()
    assert message in str(response.json()[field])
    assert ScoringModel.objects.count() == before


def test_preview_answers_counts_without_writing(token_client, marketer):
    draft = token_client(marketer).post(BASE, DRAFT, format="json").json()
    response = token_client(marketer).post(f"{BASE}{draft['id']}/preview/")
    assert response.status_code == 200
    body = response.json()
    assert {"leads", "histogram", "temperature_changed", "become_mql", "samples"} <= set(body)
    assert ScoringModel.objects.get(pk=draft["id"]).status == ModelStatus.DRAFT


def test_activate_is_202_with_a_job_to_poll_and_409_while_it_runs(token_client, manager):
    client = token_client(manager)
    first = client.post(BASE, DRAFT, format="json").json()
    second = client.post(BASE, {**DRAFT, "name": "other"}, format="json").json()

    response = client.post(f"{BASE}{first['id']}/activate/")
    assert response.status_code == 202
    job = response.json()
    assert (job["status"], job["actor"], job["model_version"]) == ("running", "manager1", 2)
    polled = client.get(job["poll"])
    assert polled.status_code == 200 and polled.json()["id"] == job["id"]

    conflict = client.post(f"{BASE}{second['id']}/activate/")
    assert conflict.status_code == 409
    assert "Wait until" in conflict.json()["detail"]
    assert ActivationJob.objects.count() == 1


def test_activating_a_model_without_rules_is_refused_with_a_message(token_client, marketer):
    empty = {**DRAFT, "attribute_rules": [], "behavior_rules": [], "trigger_rules": []}
    draft = token_client(marketer).post(BASE, empty, format="json").json()
    response = token_client(marketer).post(f"{BASE}{draft['id']}/activate/")
    assert response.status_code == 400
    assert "no rules" in str(response.json())


def test_clone_makes_an_editable_draft(token_client, marketer):
    response = token_client(marketer).post(f"{BASE}{ScoringModel.objects.get(version=1).pk}/clone/")
    assert response.status_code == 201
    assert response.json()["status"] == "draft"
    assert len(response.json()["behavior_rules"]) == 9
