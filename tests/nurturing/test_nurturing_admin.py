"""Admin of segments, tracks and enrollments: rows not JSON, live counts, validation,
activate / pause, step preview and test send, and who may do what."""

from __future__ import annotations

import pytest
from django.core import mail
from django.urls import reverse
from django.utils import timezone

from leadops.roles import _permissions_named
from nurturing.models import EmailSend, Enrollment, Segment, Step, Track
from tests.factories import LeadFactory

pytestmark = pytest.mark.django_db


def _staff_with(user, extra: list[str]):
    from django.contrib.auth.models import Group

    user.is_staff = True
    user.save()
    group = Group.objects.get(name=next(iter(user.groups.values_list("name", flat=True))))
    for name in extra:
        group.permissions.add(*_permissions_named(name))
    return user


@pytest.fixture
def marketer_client(client, marketer):
    marketer.email = "marketer@example.jp"
    _staff_with(marketer, [])  # the marketer role's own permissions (leadops.roles)
    client.force_login(marketer)
    return client


@pytest.fixture
def manager_client(client, manager):
    _staff_with(manager, [])
    client.force_login(manager)
    return client


def rows_data(rows: list[dict], *, initial: int = 0) -> dict:
    data = {
        "conditions-TOTAL_FORMS": str(len(rows)),
        "conditions-INITIAL_FORMS": str(initial),
        "conditions-MIN_NUM_FORMS": "0",
        "conditions-MAX_NUM_FORMS": "30",
    }
    for index, row in enumerate(rows):
        for key, value in row.items():
            data[f"conditions-{index}-{key}"] = value
    return data


def segment_data(name: str, rows: list[dict], **extra) -> dict:
    return {"name": name, "description": "", **rows_data(rows), **extra}


# --- segments --------------------------------------------------------------------------------


def test_the_segment_editor_renders_rows_from_the_allowlist(marketer_client):
    page = marketer_client.get(reverse("admin:nurturing_segment_add"))
    html = page.content.decode()
    assert page.status_code == 200
    assert 'name="conditions-0-field"' in html and 'name="conditions-0-op"' in html
    assert '<option value="behavior_score">behavior score</option>' in html
    assert 'id="segment-allowlist"' in html and "Add a condition" in html
    assert 'id="segment-values-industry"' in html and "hx-post" in html


def test_a_marketer_builds_a_segment_from_rows_without_json(marketer_client, marketer):
    rows = [
        {"field": "job_level", "op": "in", "value": "director、 Executive / board (経営層・役員)"},
        {"field": "score", "op": "between", "value": "50", "value_to": "100"},
        {"field": "activity", "op": "has", "event_type": "page_view", "days": "30"},
        {"field": "unsubscribed", "op": "is", "value": "no"},
        {"field": "owner", "op": "empty"},
        {"field": "", "op": "", "value": ""},  # an untouched blank row is ignored
    ]
    response = marketer_client.post(
        reverse("admin:nurturing_segment_add"), segment_data("部長以上", rows)
    )
    assert response.status_code == 302, response.content.decode()[:3000]
    segment = Segment.objects.get()
    assert segment.created_by == marketer
    assert segment.conditions == [
        {"field": "job_level", "op": "in", "value": ["director", "executive"]},
        {"field": "score", "op": "between", "value": [50, 100]},
        {"field": "activity", "op": "has", "value": {"type": "page_view", "days": 30}},
        {"field": "unsubscribed", "op": "is", "value": False},
        {"field": "owner", "op": "empty", "value": None},
    ]
    listing = marketer_client.get(reverse("admin:nurturing_segment_changelist")).content.decode()
    assert "job level is one of" in listing


