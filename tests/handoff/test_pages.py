"""The pages IS and sales work in: /queue/, /inbox/, /leads/<id>/, the bell.

Real PostgreSQL, real services: each action posts a form, with htmx (the fragment it
swaps) and without (redirect with a message).
"""

from __future__ import annotations

import re
from datetime import timedelta
from html import unescape
from pathlib import Path

import pytest
from django.conf import settings as django_settings
from django.core.cache import cache
from django.db import connection
from django.test import Client
from django.urls import reverse
from django.utils import timezone

from handoff import views
from handoff.models import ContactAttempt, Handoff, LeadNote, Notification
from handoff.services import claim_handoff, mark_lead_mql, qualify_lead, reject_sql
from leadops.models import Lead
from leadops.roles import assign_role
from scoring.services import rescore_leads
from tests.factories import ActivityFactory, LeadFactory

pytestmark = pytest.mark.django_db

QUEUE = "/queue/"
INBOX = "/inbox/"
HTMX = {"HTTP_HX_REQUEST": "true"}
MALICIOUS = "<script>alert('x')</script>"
ESCAPED = "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt;"


@pytest.fixture(autouse=True)
def header_in_every_page(settings):
    """base.html's bell and role links come from `handoff.views.header_context`."""
    processors = settings.TEMPLATES[0]["OPTIONS"]["context_processors"]
    if "handoff.views.header_context" not in processors:
        settings.TEMPLATES = [
            {
                **settings.TEMPLATES[0],
                "OPTIONS": {
                    **settings.TEMPLATES[0]["OPTIONS"],
                    "context_processors": [*processors, "handoff.views.header_context"],
                },
            }
        ]


@pytest.fixture(autouse=True)
def fresh_team_counts():
    # The whole team's warning / breached figures are cached for half a minute.
    cache.delete(views.TEAM_COUNTS_CACHE_KEY)
    yield
    cache.delete(views.TEAM_COUNTS_CACHE_KEY)


def open_handoff(**lead_fields) -> Handoff:
    lead = LeadFactory(stage="nurturing", **lead_fields)
    mark_lead_mql(lead.pk, reason="MQL rule met")
    return Handoff.objects.select_related("lead").get(lead=lead, kind="inside_sales")


def sql_for(rep, *, is_rep, **lead_fields) -> Lead:
    handoff = open_handoff(**lead_fields)
    bant = {"budget": "300万円", "authority": "部長決裁", "need": "MA刷新", "timeline": "来期"}
    qualify_lead(handoff.pk, actor=is_rep, sales_rep=rep, bant=bant)
    return Lead.objects.get(pk=handoff.lead_id)


def set_clock(handoff: Handoff, *, warn_in: timedelta, due_in: timedelta) -> None:
    now = timezone.now()
    Handoff.objects.filter(pk=handoff.pk).update(warn_at=now + warn_in, due_at=now + due_in)


def signed_in(client: Client, user) -> Client:
    client.force_login(user)
    return client


def text(response) -> str:
    return response.content.decode()


def row_ids(body: str) -> list[int]:
    return [int(pk) for pk in re.findall(r'<tbody id="handoff-(\d+)"', body)]


def action_url(handoff: Handoff, name: str) -> str:
    return reverse("handoff:handoff_action", args=[handoff.pk, name])


def lead_action_url(lead: Lead, name: str) -> str:
    return reverse("handoff:lead_action", args=[lead.pk, name])


@pytest.fixture
def is_client(client, is_rep) -> Client:
    return signed_in(client, is_rep)


# --- who may open which page ---------------------------------------------------------------


def test_signed_out_visitors_are_sent_to_log_in(client):
    for url in (QUEUE, INBOX, "/leads/1/", "/notifications/"):
        response = client.get(url)
        assert response.status_code == 302
        assert response["Location"].startswith(reverse("admin:login"))


@pytest.mark.parametrize(
    ("role", "queue", "inbox"),
    [
        ("is_rep", 200, 403),
        ("manager", 200, 200),
        ("marketer", 200, 403),
        ("sales_rep", 403, 200),
    ],
)
def test_each_role_opens_the_pages_it_works_in(client, request, role, queue, inbox):
    user = request.getfixturevalue(role)
    signed_in(client, user)
    assert client.get(QUEUE).status_code == queue
    assert client.get(INBOX).status_code == inbox
    home = text(client.get("/"))
    assert (f'href="{QUEUE}"' in home) == (queue == 200)
    assert (f'href="{INBOX}"' in home) == (inbox == 200)


def test_marketers_read_the_queue_without_actions(client, marketer, is_rep):
    handoff = open_handoff()
    body = text(signed_in(client, marketer).get(QUEUE))
    assert row_ids(body) == [handoff.pk]
    assert 'data-action="claim"' not in body
    assert 'data-action="qualify"' not in body
    assert client.post(action_url(handoff, "claim"), {"from": "queue"}).status_code == 403
    assert Handoff.objects.get(pk=handoff.pk).status == "open"


