"""The funnel dashboard: numbers against a hand-computed fixture, filters in the URL,
permissions, bad input, escaping, caching and a bounded number of queries."""

from __future__ import annotations

import html
import random
import re
from dataclasses import dataclass, field, replace
from datetime import datetime, time, timedelta

import pytest
from django.contrib.auth.models import Group
from django.core.cache import cache
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from django.utils import timezone

from handoff.models import Handoff, StageTransition
from handoff.services.stages import (
    FUNNEL_FACTS,
    mark_leads_mql,
    refresh_funnel_facts,
    transition_lead,
)
from leadops import dashboard, sql
from leadops.dashboard import Filters
from leadops.models import Lead
from nurturing.models import EmailSend, Step, Track
from scoring.models import AttributeRule, LeadScoreState, ScoreChange, ScoringModel
from tests.factories import LeadFactory

URL = "/dashboard/"
HOUR, DAY = timedelta(hours=1), timedelta(days=1)
TRADE_SHOW, WEBINAR = "展示会", "ウェビナー"
EVIL_SOURCE = '<script>alert("source")</script>'
EVIL_COMMENT = "<script>alert('comment')</script> 予算は来期"


@pytest.fixture(autouse=True)
def fresh_cache():
    # The dashboard is cached for a minute per filter set; each test counts afresh.
    cache.clear()
    yield
    cache.clear()


def local(day_offset: int, hours: float = 0) -> datetime:
    """Local midnight `day_offset` days from today, plus `hours`."""
    day = timezone.localdate() + timedelta(days=day_offset)
    midnight = datetime.combine(day, time.min, tzinfo=timezone.get_current_timezone())
    return midnight + timedelta(hours=hours)


def lead(source: str, created_at: datetime) -> Lead:
    made = LeadFactory(source=source)
    Lead.objects.filter(pk=made.pk).update(created_at=created_at)
    return made


def move(lead: Lead, to_stage: str, at: datetime, from_stage: str = "nurturing") -> None:
    made = StageTransition.objects.create(
        lead=lead, from_stage=from_stage, to_stage=to_stage, score_snapshot=80
    )
    StageTransition.objects.filter(pk=made.pk).update(created_at=at)
    # Chosen times: the funnel's facts are recomputed from them (what the writers store;
    # test_the_writers_store_the_funnel_facts_the_recount_finds checks they agree).
    refresh_funnel_facts([lead.pk])


def handoff(lead: Lead, kind: str, *, opened_at: datetime, **fields) -> Handoff:
    defaults = {"due_at": opened_at + DAY, "warn_at": opened_at + 18 * HOUR}
    return Handoff.objects.create(
        lead=lead, lead_source=lead.source, kind=kind, opened_at=opened_at, **defaults | fields
    )


def ledger(lead: Lead, label: str, points: int, at: datetime, reason: str = "event") -> None:
    ScoreChange.objects.create(
        lead=lead, rule_label=label, points=points, model_version=1, reason=reason, created_at=at
    )


@dataclass
class Funnel:
    """The fixture's period (from T0's day to today) and its leads by name."""

    start: datetime
    leads: dict[str, Lead] = field(default_factory=dict)

    @property
    def filters(self) -> Filters:
        return Filters(start=timezone.localdate(self.start), end=timezone.localdate())

    def query(self, **extra: str) -> dict[str, str]:
        return {"from": self.filters.start.isoformat(), "to": self.filters.end.isoformat()} | extra


@pytest.fixture
def funnel(db) -> Funnel:
    """Leads and transitions with chosen times (the period starts at T0's day, 8 days ago).

    Leads created in the period: L1, L2, L5 (展示会), L3, L7 (ウェビナー) = 5.
    MQL: L1 +2h, L2 +4h (again on day 5: counts once, the first is timed), L3 +6h after
    creation, L4 (created 20 days before T0) 21 days after = 4. L6 moved to MQL before the
    period: not counted. SQL: L1 a day after its MQL, L2 three days after = 2. SAL: L1
    3 h after SQL; opportunity: a day after; won: two days after.
    """
    t0 = local(-8, 9)
    fixture = Funnel(start=t0)
    names = {
        "L1": (TRADE_SHOW, t0),
        "L2": (TRADE_SHOW, t0),
        "L3": (WEBINAR, t0),
        "L4": (WEBINAR, t0 - 20 * DAY),
        "L5": (TRADE_SHOW, t0),
        "L6": (TRADE_SHOW, t0 - 10 * DAY),
        "L7": (WEBINAR, t0),
    }
    leads = {name: lead(source, at) for name, (source, at) in names.items()}
    fixture.leads = leads
    sql_at = t0 + 2 * HOUR + DAY
    for name, stage, at in [
        ("L1", "mql", t0 + 2 * HOUR),
        ("L1", "sql", sql_at),
        ("L1", "sal", sql_at + 3 * HOUR),
        ("L1", "opportunity", sql_at + 3 * HOUR + DAY),
        ("L1", "won", sql_at + 3 * HOUR + 3 * DAY),
        ("L2", "mql", t0 + 4 * HOUR),
        ("L2", "sql", t0 + 4 * HOUR + 3 * DAY),
        ("L2", "nurturing", t0 + 4 * HOUR + 4 * DAY),
        ("L2", "mql", t0 + 5 * DAY),
        ("L3", "mql", t0 + 6 * HOUR),
        ("L4", "mql", t0 + DAY),
        ("L6", "mql", t0 - 5 * DAY),
        ("L7", "nurturing", t0 + HOUR),
    ]:
        move(leads[name], stage, at)
    return fixture