def test_bad_rows_get_messages_beside_them_and_nothing_is_saved(marketer_client):
    rows = [
        {"field": "employee_count", "op": "contains", "value": "1"},
        {"field": "owner__password", "op": "eq", "value": "x"},
        {"field": "score", "op": "gte", "value": "many"},
        {"field": "industry", "op": "eq", "value": "shipping"},
        {"field": "activity", "op": "has", "event_type": "page_view", "days": ""},
        {"field": "stage", "op": "", "value": "new"},
        {"field": "", "op": "eq", "value": "x"},
    ]
    response = marketer_client.post(reverse("admin:nurturing_segment_add"), segment_data("x", rows))
    html = response.content.decode()
    assert response.status_code == 200
    assert not Segment.objects.exists()
    assert "Some conditions are not valid" in html
    assert "cannot be used with employee count" in html
    assert "Select a valid choice. owner__password is not one of the available choices." in html
    assert "“many” is not a whole number" in html
    assert "“shipping” is not a valid industry" in html
    assert "The number of days must be a whole number from 1 to 3650." in html
    assert "Choose an operator." in html and "Choose a field." in html


def test_the_change_page_shows_the_stored_conditions_as_rows(marketer_client):
    segment = Segment.objects.create(
        name="s",
        conditions=[
            {"field": "industry", "op": "in", "value": ["software", "finance"]},
            {"field": "score", "op": "between", "value": [10, 20]},
            {"field": "consent", "op": "is", "value": True},
        ],
    )
    html = marketer_client.get(
        reverse("admin:nurturing_segment_change", args=[segment.pk])
    ).content.decode()
    assert 'value="software, finance"' in html
    assert 'name="conditions-1-value" value="10"' in html and 'value="20"' in html
    assert 'name="conditions-2-value" value="yes"' in html
    assert 'name="conditions-TOTAL_FORMS" value="4"' in html  # three rows and a blank one

    # Removing a row (DELETE) and saving keeps the others.
    data = segment_data(
        "s",
        [
            {"field": "industry", "op": "in", "value": "software, finance"},
            {"field": "score", "op": "between", "value": "10", "value_to": "20", "DELETE": "on"},
            {"field": "consent", "op": "is", "value": "yes"},
        ],
    )
    data["conditions-INITIAL_FORMS"] = "3"
    response = marketer_client.post(
        reverse("admin:nurturing_segment_change", args=[segment.pk]), data
    )
    assert response.status_code == 302
    segment.refresh_from_db()
    assert [c["field"] for c in segment.conditions] == ["industry", "consent"]


def test_the_preview_counts_and_samples_the_rows_being_edited(marketer_client):
    LeadFactory(email="top@example.jp", industry="software", score=90)
    LeadFactory(email="second@example.jp", industry="software", score=40, unsubscribed=True)
    LeadFactory(email="other@example.jp", industry="retail", score=99)
    url = reverse("admin:nurturing_segment_preview")
    response = marketer_client.post(
        url, rows_data([{"field": "industry", "op": "eq", "value": "software"}])
    )
    html = response.content.decode()
    assert response.status_code == 200
    assert "<strong>2</strong>" in html and "<strong>1</strong>" in html  # leads, mailable
    assert html.index("top@example.jp") < html.index("second@example.jp")
    assert "other@example.jp" not in html

    bad = marketer_client.post(url, rows_data([{"field": "score", "op": "gte", "value": "x"}]))
    assert (
        bad.status_code == 200 and "Condition 1: “x” is not a whole number" in bad.content.decode()
    )
    assert marketer_client.get(url).status_code == 403
    assert (
        "Send the condition rows"
        in marketer_client.post(url, {"segment": "999999"}).content.decode()
    )


def test_the_preview_escapes_lead_data(marketer_client):
    LeadFactory(email="x@example.jp", last_name="<script>alert(1)</script>")
    html = marketer_client.post(
        reverse("admin:nurturing_segment_preview"), rows_data([])
    ).content.decode()
    assert "<script>alert(1)</script>" not in html and "&lt;script&gt;" in html