def test_sales_reps_cannot_work_the_queue(client, sales_rep, is_rep, other_sales_rep):
    own = sql_for(sales_rep, is_rep=is_rep)
    own_is_handoff = Handoff.objects.get(lead=own, kind="inside_sales")
    theirs = open_handoff()
    signed_in(client, sales_rep)
    # Someone else's lead does not exist for a sales rep; their own is 403.
    assert client.post(action_url(theirs, "claim")).status_code == 404
    assert client.post(action_url(own_is_handoff, "contact")).status_code == 403


# --- the queue: tabs, order, rows, numbers, pages ------------------------------------------


def test_tabs_show_mine_unassigned_and_the_whole_team(is_client, is_rep, django_user_model):
    mine = open_handoff()
    colleague = django_user_model.objects.create_user("is2")
    assign_role(colleague, role="inside_sales")
    theirs = open_handoff()
    Handoff.objects.filter(pk=theirs.pk).update(assignee=colleague)
    nobody = open_handoff()
    Handoff.objects.filter(pk=nobody.pk).update(assignee=None)
    assert row_ids(text(is_client.get(QUEUE))) == [mine.pk]  # an IS rep starts on "mine"
    assert row_ids(text(is_client.get(QUEUE + "?view=unassigned"))) == [nobody.pk]
    team = row_ids(text(is_client.get(QUEUE + "?view=team")))
    assert sorted(team) == sorted([mine.pk, theirs.pk, nobody.pk])


def test_rows_are_sorted_by_sla_due_time_and_closed_ones_leave(is_client, is_rep):
    late, soon, later = open_handoff(), open_handoff(), open_handoff()
    set_clock(late, warn_in=timedelta(hours=2), due_in=timedelta(hours=3))
    set_clock(soon, warn_in=timedelta(minutes=-5), due_in=timedelta(minutes=30))
    set_clock(later, warn_in=timedelta(hours=5), due_in=timedelta(hours=6))
    done = open_handoff()
    Handoff.objects.filter(pk=done.pk).update(status="done")
    assert row_ids(text(is_client.get(QUEUE))) == [soon.pk, late.pk, later.pk]


def test_a_row_shows_lead_score_reasons_sla_and_last_activity(is_client, is_rep):
    lead = LeadFactory(stage="nurturing", last_name="佐藤", first_name="花子")
    for url in ("https://example.jp/pricing", "https://example.jp/case/1"):
        ActivityFactory(lead=lead, type="page_view", properties={"url": url})
    ActivityFactory(lead=lead, type="email_click", properties={})
    rescore_leads([lead.pk])  # director + marketing + 120 people + software: MQL
    Lead.objects.filter(pk=lead.pk).update(last_activity_at=timezone.now() - timedelta(hours=2))
    lead.refresh_from_db()
    handoff = Handoff.objects.get(lead=lead, kind="inside_sales")
    body = text(is_client.get(QUEUE))
    row = body[body.index(f'id="handoff-{handoff.pk}"') :]
    assert f'href="/leads/{lead.pk}/"' in row and "佐藤 花子" in row
    assert lead.account.name in row
    assert f'<span class="score">{lead.score}</span>' in row and "Hot" in row
    reasons = re.findall(r'<span class="reason-rule">([^<]+)</span>', row.split("</tbody>")[0])
    assert len(reasons) == 3  # the three biggest of the breakdown
    assert "Pricing page view" in reasons
    assert "On track" in row and " left</span>" in row  # a business-time countdown
    assert "2\xa0hours ago</time>" in row  # last activity


def test_warning_and_breached_rows_say_so_and_are_counted(is_client, is_rep):
    fine, warned, breached = open_handoff(), open_handoff(), open_handoff()
    set_clock(warned, warn_in=timedelta(minutes=-1), due_in=timedelta(days=3))
    set_clock(breached, warn_in=timedelta(days=-2), due_in=timedelta(days=-1))
    Handoff.objects.filter(pk=fine.pk).update(assignee=None)
    body = text(is_client.get(QUEUE))
    assert re.search(r'class="sla sla-warning">.*?Warning</span>', body)
    assert re.search(r'class="sla sla-breached">.*?Breached</span>', body)
    assert "overdue</span>" in body
    assert re.search(r'id="count-mine"[^>]*>2<', body)
    assert re.search(r'id="count-unassigned"[^>]*>1<', body)
    assert re.search(r'id="count-warning"[^>]*>1<', body)
    assert re.search(r'id="count-breached"[^>]*>1<', body)


def test_whole_team_figures_are_shared_for_half_a_minute(is_client, is_rep):
    breached = open_handoff()
    set_clock(breached, warn_in=timedelta(days=-2), due_in=timedelta(days=-1))
    body = text(is_client.get(QUEUE + "?view=team"))
    assert re.search(r'id="count-breached"[^>]*>1<', body)
    assert "Whole-team figures counted at" in body
    another = open_handoff()
    set_clock(another, warn_in=timedelta(days=-2), due_in=timedelta(days=-1))
    # Mine and unassigned stay live; the team's warning / breached wait for the cache.
    body = text(is_client.get(QUEUE + "?view=team"))
    assert re.search(r'id="count-mine"[^>]*>2<', body)
    assert re.search(r'id="count-breached"[^>]*>1<', body)
    assert re.search(r'id="count-breached"[^>]*>2<', text(is_client.get(QUEUE + "?view=mine")))
    cache.delete(views.TEAM_COUNTS_CACHE_KEY)
    body = text(is_client.get(QUEUE + "?view=team"))
    assert re.search(r'id="count-breached"[^>]*>2<', body)


