"""Decay maths at chosen clock times, the clock reset by activity, and the decay pass."""

from datetime import timedelta
from io import StringIO

import pytest
import time_machine
from django.core.management import call_command

from scoring.models import ScoreChange
from scoring.services import apply_decay, rescore_leads, score_breakdown_for
from scoring.tasks import BEAT_SCHEDULE, decay_scores
from tests.scoring.helpers import blank_lead, event, make_model, recompute, stored

pytestmark = pytest.mark.django_db
PRICING = "https://example.jp/pricing"


@pytest.mark.parametrize(
    ("days_later", "behavior"),
    [
        (0, 30),
        (30, 30),  # within the 30-day grace period: no decay
        (45, 21),  # 30 × 0.5^(15/30) = 21.2
        (60, 15),  # one half-life past the grace period
        (90, 8),  # 7.5, rounded half up
        (120, 4),  # three half-lives: 30 / 8 = 3.75
        (150, 2),  # 30 / 16 = 1.875
        (400, 0),
    ],
)
def test_behavior_halves_every_half_life_after_the_grace_period(t0, days_later, behavior):
    lead = blank_lead()
    event(lead, "page_view", t0, url=PRICING)
    rescore_leads([lead.pk], now=t0 + timedelta(days=days_later))
    assert stored(lead)[1] == behavior


def test_an_event_after_a_quiet_period_resets_the_clock(t0):
    lead = blank_lead()
    event(lead, "page_view", t0, url=PRICING)
    # 90 days quiet: 60 past the grace period, two half-lives: 30 → 7.5 by then.
    event(lead, "email_open", t0 + timedelta(days=90))
    rescore_leads([lead.pk], now=t0 + timedelta(days=90))
    assert stored(lead)[1] == 13  # 7.5 + 5 = 12.5, rounded half up
    # The new activity restarted the grace period: no decay for 30 more days.
    rescore_leads([lead.pk], now=t0 + timedelta(days=120))
    assert stored(lead)[1] == 13
    rescore_leads([lead.pk], now=t0 + timedelta(days=150))
    assert stored(lead)[1] == 6  # 12.5 × 0.5 = 6.25


def test_events_within_the_grace_period_do_not_decay_each_other(t0):
    lead = blank_lead()
    for days in (0, 20, 40):  # each gap shorter than 30 days
        event(lead, "webinar_attended", t0 + timedelta(days=days))
    rescore_leads([lead.pk], now=t0 + timedelta(days=40))
    assert stored(lead)[1] == 75


def test_any_activity_resets_the_clock_even_one_that_scores_nothing(t0):
    lead = blank_lead()
    event(lead, "form_submit", t0)
    event(lead, "seminar_attended", t0 + timedelta(days=25))  # no rule, still activity
    rescore_leads([lead.pk], now=t0 + timedelta(days=55))
    assert stored(lead)[1] == 50


def test_custom_grace_and_half_life(t0):
    model = make_model(
        behavior=[{"event_type": "email_open", "points": 100}],
        decay_grace_days=0,
        decay_half_life_days=10,
    )
    lead = blank_lead()
    event(lead, "email_open", t0)
    event(lead, "email_open", t0 + timedelta(days=10))
    now = t0 + timedelta(days=20)
    rescore_leads([lead.pk], model=model, now=now)
    # (100 × 0.5 + 100) × 0.5 = 75
    assert stored(lead)[1] == 75 == recompute(lead, model, now).behavior


def test_decay_pass_updates_inactive_leads_and_writes_one_ledger_row_per_run(t0):
    lead = blank_lead(industry="software", job_level="director", department="marketing")
    event(lead, "page_view", t0, url=PRICING)
    rescore_leads([lead.pk], now=t0)
    assert stored(lead) == (55, 30, 85, "hot")

    assert apply_decay(now=t0 + timedelta(days=60)) == 1
    assert stored(lead) == (55, 15, 70, "hot")
    assert apply_decay(now=t0 + timedelta(days=60)) == 0  # same clock: nothing to do
    assert apply_decay(now=t0 + timedelta(days=90)) == 1
    assert stored(lead) == (55, 8, 63, "warm")

    decay_rows = ScoreChange.objects.filter(lead=lead, reason="decay").order_by("id")
    assert [row.points for row in decay_rows] == [-15, -7]
    assert sum(ScoreChange.objects.filter(lead=lead).values_list("points", flat=True)) == 63
    # The pass and a full rescore agree.
    assert recompute(lead, lead_model(), t0 + timedelta(days=90)).behavior == 8
    rescore_leads([lead.pk], now=t0 + timedelta(days=90))
    assert stored(lead) == (55, 8, 63, "warm")


def lead_model():
    from scoring.models import ScoringModel

    return ScoringModel.objects.active().get()


def test_decay_pass_leaves_recently_active_leads_alone(t0):
    quiet, busy = blank_lead(), blank_lead()
    event(quiet, "form_submit", t0)
    event(busy, "form_submit", t0 + timedelta(days=59))
    rescore_leads([quiet.pk, busy.pk], now=t0 + timedelta(days=59))
    assert apply_decay(now=t0 + timedelta(days=60)) == 1
    assert stored(quiet)[1] == 25
    assert stored(busy)[1] == 50


def test_breakdown_shows_decay_so_the_points_add_up(t0):
    lead = blank_lead(industry="finance")
    event(lead, "form_submit", t0)
    rescore_leads([lead.pk], now=t0)
    apply_decay(now=t0 + timedelta(days=60))
    assert stored(lead)[2] == 35
    breakdown = score_breakdown_for(lead)
    assert {"rule": "decay", "points": -25, "count": 0} in breakdown
    assert sum(item["points"] for item in breakdown) == 35


def test_decay_with_frozen_time_uses_the_clock(t0):
    lead = blank_lead()
    event(lead, "form_submit", t0)
    rescore_leads([lead.pk], now=t0)
    with time_machine.travel(t0 + timedelta(days=60), tick=False):
        assert decay_scores() == 1  # the beat task, called directly
    assert stored(lead)[1] == 25


def test_decay_command(t0):
    lead = blank_lead()
    event(lead, "form_submit", t0)
    rescore_leads([lead.pk], now=t0)
    out = StringIO()
    moment = (t0 + timedelta(days=90)).isoformat()
    call_command("decay_scores", "--now", moment, stdout=out)
    assert "1 leads changed" in out.getvalue()
    assert stored(lead)[1] == 13  # 50 × 0.25 = 12.5


def test_decay_runs_daily_from_beat():
    entry = BEAT_SCHEDULE["scoring-decay-daily"]
    assert entry["task"] == "scoring.tasks.decay_scores"
    assert entry["schedule"].hour == {3}


@pytest.mark.django_db(transaction=True)
def test_the_decay_pass_in_parallel_chunks_decays_every_lead_once(t0, settings):
    # Outside a transaction the pass runs id ranges on several connections at once.
    settings.SCORING_PARALLEL_CHUNKS = 2
    leads = [blank_lead() for _ in range(6)]
    for lead in leads:
        event(lead, "page_view", t0, url=PRICING)
    rescore_leads([lead.pk for lead in leads], now=t0)

    changed = apply_decay(now=t0 + timedelta(days=60))

    assert changed == 6
    assert [stored(lead)[1] for lead in leads] == [15] * 6  # one half-life past the grace
    assert ScoreChange.objects.filter(reason="decay").count() == 6
    assert apply_decay(now=t0 + timedelta(days=60)) == 0
