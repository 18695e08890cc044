"""Enrollment in nurture tracks, track activation, and the rendering of a step's email.

Who enrolls: the leads of the track's segment or temperature (when the track is
activated, then new matches on every `enroll_due_tracks` run), or leads returned to
nurturing by IS or sales (`enroll_returned_lead`, called by the hand-off). Nobody
unsubscribed and nobody in the hands of IS or sales (stage mql and beyond) enrolls.
Leads leave through `exit_leads` (on MQL, on unsubscribe) or by completing the track
(the sender marks that after the last step).

Enrolling is one `INSERT … SELECT … ON CONFLICT DO NOTHING` per track: the unique
(track, lead) makes it idempotent, so a lead meets each track once, however often the
periodic job runs or two schedulers race.

Templates: subject and body are Django templates rendered with `lead` (a dict of the
lead's personalisation values, never the model: `{{ lead.owner.password }}` has
nothing to reach). The body is plain text, rendered with autoescape off; whoever builds
an HTML alternative from it must escape it (the sender does).
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime, timedelta
from functools import lru_cache
from typing import Any

from django.conf import settings
from django.core.cache import cache
from django.core.exceptions import EmptyResultSet, ValidationError
from django.core.mail import send_mail
from django.db import connection, transaction
from django.db.models import Exists, OuterRef, QuerySet
from django.template import Context, Engine, Template, TemplateSyntaxError
from django.template.defaulttags import DebugNode, LoadNode
from django.template.loader_tags import ExtendsNode, IncludeNode
from django.utils import timezone, translation
from django.utils.translation import gettext as _
from django.utils.translation import gettext_lazy

from leadops.models import Lead, Stage, Temperature
from nurturing.models import (
    Enrollment,
    EnrollmentRule,
    EnrollmentStatus,
    Step,
    Track,
    TrackKind,
    TrackStatus,
)
from nurturing.segments import NURTURABLE_STAGES, clean_conditions, segment_queryset

# Stages that never enroll: the lead is with IS or sales, or out of the funnel.
EXCLUDED_STAGES = tuple(sorted(set(Stage.values) - set(NURTURABLE_STAGES)))
# Rules whose audience is a query (the others enroll leads one by one).
AUDIENCE_RULES = (EnrollmentRule.SEGMENT, EnrollmentRule.TEMPERATURE)
LANGUAGES = ("ja", "en")
MAX_TEMPLATE_LENGTH = 100_000


class ExitReason:
    """Why a lead left a track (Enrollment.exit_reason); other short codes are allowed."""

    MQL = "mql"
    UNSUBSCRIBED = "unsubscribed"
    DISQUALIFIED = "disqualified"
    MANUAL = "manual"


class TrackNotReady(Exception):
    """The track cannot be activated; `problems` are sentences saying what to fix."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__(" ".join(problems))
        self.problems = problems


class TemplateRenderError(Exception):
    """A step's template does not compile or render; the message says which and why."""


# --- who enrolls ---------------------------------------------------------------------------


def nurturable(leads: QuerySet) -> QuerySet:
    """Leads that may receive nurture mail: not unsubscribed, not with IS or sales."""
    return leads.filter(unsubscribed=False).exclude(stage__in=EXCLUDED_STAGES)


def track_audience(track: Track) -> QuerySet:
    """The leads a segment or temperature track is for (before `nurturable`)."""
    if track.enrollment_rule == EnrollmentRule.SEGMENT and track.segment_id:
        return segment_queryset(track.segment.conditions)
    if track.enrollment_rule == EnrollmentRule.TEMPERATURE and track.temperature:
        return Lead.objects.filter(temperature=track.temperature)
    return Lead.objects.none()