def test_keyset_pages_cover_every_row_once_even_on_equal_due_times(is_client, monkeypatch):
    monkeypatch.setattr(views, "QUEUE_PAGE_SIZE", 3)
    handoffs = [open_handoff() for _ in range(7)]
    same = timezone.now() + timedelta(hours=1)
    Handoff.objects.filter(pk__in=[h.pk for h in handoffs]).update(due_at=same)
    seen, url = [], QUEUE + "?view=team"
    while url:
        body = text(is_client.get(url))
        seen += row_ids(body)
        link = re.search(r'id="next-page" rel="next" href="([^"]+)"', body)
        url = unescape(link.group(1)) if link else None
    assert seen == sorted(h.pk for h in handoffs)


@pytest.mark.parametrize(
    "query",
    [
        "view=everything",
        "after=yesterday,1",
        "after=2026-01-01T00:00:00,1",
        "after=,",
        "q=" + "x" * 101,
    ],
)
def test_bad_queue_parameters_are_400_with_a_message(is_client, query):
    response = is_client.get(f"{QUEUE}?{query}")
    assert response.status_code == 400
    assert 'role="alert"' in text(response)


def test_search_finds_leads_by_name_email_or_company(is_client, is_rep):
    wanted = open_handoff(last_name="検索対象")
    open_handoff()
    assert row_ids(text(is_client.get(QUEUE + "?q=検索対象"))) == [wanted.pk]
    assert row_ids(text(is_client.get(f"{QUEUE}?q={wanted.lead.email}"))) == [wanted.pk]
    local_part = wanted.lead.email.split("@")[0] + "@"  # not an address: a substring
    assert row_ids(text(is_client.get(f"{QUEUE}?q={local_part}"))) == [wanted.pk]
    company = wanted.lead.account.name
    assert row_ids(text(is_client.get(f"{QUEUE}?q={company}"))) == [wanted.pk]
    assert row_ids(text(is_client.get(QUEUE + "?q=どこにもない"))) == []


@pytest.mark.parametrize("view", ["mine", "team"])
def test_queue_queries_do_not_grow_with_the_rows(
    is_client, is_rep, view, django_assert_num_queries
):
    url = f"{QUEUE}?view={view}"
    for _ in range(3):
        open_handoff()
    # The team's figures live 30 s in the shared cache: an earlier test's copy could
    # expire between the two counted requests below.
    cache.delete(views.TEAM_COUNTS_CACHE_KEY)
    is_client.get(url)  # warms the per-process rule catalogue and the team's figures
    # Session, user, roles; the rows (one join); policy, holidays; mine and unassigned
    # figures (a query each: one OR-ed query would miss the open hand-offs' index); the
    # bell. Nothing per row.
    with django_assert_num_queries(9):
        assert len(row_ids(text(is_client.get(url)))) == 3
    for _ in range(views.QUEUE_PAGE_SIZE):
        open_handoff()
    with django_assert_num_queries(9):
        body = text(is_client.get(url))
    assert len(row_ids(body)) == views.QUEUE_PAGE_SIZE
    assert 'id="next-page"' in body


@pytest.mark.parametrize("view", ["mine", "unassigned", "team"])
def test_the_queue_page_rides_a_partial_index(is_rep, view):
    handoff = open_handoff()
    with connection.cursor() as cursor:
        # A handful of rows: make the planner show the plan it picks for a big queue
        # (at 50k open hand-offs it reads the index in page order and stops at the limit).
        cursor.execute("SET LOCAL enable_seqscan = off")
        cursor.execute("SET LOCAL enable_bitmapscan = off")
    for after in (None, (handoff.due_at, handoff.pk)):
        rows = views.open_is_handoffs().filter(views._view_filter(view, is_rep))
        if after:
            rows = rows.filter(views._after_filter(after))
        plan = rows.order_by("due_at", "pk")[: views.QUEUE_PAGE_SIZE + 1].explain()
        # Which index depends on the statistics (at 50k hand-offs "mine" takes
        # handoff_open_assignee_due, the others handoff_open_due or, unassigned, its own
        # handoff_open_unassigned), read in page order: never sorted.
        indexes = ("handoff_open_due", "handoff_open_assignee_due", "handoff_open_unassigned")
        assert any(index in plan for index in indexes), plan
        assert "Sort" not in plan, plan


# --- queue actions ------------------------------------------------------------------------------


def test_claim_with_htmx_swaps_the_row(is_client, is_rep):
    handoff = open_handoff()
    response = is_client.post(
        action_url(handoff, "claim"), {"from": "queue", "next": QUEUE}, **HTMX
    )
    assert response.status_code == 200
    body = text(response)
    assert body.lstrip().startswith(f'<tbody id="handoff-{handoff.pk}"')
    assert "<html" not in body
    assert "is yours" in body and "Claimed" in body
    assert Handoff.objects.get(pk=handoff.pk).status == "claimed"


