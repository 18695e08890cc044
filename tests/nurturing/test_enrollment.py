"""Enrollment: set-based and idempotent, exits, returned leads, activation, rendering."""

from __future__ import annotations

import threading
from datetime import timedelta

import pytest
import time_machine
from django.core import mail
from django.db import connection
from django.utils import timezone

from leadops.models import Lead
from nurturing import enrollment
from nurturing.enrollment import (
    ExitReason,
    TemplateRenderError,
    TrackNotReady,
    activate_track,
    enroll_due_tracks,
    enroll_returned_lead,
    enroll_segment,
    exit_leads,
    pause_track,
    render_step,
)
from nurturing.models import EmailSend, Enrollment, Segment, Step, Track
from tests.factories import LeadFactory

pytestmark = pytest.mark.django_db

SOFTWARE = [{"field": "industry", "op": "eq", "value": "software"}]


def make_track(*, kind="step", rule="segment", status="active", conditions=SOFTWARE, **fields):
    segment = Segment.objects.create(name="software", conditions=conditions)
    track = Track.objects.create(
        name="t", kind=kind, enrollment_rule=rule, status=status, segment=segment, **fields
    )
    Step.objects.create(
        track=track,
        position=1,
        delay_hours=24,
        subject_ja="{{ lead.last_name }} 様へ",
        body_ja="本文",
    )
    if kind == "step":
        Step.objects.create(
            track=track, position=2, delay_hours=72, subject_ja="2通目", body_ja="b"
        )
    return track


def enrolled(track: Track) -> set[str]:
    return set(track.enrollments.values_list("lead__email", flat=True))


@pytest.fixture
def audience() -> dict[str, Lead]:
    """Software leads in every situation enrollment must tell apart, and one outsider."""
    return {
        "new": LeadFactory(email="new@example.jp", stage="new"),
        "nurturing": LeadFactory(email="nurturing@example.jp", stage="nurturing"),
        "unsubscribed": LeadFactory(email="unsub@example.jp", unsubscribed=True),
        **{
            stage: LeadFactory(email=f"{stage}@example.jp", stage=stage)
            for stage in enrollment.EXCLUDED_STAGES
        },
        "retail": LeadFactory(email="retail@example.jp", industry="retail"),
    }


def test_segment_enrollment_takes_only_nurturable_leads_and_is_idempotent(audience):
    track = make_track()
    before = timezone.now()
    assert enroll_segment(track.pk) == 2
    assert enrolled(track) == {"new@example.jp", "nurturing@example.jp"}
    rows = list(track.enrollments.all())
    assert {row.status for row in rows} == {"active"}
    assert {row.next_position for row in rows} == {1}
    for row in rows:
        assert before <= row.enrolled_at <= timezone.now()
        assert row.next_send_at == row.enrolled_at + timedelta(hours=24)

    snapshot = list(track.enrollments.order_by("pk").values())
    assert enroll_segment(track.pk) == 0
    assert list(track.enrollments.order_by("pk").values()) == snapshot


def test_new_matches_enroll_on_the_next_run(audience):
    track = make_track()
    enroll_segment(track.pk)
    LeadFactory(email="later@example.jp", stage="new")
    audience["retail"].industry = "software"
    audience["retail"].save()
    assert enroll_segment(track.pk) == 2
    assert "later@example.jp" in enrolled(track) and "retail@example.jp" in enrolled(track)


def test_the_first_step_decides_the_first_send(audience):
    track = make_track()
    track.steps.filter(position=1).delete()  # the sequence now starts at step 2
    enroll_segment(track.pk)
    row = track.enrollments.get(lead=audience["new"])
    assert row.next_position == 2
    assert row.next_send_at == row.enrolled_at + timedelta(hours=72)


def test_temperature_tracks_enroll_by_temperature(db):
    hot = LeadFactory(temperature="hot", stage="nurturing")
    LeadFactory(temperature="warm")
    LeadFactory(temperature="hot", unsubscribed=True)
    track = make_track(rule="temperature", temperature="hot")
    assert enroll_segment(track.pk) == 1
    assert list(track.enrollments.values_list("lead", flat=True)) == [hot.pk]


@pytest.mark.parametrize("status", ["draft", "paused", "finished"])
def test_only_active_tracks_enroll(audience, status):
    track = make_track(status=status)
    assert enroll_segment(track.pk) == 0 and not track.enrollments.exists()


def test_a_track_without_steps_enrolls_nobody(audience):
    track = make_track()
    track.steps.all().delete()
    assert enroll_segment(track.pk) == 0


