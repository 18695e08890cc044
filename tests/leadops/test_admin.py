from __future__ import annotations

from html.parser import HTMLParser

import pytest
from django.contrib import admin
from django.contrib.auth.models import Group, Permission
from django.urls import reverse

from leadops.admin import ActivityAdmin, PlannerCountPaginator, planner_row_estimate
from leadops.models import Activity, Lead
from tests.factories import ActivityFactory, LeadFactory

LEADS_URL = reverse("admin:leadops_lead_changelist")
USERS_URL = reverse("admin:auth_user_changelist")


class _FormValues(HTMLParser):
    """The values a browser would submit from the form with the given id."""

    def __init__(self, form_id: str) -> None:
        super().__init__()
        self.form_id, self.inside, self.values = form_id, False, {}
        self._select: str | None = None
        self._textarea: str | None = None

    def handle_starttag(self, tag: str, attrs: list) -> None:
        a = dict(attrs)
        if tag == "form":
            self.inside = a.get("id") == self.form_id
        if not self.inside or not a.get("name") and tag != "option":
            return
        if tag == "input" and a.get("type") not in {"submit", "button", "checkbox", "radio"}:
            self.values[a["name"]] = a.get("value") or ""
        elif tag == "input" and "checked" in a:
            self.values[a["name"]] = a.get("value", "on")
        elif tag == "select":
            self._select = a["name"]
            self.values.setdefault(a["name"], "")
        elif tag == "option" and self._select and "selected" in a:
            self.values[self._select] = a.get("value", "")
        elif tag == "textarea":
            self._textarea = a["name"]
            self.values[a["name"]] = ""

    def handle_data(self, data: str) -> None:
        if self._textarea:
            self.values[self._textarea] += (
                data.lstrip("\n") if not self.values[self._textarea] else data
            )

    def handle_endtag(self, tag: str) -> None:
        if tag == "select":
            self._select = None
        elif tag == "textarea":
            self._textarea = None
        elif tag == "form":
            self.inside = False


def form_values(response, form_id: str) -> dict[str, str]:
    parser = _FormValues(form_id)
    parser.feed(response.content.decode())
    return parser.values


@pytest.fixture
def staff(db):
    """Role users as `adduser` makes them: staff, so the admin opens for them."""

    def make(user):
        user.is_staff = True
        user.save(update_fields=["is_staff"])
        return user

    return make


@pytest.mark.django_db
def test_admin_site_is_called_leadops(client, admin_user):
    client.force_login(admin_user)
    response = client.get(reverse("admin:index"))
    assert response.status_code == 200
    assert response.context["site_header"] == "LeadOps"


@pytest.mark.django_db
def test_lead_list_shows_columns_without_a_query_per_row(
    client, manager, sales_rep, staff, django_assert_max_num_queries
):
    client.force_login(staff(manager))
    LeadFactory.create_batch(3, owner=sales_rep)
    with django_assert_max_num_queries(30) as few:
        client.get(LEADS_URL)
    LeadFactory.create_batch(20, owner=sales_rep)
    with django_assert_max_num_queries(len(few.captured_queries)):
        response = client.get(LEADS_URL)
    assert response.status_code == 200
    assert response.context["cl"].result_count == 23
    lead = Lead.objects.first()
    body = response.content.decode()
    assert lead.email in body and lead.account.name in body and "sales1" in body


@pytest.mark.django_db
def test_lead_list_searches_and_filters(client, manager, staff):
    client.force_login(staff(manager))
    hot = LeadFactory(email="hot@example.jp", temperature="hot", stage="mql")
    LeadFactory(email="cold@example.jp", account__name="別会社")
    by_company = client.get(LEADS_URL, {"q": hot.account.name})
    assert [lead.email for lead in by_company.context["cl"].result_list] == ["hot@example.jp"]
    filtered = client.get(LEADS_URL, {"temperature__exact": "hot", "stage__exact": "mql"})
    assert [lead.email for lead in filtered.context["cl"].result_list] == ["hot@example.jp"]
    assert filtered.context["cl"].show_full_result_count is False


@pytest.mark.django_db
def test_sales_rep_sees_only_own_leads_in_admin(client, sales_rep, other_sales_rep, staff):
    mine = LeadFactory(owner=sales_rep)
    theirs = LeadFactory(owner=other_sales_rep)
    LeadFactory(owner=None)
    client.force_login(staff(sales_rep))
    response = client.get(LEADS_URL)
    assert response.status_code == 200
    assert list(response.context["cl"].result_list) == [mine]
    assert theirs.email not in response.content.decode()


@pytest.mark.django_db
def test_sales_rep_cannot_open_another_reps_lead_by_url(client, sales_rep, other_sales_rep, staff):
    theirs = LeadFactory(owner=other_sales_rep, email="secret@example.jp")
    client.force_login(staff(sales_rep))
    response = client.get(reverse("admin:leadops_lead_change", args=[theirs.pk]), follow=True)
    assert response.redirect_chain[0][1] == 302
    assert "secret@example.jp" not in response.content.decode()
    history = client.get(reverse("admin:leadops_lead_history", args=[theirs.pk]))
    assert history.status_code in {302, 404}