def test_claim_without_javascript_redirects_with_a_message(is_client, is_rep):
    handoff = open_handoff()
    response = is_client.post(
        action_url(handoff, "claim"), {"from": "queue", "next": QUEUE + "?view=team"}, follow=True
    )
    assert response.redirect_chain == [(QUEUE + "?view=team", 302)]
    assert "is yours" in text(response)


def test_claiming_a_taken_hand_off_is_a_clear_409(client, is_rep, django_user_model):
    handoff = open_handoff()
    rival = django_user_model.objects.create_user("is2")
    assign_role(rival, role="inside_sales")
    claim_handoff(handoff.pk, actor=is_rep)
    signed_in(client, rival)
    response = client.post(action_url(handoff, "claim"), {"from": "queue"}, **HTMX)
    assert response.status_code == 409
    assert "already taken by is1" in text(response)
    assert 'role="alert"' in text(response)
    redirected = client.post(action_url(handoff, "claim"), {"next": QUEUE}, follow=True)
    assert "already taken by is1" in text(redirected)


def test_an_action_form_opens_as_a_panel_or_as_a_page(is_client, is_rep):
    handoff = open_handoff()
    panel = text(is_client.get(action_url(handoff, "contact") + "?from=queue", **HTMX))
    assert panel.lstrip().startswith('<form class="action-form action-contact"')
    assert f'hx-target="#handoff-{handoff.pk}"' in panel and "csrfmiddlewaretoken" in panel
    page = text(is_client.get(action_url(handoff, "contact")))
    assert "<html" in page and 'name="channel"' in page
    assert "hx-post" not in page  # its own page posts plainly: nothing there to swap


def test_a_bad_contact_attempt_shows_errors_next_to_the_fields(is_client, is_rep):
    handoff = open_handoff()
    response = is_client.post(
        action_url(handoff, "contact"), {"from": "queue", "channel": "fax", "note": "x"}, **HTMX
    )
    assert response.status_code == 400
    body = text(response)
    assert body.lstrip().startswith(f'<tbody id="handoff-{handoff.pk}"')
    assert re.search(r'id="queue-\d+-contact-channel_error"><li>Select a valid choice', body)
    assert re.search(r'id="queue-\d+-contact-outcome_error"><li>This field is required', body)
    assert not ContactAttempt.objects.exists()
    # Without JavaScript: the form page again, with the same errors, still 400.
    page = is_client.post(action_url(handoff, "contact"), {"channel": "fax"})
    assert (
        page.status_code == 400 and "<html" in text(page) and "Select a valid choice" in text(page)
    )


def test_logging_a_contact_attempt_meets_the_sla(is_client, is_rep):
    handoff = open_handoff()
    response = is_client.post(
        action_url(handoff, "contact"),
        {"from": "queue", "channel": "call", "outcome": "no_answer", "note": "留守電"},
        **HTMX,
    )
    assert response.status_code == 200
    attempt = ContactAttempt.objects.get()
    assert (attempt.channel, attempt.outcome, attempt.note, attempt.actor) == (
        "call",
        "no_answer",
        "留守電",
        is_rep,
    )
    handoff.refresh_from_db()
    assert handoff.sla_state == "met" and handoff.status == "claimed"
    assert "Met" in text(response)


def test_bant_is_saved_and_prefills_the_qualify_form(is_client, is_rep, sales_rep):
    handoff = open_handoff()
    bant = {"budget": "500万円", "authority": "CIO", "need": "", "timeline": "Q3"}
    is_client.post(action_url(handoff, "bant"), {"from": "queue", **bant}, **HTMX)
    handoff.refresh_from_db()
    assert handoff.bant["budget"] == "500万円" and handoff.bant["timeline"] == "Q3"
    panel = text(is_client.get(action_url(handoff, "qualify") + "?from=queue", **HTMX))
    assert 'value="500万円"' in panel
    assert f'<option value="{sales_rep.pk}">sales1</option>' in panel


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({}, "Choose the sales rep who gets this lead."),
        ({"sales_rep": "999999"}, "Choose an active user in the sales team."),
        ({"sales_rep": "not-a-number"}, "Choose an active user in the sales team."),
    ],
)
def test_qualifying_without_a_real_sales_rep_is_a_form_error(is_client, is_rep, data, message):
    handoff = open_handoff()
    response = is_client.post(action_url(handoff, "qualify"), {"from": "queue", **data}, **HTMX)
    assert response.status_code == 400
    assert re.search(
        rf'id="queue-{handoff.pk}-qualify-sales_rep_error"><li>{message}', text(response)
    )
    assert Lead.objects.get(pk=handoff.lead_id).stage == "mql"


def test_an_is_rep_is_not_a_sales_rep_to_qualify_to(is_client, is_rep):
    handoff = open_handoff()
    response = is_client.post(action_url(handoff, "qualify"), {"sales_rep": is_rep.pk}, **HTMX)
    assert response.status_code == 400
    assert "Choose an active user in the sales team." in text(response)