# --- the numbers -------------------------------------------------------------------------


def steps_of(counts: dict) -> dict[str, dict]:
    return {step["step"]: step for step in dashboard.funnel_steps(counts)}


def test_funnel_counts_rates_and_medians_equal_the_hand_computed_ones(funnel):
    numbers = dashboard.dashboard_numbers(funnel.filters)
    steps = steps_of(numbers["funnel"]["total"])

    assert [steps[s]["count"] for s in dashboard.FUNNEL_STEPS] == [5, 4, 2, 1, 1, 1]
    assert steps["lead"]["rate"] is None and steps["lead"]["median"] is None
    assert steps["mql"]["rate"] == pytest.approx(4 / 5)
    assert steps["sql"]["rate"] == pytest.approx(2 / 4)
    assert steps["sal"]["rate"] == pytest.approx(1 / 2)
    assert steps["opportunity"]["rate"] == pytest.approx(1.0)
    assert steps["won"]["rate"] == pytest.approx(1.0)
    # MQL: 2 h, 4 h, 6 h, 21 days → the median of four is the mean of 4 h and 6 h.
    assert steps["mql"]["median"] == pytest.approx(5 * 3600)
    # SQL: 1 day (L1) and 3 days (L2, timed from its first MQL, the one before the SQL).
    assert steps["sql"]["median"] == pytest.approx(2 * 86400)
    assert steps["sal"]["median"] == pytest.approx(3 * 3600)
    assert steps["opportunity"]["median"] == pytest.approx(86400)
    assert steps["won"]["median"] == pytest.approx(2 * 86400)


def test_funnel_by_source_splits_the_same_numbers(funnel):
    by_source = dashboard.dashboard_numbers(funnel.filters)["funnel"]["by_source"]

    trade_show, webinar = steps_of(by_source[TRADE_SHOW]), steps_of(by_source[WEBINAR])
    assert [trade_show[s]["count"] for s in dashboard.FUNNEL_STEPS] == [3, 2, 2, 1, 1, 1]
    assert [webinar[s]["count"] for s in dashboard.FUNNEL_STEPS] == [2, 2, 0, 0, 0, 0]
    assert trade_show["mql"]["median"] == pytest.approx(3 * 3600)  # 2 h and 4 h
    assert webinar["mql"]["median"] == pytest.approx((6 * 3600 + 21 * 86400) / 2)
    assert webinar["sql"]["median"] is None


def test_a_source_filter_narrows_the_funnel(funnel):
    filters = Filters(start=funnel.filters.start, end=funnel.filters.end, source=WEBINAR)
    steps = steps_of(dashboard.dashboard_numbers(filters)["funnel"]["total"])
    assert [steps[s]["count"] for s in dashboard.FUNNEL_STEPS] == [2, 2, 0, 0, 0, 0]
    assert steps["mql"]["rate"] == pytest.approx(1.0)
    assert steps["sql"]["rate"] == 0


def test_the_period_is_whole_local_days(funnel):
    # A period that ends the day before T0 sees none of the fixture's transitions but L6's.
    t0_day = timezone.localdate(funnel.start)
    before = Filters(start=t0_day - timedelta(days=6), end=t0_day - timedelta(days=1))
    steps = steps_of(dashboard.dashboard_numbers(before)["funnel"]["total"])
    assert steps["mql"]["count"] == 1  # L6, 5 days before T0
    assert steps["lead"]["count"] == 0
    # L6 was created 10 days before T0 and moved 5 days before: 5 days to MQL.
    assert steps["mql"]["median"] == pytest.approx(5 * 86400)
    just_t0 = Filters(start=t0_day, end=t0_day)
    steps = steps_of(dashboard.dashboard_numbers(just_t0)["funnel"]["total"])
    assert steps["mql"]["count"] == 3  # L1, L2, L3 on T0's day; L4 the day after
    assert steps["lead"]["count"] == 5