def test_a_manager_sees_segments_read_only_and_previews_the_saved_one(manager_client):
    LeadFactory(industry="software")
    segment = Segment.objects.create(
        name="s", conditions=[{"field": "industry", "op": "eq", "value": "software"}]
    )
    page = manager_client.get(reverse("admin:nurturing_segment_change", args=[segment.pk]))
    html = page.content.decode()
    assert page.status_code == 200
    assert 'name="_save"' not in html and 'name="conditions-0-field"' not in html
    assert "industry is Software" in html
    preview = manager_client.post(
        reverse("admin:nurturing_segment_preview"), {"segment": segment.pk}
    )
    assert preview.status_code == 200 and "<strong>1</strong>" in preview.content.decode()
    response = manager_client.post(
        reverse("admin:nurturing_segment_change", args=[segment.pk]), segment_data("changed", [])
    )
    assert response.status_code == 403
    assert manager_client.get(reverse("admin:nurturing_segment_add")).status_code == 403


def test_a_sales_rep_has_no_nurturing_admin(client, sales_rep):
    _staff_with(sales_rep, [])
    client.force_login(sales_rep)
    assert client.get(reverse("admin:nurturing_segment_changelist")).status_code == 403
    assert client.post(reverse("admin:nurturing_segment_preview"), rows_data([])).status_code == 403


# --- tracks ----------------------------------------------------------------------------------


def steps_data(steps: list[dict], *, initial: int = 0) -> dict:
    data = {
        "steps-TOTAL_FORMS": str(len(steps)),
        "steps-INITIAL_FORMS": str(initial),
        "steps-MIN_NUM_FORMS": "0",
        "steps-MAX_NUM_FORMS": "1000",
    }
    for index, step in enumerate(steps):
        values = {"subject_en": "", "body_en": "", "delay_hours": "0", **step}
        for key, value in values.items():
            data[f"steps-{index}-{key}"] = value
    return data


def track_data(chosen: Segment | None, steps: list[dict], **fields) -> dict:
    data = {
        "name": "ようこそ",
        "kind": "step",
        "enrollment_rule": "segment",
        "segment": chosen.pk if chosen else "",
        "temperature": "",
        "scheduled_at_0": "",
        "scheduled_at_1": "",
        **fields,
    }
    return {**data, **steps_data(steps)}


STEP_ONE = {
    "position": "1",
    "delay_hours": "0",
    "subject_ja": "{{ lead.last_name }} 様",
    "body_ja": "ご案内です",
}


@pytest.fixture
def segment() -> Segment:
    return Segment.objects.create(
        name="software", conditions=[{"field": "industry", "op": "eq", "value": "software"}]
    )


def test_a_marketer_creates_a_track_with_steps(marketer_client, marketer, segment):
    second = {"position": "2", "delay_hours": "48", "subject_ja": "2通目", "body_ja": "b",
              "subject_en": "Second", "body_en": "Hello {{ lead.first_name }}"}  # fmt: skip
    response = marketer_client.post(
        reverse("admin:nurturing_track_add"), track_data(segment, [STEP_ONE, second])
    )
    assert response.status_code == 302, response.content.decode()[:3000]
    track = Track.objects.get()
    assert (track.status, track.created_by, track.segment) == ("draft", marketer, segment)
    assert list(track.steps.values_list("position", "delay_hours")) == [(1, 0), (2, 48)]


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ("{% if lead.last_name %}no end", "This template has an error: Unclosed tag"),
        ("{% include 'admin/base.html' %}", "The {% include %} tag cannot be used in an email."),
        ("{{ lead.last_name|nosuchfilter }}", "Invalid filter: &#x27;nosuchfilter&#x27;"),
    ],
)
def test_a_template_that_does_not_compile_is_a_form_error(marketer_client, segment, body, message):
    response = marketer_client.post(
        reverse("admin:nurturing_track_add"), track_data(segment, [{**STEP_ONE, "body_ja": body}])
    )
    assert response.status_code == 200
    assert message in response.content.decode()
    assert not Track.objects.exists() and not Step.objects.exists()


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"segment": ""}, "Choose the segment whose leads enroll."),
        ({"enrollment_rule": "temperature"}, "Choose the temperature whose leads enroll."),
        (
            {"scheduled_at_0": "2030-01-01", "scheduled_at_1": "09:00:00"},
            "Only newsletters have a send time",
        ),
        ({"kind": "newsletter", "enrollment_rule": "returned"}, "A newsletter goes to a segment"),
    ],
)
def test_track_settings_are_validated(marketer_client, segment, fields, message):
    response = marketer_client.post(
        reverse("admin:nurturing_track_add"), track_data(segment, [STEP_ONE], **fields)
    )
    assert response.status_code == 200 and message in response.content.decode()
    assert not Track.objects.exists()