def test_qualifying_hands_the_lead_to_the_chosen_sales_rep(is_client, is_rep, sales_rep):
    handoff = open_handoff()
    response = is_client.post(
        action_url(handoff, "qualify"),
        {"from": "queue", "sales_rep": sales_rep.pk, "budget": "300万円", "need": "MA"},
        **HTMX,
    )
    assert response.status_code == 200
    body = text(response)
    assert "is now an SQL" in body and "Qualified to SQL" in body
    assert 'data-action="claim"' not in body  # a closed row has no actions left
    lead = Lead.objects.get(pk=handoff.lead_id)
    assert (lead.stage, lead.owner) == ("sql", sales_rep)
    sales = Handoff.objects.get(lead=lead, kind="sales")
    assert sales.assignee == sales_rep and sales.bant["budget"] == "300万円"
    # Qualifying it again: the hand-off is closed — a conflict, not a crash.
    again = is_client.post(action_url(handoff, "qualify"), {"sales_rep": sales_rep.pk}, **HTMX)
    assert again.status_code == 409 and "already closed" in text(again)


def test_returning_needs_a_reason_and_resets_the_behaviour_score(is_client, is_rep):
    handoff = open_handoff()
    missing = is_client.post(action_url(handoff, "return"), {"from": "queue"}, **HTMX)
    assert missing.status_code == 400 and "Choose a reason." in text(missing)
    unknown = is_client.post(action_url(handoff, "return"), {"reason": "bored"}, **HTMX)
    assert unknown.status_code == 400
    Lead.objects.filter(pk=handoff.lead_id).update(behavior_score=40)
    response = is_client.post(
        action_url(handoff, "return"),
        {"from": "queue", "reason": "timing", "comment": "来期に再検討"},
        **HTMX,
    )
    assert response.status_code == 200 and "back to nurturing" in text(response)
    lead = Lead.objects.get(pk=handoff.lead_id)
    assert (lead.stage, lead.behavior_score) == ("nurturing", 0)


def test_disqualifying_needs_a_reason(is_client, is_rep):
    handoff = open_handoff()
    missing = is_client.post(action_url(handoff, "disqualify"), {"reason": "  "}, **HTMX)
    assert missing.status_code == 400
    assert "Say why this lead is disqualified." in text(missing)
    is_client.post(action_url(handoff, "disqualify"), {"reason": "競合他社"}, **HTMX)
    assert Lead.objects.get(pk=handoff.lead_id).stage == "disqualified"


def test_unknown_actions_and_hand_offs_are_404(is_client, is_rep):
    handoff = open_handoff()
    assert is_client.post(action_url(handoff, "delete")).status_code == 404
    assert (
        is_client.post(reverse("handoff:handoff_action", args=[999999, "claim"])).status_code == 404
    )


def test_a_foreign_next_url_is_not_followed(is_client, is_rep):
    handoff = open_handoff()
    response = is_client.post(action_url(handoff, "claim"), {"next": "https://evil.example/"})
    assert response.status_code == 302
    assert response["Location"] == f"/leads/{handoff.lead_id}/"


# --- the inbox --------------------------------------------------------------------------------


def test_inbox_lists_my_sqls_with_sla_bant_and_reasons(client, sales_rep, other_sales_rep, is_rep):
    mine = sql_for(sales_rep, is_rep=is_rep)
    theirs = sql_for(other_sales_rep, is_rep=is_rep)
    body = text(signed_in(client, sales_rep).get(INBOX))
    assert f'id="inbox-{mine.pk}"' in body and f'id="inbox-{theirs.pk}"' not in body
    assert "Acceptance SLA" in body and "On track" in body and " left</span>" in body
    assert "300万円" in body and "部長決裁" in body
    assert "Handed over by" in body and "is1" in body
    assert lead_action_url(mine, "accept") in body and lead_action_url(mine, "reject") in body


def test_accepting_makes_a_sal_and_moves_it_to_the_accepted_list(client, sales_rep, is_rep):
    lead = sql_for(sales_rep, is_rep=is_rep)
    signed_in(client, sales_rep)
    response = client.post(lead_action_url(lead, "accept"), {"from": "inbox"}, **HTMX)
    assert response.status_code == 200
    body = text(response)
    assert body.lstrip().startswith(f'<article id="inbox-{lead.pk}"')
    assert "is now a SAL" in body
    assert 'id="accepted-leads" aria-labelledby="accepted-heading" hx-swap-oob="true"' in body
    assert f'id="accepted-{lead.pk}"' in body
    assert Lead.objects.get(pk=lead.pk).stage == "sal"
    again = client.post(lead_action_url(lead, "accept"), {"from": "inbox"}, **HTMX)
    assert again.status_code == 409 and "not waiting for a sales answer" in text(again)