@pytest.fixture
def answers(funnel, is_rep, sales_rep, other_sales_rep, django_user_model):
    """Hand-offs opened in the period (and one before), with chosen SLA outcomes.

    First contact: is1 met 2, breached 2 (one late answer, one running past due), pending 1;
    is2 met 1; unassigned breached 1; one opened before the period (not counted).
    Sales: L1 accepted in time; L2 rejected late (timing, a comment with a script tag);
    L8 (source with a script tag) rejected in time (no budget).
    """
    is2 = django_user_model.objects.create_user(username="is2", password="pw-Secret-123")
    is2.groups.add(Group.objects.get(name="inside_sales"))
    t0, now = funnel.start, timezone.now()
    leads = funnel.leads
    met = {"sla_state": "met", "status": "done"}
    first_contact = [
        (is_rep, leads["L1"], {**met, "responded_at": t0 + HOUR}),
        (is_rep, leads["L2"], {**met, "responded_at": t0 + 2 * HOUR}),
        (is_rep, leads["L3"], {"sla_state": "breached", "responded_at": t0 + 2 * DAY}),
        # Past its deadline, not yet marked by the monitor: breached as the pages show it.
        (is_rep, leads["L4"], {"opened_at": now - 2 * DAY, "due_at": now - DAY}),
        (is_rep, leads["L5"], {"opened_at": now - HOUR, "due_at": now + DAY}),
        (is2, leads["L7"], {**met, "responded_at": t0 + HOUR}),
        (None, leads["L6"], {"sla_state": "breached"}),
    ]
    for assignee, target, fields in first_contact:
        opened = fields.pop("opened_at", t0)
        handoff(target, "inside_sales", opened_at=opened, assignee=assignee, **fields)
    handoff(leads["L6"], "inside_sales", opened_at=t0 - 3 * DAY, assignee=is_rep, status="done")

    leads["L8"] = lead(EVIL_SOURCE, t0 - 30 * DAY)
    answered_at = t0 + 4 * DAY
    for target, rep, outcome, reason, comment, state in [
        (leads["L1"], sales_rep, "accepted", "", "", "met"),
        (leads["L2"], sales_rep, "rejected", "timing", EVIL_COMMENT, "breached"),
        (leads["L8"], other_sales_rep, "rejected", "no_budget", "予算なし", "met"),
    ]:
        handoff(
            target,
            "sales",
            opened_at=t0 + 3 * DAY,
            assignee=rep,
            status="done",
            outcome=outcome,
            reason=reason,
            comment=comment,
            sla_state=state,
            responded_at=answered_at,
            closed_at=answered_at,
        )
    return funnel


def sla_row(rows: list[dict], kind: str, assignee: str | None) -> tuple[int, int, int]:
    (row,) = [r for r in rows if r["kind"] == kind and r["assignee"] == assignee]
    return row["met"], row["breached"], row["pending"]


def test_sla_compliance_per_rep(answers):
    rows = dashboard.dashboard_numbers(answers.filters)["sla"]

    assert sla_row(rows, "inside_sales", "is1") == (2, 2, 1)
    assert sla_row(rows, "inside_sales", "is2") == (1, 0, 0)
    assert sla_row(rows, "inside_sales", None) == (0, 1, 0)
    assert sla_row(rows, "sales", "sales1") == (1, 1, 0)
    assert sla_row(rows, "sales", "sales2") == (1, 0, 0)
    first_contact = dashboard.sla_totals(rows, "inside_sales")
    assert (first_contact["met"], first_contact["breached"]) == (3, 3)
    assert first_contact["share"] == pytest.approx(0.5)
    assert dashboard.sla_totals(rows, "sales")["share"] == pytest.approx(2 / 3)


def test_rejection_reasons_by_source(answers):
    numbers = dashboard.dashboard_numbers(answers.filters)

    assert numbers["reasons"] == {"timing": 1, "no_budget": 1}
    by_source = {row["source"]: row for row in numbers["by_source"]}
    assert by_source[TRADE_SHOW] | {"source": None} == {
        "source": None,
        "accepted": 1,
        "rejected": 1,
        "reasons": {"timing": 1},
    }
    assert by_source[EVIL_SOURCE]["rejected"] == 1
    assert by_source[EVIL_SOURCE]["reasons"] == {"no_budget": 1}
    # Most rejected first; ties by acceptances.
    assert [row["source"] for row in numbers["by_source"]] == [TRADE_SHOW, EVIL_SOURCE]


@pytest.fixture
def rules(answers):
    """Ledger rows and score breakdowns of the answered leads (L1 accepted, L2 and L8
    rejected), answered on day 4 after T0."""
    t0, leads = answers.start, answers.leads
    before, after = t0 + DAY, t0 + 6 * DAY
    ledger(leads["L1"], "Pricing page", 30, before)
    ledger(leads["L1"], "Webinar attended", 25, before)
    ledger(leads["L1"], "Email click", 10, after)  # after the answer: did not bring it
    ledger(leads["L2"], "Pricing page", 30, before)
    ledger(leads["L2"], "Pricing page", 30, before + HOUR)  # twice: one lead, counted once
    ledger(leads["L2"], "Form submit", 0, before, reason="trigger")
    ledger(leads["L2"], "Unsubscribe", -20, before)  # negative: did not bring it
    ledger(leads["L2"], "", 5, before, reason="recalculation")  # no rule
    ledger(leads["L8"], "Document download", 15, before)
    model = ScoringModel.objects.create(name="test", version=900)
    target = AttributeRule.objects.create(
        model=model, label="Target industry", field="industry", operator="eq", value="a", points=20
    )
    student = AttributeRule.objects.create(
        model=model, label="Student", field="job_level", operator="eq", value="b", points=-10
    )
    for name, ids in (("L1", [target.pk]), ("L2", [target.pk, student.pk]), ("L8", [])):
        LeadScoreState.objects.create(
            lead=leads[name], model_version=900, breakdown={"a": ids}, computed_at=t0
        )
    return answers