@pytest.mark.django_db
def test_sales_rep_views_own_lead_read_only(client, sales_rep, staff):
    mine = LeadFactory(owner=sales_rep)
    client.force_login(staff(sales_rep))
    url = reverse("admin:leadops_lead_change", args=[mine.pk])
    response = client.get(url)
    assert response.status_code == 200
    assert not response.context["has_change_permission"]
    client.post(url, {"email": "changed@example.jp"})
    mine.refresh_from_db()
    assert mine.email != "changed@example.jp"


@pytest.mark.django_db
def test_stage_and_scores_are_read_only(client, marketer, staff):
    lead = LeadFactory(stage="mql", score=85, attribute_score=70, behavior_score=15)
    client.force_login(staff(marketer))
    url = reverse("admin:leadops_lead_change", args=[lead.pk])
    data = form_values(client.get(url), "lead_form")
    assert "stage" not in data and "score" not in data
    data |= {"title": "事業部長", "stage": "won", "score": "999", "attribute_score": "999"}
    response = client.post(url, data)
    assert response.status_code == 302, response.context and response.context["errors"]
    lead.refresh_from_db()
    assert (lead.title, lead.stage, lead.score, lead.attribute_score) == ("事業部長", "mql", 85, 70)


@pytest.mark.django_db
def test_marketer_adds_a_lead_with_its_email_lower_cased(client, marketer, staff):
    client.force_login(staff(marketer))
    url = reverse("admin:leadops_lead_add")
    data = form_values(client.get(url), "lead_form")
    data |= {"email": "New.Lead@Example.JP", "last_name": "佐藤", "first_name": "花子"}
    response = client.post(url, data)
    assert response.status_code == 302, response.context and response.context["errors"]
    lead = Lead.objects.get()
    assert (lead.email, lead.stage, lead.score) == ("new.lead@example.jp", "new", 0)


@pytest.mark.django_db
def test_lead_change_page_shows_the_newest_50_activities(client, manager, staff):
    lead = LeadFactory()
    ActivityFactory.create_batch(55, lead=lead)
    client.force_login(staff(manager))
    response = client.get(reverse("admin:leadops_lead_change", args=[lead.pk]))
    inline = response.context["inline_admin_formsets"][0]
    shown = [form.instance for form in inline.formset.forms]
    assert len(shown) == 50
    newest = Activity.objects.order_by("-occurred_at", "-id")[:50]
    assert [a.pk for a in shown] == [a.pk for a in newest]


@pytest.mark.django_db
def test_markup_in_a_field_is_shown_escaped(client, manager, staff):
    LeadFactory(first_name="<script>alert(1)</script>", account__name="<b>Evil</b> Inc")
    client.force_login(staff(manager))
    body = client.get(LEADS_URL).content.decode()
    assert "<script>alert(1)</script>" not in body
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in body
    assert "&lt;b&gt;Evil&lt;/b&gt; Inc" in body


@pytest.mark.django_db
def test_lead_admin_offers_csv_export(client, manager, staff, rf):
    request = rf.get(LEADS_URL)
    request.user = staff(manager)
    assert "export_csv" in admin.site.get_model_admin(Lead).get_actions(request)


@pytest.mark.django_db
def test_activities_are_view_only_even_for_a_superuser(client, admin_user):
    activity = ActivityFactory()
    client.force_login(admin_user)
    assert client.get(reverse("admin:leadops_activity_add")).status_code == 403
    change_url = reverse("admin:leadops_activity_change", args=[activity.pk])
    page = client.get(change_url)
    assert page.status_code == 200 and not page.context["has_change_permission"]
    assert activity.event_id in page.content.decode()
    client.post(change_url, {"type": "form_submit"})
    activity.refresh_from_db()
    assert activity.type == "page_view"
    delete_url = reverse("admin:leadops_activity_delete", args=[activity.pk])
    assert client.post(delete_url, {"post": "yes"}).status_code == 403
    assert Activity.objects.filter(pk=activity.pk).exists()
    listing = client.get(reverse("admin:leadops_activity_changelist"))
    assert listing.status_code == 200
    assert listing.context["action_form"] is None  # not even "delete selected"


@pytest.mark.django_db
def test_activity_list_filters_by_type_and_hides_others_leads_from_sales(
    client, sales_rep, other_sales_rep, staff
):
    mine = ActivityFactory(lead__owner=sales_rep, type="form_submit")
    ActivityFactory(lead__owner=sales_rep, type="page_view")
    ActivityFactory(lead__owner=other_sales_rep, type="form_submit")
    assert ActivityAdmin.list_select_related == ("lead",)
    client.force_login(staff(sales_rep))
    response = client.get(
        reverse("admin:leadops_activity_changelist"), {"type__exact": "form_submit"}
    )
    assert list(response.context["cl"].result_list) == [mine]