def test_a_newsletter_enrolls_once_when_due(audience):
    send_at = timezone.now() + timedelta(days=2)
    track = make_track(kind="newsletter", scheduled_at=send_at)
    assert enroll_segment(track.pk) == 0  # not due yet

    with time_machine.travel(send_at + timedelta(minutes=1), tick=False):
        assert enroll_segment(track.pk) == 2
        assert set(track.enrollments.values_list("next_send_at", flat=True)) == {timezone.now()}
        LeadFactory(stage="new")  # a later match does not get this newsletter
        assert enroll_segment(track.pk) == 0
    assert track.enrollments.count() == 2


def test_a_newsletter_without_schedule_is_due_now(audience):
    track = make_track(kind="newsletter")
    now = timezone.now()
    assert enroll_segment(track.pk) == 2
    assert all(row.next_send_at >= now for row in track.enrollments.all())


def test_a_newsletter_that_finds_nobody_is_finished_with_a_note(db):
    track = make_track(kind="newsletter")
    assert enroll_segment(track.pk) == 0
    track.refresh_from_db()
    assert track.status == "finished" and "No lead matched" in track.last_error


def test_a_returned_lead_enrolls_in_active_returned_tracks_once(db):
    returned = make_track(rule="returned")
    make_track(rule="returned", status="paused")
    segment_track = make_track()
    lead = LeadFactory(stage="nurturing")
    assert enroll_returned_lead(lead.pk) == 1
    assert list(lead.enrollments.values_list("track", flat=True)) == [returned.pk]
    row = lead.enrollments.get()
    assert row.next_send_at == row.enrolled_at + timedelta(hours=24)

    exit_leads([lead.pk], reason=ExitReason.MQL)
    assert enroll_returned_lead(lead.pk) == 0  # each track once, even after an exit
    assert lead.enrollments.count() == 1
    assert not segment_track.enrollments.exists()


def test_a_lead_returned_by_inside_sales_is_enrolled_once_back_in_nurturing(db, is_rep):
    from handoff.models import Handoff
    from handoff.services import mark_lead_mql, return_to_nurturing

    track = make_track(rule="returned")
    lead = LeadFactory(stage="nurturing")
    mark_lead_mql(lead.pk, reason="test")
    handoff = Handoff.objects.get(lead=lead, kind="inside_sales")
    assert enroll_returned_lead(lead.pk) == 0  # still an MQL: with IS, not nurtured

    # The hand-off service enrolls the returned lead itself; asking again adds nothing.
    return_to_nurturing(handoff.pk, actor=is_rep, reason="timing")
    assert list(track.enrollments.values_list("lead", "status")) == [(lead.pk, "active")]
    assert enroll_returned_lead(lead.pk) == 0


@pytest.mark.parametrize(("stage", "unsubscribed"), [("sql", False), ("nurturing", True)])
def test_a_returned_lead_still_with_sales_or_unsubscribed_is_not_enrolled(db, stage, unsubscribed):
    make_track(rule="returned")
    lead = LeadFactory(stage=stage, unsubscribed=unsubscribed)
    assert enroll_returned_lead(lead.pk) == 0
    assert not lead.enrollments.exists()


def test_exit_leads_ends_active_enrollments_only(audience):
    first, second = make_track(), make_track()
    enroll_segment(first.pk)
    enroll_segment(second.pk)
    lead, other = audience["new"], audience["nurturing"]
    Enrollment.objects.filter(track=second, lead=lead).update(status="completed")

    assert exit_leads([lead.pk, lead.pk], reason=ExitReason.UNSUBSCRIBED) == 1
    exited = Enrollment.objects.get(track=first, lead=lead)
    assert exited.status == "exited" and exited.exit_reason == "unsubscribed"
    assert exited.exited_at is not None and exited.next_send_at is None
    assert Enrollment.objects.get(track=second, lead=lead).status == "completed"
    assert set(other.enrollments.values_list("status", flat=True)) == {"active"}
    assert exit_leads([lead.pk], reason=ExitReason.MQL) == 0  # nothing left to exit
    assert exit_leads([], reason=ExitReason.MQL) == 0


@pytest.mark.parametrize("reason", ["", "x" * 51])
def test_exit_leads_needs_a_short_reason(db, reason):
    with pytest.raises(ValueError):
        exit_leads([1], reason=reason)