@transaction.atomic
def enroll_segment(track_id: int) -> int:
    """Enroll the track's segment (or temperature) leads not enrolled yet; return how many.

    Only active tracks enroll. A newsletter enrolls once, when it is due (`scheduled_at`
    passed, or no schedule): its audience is the segment at send time. A newsletter
    that finds nobody is finished with a note. Raises ValidationError when the
    segment's conditions are no longer valid (e.g. the owner they name was deleted).
    """
    track = _locked_track(track_id)
    now = timezone.now()
    if track.status != TrackStatus.ACTIVE or track.enrollment_rule not in AUDIENCE_RULES:
        return 0
    if track.kind == TrackKind.NEWSLETTER and not _newsletter_due(track, now):
        return 0
    first = first_step(track)
    if first is None:
        return 0
    enrolled = _insert_enrollments(track, nurturable(track_audience(track)), first=first, now=now)
    if track.kind == TrackKind.NEWSLETTER and not enrolled:
        _finish_empty_newsletter(track)
    return enrolled


def enroll_leads(track_id: int, lead_ids: Iterable[int]) -> int:
    """Enroll these leads in an active track (those that may be nurtured); return how many.

    No lock on the track: the insert is idempotent by itself, and callers (the hand-off)
    run it inside their own transactions, which must not queue behind each other.
    """
    ids = sorted(set(lead_ids))
    track = Track.objects.get(pk=track_id)
    first = first_step(track)
    if not ids or track.status != TrackStatus.ACTIVE or first is None:
        return 0
    leads = nurturable(Lead.objects.filter(pk__in=ids))
    return _insert_enrollments(track, leads, first=first, now=timezone.now())


def enroll_returned_lead(lead_id: int) -> int:
    """Enroll a lead that IS or sales returned to nurturing in every active "returned" track.

    Call it after the lead's stage moved back to nurturing (same transaction is fine):
    a lead still in mql/sql is not enrolled. A lead meets each track once: returned a
    second time, it is not enrolled again in a track it already went through.
    """
    tracks = Track.objects.filter(
        status=TrackStatus.ACTIVE, enrollment_rule=EnrollmentRule.RETURNED
    ).values_list("pk", flat=True)
    return sum(enroll_leads(track_id, [lead_id]) for track_id in tracks)


@transaction.atomic
def exit_leads(lead_ids: Iterable[int], *, reason: str) -> int:
    """Take these leads out of every track they are active in; return how many enrollments.

    `reason` is a short code (see ExitReason). Rows are locked in id order, like every
    writer of enrollments, so concurrent exits and sends wait instead of deadlocking.
    """
    if not reason or len(reason) > Enrollment._meta.get_field("exit_reason").max_length:
        raise ValueError("reason must be a code of 1 to 50 characters")
    ids = sorted(set(lead_ids))
    locked = list(
        Enrollment.objects.select_for_update()
        .filter(lead_id__in=ids, status=EnrollmentStatus.ACTIVE)
        .order_by("pk")
        .values_list("pk", flat=True)
    )
    return Enrollment.objects.filter(pk__in=locked).update(
        status=EnrollmentStatus.EXITED,
        exited_at=timezone.now(),
        exit_reason=reason,
        next_send_at=None,
    )


def enroll_due_tracks() -> int:
    """Periodic: active segment/temperature tracks enroll their new matches; return how many.

    Step tracks re-run their segment at most every NURTURING_ENROLL_INTERVAL_SECONDS
    (default 300; a claim in the cache, so two schedulers do not both run it); due
    newsletters enroll on the first run after their time. A track whose segment became
    invalid gets the error in `last_error` and the others go on. Newsletters whose
    every enrollment is over are marked finished.
    """
    total = 0
    tracks = Track.objects.filter(status=TrackStatus.ACTIVE, enrollment_rule__in=AUDIENCE_RULES)
    for track in tracks.only("pk", "kind"):
        if track.kind == TrackKind.STEP and not _claim_enrollment_run(track.pk):
            continue
        total += _enroll_recording_errors(track.pk)
    finish_sent_newsletters()
    return total


def finish_sent_newsletters() -> int:
    """Mark finished the active newsletters whose enrollments are all completed or exited."""
    enrollments = Enrollment.objects.filter(track=OuterRef("pk"))
    return (
        Track.objects.filter(kind=TrackKind.NEWSLETTER, status=TrackStatus.ACTIVE)
        .filter(Exists(enrollments))
        .exclude(Exists(enrollments.filter(status=EnrollmentStatus.ACTIVE)))
        .update(status=TrackStatus.FINISHED)
    )