def test_rejecting_needs_a_reason_code_and_a_comment(client, sales_rep, is_rep):
    lead = sql_for(sales_rep, is_rep=is_rep)
    signed_in(client, sales_rep)
    url = lead_action_url(lead, "reject")
    empty = client.post(url, {"from": "inbox"}, **HTMX)
    assert empty.status_code == 400
    assert re.search(rf'id="inbox-{lead.pk}-reject-reason_error"><li>Choose a reason', text(empty))
    assert re.search(rf'id="inbox-{lead.pk}-reject-comment_error"><li>Add a comment', text(empty))
    assert '<details class="reject" open>' in text(empty)
    unknown = client.post(url, {"from": "inbox", "reason": "bored", "comment": "x"}, **HTMX)
    assert unknown.status_code == 400
    assert Lead.objects.get(pk=lead.pk).stage == "sql"
    done = client.post(url, {"from": "inbox", "reason": "timing", "comment": MALICIOUS}, **HTMX)
    assert done.status_code == 200 and "went back to nurturing" in text(done)
    lead.refresh_from_db()
    assert (lead.stage, lead.owner, lead.behavior_score) == ("nurturing", None, 0)


def test_a_rep_cannot_answer_someone_elses_sql(client, sales_rep, other_sales_rep, is_rep):
    lead = sql_for(other_sales_rep, is_rep=is_rep)
    signed_in(client, sales_rep)
    assert client.post(lead_action_url(lead, "accept"), {"from": "inbox"}).status_code == 404
    assert client.get(f"/leads/{lead.pk}/").status_code == 404
    assert Lead.objects.get(pk=lead.pk).stage == "sql"


def test_accepting_after_a_reject_is_a_conflict(client, sales_rep, is_rep, manager):
    lead = sql_for(sales_rep, is_rep=is_rep)
    reject_sql(lead.pk, actor=sales_rep, reason="timing", comment="来期")
    # The lead is no longer theirs: they cannot see it any more.
    signed_in(client, sales_rep)
    assert client.post(lead_action_url(lead, "accept")).status_code == 404
    signed_in(client, manager)
    response = client.post(lead_action_url(lead, "accept"), {"from": "lead"}, **HTMX)
    assert response.status_code == 409 and "not waiting for a sales answer" in text(response)


def test_accepted_leads_move_to_opportunity_then_won(client, sales_rep, is_rep):
    lead = sql_for(sales_rep, is_rep=is_rep)
    signed_in(client, sales_rep)
    client.post(lead_action_url(lead, "accept"), {"from": "inbox"}, **HTMX)
    response = client.post(lead_action_url(lead, "opportunity"), {"from": "inbox"}, **HTMX)
    assert response.status_code == 200
    assert text(response).lstrip().startswith(f'<tbody id="accepted-{lead.pk}"')
    assert lead_action_url(lead, "won") in text(response)
    client.post(lead_action_url(lead, "won"), {"from": "inbox", "note": "受注"}, **HTMX)
    assert Lead.objects.get(pk=lead.pk).stage == "won"
    body = text(client.get(INBOX))
    assert f'id="accepted-{lead.pk}"' not in body  # won leads leave the list


def test_managers_see_every_reps_inbox_and_filter_by_rep(
    client, manager, sales_rep, other_sales_rep, is_rep
):
    first = sql_for(sales_rep, is_rep=is_rep)
    second = sql_for(other_sales_rep, is_rep=is_rep)
    signed_in(client, manager)
    body = text(client.get(INBOX))
    assert f'id="inbox-{first.pk}"' in body and f'id="inbox-{second.pk}"' in body
    assert lead_action_url(first, "accept") not in body  # only the rep answers
    filtered = text(client.get(INBOX + "?rep=sales2"))
    assert f'id="inbox-{first.pk}"' not in filtered and f'id="inbox-{second.pk}"' in filtered
    unknown = client.get(INBOX + "?rep=nobody")
    assert unknown.status_code == 400 and "No active sales rep is called nobody" in text(unknown)


# --- the lead page -----------------------------------------------------------------------------


def test_the_lead_page_shows_profile_score_history_and_chart(client, manager):
    lead = LeadFactory(stage="nurturing", phone="03-1234-5678", region="東京都")
    ActivityFactory(lead=lead, type="page_view", properties={"url": "https://example.jp/pricing"})
    rescore_leads([lead.pk])
    lead.refresh_from_db()
    body = text(signed_in(client, manager).get(f"/leads/{lead.pk}/"))
    assert lead.email in body and "03-1234-5678" in body and "東京都" in body
    assert f'id="score-total">{lead.score}<' in body
    assert f'id="score-attribute">{lead.attribute_score}<' in body
    assert "Pricing page view" in body  # breakdown and history
    assert '<svg class="score-chart" role="img"' in body and "<polyline" in body
    assert "https://" not in re.sub(
        r'href="https://example\.jp[^"]*"|>https://example\.jp[^<]*<', "", body
    )


def test_the_lead_page_shows_the_open_hand_off_and_the_timeline(client, is_rep):
    handoff = open_handoff()
    lead = handoff.lead
    signed_in(client, is_rep)
    client.post(
        action_url(handoff, "contact"),
        {"channel": "email", "outcome": "reached", "note": "資料送付"},
    )
    client.post(lead_action_url(lead, "note"), {"body": "決裁者は部長"})
    body = text(client.get(f"/leads/{lead.pk}/"))
    assert "First contact (IS)" in body and "Met" in body
    assert "Stage: Nurturing → MQL" in body  # the transition
    assert "Email: Reached" in body and "資料送付" in body  # the contact attempt
    assert "決裁者は部長" in body  # the note
    assert body.index("決裁者は部長") < body.index("Stage: Nurturing → MQL")  # newest first


