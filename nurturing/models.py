"""Nurturing: segments, tracks (newsletters and step mails), sends and their tracking,
and website capture (the snippet's visitors and the public forms).

A send is unique per (lead, step): the row is written before the mail goes out and
claimed by a conditional UPDATE, so no step reaches a lead twice, whatever the number
of schedulers or retried tasks.
"""

from __future__ import annotations

from django.conf import settings
from django.db import models
from django.db.models import Q
from django.utils.translation import gettext_lazy as _


class Segment(models.Model):
    """A saved filter over leads. `conditions` is a list of {"field", "op", "value"}
    from the allowlist in `nurturing.segments` (never raw SQL or ORM lookups)."""

    name = models.CharField(_("name"), max_length=200)
    description = models.TextField(_("description"), blank=True)
    conditions = models.JSONField(_("conditions"), default=list, blank=True)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        verbose_name=_("created by"),
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="+",
    )
    created_at = models.DateTimeField(_("created at"), auto_now_add=True)
    updated_at = models.DateTimeField(_("updated at"), auto_now=True)

    class Meta:
        ordering = ["name"]
        verbose_name = _("segment")
        verbose_name_plural = _("segments")

    def __str__(self) -> str:
        return self.name


class TrackKind(models.TextChoices):
    NEWSLETTER = "newsletter", _("Newsletter (one send)")
    STEP = "step", _("Step mail (a sequence)")


class TrackStatus(models.TextChoices):
    DRAFT = "draft", _("Draft")
    ACTIVE = "active", _("Active")
    PAUSED = "paused", _("Paused")
    FINISHED = "finished", _("Finished")


class EnrollmentRule(models.TextChoices):
    SEGMENT = "segment", _("Leads in the segment")
    TEMPERATURE = "temperature", _("Leads at a temperature")
    RETURNED = "returned", _("Leads returned to nurturing by IS or sales")
    MANUAL = "manual", _("Manual only")


class Track(models.Model):
    """A newsletter (one step, sent now or at `scheduled_at`) or a step-mail sequence."""

    name = models.CharField(_("name"), max_length=200)
    kind = models.CharField(_("kind"), max_length=20, choices=TrackKind.choices)
    status = models.CharField(
        _("status"), max_length=20, choices=TrackStatus.choices, default=TrackStatus.DRAFT
    )
    enrollment_rule = models.CharField(
        _("who enrolls"),
        max_length=20,
        choices=EnrollmentRule.choices,
        default=EnrollmentRule.SEGMENT,
    )
    segment = models.ForeignKey(
        Segment,
        verbose_name=_("segment"),
        null=True,
        blank=True,
        on_delete=models.PROTECT,
        related_name="tracks",
    )
    temperature = models.CharField(_("temperature"), max_length=10, blank=True)
    scheduled_at = models.DateTimeField(
        _("send at"), null=True, blank=True, help_text=_("Newsletters: empty sends now.")
    )
    # Shown on the track when a step's template fails to render: nothing is sent.
    last_error = models.TextField(_("last error"), blank=True)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        verbose_name=_("created by"),
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="+",
    )
    created_at = models.DateTimeField(_("created at"), auto_now_add=True)
    updated_at = models.DateTimeField(_("updated at"), auto_now=True)

    class Meta:
        ordering = ["-created_at"]
        verbose_name = _("track")
        verbose_name_plural = _("tracks")

    def __str__(self) -> str:
        return self.name


class Step(models.Model):
    """One email of a track, sent `delay_hours` after enrollment (first step) or after
    the previous step. Subject and body are Django templates with `lead` in context."""

    track = models.ForeignKey(
        Track, verbose_name=_("track"), on_delete=models.CASCADE, related_name="steps"
    )
    position = models.PositiveSmallIntegerField(_("order"))
    delay_hours = models.PositiveIntegerField(_("delay (hours)"), default=0)
    subject_ja = models.CharField(_("subject (Japanese)"), max_length=200)
    body_ja = models.TextField(_("body (Japanese)"))
    subject_en = models.CharField(_("subject (English)"), max_length=200, blank=True)
    body_en = models.TextField(_("body (English)"), blank=True)

    class Meta:
        ordering = ["track", "position"]
        verbose_name = _("step")
        verbose_name_plural = _("steps")
        constraints = [
            models.UniqueConstraint(fields=["track", "position"], name="step_position_unique"),
        ]

    def __str__(self) -> str:
        return f"{self.track} #{self.position}"


class EnrollmentStatus(models.TextChoices):
    ACTIVE = "active", _("Active")
    COMPLETED = "completed", _("Completed")
    EXITED = "exited", _("Exited")


class Enrollment(models.Model):
    track = models.ForeignKey(
        Track, verbose_name=_("track"), on_delete=models.CASCADE, related_name="enrollments"
    )
    lead = models.ForeignKey(
        "leadops.Lead",
        verbose_name=_("lead"),
        on_delete=models.CASCADE,
        related_name="enrollments",
    )
    status = models.CharField(
        _("status"),
        max_length=20,
        choices=EnrollmentStatus.choices,
        default=EnrollmentStatus.ACTIVE,
    )
    enrolled_at = models.DateTimeField(_("enrolled"))
    next_position = models.PositiveSmallIntegerField(_("next step"), default=1)
    next_send_at = models.DateTimeField(_("next send"), null=True, blank=True)
    exited_at = models.DateTimeField(_("exited"), null=True, blank=True)
    exit_reason = models.CharField(_("exit reason"), max_length=50, blank=True)

    class Meta:
        verbose_name = _("enrollment")
        verbose_name_plural = _("enrollments")
        constraints = [
            models.UniqueConstraint(fields=["track", "lead"], name="enrollment_once_per_track"),
        ]
        indexes = [
            models.Index(
                fields=["next_send_at"],
                condition=Q(status="active"),
                name="enrollment_due",
            ),
            models.Index(fields=["lead", "status"], name="enrollment_lead"),
        ]

    def __str__(self) -> str:
        return f"{self.lead_id} in {self.track_id}"