def test_rules_behind_the_answered_leads(rules):
    by_rule = {
        (row["kind"], row["label"]): (row["accepted"], row["rejected"], row["reasons"])
        for row in dashboard.dashboard_numbers(rules.filters)["by_rule"]
    }
    assert by_rule == {
        ("behavior", "Pricing page"): (1, 1, {"timing": 1}),
        ("behavior", "Webinar attended"): (1, 0, {}),
        ("behavior", "Document download"): (0, 1, {"no_budget": 1}),
        ("trigger", "Form submit"): (0, 1, {"timing": 1}),
        ("attribute", "Target industry"): (1, 1, {"timing": 1}),
    }


def test_latest_rejections_newest_first_with_comments(answers):
    rows = dashboard.dashboard_numbers(answers.filters)["latest_rejections"]
    assert [(r["reason"], r["comment"], r["by"]) for r in rows] == [
        ("no_budget", "予算なし", "sales2"),
        ("timing", EVIL_COMMENT, "sales1"),
    ]


# --- the page ---------------------------------------------------------------------------------


def cell(body: str, element_id: str) -> str:
    match = re.search(rf'id="{re.escape(element_id)}"[^>]*>([^<]*)<', body)
    assert match, f"no #{element_id} on the page"
    return html.unescape(match.group(1)).strip()


def test_the_page_shows_the_funnel_with_rates_medians_and_a_chart(client, marketer, funnel):
    client.force_login(marketer)
    response = client.get(URL, funnel.query())
    assert response.status_code == 200
    body = response.content.decode()

    counts = [cell(body, f"funnel-{s}-count") for s in dashboard.FUNNEL_STEPS]
    assert counts == ["5", "4", "2", "1", "1", "1"]
    assert cell(body, "funnel-mql-rate") == "80.0%"
    assert cell(body, "funnel-sql-rate") == "50.0%"
    assert cell(body, "funnel-mql-median") == "5h 00m"
    assert cell(body, "funnel-sql-median") == "2d 0h"
    assert cell(body, "funnel-sal-median") == "3h 00m"
    # The chart is inline SVG with every value as text, and needs no script or CDN.
    svg = re.search(r'<svg[^>]*id="funnel-chart".*?</svg>', body, re.S).group(0)
    assert 'role="img"' in svg
    assert "Leads: 5; MQL: 4; SQL: 2; SAL: 1; Opportunity: 1; Won: 1" in svg
    assert re.findall(r'class="bar-value"[^>]*>([^<]*)<', svg) == ["5", "4", "2", "1", "1", "1"]
    assert "<script" not in svg and "http://" not in svg.replace("http://www.w3.org/2000/svg", "")
    # Per source, linking to the filtered view.
    assert f"?{dashboard_views_query(funnel, source=TRADE_SHOW)}" in html.unescape(body)


def dashboard_views_query(funnel: Funnel, **extra: str) -> str:
    from django.utils.http import urlencode

    return urlencode(funnel.query(**extra))


def test_filters_live_in_the_url_and_survive_in_links(client, manager, funnel):
    client.force_login(manager)
    body = client.get(URL, funnel.query(source=WEBINAR)).content.decode()

    assert [cell(body, f"funnel-{s}-count") for s in ("lead", "mql", "sql")] == ["2", "2", "0"]
    assert cell(body, "dashboard-source") == WEBINAR
    share = html.unescape(re.search(r'id="share-link" href="([^"]+)"', body).group(1))
    assert share == f"?{dashboard_views_query(funnel, source=WEBINAR)}"
    # The same URL, opened by someone else, shows the same numbers.
    again = client.get(URL + share).content.decode()
    assert cell(again, "funnel-mql-count") == "2"
    # Presets keep the source; the form is filled with the view's values.
    assert 'href="?days=90&amp;source=%E3%82%A6%E3%82%A7%E3%83%93%E3%83%8A%E3%83%BC"' in body
    assert f'value="{funnel.filters.start.isoformat()}"' in body
    assert f'value="{WEBINAR}"' in body


