"""The ledger explains every change; rescoring is idempotent; a reset starts over."""

from datetime import timedelta

import pytest

from leadops.services import upsert_lead
from scoring.models import ScoreChange
from scoring.services import rescore_leads, reset_behavior_score, score_breakdown_for
from tests.scoring.helpers import blank_lead, event, stored

pytestmark = pytest.mark.django_db
PRICING = "https://example.jp/pricing"


def ledger(lead) -> list[tuple[str, str, int]]:
    return list(
        ScoreChange.objects.filter(lead=lead)
        .order_by("id")
        .values_list("reason", "rule_label", "points")
    )


def test_each_newly_scored_event_gets_a_row_with_its_rule_and_activity(t0):
    lead = blank_lead()
    first = event(lead, "page_view", t0, url=PRICING)
    rescore_leads([lead.pk], now=t0)
    second = event(lead, "email_open", t0 + timedelta(hours=1))
    rescore_leads([lead.pk], now=t0 + timedelta(hours=1))

    rows = ScoreChange.objects.filter(lead=lead, reason="event").order_by("id")
    assert [(r.activity_id, r.rule_label, r.points) for r in rows] == [
        (first.pk, "Pricing page view", 30),
        (second.pk, "Email open", 5),
    ]
    assert rows[0].rule.points == 30 and rows[0].model_version == 1
    assert str(rows[0]) == "+30 Pricing page view"


def test_replaying_the_same_events_changes_nothing(t0):
    lead = blank_lead(industry="software")
    for minutes in range(4):
        event(lead, "page_view", t0 + timedelta(minutes=minutes), url=PRICING)
    first = rescore_leads([lead.pk], now=t0)
    before = (stored(lead), ledger(lead), score_breakdown_for(lead))

    again = rescore_leads([lead.pk], now=t0)
    everyone = rescore_leads(None, now=t0)

    assert first.changed == 1 and again.changed == 0 and everyone.changed == 0
    lead.refresh_from_db()
    assert (stored(lead), ledger(lead), score_breakdown_for(lead)) == before


def test_attribute_change_is_recorded_as_such(t0):
    lead = blank_lead(job_level="manager")
    rescore_leads([lead.pk], now=t0)
    upsert_lead(lead.email, fields={"job_level": "director"})
    rescore_leads([lead.pk], now=t0)
    assert ledger(lead) == [("attributes", "", 15), ("attributes", "", 10)]
    assert stored(lead)[0] == 25


def test_decay_since_the_last_rescore_is_its_own_row(t0):
    lead = blank_lead()
    event(lead, "email_click", t0)
    rescore_leads([lead.pk], now=t0)
    event(lead, "email_open", t0 + timedelta(days=60))
    rescore_leads([lead.pk], now=t0 + timedelta(days=60))
    # 10 decayed to 5 over the quiet 60 days, then +5.
    assert ledger(lead) == [
        ("event", "Email click", 10),
        ("event", "Email open", 5),
        ("decay", "", -5),
    ]
    assert stored(lead)[1] == 10


def test_a_late_event_that_takes_a_capped_place_keeps_the_ledger_exact(t0):
    lead = blank_lead()
    for minutes in (10, 20, 30):  # the third page view of the day scores 5
        event(lead, "page_view", t0 + timedelta(minutes=minutes), url="/blog")
    rescore_leads([lead.pk], now=t0 + timedelta(hours=1))
    event(lead, "page_view", t0, url="/blog")  # arrives late, happened first
    rescore_leads([lead.pk], now=t0 + timedelta(hours=1))
    assert stored(lead)[1] == 5
    assert sum(points for _r, _l, points in ledger(lead)) == 5


def test_behavior_reset_ignores_earlier_events(t0):
    lead = blank_lead(industry="software")
    event(lead, "form_submit", t0)
    rescore_leads([lead.pk], now=t0)
    reset_behavior_score(lead.pk, now=t0 + timedelta(hours=1))
    assert stored(lead) == (20, 0, 20, "cold")
    event(lead, "email_open", t0 + timedelta(hours=2))
    rescore_leads([lead.pk], now=t0 + timedelta(hours=2))
    assert stored(lead) == (20, 5, 25, "cold")
    assert ("reset", "", -50) in ledger(lead)
    assert sum(points for _r, _l, points in ledger(lead)) == 25