def test_a_newsletter_has_one_step_and_english_is_all_or_nothing(marketer_client, segment):
    second = {**STEP_ONE, "position": "2"}
    response = marketer_client.post(
        reverse("admin:nurturing_track_add"),
        track_data(segment, [STEP_ONE, second], kind="newsletter"),
    )
    assert "A newsletter sends one email: keep exactly one step." in response.content.decode()
    half = {**STEP_ONE, "subject_en": "Hello"}
    response = marketer_client.post(
        reverse("admin:nurturing_track_add"), track_data(segment, [half])
    )
    assert "Write both the English subject and body, or neither." in response.content.decode()
    assert not Track.objects.exists()


def make_track(segment: Segment, *, status: str = "draft") -> Track:
    track = Track.objects.create(
        name="t", kind="step", enrollment_rule="segment", segment=segment, status=status
    )
    Step.objects.create(
        track=track,
        position=1,
        subject_ja="{{ lead.last_name }} 様へ",
        body_ja="本文 {{ lead.company }}",
    )
    return track


def test_activate_and_pause_buttons(marketer_client, segment):
    LeadFactory.create_batch(3, industry="software", stage="new")
    track = make_track(segment)
    change_url = reverse("admin:nurturing_track_change", args=[track.pk])
    assert "Activate" in marketer_client.get(change_url).content.decode()

    response = marketer_client.post(
        reverse("admin:nurturing_track_activate", args=[track.pk]), follow=True
    )
    track.refresh_from_db()
    assert track.status == "active" and track.enrollments.count() == 3
    html = response.content.decode()
    assert "is active; 3 leads enrolled now." in html
    assert "Pause" in html and "Active" in html

    response = marketer_client.post(
        reverse("admin:nurturing_track_pause", args=[track.pk]), follow=True
    )
    track.refresh_from_db()
    assert track.status == "paused" and "The track is paused" in response.content.decode()
    again = marketer_client.post(
        reverse("admin:nurturing_track_pause", args=[track.pk]), follow=True
    )
    assert "Only an active track can be paused." in again.content.decode()
    assert (
        marketer_client.get(reverse("admin:nurturing_track_activate", args=[track.pk])).status_code
        == 403
    )


def test_activating_a_big_segment_leaves_enrollment_to_the_periodic_run(
    marketer_client, segment, settings
):
    settings.NURTURING_ENROLL_NOW_MAX = 1
    LeadFactory.create_batch(2, industry="software", stage="new")
    track = make_track(segment)
    url = reverse("admin:nurturing_track_activate", args=[track.pk])
    response = marketer_client.post(url, follow=True)
    assert "is active; its many leads enroll within a minute." in response.content.decode()
    assert not track.enrollments.exists()


def test_activating_a_track_that_is_not_ready_says_why(marketer_client, segment):
    track = Track.objects.create(
        name="empty", kind="step", enrollment_rule="segment", segment=segment
    )
    response = marketer_client.post(
        reverse("admin:nurturing_track_activate", args=[track.pk]), follow=True
    )
    assert "was not activated: Add at least one step" in response.content.decode()
    track.refresh_from_db()
    assert track.status == "draft"