def test_presets_and_the_default_period(client, marketer, funnel):
    client.force_login(marketer)
    today = timezone.localdate()

    move(funnel.leads["L5"], "mql", local(-100, 12))

    default = client.get(URL).content.decode()
    start = (today - timedelta(days=29)).isoformat()
    assert f"{start} to {today.isoformat()} (30 days)" in default
    assert 'href="?days=30" aria-current="true"' in default
    assert cell(default, "funnel-mql-count") == "5"  # the fixture's 4 and L6's, 13 days ago

    year = client.get(URL, {"days": "365"}).content.decode()
    assert 'href="?days=365" aria-current="true"' in year
    assert cell(year, "funnel-mql-count") == "6"  # and L5's, 100 days ago

    # Only a start date: up to today.
    since = client.get(URL, {"from": funnel.filters.start.isoformat()}).content.decode()
    assert f"to {today.isoformat()} (9 days)" in since


def test_sla_and_feedback_sections_on_the_page(client, manager, rules):
    client.force_login(manager)
    body = client.get(URL, rules.query()).content.decode()

    assert cell(body, "sla-inside_sales-share") == "50.0%"
    assert cell(body, "sla-sales-share") == "66.7%"
    assert cell(body, "reason-timing") == "1"
    assert cell(body, "reason-no_budget") == "1"
    assert cell(body, "reason-wrong_fit") == "0"
    table = re.search(r'id="answers-by-rule".*?</table>', body, re.S).group(0)
    assert "Pricing page" in table and "Document download" in table and "Form submit" in table
    assert "Email click" not in table and "Unsubscribe" not in table
    # Document download (100% rejected) is above the 2-in-3 average and marked.
    row = re.search(r"Document download</th>.*?</tr>", table, re.S).group(0)
    assert "▲ 100.0%" in row and "(above average)" in row
    assert '<svg class="bar-chart" id="reasons-chart"' in body


def test_sources_and_comments_are_escaped(client, marketer, answers):
    client.force_login(marketer)
    body = client.get(URL, answers.query()).content.decode()

    assert "<script>alert" not in body
    assert "&lt;script&gt;alert(&quot;source&quot;)&lt;/script&gt;" in body
    assert "&lt;script&gt;alert(&#x27;comment&#x27;)&lt;/script&gt; 予算は来期" in body
    # A source with markup as a filter is echoed escaped too.
    filtered = client.get(URL, answers.query(source=EVIL_SOURCE)).content.decode()
    assert filtered.count("<script") == body.count("<script")  # only base.html's htmx
    assert "&lt;script&gt;alert(&quot;source&quot;)&lt;/script&gt;" in filtered


def test_a_track_section_with_and_without_tracks(client, marketer, funnel):
    client.force_login(marketer)
    assert 'id="no-tracks"' in client.get(URL).content.decode()

    cache.clear()
    track = Track.objects.create(name="<b>秋のステップメール</b>", kind="step", status="active")
    Track.objects.create(name="下書き", kind="newsletter", status="draft")
    step = Step.objects.create(track=track, position=1, subject_ja="件名", body_ja="本文")
    sent_at = timezone.now() - DAY
    for target, opened in ((funnel.leads["L1"], True), (funnel.leads["L3"], False)):
        EmailSend.objects.create(
            lead=target,
            step=step,
            track=track,
            status="sent",
            queued_at=sent_at,
            sent_at=sent_at,
            first_opened_at=sent_at if opened else None,
        )
    body = client.get(URL).content.decode()
    row = re.search(rf'id="track-{track.pk}">.*?</tr>', body, re.S).group(0)
    assert "&lt;b&gt;秋のステップメール&lt;/b&gt;" in row
    assert "50.0%" in row  # one of two delivered mails opened
    assert "下書き" not in body


# --- who may see it ---------------------------------------------------------------------------


def test_a_logged_out_visitor_is_sent_to_log_in(client, db):
    response = client.get(URL)
    assert response.status_code == 302
    assert response["Location"].startswith(reverse("admin:login"))


@pytest.mark.parametrize("role", ["marketer", "is_rep", "manager"])
def test_marketers_inside_sales_and_managers_read_it(client, funnel, role, request):
    client.force_login(request.getfixturevalue(role))
    assert client.get(URL).status_code == 200


def test_a_sales_rep_gets_403(client, sales_rep, funnel):
    client.force_login(sales_rep)
    response = client.get(URL)
    assert response.status_code == 403
    assert b"funnel-mql-count" not in response.content


def test_a_sales_rep_who_is_also_a_manager_reads_it(client, sales_rep, funnel):
    sales_rep.groups.add(Group.objects.get(name="manager"))
    client.force_login(sales_rep)
    assert client.get(URL).status_code == 200


def test_a_user_without_a_role_gets_403(client, django_user_model):
    client.force_login(django_user_model.objects.create_user("nobody", password="pw-1234-x"))
    assert client.get(URL).status_code == 403


def test_only_get(client, marketer):
    client.force_login(marketer)
    assert client.post(URL).status_code == 405