def _claim_enrollment_run(track_id: int) -> bool:
    interval = int(getattr(settings, "NURTURING_ENROLL_INTERVAL_SECONDS", 300))
    if interval <= 0:
        return True
    return cache.add(f"nurturing:enroll-run:{track_id}", 1, timeout=interval)


def _enroll_recording_errors(track_id: int) -> int:
    try:
        return enroll_segment(track_id)
    except ValidationError as exc:
        message = _("Enrollment stopped: %(error)s") % {"error": " ".join(exc.messages)}
        Track.objects.filter(pk=track_id).update(last_error=message)
        return 0


def _locked_track(track_id: int) -> Track:
    # One enroller per track at a time: a newsletter's "not enrolled yet" check and its
    # insert must not interleave with another scheduler's.
    return Track.objects.select_for_update(of=("self",)).select_related("segment").get(pk=track_id)


def _newsletter_due(track: Track, now: datetime) -> bool:
    if track.scheduled_at is not None and track.scheduled_at > now:
        return False
    return not track.enrollments.exists()


def _finish_empty_newsletter(track: Track) -> None:
    track.status = TrackStatus.FINISHED
    track.last_error = _("No lead matched when the newsletter was due: nothing was sent.")
    track.save(update_fields=["status", "last_error", "updated_at"])


def first_step(track: Track) -> Step | None:
    return track.steps.order_by("position").first()


def _insert_enrollments(track: Track, leads: QuerySet, *, first: Step, now: datetime) -> int:
    """INSERT … SELECT the leads not enrolled yet; the first send is due after the first
    step's delay (a newsletter: at its scheduled time, or now)."""
    try:
        audience_sql, audience_params = leads.order_by().values("id").query.sql_with_params()
    except EmptyResultSet:
        return 0
    table = connection.ops.quote_name(Enrollment._meta.db_table)
    sql = f"""
        INSERT INTO {table}
            (track_id, lead_id, status, enrolled_at, next_position, next_send_at, exit_reason)
        SELECT %s, audience.id, %s, %s, %s, %s, ''
        FROM ({audience_sql}) AS audience (id)
        WHERE NOT EXISTS (
            SELECT 1 FROM {table} AS enrolled
            WHERE enrolled.track_id = %s AND enrolled.lead_id = audience.id
        )
        ORDER BY audience.id
        ON CONFLICT (track_id, lead_id) DO NOTHING
    """
    send_at = _first_send_at(track, first, now)
    params = [track.pk, EnrollmentStatus.ACTIVE, now, first.position, send_at]
    with connection.cursor() as cursor:
        cursor.execute(sql, [*params, *audience_params, track.pk])
        return cursor.rowcount


def _first_send_at(track: Track, first: Step, now: datetime) -> datetime:
    if track.kind == TrackKind.NEWSLETTER:
        return max(track.scheduled_at or now, now)
    return now + timedelta(hours=first.delay_hours)


# --- activation ----------------------------------------------------------------------------


def activate_track(track_id: int) -> int | None:
    """Activate a draft or paused track; return how many leads enrolled now.

    A small audience (below NURTURING_ENROLL_NOW_MAX leads by PostgreSQL's estimate,
    default 20,000) enrolls at once; a bigger one returns None and is enrolled by the
    next `enroll_due_tracks` run (every minute), off the web request: 150k enrollments
    take seconds. A newsletter scheduled later enrolls when it is due. Raises
    TrackNotReady with what to fix (no step, no segment, a template that does not
    compile …).
    """
    with transaction.atomic():
        track = _locked_track(track_id)
        problems = activation_problems(track)
        if problems:
            raise TrackNotReady(problems)
        track.status = TrackStatus.ACTIVE
        track.last_error = ""
        track.save(update_fields=["status", "last_error", "updated_at"])
    if _audience_estimate(track) >= int(getattr(settings, "NURTURING_ENROLL_NOW_MAX", 20_000)):
        return None
    return enroll_segment(track_id)


def _audience_estimate(track: Track) -> int:
    from leadops.sql import planner_row_estimate

    audience = nurturable(track_audience(track)).order_by()
    try:
        return planner_row_estimate(audience)
    except EmptyResultSet:
        return 0