def test_the_list_actions_activate_and_pause(marketer_client, segment):
    ready, empty = (
        make_track(segment),
        Track.objects.create(name="empty", kind="step", segment=segment),
    )
    url = reverse("admin:nurturing_track_changelist")
    response = marketer_client.post(
        url, {"action": "activate_tracks", "_selected_action": [ready.pk, empty.pk]}, follow=True
    )
    html = response.content.decode()
    assert "“t” is active" in html and "“empty” was not activated" in html
    marketer_client.post(url, {"action": "pause_tracks", "_selected_action": [ready.pk]})
    ready.refresh_from_db()
    assert ready.status == "paused"


def test_the_change_page_shows_last_error_enrollments_and_preview_links(marketer_client, segment):
    track = make_track(segment, status="active")
    Track.objects.filter(pk=track.pk).update(last_error="Step 1, Japanese body: broken")
    lead = LeadFactory()
    Enrollment.objects.create(track=track, lead=lead, enrolled_at=timezone.now())
    html = marketer_client.get(
        reverse("admin:nurturing_track_change", args=[track.pk])
    ).content.decode()
    assert "Step 1, Japanese body: broken" in html
    assert "Segment: industry is Software" in html
    assert "See the enrollments" in html
    step = track.steps.get()
    assert reverse("admin:nurturing_track_step_preview", args=[track.pk, step.pk]) in html


def test_the_change_page_shows_the_kpis_of_each_step(marketer_client, segment):
    track = make_track(segment, status="active")
    step = track.steps.get()
    now = timezone.now()
    sent = {"step": step, "track": track, "status": "sent", "queued_at": now, "sent_at": now}
    EmailSend.objects.create(lead=LeadFactory(), first_opened_at=now, **sent)
    EmailSend.objects.create(lead=LeadFactory(), **sent)
    html = marketer_client.get(
        reverse("admin:nurturing_track_change", args=[track.pk])
    ).content.decode()
    assert "KPIs" in html and "Whole track (leads count once)" in html
    assert '<td class="numeric">1 (50.0%)</td>' in html  # opened: 1 of 2 delivered


def test_a_step_already_sent_cannot_be_deleted(marketer_client, segment):
    track = make_track(segment, status="active")
    step = track.steps.get()
    EmailSend.objects.create(
        lead=LeadFactory(), step=step, track=track, status="sent", queued_at=timezone.now()
    )
    data = track_data(segment, [{**STEP_ONE, "id": step.pk, "track": track.pk, "DELETE": "on"}])
    data["steps-INITIAL_FORMS"] = "1"
    response = marketer_client.post(reverse("admin:nurturing_track_change", args=[track.pk]), data)
    assert response.status_code == 200
    assert "Step 1 was already sent to 1 leads: it cannot be deleted." in response.content.decode()
    assert Step.objects.filter(pk=step.pk).exists()


# --- preview and test send -------------------------------------------------------------------


def test_preview_a_step_for_a_lead_of_the_segment(marketer_client, segment):
    lead = LeadFactory(last_name="鈴木", industry="software", stage="new")
    track = make_track(segment)
    step = track.steps.get()
    url = reverse("admin:nurturing_track_step_preview", args=[track.pk, step.pk])
    html = marketer_client.get(url).content.decode()
    assert '<p id="preview-subject">鈴木 様へ</p>' in html
    assert f"本文 {lead.account.name}" in html

    other = LeadFactory(last_name="<b>高橋</b>", industry="retail")
    html = marketer_client.get(
        url, {"lead": other.email.upper(), "language": "en"}
    ).content.decode()
    assert "&lt;b&gt;高橋&lt;/b&gt; 様へ" in html  # shown escaped on the page

    html = marketer_client.get(url, {"lead": "nobody@example.jp"}).content.decode()
    assert "No lead nobody@example.jp: previewing with another lead." in html
    html = marketer_client.get(url, {"lead": "12abc", "language": "xx"}).content.decode()
    assert "No lead 12abc" in html