def test_enroll_due_tracks_runs_active_audience_tracks(audience, settings):
    settings.NURTURING_ENROLL_INTERVAL_SECONDS = 0
    active = make_track()
    make_track(status="draft")
    make_track(rule="returned")
    assert enroll_due_tracks() == 2
    assert enrolled(active) == {"new@example.jp", "nurturing@example.jp"}
    assert Enrollment.objects.count() == 2
    assert enroll_due_tracks() == 0


def test_enroll_due_tracks_reruns_a_step_track_only_after_the_interval(audience, settings):
    settings.NURTURING_ENROLL_INTERVAL_SECONDS = 300
    track = make_track()
    assert enroll_due_tracks() == 2
    LeadFactory(stage="new")
    assert enroll_due_tracks() == 0  # claimed for five minutes: a second scheduler skips it
    from django.core.cache import cache

    cache.delete(f"nurturing:enroll-run:{track.pk}")
    assert enroll_due_tracks() == 1


def test_enroll_due_tracks_records_a_broken_segment_and_goes_on(audience, settings):
    settings.NURTURING_ENROLL_INTERVAL_SECONDS = 0
    broken = make_track(conditions=[{"field": "owner", "op": "eq", "value": "gone"}])
    fine = make_track()
    assert enroll_due_tracks() == 2
    broken.refresh_from_db()
    assert "Nobody has the user name “gone”" in broken.last_error
    assert fine.enrollments.count() == 2


def test_newsletters_whose_sends_are_all_done_are_finished(audience, settings):
    settings.NURTURING_ENROLL_INTERVAL_SECONDS = 0
    track = make_track(kind="newsletter")
    enroll_due_tracks()
    track.refresh_from_db()
    assert track.status == "active"
    track.enrollments.update(status="completed")
    enroll_due_tracks()
    track.refresh_from_db()
    assert track.status == "finished"