@pytest.mark.django_db
def test_user_admin_shows_and_filters_by_role(client, admin_user, marketer, sales_rep):
    client.force_login(admin_user)
    response = client.get(USERS_URL, {"role": "sales"})
    assert [u.username for u in response.context["cl"].result_list] == ["sales1"]
    assert "role" in response.context["cl"].list_display
    everyone = client.get(USERS_URL).content.decode()
    assert "marketer1" in everyone and "sales1" in everyone


@pytest.mark.django_db
def test_superuser_changes_a_users_role(client, admin_user, sales_rep):
    client.force_login(admin_user)
    url = reverse("admin:auth_user_change", args=[sales_rep.pk])
    page = client.get(url)
    data = form_values(page, "user_form")
    assert data["role"] == "sales"
    response = client.post(url, data | {"role": "manager"})
    assert response.status_code == 302, response.context and response.context["errors"]
    assert list(sales_rep.groups.values_list("name", flat=True)) == ["manager"]


@pytest.mark.django_db
def test_superuser_adds_a_user_with_a_role(client, admin_user):
    client.force_login(admin_user)
    url = reverse("admin:auth_user_add")
    data = form_values(client.get(url), "user_form")
    data |= {"username": "newrep", "password1": "Tr1cky-Pass-42", "password2": "Tr1cky-Pass-42"}
    response = client.post(url, data | {"usable_password": "true", "role": "inside_sales"})
    assert response.status_code == 302, response.context and response.context["errors"]
    user = admin_user.__class__.objects.get(username="newrep")
    assert user.is_staff and list(user.groups.values_list("name", flat=True)) == ["inside_sales"]


@pytest.mark.django_db
def test_manager_views_users_but_a_marketer_does_not(client, manager, marketer, staff):
    client.force_login(staff(manager))
    assert client.get(USERS_URL).status_code == 200
    change = client.get(reverse("admin:auth_user_change", args=[marketer.pk]))
    assert change.status_code == 200 and not change.context["has_change_permission"]
    client.force_login(staff(marketer))
    assert client.get(USERS_URL).status_code == 403


@pytest.mark.django_db
def test_role_groups_hold_sensible_permissions():
    def codes(role: str) -> set[str]:
        perms = Group.objects.get(name=role).permissions.select_related("content_type")
        return {f"{p.content_type.app_label}.{p.codename}" for p in perms}

    assert {"leadops.add_lead", "leadops.change_account", "leadops.view_activity"} <= codes(
        "marketer"
    )
    assert {"leadops.view_lead", "leadops.change_lead"} <= codes("inside_sales")
    assert "leadops.add_lead" not in codes("inside_sales")
    assert "leadops.view_lead" in codes("sales")
    assert not {"leadops.change_lead", "leadops.add_lead"} & codes("sales")
    every_view = Permission.objects.filter(
        content_type__app_label__in=["leadops", "scoring", "handoff", "nurturing"],
        codename__startswith="view_",
    )
    manager = codes("manager")
    assert {f"{p.content_type.app_label}.{p.codename}" for p in every_view} <= manager
    assert {"auth.view_user", "auth.view_group"} <= manager
    assert "auth.change_user" not in manager


@pytest.mark.django_db
def test_whoever_edits_leads_can_pick_an_owner_but_not_browse_users(
    client, is_rep, sales_rep, staff
):
    staff(sales_rep)
    url = reverse("admin:autocomplete")
    params = {"app_label": "leadops", "model_name": "lead", "field_name": "owner", "term": "sal"}
    client.force_login(staff(is_rep))
    response = client.get(url, params)
    assert response.status_code == 200
    assert [r["text"] for r in response.json()["results"]] == ["sales1"]
    assert client.get(USERS_URL).status_code == 403
    client.force_login(sales_rep)
    assert client.get(url, params).status_code == 403


@pytest.mark.django_db
def test_account_autocomplete_and_admin(client, marketer, staff):
    LeadFactory(account__name="株式会社サンプル")
    client.force_login(staff(marketer))
    params = {
        "app_label": "leadops",
        "model_name": "lead",
        "field_name": "account",
        "term": "サンプル",
    }
    response = client.get(reverse("admin:autocomplete"), params)
    assert [r["text"] for r in response.json()["results"]] == ["株式会社サンプル"]
    listing = client.get(reverse("admin:leadops_account_changelist"), {"q": "サンプル"})
    assert [a.name for a in listing.context["cl"].result_list] == ["株式会社サンプル"]


@pytest.mark.django_db
def test_paginator_counts_exactly_when_small_and_estimates_when_big(monkeypatch):
    LeadFactory.create_batch(3)
    queryset = Lead.objects.order_by("-id")
    assert PlannerCountPaginator(queryset, 100).count == 3
    monkeypatch.setattr(PlannerCountPaginator, "EXACT_BELOW", 0)
    estimate = planner_row_estimate(queryset)
    assert estimate >= 1
    assert PlannerCountPaginator(queryset, 100).count == estimate