# --- bad input --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"from": "2025-13-01"}, "Start date: Enter a valid date."),
        ({"to": "yesterday"}, "End date: Enter a valid date."),
        ({"from": "2025-03-10", "to": "2025-03-01"}, "The end date must be on or after"),
        ({"from": "2020-01-01", "to": "2024-01-01"}, "at most 1096 days"),
        ({"from": "1999-12-31", "to": "2000-01-02"}, "Choose a date from 2000-01-01 on."),
        ({"to": "9999-12-31"}, "Choose a date no later than"),
        ({"days": "7"}, "Select a valid choice."),
        ({"source": "x" * 101}, "at most 100 characters"),
        ({"source": "展示\x00会"}, "Null characters are not allowed."),
    ],
)
def test_bad_filters_get_400_with_the_field_message(client, marketer, params, message):
    client.force_login(marketer)
    response = client.get(URL, params)
    assert response.status_code == 400
    body = html.unescape(response.content.decode())
    assert 'id="filter-errors"' in body and message in body
    assert "funnel-mql-count" not in body


# --- cost ---------------------------------------------------------------------------------------


def dashboard_queries(client, params: dict) -> int:
    cache.clear()
    with CaptureQueriesContext(connection) as captured:
        assert client.get(URL, params).status_code == 200
    return len(captured)


def test_the_query_count_does_not_grow_with_the_data(client, manager, rules):
    client.force_login(manager)
    small = dashboard_queries(client, rules.query())
    # Ten times the leads, transitions, hand-offs and rejections.
    t0 = rules.start
    for number in range(40):
        extra = lead(f"source-{number % 7}", t0)
        move(extra, "mql", t0 + HOUR)
        move(extra, "sql", t0 + DAY, from_stage="mql")
        handoff(extra, "inside_sales", opened_at=t0, sla_state="met", responded_at=t0 + HOUR)
        handoff(
            extra,
            "sales",
            opened_at=t0 + DAY,
            status="done",
            outcome="rejected",
            reason="wrong_fit",
            comment=f"comment {number}",
            closed_at=t0 + 2 * DAY,
        )
        ledger(extra, f"rule {number % 5}", 10, t0)
    large = dashboard_queries(client, rules.query())
    assert large == small
    # Session, user, roles, the bell; a savepoint (the test's transaction), the session
    # settings, the six dashboard queries, the savepoint's release; the track list.
    assert small <= 14


def test_numbers_are_cached_for_a_minute_per_filter_set(client, manager, funnel, settings):
    client.force_login(manager)
    assert cell(client.get(URL, funnel.query()).content.decode(), "funnel-mql-count") == "4"
    move(funnel.leads["L5"], "mql", funnel.start + HOUR)

    with CaptureQueriesContext(connection) as captured:
        body = client.get(URL, funnel.query()).content.decode()
    assert cell(body, "funnel-mql-count") == "4"  # the cached count
    assert not [q for q in captured if "handoff_stagetransition" in q["sql"]]
    # Another filter set counts afresh; so does a cache of 0 seconds.
    other = client.get(URL, funnel.query(source=TRADE_SHOW)).content.decode()
    assert cell(other, "funnel-mql-count") == "3"
    settings.DASHBOARD_CACHE_SECONDS = 0
    cache.clear()
    assert cell(client.get(URL, funnel.query()).content.decode(), "funnel-mql-count") == "5"


def test_one_cached_count_serves_every_language(client, marketer, funnel, settings):
    from leadops.i18n_compile import compile_catalogues

    compile_catalogues()
    settings.LOCALE_PATHS = list(settings.LOCALE_PATHS)  # reload the fresh catalogue
    client.force_login(marketer)
    english = client.get(URL, funnel.query(), HTTP_ACCEPT_LANGUAGE="en").content.decode()
    with CaptureQueriesContext(connection) as captured:
        japanese = client.get(URL, funnel.query(), HTTP_ACCEPT_LANGUAGE="ja").content.decode()

    assert not [q for q in captured if "handoff_stagetransition" in q["sql"]]
    assert re.search(r'<th scope="row">Leads</th>', english)
    assert re.search(r'<th scope="row">リード</th>', japanese)
    assert cell(japanese, "funnel-mql-count") == cell(english, "funnel-mql-count") == "4"
    assert '<html lang="ja"' in japanese


def test_rules_are_counted_over_the_latest_answers_when_there_are_many(
    client, manager, rules, monkeypatch
):
    # L2 and L8 were answered at the same moment; the newest by id is L8 (no budget).
    monkeypatch.setattr(dashboard, "RULE_SAMPLE", 1)
    numbers = dashboard.dashboard_numbers(rules.filters)
    assert [(r["label"], r["rejected"]) for r in numbers["by_rule"]] == [("Document download", 1)]
    assert numbers["rule_sample"] == {"answers": 3, "counted": 1}

    client.force_login(manager)
    body = client.get(URL, rules.query()).content.decode()
    assert "Counted over the latest 1 of the period's 3 sales answers." in body