@pytest.mark.django_db(transaction=True)
def test_two_schedulers_enrolling_at_once_write_each_row_once():
    LeadFactory.create_batch(30, stage="new")
    track = make_track()
    results, barrier = [], threading.Barrier(2)

    def run() -> None:
        barrier.wait()
        try:
            results.append(enroll_segment(track.pk))
        finally:
            connection.close()

    threads = [threading.Thread(target=run) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(results) == [0, 30]
    assert track.enrollments.count() == 30


# --- activation ------------------------------------------------------------------------------


def test_activate_a_draft_enrolls_its_segment(audience):
    track = make_track(status="draft")
    assert activate_track(track.pk) == 2
    track.refresh_from_db()
    assert track.status == "active" and track.enrollments.count() == 2


def test_a_big_audience_is_enrolled_by_the_periodic_run_not_on_activation(audience, settings):
    settings.NURTURING_ENROLL_NOW_MAX = 1
    settings.NURTURING_ENROLL_INTERVAL_SECONDS = 0
    track = make_track(status="draft")
    assert activate_track(track.pk) is None
    track.refresh_from_db()
    assert track.status == "active" and not track.enrollments.exists()
    assert enroll_due_tracks() == 2


@pytest.mark.parametrize(
    ("change", "problem"),
    [
        (lambda t: t.steps.all().delete(), "Add at least one step"),
        (lambda t: Track.objects.filter(pk=t.pk).update(segment=None), "Choose the segment"),
        (
            lambda t: Track.objects.filter(pk=t.pk).update(enrollment_rule="temperature"),
            "Choose the temperature",
        ),
        (
            lambda t: Step.objects.filter(track=t, position=2).update(body_ja="{% if %}"),
            "Step 2, Japanese body",
        ),
        (
            lambda t: Step.objects.filter(track=t, position=1).update(subject_en="{{ x|nope }}"),
            "Step 1, English subject",
        ),
        (lambda t: Track.objects.filter(pk=t.pk).update(status="finished"), "draft or paused"),
        (
            lambda t: Segment.objects.filter(tracks=t).update(conditions=[{"field": "x"}]),
            "The segment's conditions are invalid",
        ),
    ],
)
def test_a_track_that_is_not_ready_is_not_activated(audience, change, problem):
    track = make_track(status="draft")
    change(track)
    with pytest.raises(TrackNotReady) as raised:
        activate_track(track.pk)
    assert any(problem in sentence for sentence in raised.value.problems)
    track.refresh_from_db()
    assert track.status != "active" and not track.enrollments.exists()


def test_a_newsletter_with_two_steps_or_returned_rule_is_not_activated(audience):
    track = make_track(kind="newsletter", status="draft")
    Step.objects.create(track=track, position=2, subject_ja="s", body_ja="b")
    with pytest.raises(TrackNotReady, match="keep exactly one step"):
        activate_track(track.pk)
    Track.objects.filter(pk=track.pk).update(enrollment_rule="returned")
    with pytest.raises(TrackNotReady, match="segment or to a temperature"):
        activate_track(track.pk)


def test_pause_and_resume(audience):
    track = make_track()
    assert pause_track(track.pk) is True
    assert pause_track(track.pk) is False
    assert enroll_segment(track.pk) == 0
    assert activate_track(track.pk) == 2


# --- rendering -------------------------------------------------------------------------------


def test_render_step_personalises_in_japanese_and_english(db, django_user_model):
    owner = django_user_model.objects.create_user("rep", last_name="佐藤", first_name="花子")
    lead = LeadFactory(last_name="山田", first_name="太郎", owner=owner, department="sales")
    step = Step.objects.create(
        track=make_track(),
        position=3,
        subject_ja="{{ lead.last_name }} 様\n へのご案内",
        body_ja="{{ lead.company }}\n{{ lead.last_name }} 様\n担当: {{ lead.owner_name }}",
        subject_en="Hello {{ lead.first_name }}",
        body_en="Department: {{ lead.department }}",
    )
    assert render_step(step, lead) == (
        "山田 様 へのご案内",
        f"{lead.account.name}\n山田 様\n担当: 佐藤 花子",
    )
    assert render_step(step, lead, "en") == ("Hello 太郎", "Department: Sales")


def test_english_falls_back_to_japanese(db):
    lead = LeadFactory(last_name="山田")
    step = Step.objects.create(
        track=make_track(), position=3, subject_ja="{{ lead.last_name }} 様", body_ja="本文"
    )
    assert render_step(step, lead, "en") == ("山田 様", "本文")


def test_the_body_is_plain_text_without_html_escaping(db):
    lead = LeadFactory(last_name="<b>R&D</b>")
    step = Step.objects.create(
        track=make_track(), position=3, subject_ja="x", body_ja="{{ lead.last_name }} 様"
    )
    assert render_step(step, lead)[1] == "<b>R&D</b> 様"


def test_templates_reach_only_personalisation_values(db, django_user_model):
    owner = django_user_model.objects.create_user("rep", password="pw-Secret-123")
    lead = LeadFactory(owner=owner)
    step = Step.objects.create(
        track=make_track(),
        position=3,
        subject_ja="s",
        body_ja="[{{ lead.owner.password }}][{{ lead.pk }}][{{ lead.account.domain }}]",
    )
    assert render_step(step, lead)[1] == "[][][]"


@pytest.mark.parametrize(
    ("body", "words"),
    [
        ("{% for x in %}", "Step 3, Japanese body"),
        ("{% include 'admin/base.html' %}", "{% include %} tag cannot be used"),
        ("{% extends 'admin/base.html' %}", "{% extends %} tag cannot be used"),
        ("{% load static %}", "'static' is not a registered tag library"),
        ("{% debug %}", "{% debug %} tag cannot be used"),
        ("{{ lead.last_name|nosuchfilter }}", "Invalid filter"),
    ],
)
def test_a_template_that_fails_raises_a_clear_error(db, body, words):
    step = Step.objects.create(track=make_track(), position=3, subject_ja="s", body_ja=body)
    with pytest.raises(TemplateRenderError) as raised:
        render_step(step, LeadFactory())
    assert words in str(raised.value) and "Fix it on the track's page" in str(raised.value)


def test_an_empty_subject_is_an_error(db):
    lead = LeadFactory(last_name="")
    step = Step.objects.create(
        track=make_track(), position=3, subject_ja="{{ lead.last_name }}", body_ja="b"
    )
    with pytest.raises(TemplateRenderError, match="Japanese subject is empty"):
        render_step(step, lead)


def test_unknown_language_is_refused(db):
    step = make_track().steps.first()
    with pytest.raises(ValueError):
        render_step(step, LeadFactory(), "fr")


def test_send_test_email_mails_the_rendered_step(db):
    lead = LeadFactory(last_name="山田")
    step = make_track().steps.get(position=1)
    enrollment.send_test_email(step, lead=lead, language="ja", to="marketer@example.jp")
    assert len(mail.outbox) == 1
    sent = mail.outbox[0]
    assert sent.to == ["marketer@example.jp"]
    assert sent.subject == "[テスト] 山田 様へ" or sent.subject == "[Test] 山田 様へ"
    assert sent.body == "本文"
    assert not EmailSend.objects.exists()  # a test is not a send of the track