def pause_track(track_id: int) -> bool:
    """Pause an active track (no enrollment, no send until activated again)."""
    paused = Track.objects.filter(pk=track_id, status=TrackStatus.ACTIVE)
    return paused.update(status=TrackStatus.PAUSED, updated_at=timezone.now()) == 1


def activation_problems(track: Track) -> list[str]:
    """Sentences saying why the track cannot be activated (empty: it can)."""
    if track.status not in (TrackStatus.DRAFT, TrackStatus.PAUSED):
        return [
            _("Only a draft or paused track can be activated; this one is %(status)s.")
            % {"status": track.get_status_display()}
        ]
    steps = list(track.steps.order_by("position"))
    return [*_audience_problems(track), *_step_problems(track, steps)]


def _audience_problems(track: Track) -> list[str]:
    rule = track.enrollment_rule
    if track.kind == TrackKind.NEWSLETTER and rule not in AUDIENCE_RULES:
        return [_("A newsletter goes to a segment or to a temperature: choose one.")]
    if rule == EnrollmentRule.SEGMENT:
        if track.segment is None:
            return [_("Choose the segment whose leads enroll.")]
        try:
            clean_conditions(track.segment.conditions)
        except ValidationError as exc:
            return [
                _("The segment's conditions are invalid: %(errors)s")
                % {"errors": " ".join(exc.messages)}
            ]
    if rule == EnrollmentRule.TEMPERATURE and track.temperature not in Temperature.values:
        return [_("Choose the temperature (cold, warm or hot) whose leads enroll.")]
    return []


def _step_problems(track: Track, steps: list[Step]) -> list[str]:
    if not steps:
        return [_("Add at least one step (an email) before activating.")]
    problems = []
    if track.kind == TrackKind.NEWSLETTER and len(steps) > 1:
        problems.append(_("A newsletter sends one email: keep exactly one step."))
    for step in steps:
        for language in LANGUAGES:
            try:
                _templates_of(step, language)
            except TemplateRenderError as exc:
                problems.append(str(exc))
    return problems


# --- templates -----------------------------------------------------------------------------

# A template engine of its own: no template libraries, no loaders, nothing to include.
_ENGINE = Engine(
    autoescape=False,
    libraries={},
    loaders=[("django.template.loaders.locmem.Loader", {})],
)
_REFUSED_TAGS = {
    ExtendsNode: "extends",
    IncludeNode: "include",
    LoadNode: "load",
    DebugNode: "debug",
}
PART_LABELS = {
    ("ja", "subject"): gettext_lazy("Japanese subject"),
    ("ja", "body"): gettext_lazy("Japanese body"),
    ("en", "subject"): gettext_lazy("English subject"),
    ("en", "body"): gettext_lazy("English body"),
}


@lru_cache(maxsize=512)
def compile_mail_template(source: str) -> Template:
    """The compiled template, or TemplateSyntaxError (also for tags mail may not use)."""
    if len(source) > MAX_TEMPLATE_LENGTH:
        raise TemplateSyntaxError(
            _("The template is longer than %(max)s characters.") % {"max": MAX_TEMPLATE_LENGTH}
        )
    template = _ENGINE.from_string(source)
    for node_type, name in _REFUSED_TAGS.items():
        if template.nodelist.get_nodes_by_type(node_type):
            raise TemplateSyntaxError(
                _("The {%% %(tag)s %%} tag cannot be used in an email.") % {"tag": name}
            )
    return template


def check_mail_template(source: str) -> None:
    """ValidationError with the reason when the template does not compile or render."""
    try:
        _render(compile_mail_template(source), personalisation(sample_lead()))
    except TemplateSyntaxError as exc:
        raise ValidationError(
            _("This template has an error: %(error)s") % {"error": exc}, code="template"
        ) from None
    except Exception as exc:  # any failure of user content is a form error, never a 500
        raise ValidationError(
            _("This template cannot be rendered: %(error)s") % {"error": exc}, code="template"
        ) from None