def test_a_stage_reached_without_its_previous_step_counts_but_is_not_timed(funnel):
    # An SQL whose lead has no MQL transition (e.g. data from before LeadOps).
    move(lead(TRADE_SHOW, funnel.start), "sql", funnel.start + DAY, from_stage="mql")
    steps = steps_of(dashboard.dashboard_numbers(funnel.filters)["funnel"]["total"])
    assert steps["sql"]["count"] == 3
    assert steps["sql"]["median"] == pytest.approx(2 * 86400)  # still 1 day and 3 days


def test_presets_are_recounted_in_the_background_only_while_viewed(
    client, manager, funnel, settings
):
    assert dashboard.warm_dashboard_cache() == 0  # nobody looked: nothing counted
    month = dashboard.preset_filters(30, today=timezone.localdate())
    assert cache.get(month.cache_key()) is None

    client.force_login(manager)
    client.get(URL, {"days": "90"})
    move(funnel.leads["L5"], "mql", funnel.start + HOUR)
    assert dashboard.warm_dashboard_cache() == 3
    assert cache.get(month.cache_key())["funnel"]["total"]["mql"][0] == 6  # L5 counted

    # The view then answers from the warmed entry without counting.
    with CaptureQueriesContext(connection) as captured:
        body = client.get(URL).content.decode()
    assert cell(body, "funnel-mql-count") == "6"
    assert not [q for q in captured if "handoff_stagetransition" in q["sql"]]


# --- the funnel's facts, written with each transition --------------------------------------


def facts_of(lead: Lead) -> list[tuple]:
    rows = StageTransition.objects.filter(lead=lead).order_by("created_at", "id")
    return list(rows.values_list("to_stage", "created_at", *FUNNEL_FACTS))


def test_the_writers_store_the_funnel_facts_the_recount_finds(db, sales_rep):
    made = lead(TRADE_SHOW, local(-3))
    mark_leads_mql({made.pk: "MQL rule met"})
    transition_lead(made.pk, to_stage="sql", actor=sales_rep)
    transition_lead(made.pk, to_stage="nurturing", reason="Timing", actor=sales_rep)
    for stage in ("mql", "sql", "sal", "opportunity", "won"):
        transition_lead(made.pk, to_stage=stage, actor=sales_rep)
    written = facts_of(made)
    mql, sql, nurturing, mql_again, sql_again, sal, opportunity, won = written
    at = {"mql": mql[1], "sql": sql[1], "mql2": mql_again[1], "sql2": sql_again[1]}

    # (stage, time, source, previous step at, previous entry at)
    assert mql[2:] == (TRADE_SHOW, local(-3), None)
    assert sql[2:] == (TRADE_SHOW, at["mql"], None)
    assert nurturing[2:] == (TRADE_SHOW, None, None)
    assert mql_again[2:] == (TRADE_SHOW, local(-3), at["mql"])
    assert sql_again[2:] == (TRADE_SHOW, at["mql2"], at["sql"])
    assert [sal[3], opportunity[3], won[3]] == [at["sql2"], sal[1], opportunity[1]]
    # The set-based recount (the migration's backfill) finds exactly what was written.
    refresh_funnel_facts([made.pk])
    assert facts_of(made) == written


def test_a_lead_entering_a_stage_twice_in_the_period_counts_once(funnel):
    # L1 goes back to MQL later in the period: still one MQL, timed from the first entry.
    move(funnel.leads["L1"], "mql", funnel.start + 6 * DAY)
    steps = steps_of(dashboard.dashboard_numbers(funnel.filters)["funnel"]["total"])
    assert steps["mql"]["count"] == 4
    assert steps["mql"]["median"] == pytest.approx(5 * 3600)
    # A period starting after L1's first MQL counts the second one.
    t0_day = timezone.localdate(funnel.start)
    later = Filters(start=t0_day + timedelta(days=6), end=timezone.localdate())
    steps = steps_of(dashboard.dashboard_numbers(later)["funnel"]["total"])
    assert steps["mql"]["count"] == 1
    assert steps["mql"]["median"] == pytest.approx(6 * 86400)  # from the lead's creation


def test_a_lead_whose_source_changes_moves_in_the_funnel_by_source(funnel):
    Lead.objects.filter(pk=funnel.leads["L3"].pk).update(source=TRADE_SHOW)
    by_source = dashboard.dashboard_numbers(funnel.filters)["funnel"]["by_source"]
    assert by_source[TRADE_SHOW]["mql"][0] == 3
    assert by_source[WEBINAR]["mql"][0] == 1
    # Saving the whole row (admin, API) too; an unchanged source touches no transition.
    moved = Lead.objects.get(pk=funnel.leads["L3"].pk)
    moved.source = WEBINAR
    moved.save()
    assert set(
        StageTransition.objects.filter(lead=moved).values_list("lead_source", flat=True)
    ) == {WEBINAR}