def test_unknown_timeline_kinds_are_shown_field_by_field(client, manager, monkeypatch):
    lead = LeadFactory()
    entry = {"kind": "meeting_booked", "at": timezone.now().isoformat(), "room": "A会議室"}
    monkeypatch.setattr(views, "timeline_page", lambda lead, cursor, size: ([entry], None))
    body = text(signed_in(client, manager).get(f"/leads/{lead.pk}/"))
    assert "meeting_booked" in body and "room: A会議室" in body


def test_timeline_pages_follow_older_links_and_refuse_broken_ones(client, manager, monkeypatch):
    monkeypatch.setattr(views, "TIMELINE_PAGE_SIZE", 2)
    lead = LeadFactory()
    now = timezone.now()
    for minutes in range(5):
        ActivityFactory(
            lead=lead,
            occurred_at=now - timedelta(minutes=minutes),
            properties={"title": f"p{minutes}"},
        )
    signed_in(client, manager)
    titles, url = [], f"/leads/{lead.pk}/"
    while url:
        body = text(client.get(url))
        titles += re.findall(r'<p class="entry-line">(p\d)</p>', body)
        link = re.search(r'<a rel="next" href="([^"]+)">', body)
        url = unescape(link.group(1)) if link else None
    assert titles == ["p0", "p1", "p2", "p3", "p4"]
    assert client.get(f"/leads/{lead.pk}/?before=garbage").status_code == 400


@pytest.mark.parametrize(
    ("role", "visible", "hidden"),
    [
        ("is_rep", ["claim", "contact", "bant", "qualify", "return", "disqualify", "note"], []),
        ("manager", ["contact", "qualify", "note"], []),
        ("marketer", [], ["claim", "contact", "qualify", "note"]),
    ],
)
def test_the_lead_page_offers_the_actions_the_role_allows(
    client, request, is_rep, role, visible, hidden
):
    handoff = open_handoff()
    body = text(signed_in(client, request.getfixturevalue(role)).get(f"/leads/{handoff.lead_id}/"))
    for name in visible:
        assert f'data-action-form="{name}"' in body, name
    for name in hidden:
        assert f'data-action-form="{name}"' not in body, name


def test_the_sales_rep_answers_from_the_lead_page(client, sales_rep, is_rep):
    lead = sql_for(sales_rep, is_rep=is_rep)
    signed_in(client, sales_rep)
    body = text(client.get(f"/leads/{lead.pk}/"))
    assert 'data-action-form="accept"' in body and 'data-action-form="reject"' in body
    assert 'data-action-form="qualify"' not in body
    response = client.post(lead_action_url(lead, "accept"), {"from": "lead"}, **HTMX)
    body = text(response)
    assert body.lstrip().startswith('<section id="lead-work"')
    # The summary and the timeline come along out of band, updated.
    assert (
        'id="lead-summary" class="lead-summary" aria-labelledby="lead-name" hx-swap-oob="true"'
        in body
    )
    assert "Stage: SQL → SAL" in body
    assert 'data-action-form="opportunity"' in body


def test_rejecting_from_the_lead_page_leaves_for_the_inbox(client, sales_rep, is_rep):
    first = sql_for(sales_rep, is_rep=is_rep)
    second = sql_for(sales_rep, is_rep=is_rep)
    signed_in(client, sales_rep)
    body = {"from": "lead", "next": f"/leads/{first.pk}/", "reason": "timing", "comment": "来期"}
    # The rep no longer owns the lead: its page would be a 404, so the inbox it is.
    response = client.post(lead_action_url(first, "reject"), body, **HTMX)
    assert response.status_code == 200 and response["HX-Redirect"] == INBOX
    body["next"] = f"/leads/{second.pk}/"
    response = client.post(lead_action_url(second, "reject"), body, follow=True)
    assert response.redirect_chain == [(INBOX, 302)]
    assert "went back to nurturing" in text(response)


def test_a_note_form_error_stays_on_the_lead_page(client, is_rep):
    lead = LeadFactory()
    signed_in(client, is_rep)
    response = client.post(lead_action_url(lead, "note"), {"from": "lead", "body": "   "}, **HTMX)
    assert response.status_code == 400
    assert re.search(rf'id="lead-{lead.pk}-note-body_error"><li>', text(response))
    assert not LeadNote.objects.exists()


def test_script_in_notes_comments_and_lead_fields_is_shown_escaped(
    client, manager, sales_rep, is_rep
):
    in_queue = open_handoff(last_name=MALICIOUS)
    waiting = sql_for(sales_rep, is_rep=is_rep, last_name=MALICIOUS, title=MALICIOUS)
    rejected = sql_for(sales_rep, is_rep=is_rep, last_name=MALICIOUS, title=MALICIOUS)
    Lead.objects.filter(pk=rejected.pk).update(source=MALICIOUS)
    signed_in(client, sales_rep)
    client.post(lead_action_url(rejected, "note"), {"body": MALICIOUS})
    inbox = text(client.get(INBOX))
    client.post(lead_action_url(rejected, "reject"), {"reason": "other", "comment": MALICIOUS})
    signed_in(client, manager)
    queue = text(client.get(QUEUE + "?view=team"))
    lead_page = text(client.get(f"/leads/{rejected.pk}/"))
    notifications = text(signed_in(client, is_rep).get("/notifications/"))  # the rejection
    for body in (inbox, queue, lead_page, notifications):
        assert MALICIOUS not in body
        assert ESCAPED in body
    assert f'id="inbox-{waiting.pk}"' in inbox and f'id="handoff-{in_queue.pk}"' in queue
    assert lead_page.count(ESCAPED) >= 5  # name, title, source, note, reject comment


