"""The admin lead page explains the score: breakdown, newest ledger rows, a chart over time."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.urls import reverse
from django.utils import timezone

from scoring.models import ScoreChange
from scoring.services import rescore_leads
from scoring.services.explain import score_chart, score_history
from tests.scoring.helpers import blank_lead, event, make_model

pytestmark = pytest.mark.django_db
PRICING = "https://example.jp/pricing"
MALICIOUS = "<script>alert('x')</script>"


@pytest.fixture
def staff():
    def make(user):
        user.is_staff = True
        user.save(update_fields=["is_staff"])
        return user

    return make


def scored_lead(**fields):
    """A lead clicked long ago (decayed since) and viewed the pricing page recently."""
    now = timezone.now()
    lead = blank_lead(**fields)
    event(lead, "email_click", now - timedelta(days=100))
    rescore_leads([lead.pk], now=now - timedelta(days=100))
    event(lead, "page_view", now - timedelta(days=40), url=PRICING)
    rescore_leads([lead.pk], now=now - timedelta(days=40))
    lead.refresh_from_db()
    return lead


def page(client, lead):
    return client.get(reverse("admin:leadops_lead_change", args=[lead.pk]))


def test_history_carries_the_score_after_each_change():
    lead = scored_lead()
    history = score_history(lead)
    assert [(e["why"], e["points"]) for e in history] == [
        ("decay", -5),
        ("Pricing page view", 30),
        ("Email click", 10),
    ]
    assert [e["score_after"] for e in history] == [35, 40, 10]
    assert history[1]["activity_type"] == "Page view"
    assert history[0]["score_after"] == lead.score


def test_chart_steps_through_the_changes_of_the_last_90_days():
    lead = scored_lead()
    chart = score_chart(lead)
    # The click is older than 90 days: the line starts at its score, then two rows follow.
    assert (chart["first"], chart["last"], chart["changes"]) == (10, 35, 2)
    assert len(chart["points"].split()) == 2 + 2 * 2
    assert [tick["value"] for tick in chart["y_ticks"]] == [0, 40]


def test_manager_sees_scores_breakdown_ledger_and_chart(client, manager, staff):
    lead = scored_lead()
    client.force_login(staff(manager))
    response = page(client, lead)
    assert response.status_code == 200
    html = response.content.decode()
    assert "Score explanation" in html
    breakdown = response.context["score_explanation"]["breakdown"]
    assert {(i["rule"], i["count"], i["points"]) for i in breakdown} == {
        ("Email click", 1, 10),
        ("Pricing page view", 1, 30),
        ("decay", 0, -5),
    }
    assert "<td>Pricing page view</td>" in html and "<td>decay</td>" in html
    assert '<svg class="score-chart" role="img"' in html and "<polyline" in html
    assert '<title id="score-chart-title">Total score over the last 90 days</title>' in html
    assert "From 10 to 35 points, 2 changes." in html


def test_query_count_does_not_grow_with_the_ledger(
    client, manager, staff, django_assert_max_num_queries
):
    lead = scored_lead()
    client.force_login(staff(manager))
    page(client, lead)  # warms the per-process rule label cache
    with django_assert_max_num_queries(30) as few:
        page(client, lead)
    baseline = len(few)
    now = timezone.now()
    for days in range(1, 40):
        event(lead, "email_open", now - timedelta(days=days, hours=1))
        rescore_leads([lead.pk], now=now - timedelta(days=days))
    page(client, lead)  # the new rule's label joins the cache
    with django_assert_max_num_queries(baseline):
        assert page(client, lead).status_code == 200


def test_rule_labels_and_reasons_are_escaped(client, manager, staff):
    model = make_model(behavior=[{"label": MALICIOUS, "event_type": "trial_signup", "points": 7}])
    lead = blank_lead()
    event(lead, "trial_signup", timezone.now() - timedelta(hours=1))
    rescore_leads([lead.pk], model=model, now=timezone.now())
    assert ScoreChange.objects.filter(lead=lead, rule_label=MALICIOUS).exists()
    client.force_login(staff(manager))
    html = page(client, lead).content.decode()
    assert MALICIOUS not in html
    # Once in the breakdown, once in the ledger.
    assert html.count("<td>&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt;</td>") == 2


def test_sales_rep_cannot_see_another_reps_lead_explanation(
    client, sales_rep, other_sales_rep, staff
):
    theirs = scored_lead(owner=other_sales_rep)
    client.force_login(staff(sales_rep))
    response = client.get(reverse("admin:leadops_lead_change", args=[theirs.pk]), follow=True)
    html = response.content.decode()
    assert response.redirect_chain and response.redirect_chain[0][1] == 302
    assert "score_explanation" not in response.context
    assert "Pricing page view" not in html and "score-chart" not in html


def test_sales_rep_sees_the_explanation_of_own_lead(client, sales_rep, staff):
    mine = scored_lead(owner=sales_rep)
    client.force_login(staff(sales_rep))
    response = page(client, mine)
    assert response.status_code == 200
    assert "<td>Pricing page view</td>" in response.content.decode()


def test_the_explanation_speaks_japanese(client, manager, staff):
    lead = scored_lead()
    client.force_login(staff(manager))
    url = reverse("admin:leadops_lead_change", args=[lead.pk])
    html = client.get(url, HTTP_ACCEPT_LANGUAGE="ja").content.decode()
    assert "スコアの内訳と推移" in html and "直近 90 日間の合計スコアの推移" in html
    assert "10 点から 35 点へ、2 件の変動。" in html