def test_hand_offs_follow_their_leads_source_and_the_filters_read_it(answers):
    # The hand-offs carry the lead's source (the SLA and sales-answer sections filter on
    # it without reading leads); the trigger keeps it when the lead's source changes.
    trade_show = replace(answers.filters, source=TRADE_SHOW)
    before = sla_row(dashboard.dashboard_numbers(trade_show)["sla"], "inside_sales", "is1")
    moved = answers.leads["L3"]  # ウェビナー, its first contact breached
    Lead.objects.filter(pk=moved.pk).update(source=TRADE_SHOW)
    sources = set(Handoff.objects.filter(lead=moved).values_list("lead_source", flat=True))
    assert sources == {TRADE_SHOW}
    cache.clear()
    after = sla_row(dashboard.dashboard_numbers(trade_show)["sla"], "inside_sales", "is1")
    assert after == (before[0], before[1] + 1, before[2])


# The funnel as it was counted before its facts were stored: every lead's transitions
# joined at read time. The stored facts must give exactly its counts and medians.
_REFERENCE_FUNNEL_SQL = """
WITH reached AS (
    SELECT t.lead_id, t.to_stage, min(t.created_at) AS at,
           (%(previous)s::text[])[array_position(%(stages)s::text[], t.to_stage::text)]
               AS previous
    FROM handoff_stagetransition t
    WHERE t.created_at >= %(start)s AND t.created_at < %(end)s
      AND t.to_stage = ANY(%(stages)s)
    GROUP BY t.lead_id, t.to_stage
), timed AS (
    SELECT l.source, r.to_stage,
           extract(epoch FROM r.at - CASE WHEN r.previous IS NULL THEN l.created_at
                                          ELSE prev.at END)::float8 AS took
    FROM reached r
    JOIN leadops_lead l ON l.id = r.lead_id
    LEFT JOIN LATERAL (
        SELECT p.created_at AS at FROM handoff_stagetransition p
        WHERE r.previous IS NOT NULL
          AND p.lead_id = r.lead_id AND p.to_stage = r.previous AND p.created_at <= r.at
        ORDER BY p.created_at DESC LIMIT 1
    ) prev ON true
    WHERE %(source)s = '' OR l.source = %(source)s
)
SELECT grouping(source) = 1, source, to_stage, count(*),
       percentile_cont(0.5) WITHIN GROUP (ORDER BY took)
FROM timed
GROUP BY GROUPING SETS ((source, to_stage), (to_stage))
"""


def reference_funnel(filters: Filters) -> list[tuple]:
    stages = [str(s) for s in dashboard.FUNNEL_STAGES]
    start, end = filters.bounds()
    params = {"start": start, "end": end, "source": filters.source, "stages": stages}
    with connection.cursor() as cursor:
        cursor.execute(_REFERENCE_FUNNEL_SQL, params | {"previous": [None, *stages[:-1]]})
        return sorted(cursor.fetchall(), key=repr)


def stored_funnel(filters: Filters) -> list[tuple]:
    params = dashboard._params(filters) | {"stages": [str(s) for s in dashboard.FUNNEL_STAGES]}
    return sorted(dashboard._fetch(dashboard._FUNNEL_SQL, params), key=repr)


def test_stored_facts_count_exactly_what_the_join_counted(db):
    # Leads wandering through the funnel at random times: back to nurturing and in again,
    # steps skipped, several entries within and around the period.
    rng = random.Random(5)
    stages = ["nurturing", "mql", "sql", "sal", "opportunity", "won"]
    for _ in range(40):
        made = lead(rng.choice([TRADE_SHOW, WEBINAR, ""]), local(-40 + rng.randrange(30)))
        at = local(-40 + rng.randrange(30))
        for _ in range(rng.randrange(1, 7)):
            at += timedelta(hours=rng.randrange(1, 200))
            move(made, rng.choice(stages), min(at, local(0)))
    for start_days, days in [(-30, 30), (-20, 10), (-12, 12), (-45, 46)]:
        for source in ("", TRADE_SHOW, WEBINAR):
            start = timezone.localdate() + timedelta(days=start_days)
            filters = Filters(start=start, end=start + timedelta(days=days - 1), source=source)
            expected = reference_funnel(filters)
            assert expected, filters
            assert stored_funnel(filters) == expected


@pytest.mark.django_db(transaction=True)
def test_the_sections_counted_side_by_side_equal_the_ones_counted_in_turn(
    rules, settings, monkeypatch
):
    # Outside a transaction the cold page runs its queries on several connections.
    threads = []
    run_section = sql._in_own_connection

    def spy(work, section):
        import threading

        threads.append(threading.current_thread().name)
        return run_section(work, section)

    monkeypatch.setattr(sql, "_in_own_connection", spy)
    now = timezone.now()
    settings.DASHBOARD_PARALLEL_QUERIES = 3
    side_by_side = dashboard.dashboard_numbers(rules.filters, now=now)
    settings.DASHBOARD_PARALLEL_QUERIES = 1
    in_turn = dashboard.dashboard_numbers(rules.filters, now=now)

    assert len(threads) == 5 and all(name.startswith("dashboard") for name in threads)
    assert side_by_side == in_turn
    assert side_by_side["funnel"]["total"]["mql"][0] == 4 and side_by_side["by_rule"]