# --- CSRF ---------------------------------------------------------------------------------------


def test_every_form_needs_its_csrf_token(is_rep):
    handoff = open_handoff()
    client = Client(enforce_csrf_checks=True)
    client.force_login(is_rep)
    assert client.post(action_url(handoff, "claim"), {"from": "queue"}).status_code == 403
    assert client.post(lead_action_url(handoff.lead, "note"), {"body": "x"}).status_code == 403
    assert client.post("/notifications/read/").status_code == 403
    assert Handoff.objects.get(pk=handoff.pk).status == "open"
    page = text(client.get(QUEUE))
    token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', page).group(1)
    response = client.post(action_url(handoff, "claim"), {"csrfmiddlewaretoken": token})
    assert response.status_code == 302
    assert Handoff.objects.get(pk=handoff.pk).status == "claimed"


# --- the bell and notifications ------------------------------------------------------------------


def test_the_bell_shows_the_unread_count_on_every_page(client, is_rep):
    open_handoff()
    open_handoff()
    assert Notification.objects.filter(recipient=is_rep, read_at__isnull=True).count() == 2
    signed_in(client, is_rep)
    for url in ("/", QUEUE):
        body = text(client.get(url))
        assert re.search(r'id="bell-count" aria-hidden="true">2<', body), url
        assert "Notifications: 2 unread" in body
        assert 'hx-trigger="every 30s"' in body


def test_without_the_context_processor_the_bell_asks_on_load(client, is_rep, settings):
    processors = settings.TEMPLATES[0]["OPTIONS"]["context_processors"]
    settings.TEMPLATES = [
        {
            **settings.TEMPLATES[0],
            "OPTIONS": {
                **settings.TEMPLATES[0]["OPTIONS"],
                "context_processors": [
                    p for p in processors if p != "handoff.views.header_context"
                ],
            },
        }
    ]
    body = text(signed_in(client, is_rep).get("/"))
    assert 'hx-trigger="load, every 30s"' in body


def test_the_bell_polls_its_own_fragment(client, is_rep):
    open_handoff()
    assert client.get("/notifications/bell/").status_code == 204  # signed out: nothing to swap
    signed_in(client, is_rep)
    fragment = text(client.get("/notifications/bell/", **HTMX))
    assert fragment.lstrip().startswith('<a id="notification-bell"')
    assert re.search(r'id="bell-count" aria-hidden="true">1<', fragment)


def test_notifications_list_links_to_leads_and_mark_read(client, is_rep):
    first, second = open_handoff(), open_handoff()
    signed_in(client, is_rep)
    body = text(client.get("/notifications/"))
    assert f'href="/leads/{first.lead_id}/"' in body and f'href="/leads/{second.lead_id}/"' in body
    one = Notification.objects.get(recipient=is_rep, handoff=first)
    client.post("/notifications/read/", {"ids": [one.pk]})
    assert Notification.objects.filter(recipient=is_rep, read_at__isnull=True).count() == 1
    response = client.post("/notifications/read/", follow=True)
    assert "Marked 1 notification read." in text(response)
    assert re.search(r'id="bell-count" aria-hidden="true">0<', text(response))
    assert client.post("/notifications/read/", {"ids": ["x"]}).status_code == 400


# --- assets and language -------------------------------------------------------------------------


def test_htmx_and_the_shortcuts_come_from_this_server(client, is_rep):
    body = text(signed_in(client, is_rep).get(QUEUE))
    scripts = re.findall(r'<script src="([^"]+)"', body)
    assert any(src.endswith("django_htmx/htmx-2.min.js") for src in scripts)
    assert any(src.endswith("handoff/js/shortcuts.js") for src in scripts)
    assert all(src.startswith("/static/") for src in scripts)
    assert 'id="shortcut-help"' in body and 'id="queue-search"' in body
    js = (Path(django_settings.BASE_DIR) / "static/handoff/js/shortcuts.js").read_text()
    assert "isTyping(event.target)" in js  # shortcuts never fire while typing


def test_pages_speak_japanese_by_default(client, is_rep, settings):
    from leadops import settings as product_settings
    from leadops.i18n_compile import compile_catalogues

    compile_catalogues()
    settings.LOCALE_PATHS = list(django_settings.LOCALE_PATHS)
    settings.LANGUAGE_CODE = product_settings.LANGUAGE_CODE
    handoff = open_handoff()
    body = text(signed_in(client, is_rep).get(f"/leads/{handoff.lead_id}/"))
    assert '<html lang="ja"' in body
    assert "ホット" in body or "コールド" in body or "ウォーム" in body