def test_preview_shows_a_render_error(marketer_client, segment):
    track = make_track(segment)
    Step.objects.filter(track=track).update(body_ja="{% for %}")
    step = track.steps.get()
    response = marketer_client.get(
        reverse("admin:nurturing_track_step_preview", args=[track.pk, step.pk])
    )
    assert response.status_code == 200
    assert "Step 1, Japanese body: the template could not be rendered" in response.content.decode()


def test_test_send_goes_to_the_current_user(marketer_client, marketer, segment):
    LeadFactory(last_name="鈴木", industry="software", stage="new")
    track = make_track(segment)
    step = track.steps.get()
    url = reverse("admin:nurturing_track_step_test", args=[track.pk, step.pk])
    response = marketer_client.post(url, {"language": "ja"}, follow=True)
    assert "A test email was sent to marketer@example.jp." in response.content.decode()
    assert len(mail.outbox) == 1
    assert mail.outbox[0].to == ["marketer@example.jp"]
    assert mail.outbox[0].subject == "[テスト] 鈴木 様へ"  # the Japanese mail, marked in Japanese

    marketer.email = ""
    marketer.save()
    response = marketer_client.post(url, {"language": "ja"}, follow=True)
    assert "Your user has no email address" in response.content.decode()
    assert len(mail.outbox) == 1


def test_test_send_of_a_broken_step_sends_nothing(marketer_client, marketer, segment):
    marketer.save()
    track = make_track(segment)
    Step.objects.filter(track=track).update(subject_ja="{% if %}")
    step = track.steps.get()
    response = marketer_client.post(
        reverse("admin:nurturing_track_step_test", args=[track.pk, step.pk]),
        {"language": "ja"},
        follow=True,
    )
    assert "Step 1, Japanese subject" in response.content.decode()
    assert mail.outbox == []


def test_a_manager_previews_but_does_not_operate_tracks(manager_client, segment):
    track = make_track(segment)
    step = track.steps.get()
    page = manager_client.get(
        reverse("admin:nurturing_track_change", args=[track.pk])
    ).content.decode()
    assert 'name="_save"' not in page and "nurturing_track_activate" not in page
    assert reverse("admin:nurturing_track_activate", args=[track.pk]) not in page
    preview = manager_client.get(
        reverse("admin:nurturing_track_step_preview", args=[track.pk, step.pk])
    )
    assert preview.status_code == 200 and "Send a test" not in preview.content.decode()
    assert (
        manager_client.post(reverse("admin:nurturing_track_activate", args=[track.pk])).status_code
        == 403
    )
    assert (
        manager_client.post(
            reverse("admin:nurturing_track_step_test", args=[track.pk, step.pk])
        ).status_code
        == 403
    )
    track.refresh_from_db()
    assert track.status == "draft" and mail.outbox == []


# --- enrollments -----------------------------------------------------------------------------


def test_enrollments_are_a_read_only_list_with_filters(manager_client, segment):
    track = make_track(segment, status="active")
    make_track(segment, status="active")  # the track filter shows from two tracks on
    lead = LeadFactory(email="enrolled@example.jp")
    Enrollment.objects.create(
        track=track, lead=lead, enrolled_at=timezone.now(), status="exited", exit_reason="mql"
    )
    url = reverse("admin:nurturing_enrollment_changelist")
    html = manager_client.get(url).content.decode()
    assert "enrolled@example.jp" in html
    assert "?status__exact=exited" in html and f"?track__id__exact={track.pk}" in html
    assert (
        "enrolled@example.jp"
        in manager_client.get(url, {"q": "enrolled@example.jp"}).content.decode()
    )
    assert (
        "enrolled@example.jp"
        not in manager_client.get(url, {"status__exact": "active"}).content.decode()
    )
    assert manager_client.get(reverse("admin:nurturing_enrollment_add")).status_code == 403


def test_marketers_read_enrollments_too(marketer_client, segment):
    track = make_track(segment, status="active")
    Enrollment.objects.create(track=track, lead=LeadFactory(), enrolled_at=timezone.now())
    assert marketer_client.get(reverse("admin:nurturing_enrollment_changelist")).status_code == 200