def test_rescore_command_recomputes_every_lead(t0):
    from io import StringIO

    from django.core.management import call_command

    lead = blank_lead(industry="finance")
    out = StringIO()
    call_command("rescore_leads", stdout=out)
    assert "Rescored 1 leads" in out.getvalue()
    assert stored(lead)[0] == 10
    assert ledger(lead) == [("recalculation", "", 10)]


def _scratch_table_oids() -> tuple[int, int, int]:
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT 'scoring_scored'::regclass::oid, 'scoring_awarded'::regclass::oid, "
            "'scoring_new_events'::regclass::oid"
        )
        return cursor.fetchone()


def test_event_rescores_reuse_the_scratch_tables_instead_of_recreating_them(t0):
    # Creating and dropping them per rescore bloated the system catalogs under load.
    lead = blank_lead()
    event(lead, "page_view", t0, url=PRICING)
    rescore_leads([lead.pk], now=t0)
    tables = _scratch_table_oids()
    event(lead, "email_open", t0 + timedelta(hours=1))
    rescore_leads([lead.pk], now=t0 + timedelta(hours=1))

    assert _scratch_table_oids() == tables
    assert [row[2] for row in ledger(lead) if row[0] == "event"] == [30, 5]
    lead.refresh_from_db()
    assert lead.behavior_score == 35


# What a rescore after events takes as new: only those events are looked up in the ledger
# (their rows) and checked for triggers; the scores always read every event.


def _new_events(lead) -> list[int]:
    from django.db import connection, transaction
    from django.utils import timezone

    from scoring import engine
    from scoring.engine import LeadSet
    from scoring.spec import active_spec

    with transaction.atomic(), connection.cursor() as cursor:
        leads = LeadSet(ids=(lead.pk,))
        engine.score_into_temp_table(active_spec(), leads, timezone.now(), keep_new_events=True)
        cursor.execute("SELECT activity_id FROM scoring_new_events ORDER BY activity_id")
        return [row[0] for row in cursor.fetchall()]


def _received(activity, at) -> None:
    from leadops.models import Activity

    Activity.objects.filter(pk=activity.pk).update(received_at=at)


def _last_rescore_began(lead):
    from scoring.models import LeadScoreState

    return LeadScoreState.objects.get(lead=lead).computed_at


def test_events_received_well_before_the_last_rescore_are_not_new(t0):
    lead = blank_lead()
    old = event(lead, "page_view", t0, url=PRICING)
    rescore_leads([lead.pk])
    _received(old, _last_rescore_began(lead) - timedelta(hours=1))
    new = event(lead, "email_open", t0 + timedelta(hours=1))

    assert _new_events(lead) == [new.pk]
    rescore_leads([lead.pk])
    assert [row for row in ledger(lead) if row[0] == "event"] == [
        ("event", "Pricing page view", 30),
        ("event", "Email open", 5),
    ]


def test_an_event_committed_after_a_rescore_began_still_gets_its_row(t0):
    # Its transaction was open while the rescore ran: received before the rescore began,
    # invisible to it. Within the margin it is still new to the next one.
    from django.utils import timezone

    from scoring.models import ScoringModel

    active = ScoringModel.objects.filter(status="active")
    active.update(activated_at=timezone.now() - timedelta(days=1))  # the event came after it
    lead = blank_lead()
    event(lead, "email_open", t0)
    rescore_leads([lead.pk])
    late = event(lead, "page_view", t0 + timedelta(minutes=5), url=PRICING)
    _received(late, _last_rescore_began(lead) - timedelta(minutes=1))

    assert late.pk in _new_events(lead)
    rescore_leads([lead.pk])
    assert ("event", "Pricing page view", 30) in ledger(lead)
    assert sum(points for _r, _l, points in ledger(lead)) == stored(lead)[2]


def test_a_rescore_at_a_future_clock_hides_no_later_event(t0):
    from django.utils import timezone

    lead = blank_lead()
    event(lead, "email_open", t0)
    rescore_leads([lead.pk], now=timezone.now() + timedelta(days=30))
    assert _last_rescore_began(lead) <= timezone.now()
    later = event(lead, "page_view", t0 + timedelta(hours=1), url=PRICING)

    assert later.pk in _new_events(lead)
    rescore_leads([lead.pk])
    assert ("event", "Pricing page view", 30) in ledger(lead)
