import re
from datetime import timedelta
from pathlib import Path

import pytest
from django.core.cache import cache
from django.urls import reverse
from django.utils import timezone

from leadops.models import Lead
from tests.factories import ActivityFactory, LeadFactory


@pytest.fixture(autouse=True)
def fresh_counts():
    # Home numbers are cached for a minute per scope; each test counts afresh.
    cache.clear()
    yield
    cache.clear()


def figure(body: str, element_id: str) -> int:
    match = re.search(rf'id="{element_id}"[^>]*>([\d,]+)<', body)
    assert match, f"no #{element_id} on the page"
    return int(match.group(1).replace(",", ""))


@pytest.fixture
def team_leads(sales_rep, other_sales_rep):
    old = timezone.now() - timedelta(days=30)
    mine = [
        LeadFactory(owner=sales_rep, stage="sql", temperature="hot"),
        LeadFactory(owner=sales_rep, stage="sal", temperature="warm"),
    ]
    theirs = LeadFactory(owner=other_sales_rep, stage="sql", temperature="hot")
    unowned = LeadFactory(stage="mql", temperature="cold")
    Lead.objects.filter(pk=unowned.pk).update(created_at=old)
    ActivityFactory(lead=mine[0])
    ActivityFactory(lead=theirs)
    ActivityFactory(lead=theirs, occurred_at=old)
    return mine


def test_a_logged_out_visitor_is_sent_to_the_login_page(client):
    response = client.get("/")
    assert response.status_code == 302
    assert response["Location"].startswith(reverse("admin:login"))
    assert "next=/" in response["Location"]


@pytest.mark.django_db
def test_manager_sees_the_whole_teams_numbers(client, manager, team_leads):
    client.force_login(manager)
    body = client.get("/").content.decode()
    assert figure(body, "stage-sql") == 2
    assert figure(body, "stage-sal") == 1
    assert figure(body, "stage-mql") == 1
    assert figure(body, "stage-won") == 0
    assert figure(body, "temperature-hot") == 2
    assert figure(body, "temperature-warm") == 1
    assert figure(body, "temperature-cold") == 1
    assert figure(body, "new-leads") == 3
    assert figure(body, "recent-events") == 2


@pytest.mark.django_db
def test_sales_rep_sees_only_their_own_numbers(client, sales_rep, team_leads):
    client.force_login(sales_rep)
    body = client.get("/").content.decode()
    assert figure(body, "stage-sql") == 1
    assert figure(body, "stage-sal") == 1
    assert figure(body, "stage-mql") == 0
    assert figure(body, "temperature-hot") == 1
    assert figure(body, "temperature-cold") == 0
    assert figure(body, "new-leads") == 2
    assert figure(body, "recent-events") == 1


@pytest.mark.django_db
def test_home_counts_with_two_queries_however_many_stages(
    client, manager, team_leads, django_assert_num_queries
):
    client.force_login(manager)
    # session, user, the user's roles; then one GROUP BY over leads and one events count
    with django_assert_num_queries(6) as captured:  # + the bell's unread count
        client.get("/")
    lead_queries = [q["sql"] for q in captured.captured_queries if "leadops_lead" in q["sql"]]
    assert len(lead_queries) == 1 and "GROUP BY" in lead_queries[0]
    with django_assert_num_queries(4):  # the next minute is served from the cache
        client.get("/")


@pytest.mark.django_db
def test_base_layout_has_skip_link_navigation_and_language_switcher(client, manager):
    manager.is_staff = True
    manager.save()
    client.force_login(manager)
    body = client.get("/").content.decode()
    assert 'href="#main"' in body and 'id="main"' in body
    assert f'href="{reverse("admin:index")}"' in body
    assert f'href="{reverse("api-docs")}"' in body
    assert 'action="/i18n/setlang/"' in body and "csrfmiddlewaretoken" in body
    assert f'action="{reverse("admin:logout")}"' in body
    assert "leadops/css/leadops.css" in body
    assert "//cdn" not in body and "https://" not in body


def test_stylesheet_is_served_from_this_server(client):
    from django.contrib.staticfiles import finders

    path = finders.find("leadops/css/leadops.css")
    assert path and ":focus-visible" in Path(path).read_text(encoding="utf-8")
