import pytest
from django.contrib.auth.models import Group
from django.db import connection
from django.test.utils import CaptureQueriesContext


@pytest.mark.django_db
def test_token_lookup_loads_roles_in_the_same_query(token_client, marketer):
    client = token_client(marketer)
    with CaptureQueriesContext(connection) as queries:
        response = client.get("/api/v1/leads/")
    assert response.status_code == 200
    assert not any(
        "auth_user_groups" in q["sql"] and "authtoken" not in q["sql"]
        for q in queries.captured_queries
    )


@pytest.mark.django_db
def test_role_change_takes_effect_on_next_request(token_client, marketer):
    client = token_client(marketer)
    event = {"event_id": "auth-1", "email": "a@example.jp", "type": "page_view"}
    assert client.post("/api/v1/events/", event, format="json").status_code == 202
    marketer.groups.set([Group.objects.get(name="sales")])
    event["event_id"] = "auth-2"
    assert client.post("/api/v1/events/", event, format="json").status_code == 403


@pytest.mark.django_db
def test_deleted_token_and_inactive_user_are_refused(token_client, marketer):
    client = token_client(marketer)
    marketer.is_active = False
    marketer.save()
    assert client.get("/api/v1/leads/").status_code == 401
    marketer.auth_token.delete()
    assert client.get("/api/v1/leads/").status_code == 401