class SendStatus(models.TextChoices):
    QUEUED = "queued", _("Queued")
    SENDING = "sending", _("Sending")
    SENT = "sent", _("Sent")
    FAILED = "failed", _("Failed")
    SKIPPED = "skipped", _("Skipped")


class EmailSend(models.Model):
    """One step's mail to one lead; `token` signs its pixel, clicks and unsubscribe link."""

    lead = models.ForeignKey(
        "leadops.Lead", verbose_name=_("lead"), on_delete=models.CASCADE, related_name="sends"
    )
    step = models.ForeignKey(
        Step, verbose_name=_("step"), on_delete=models.CASCADE, related_name="sends"
    )
    track = models.ForeignKey(
        Track, verbose_name=_("track"), on_delete=models.CASCADE, related_name="sends"
    )
    status = models.CharField(
        _("status"), max_length=10, choices=SendStatus.choices, default=SendStatus.QUEUED
    )
    queued_at = models.DateTimeField(_("queued"))
    sent_at = models.DateTimeField(_("sent"), null=True, blank=True)
    attempts = models.PositiveSmallIntegerField(_("attempts"), default=0)
    error = models.TextField(_("error"), blank=True)
    first_opened_at = models.DateTimeField(_("first opened"), null=True, blank=True)
    first_clicked_at = models.DateTimeField(_("first clicked"), null=True, blank=True)
    unsubscribed_at = models.DateTimeField(_("unsubscribed"), null=True, blank=True)

    class Meta:
        verbose_name = _("email send")
        verbose_name_plural = _("email sends")
        constraints = [
            models.UniqueConstraint(fields=["lead", "step"], name="send_once_per_lead_step"),
        ]
        indexes = [
            models.Index(
                fields=["queued_at"],
                condition=Q(status__in=["queued", "sending"]),
                name="send_pending",
            ),
            models.Index(fields=["track", "status"], name="send_track_status"),
        ]

    def __str__(self) -> str:
        return f"{self.step} → {self.lead_id}: {self.status}"


class TrackedLink(models.Model):
    """A link of a sent mail, recorded at send time: clicks redirect only to these."""

    send = models.ForeignKey(
        EmailSend, verbose_name=_("send"), on_delete=models.CASCADE, related_name="links"
    )
    position = models.PositiveSmallIntegerField(_("link number"))
    url = models.URLField(_("URL"), max_length=2000)

    class Meta:
        verbose_name = _("tracked link")
        verbose_name_plural = _("tracked links")
        constraints = [
            models.UniqueConstraint(fields=["send", "position"], name="link_once_per_send"),
        ]

    def __str__(self) -> str:
        return self.url


# --- website capture -----------------------------------------------------------------------


class WebVisitor(models.Model):
    """A browser carrying the snippet's first-party cookie; `lead` once it identifies."""

    visitor_id = models.UUIDField(_("visitor"), unique=True)
    lead = models.ForeignKey(
        "leadops.Lead",
        verbose_name=_("lead"),
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="web_visitors",
    )
    first_seen_at = models.DateTimeField(_("first seen"))
    identified_at = models.DateTimeField(_("identified"), null=True, blank=True)

    class Meta:
        verbose_name = _("web visitor")
        verbose_name_plural = _("web visitors")

    def __str__(self) -> str:
        return str(self.visitor_id)


class AnonymousPageView(models.Model):
    """A page view before the visitor identified; becomes an activity when they do."""

    visitor = models.ForeignKey(
        WebVisitor, verbose_name=_("visitor"), on_delete=models.CASCADE, related_name="views"
    )
    url = models.URLField(_("URL"), max_length=2000)
    title = models.CharField(_("title"), max_length=300, blank=True)
    referrer = models.URLField(_("referrer"), max_length=2000, blank=True)
    occurred_at = models.DateTimeField(_("time"))
    merged_at = models.DateTimeField(_("merged"), null=True, blank=True)

    class Meta:
        verbose_name = _("anonymous page view")
        verbose_name_plural = _("anonymous page views")
        indexes = [
            models.Index(
                fields=["visitor", "occurred_at"],
                condition=Q(merged_at__isnull=True),
                name="anonymous_view_unmerged",
            ),
        ]

    def __str__(self) -> str:
        return self.url


class WebForm(models.Model):
    """A website form that posts to LeadOps: where it may post from, what it records."""

    name = models.CharField(_("name"), max_length=200)
    slug = models.SlugField(_("form key"), unique=True)
    allowed_origins = models.JSONField(
        _("allowed origins"),
        default=list,
        help_text=_("Site origins allowed to post, e.g. https://www.example.co.jp"),
    )
    source = models.CharField(_("lead source"), max_length=100, default="Webフォーム")
    active = models.BooleanField(_("active"), default=True)
    created_at = models.DateTimeField(_("created at"), auto_now_add=True)

    class Meta:
        verbose_name = _("web form")
        verbose_name_plural = _("web forms")

    def __str__(self) -> str:
        return self.name