def render_step(step: Step, lead: Lead, language: str = "ja") -> tuple[str, str]:
    """(subject, body) of the step's email for this lead, in `language` ("ja" or "en").

    English falls back to the Japanese text when the English one is empty. The subject
    is one line (newlines would be refused in a header). The body is plain text,
    rendered without HTML escaping. Raises TemplateRenderError with a sentence naming
    the step and the part when a template does not compile or render, or the subject
    comes out empty.
    """
    subject_template, body_template = _templates_of(step, language)
    context = personalisation(lead, language)
    subject = " ".join(_render_part(step, language, "subject", subject_template, context).split())
    body = _render_part(step, language, "body", body_template, context)
    if not subject:
        raise TemplateRenderError(
            _("Step %(position)s: the %(part)s is empty for this lead.")
            % {"position": step.position, "part": PART_LABELS[(language, "subject")]}
        )
    return subject, body


def _templates_of(step: Step, language: str) -> tuple[Template, Template]:
    if language not in LANGUAGES:
        raise ValueError(f"language must be one of {LANGUAGES}")
    subject, body = step.subject_ja, step.body_ja
    if language == "en" and (step.subject_en.strip() or step.body_en.strip()):
        subject, body = step.subject_en, step.body_en
    return (
        _compiled(step, language, "subject", subject),
        _compiled(step, language, "body", body),
    )


def _compiled(step: Step, language: str, part: str, source: str) -> Template:
    try:
        return compile_mail_template(source)
    except TemplateSyntaxError as exc:
        raise TemplateRenderError(_part_error(step, language, part, exc)) from exc


def _render_part(
    step: Step, language: str, part: str, template: Template, context: dict[str, Any]
) -> str:
    try:
        with translation.override(language):
            return _render(template, context)
    except Exception as exc:  # any failure of user content is reported as such
        raise TemplateRenderError(_part_error(step, language, part, exc)) from exc


def _part_error(step: Step, language: str, part: str, exc: Exception) -> str:
    return _(
        "Step %(position)s, %(part)s: the template could not be rendered (%(error)s). "
        "Fix it on the track's page."
    ) % {"position": step.position, "part": PART_LABELS[(language, part)], "error": exc}


def _render(template: Template, context: dict[str, Any]) -> str:
    return template.render(Context({"lead": context}, autoescape=False))


def personalisation(lead: Lead, language: str = "ja") -> dict[str, Any]:
    """What a template may say about the lead: `{{ lead.last_name }} 様` and the like."""
    with translation.override(language):
        return {
            "last_name": lead.last_name,
            "first_name": lead.first_name,
            "full_name": f"{lead.last_name} {lead.first_name}".strip(),
            "email": lead.email,
            "company": lead.company,
            "title": lead.title,
            "job_level": str(lead.get_job_level_display()),
            "department": str(lead.get_department_display()),
            "industry": str(lead.get_industry_display()),
            "region": lead.region,
            "source": lead.source,
            "owner_name": _owner_name(lead),
        }


def _owner_name(lead: Lead) -> str:
    owner = lead.owner if lead.owner_id else None
    if owner is None:
        return ""
    return f"{owner.last_name} {owner.first_name}".strip() or owner.get_username()


def sample_lead() -> Lead:
    """An unsaved lead with every personalisation value filled, for previews and checks."""
    return Lead(
        email="yamada@example.co.jp",
        last_name="山田",
        first_name="太郎",
        title="マーケティング部長",
        job_level="director",
        department="marketing",
        industry="software",
        region="東京都",
        source="展示会",
    )


def preview_lead(track: Track) -> Lead:
    """A lead to preview the track's steps with: one of its audience, any lead, or a sample."""
    try:
        audience = nurturable(track_audience(track))
        lead = audience.order_by("-id").first() or Lead.objects.order_by("-id").first()
    except ValidationError:
        lead = None
    return lead or sample_lead()


def send_test_email(step: Step, *, lead: Lead, language: str, to: str) -> tuple[str, str]:
    """Render the step for `lead` and mail it to `to` (the marketer), subject marked as a test.

    This is plain Django `send_mail`, not the tracked sending pipeline: no send log, no
    tracking, no enrollment. Raises TemplateRenderError when the step does not render.
    """
    subject, body = render_step(step, lead, language)
    with translation.override(language):
        marked = _("[Test] %(subject)s") % {"subject": subject}
    send_mail(marked, body, None, [to])
    return marked, body
