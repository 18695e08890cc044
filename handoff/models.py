"""Stages, hand-offs and their SLAs, assignment, contact work, and notifications.

A hand-off is one lead's turn with one team: `inside_sales` (first contact within the
first-contact SLA, then qualify / return / disqualify) or `sales` (accept or reject
within the acceptance SLA). A lead has at most one hand-off of each kind that is not
done (a partial unique constraint), which is what "opens one hand-off" means.
"""

from __future__ import annotations

from datetime import time

from django.conf import settings
from django.db import models
from django.db.models import Q
from django.utils.translation import gettext_lazy as _

from leadops.models import Industry, Stage


class StageTransition(models.Model):
    """One move of a lead from a stage to another: who, why, with what score, when."""

    lead = models.ForeignKey(
        "leadops.Lead",
        verbose_name=_("lead"),
        on_delete=models.CASCADE,
        related_name="stage_transitions",
    )
    from_stage = models.CharField(_("from"), max_length=20, choices=Stage.choices)
    to_stage = models.CharField(_("to"), max_length=20, choices=Stage.choices)
    actor = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        verbose_name=_("by"),
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="+",
    )
    reason = models.TextField(_("reason"), blank=True)
    score_snapshot = models.IntegerField(_("score at the time"))
    created_at = models.DateTimeField(_("time"), auto_now_add=True)
    # What the dashboard's funnel needs, written with the row (handoff.services.stages) so
    # a period's funnel is one index-only scan, without the leads or earlier transitions:
    # the lead's source (kept equal to it by a trigger on leadops_lead, whoever edits it);
    # when the lead entered the funnel's previous stage, or was created for an MQL (NULL:
    # never, or not a funnel stage); when it last entered this same stage before (NULL:
    # first time), so a period's first entry is the one whose previous entry is older.
    lead_source = models.CharField(_("lead source"), max_length=100, blank=True)
    previous_step_at = models.DateTimeField(_("previous funnel step at"), null=True, blank=True)
    previous_entry_at = models.DateTimeField(_("previous entry at"), null=True, blank=True)

    class Meta:
        verbose_name = _("stage transition")
        verbose_name_plural = _("stage transitions")
        indexes = [
            models.Index(fields=["lead", "-created_at"], name="transition_lead_time"),
            # The dashboard's funnel: who reached a stage in a period, from the index alone.
            models.Index(
                fields=["to_stage", "created_at"],
                include=["lead", "lead_source", "previous_step_at", "previous_entry_at"],
                name="transition_funnel",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.lead_id}: {self.from_stage} → {self.to_stage}"


# --- the team's rules: business calendar, SLAs, assignment -----------------------------


class AssignmentMode(models.TextChoices):
    ROUND_ROBIN = "round_robin", _("Round-robin over available IS reps")
    RULES = "rules", _("Assignment rules (industry, size, region), then round-robin")
    MANUAL = "manual", _("Manual: hand-offs stay unassigned until someone assigns them")


def default_workdays() -> list[int]:
    return [0, 1, 2, 3, 4]  # Monday..Friday, as datetime.weekday()


class HandoffPolicy(models.Model):
    """The team's hand-off settings: one row (pk=1), edited in the admin."""

    time_zone = models.CharField(_("time zone"), max_length=64, default="Asia/Tokyo")
    workdays = models.JSONField(
        _("working days"),
        default=default_workdays,
        help_text=_("Weekday numbers, 0 = Monday … 6 = Sunday."),
    )
    day_start = models.TimeField(_("working day starts"), default=time(9, 0))
    day_end = models.TimeField(_("working day ends"), default=time(18, 0))
    observe_japanese_holidays = models.BooleanField(
        _("Japanese public holidays are days off"), default=True
    )
    first_contact_sla_hours = models.PositiveIntegerField(
        _("first-contact SLA (business hours)"), default=24
    )
    acceptance_sla_hours = models.PositiveIntegerField(
        _("sales acceptance SLA (business hours)"),
        default=18,
        help_text=_("18 business hours = 2 working days of 9 hours."),
    )
    warning_percent = models.PositiveSmallIntegerField(
        _("warn at (percent of the SLA used)"), default=75
    )
    assignment_mode = models.CharField(
        _("assignment"),
        max_length=20,
        choices=AssignmentMode.choices,
        default=AssignmentMode.ROUND_ROBIN,
    )
    default_is_capacity = models.PositiveIntegerField(
        _("default IS capacity (open hand-offs per rep)"), default=40
    )
    reassign_on_breach = models.BooleanField(
        _("reassign a breached first contact to another IS rep"), default=False
    )
    updated_at = models.DateTimeField(_("updated at"), auto_now=True)

    class Meta:
        verbose_name = _("hand-off settings")
        verbose_name_plural = _("hand-off settings")

    def __str__(self) -> str:
        return str(_("Hand-off settings"))


class CompanyHoliday(models.Model):
    """A day off on top of weekends and public holidays (company holidays, お盆, 年末年始)."""

    date = models.DateField(_("date"), unique=True)
    name = models.CharField(_("name"), max_length=100)

    class Meta:
        ordering = ["date"]
        verbose_name = _("company holiday")
        verbose_name_plural = _("company holidays")

    def __str__(self) -> str:
        return f"{self.date} {self.name}"


class RepProfile(models.Model):
    """An IS rep's availability for automatic assignment and their round-robin turn."""

    user = models.OneToOneField(
        settings.AUTH_USER_MODEL,
        verbose_name=_("user"),
        on_delete=models.CASCADE,
        related_name="rep_profile",
    )
    available = models.BooleanField(
        _("available for new hand-offs"),
        default=True,
        help_text=_("Off while on leave: round-robin skips this rep."),
    )
    capacity = models.PositiveIntegerField(
        _("capacity"),
        null=True,
        blank=True,
        help_text=_("Most open hand-offs at once; empty uses the team default."),
    )
    last_assigned_at = models.DateTimeField(_("last assigned"), null=True, blank=True)

    class Meta:
        verbose_name = _("rep availability")
        verbose_name_plural = _("rep availability")

    def __str__(self) -> str:
        return str(self.user)


class AssignmentRule(models.Model):
    """Leads matching every filled condition go round-robin to this rule's reps."""

    name = models.CharField(_("name"), max_length=100)
    priority = models.PositiveIntegerField(
        _("priority"), default=100, help_text=_("Lower runs first.")
    )
    active = models.BooleanField(_("active"), default=True)
    industries = models.JSONField(
        _("industries"),
        default=list,
        blank=True,
        help_text=_("Codes from the industry list; empty matches any."),
    )
    min_employees = models.PositiveIntegerField(_("employees at least"), null=True, blank=True)
    max_employees = models.PositiveIntegerField(_("employees at most"), null=True, blank=True)
    regions = models.JSONField(
        _("regions"),
        default=list,
        blank=True,
        help_text=_("Prefectures or regions as written on leads; empty matches any."),
    )
    reps = models.ManyToManyField(
        settings.AUTH_USER_MODEL, verbose_name=_("IS reps"), related_name="assignment_rules"
    )

    class Meta:
        ordering = ["priority", "id"]
        verbose_name = _("assignment rule")
        verbose_name_plural = _("assignment rules")

    def __str__(self) -> str:
        return self.name


INDUSTRY_CODES = frozenset(Industry.values)


# --- hand-offs ----------------------------------------------------------------------


class HandoffKind(models.TextChoices):
    INSIDE_SALES = "inside_sales", _("First contact (IS)")
    SALES = "sales", _("Sales acceptance")


class HandoffStatus(models.TextChoices):
    OPEN = "open", _("Open")
    CLAIMED = "claimed", _("Claimed")
    DONE = "done", _("Done")


class SlaState(models.TextChoices):
    ON_TRACK = "on_track", _("On track")
    WARNING = "warning", _("Warning")
    BREACHED = "breached", _("Breached")
    MET = "met", _("Met")


class HandoffOutcome(models.TextChoices):
    QUALIFIED = "qualified", _("Qualified to SQL")
    RETURNED = "returned", _("Returned to nurturing")
    DISQUALIFIED = "disqualified", _("Disqualified")
    ACCEPTED = "accepted", _("Accepted (SAL)")
    REJECTED = "rejected", _("Rejected")
    CLOSED = "closed", _("Closed by another stage change")


class RejectReason(models.TextChoices):
    TIMING = "timing", _("Timing: not now")
    NO_BUDGET = "no_budget", _("No budget")
    NOT_DECISION_MAKER = "not_decision_maker", _("Not the decision maker")
    WRONG_FIT = "wrong_fit", _("Wrong fit")
    DUPLICATE = "duplicate", _("Duplicate")
    OTHER = "other", _("Other")


class ReturnReason(models.TextChoices):
    """Why IS sends an MQL back to nurturing."""

    UNREACHABLE = "unreachable", _("Could not reach them")
    TIMING = "timing", _("Timing: not now")
    NO_BUDGET = "no_budget", _("No budget")
    NOT_DECISION_MAKER = "not_decision_maker", _("Not the decision maker")
    WRONG_FIT = "wrong_fit", _("Wrong fit")
    DUPLICATE = "duplicate", _("Duplicate")
    OTHER = "other", _("Other")


class HandoffQuerySet(models.QuerySet):
    def not_done(self) -> HandoffQuerySet:
        return self.exclude(status=HandoffStatus.DONE)

    def for_inside_sales(self) -> HandoffQuerySet:
        return self.filter(kind=HandoffKind.INSIDE_SALES)

    def for_sales(self) -> HandoffQuerySet:
        return self.filter(kind=HandoffKind.SALES)

    def awaiting_response(self) -> HandoffQuerySet:
        """Not done and not yet answered: the SLA clock is running."""
        return self.not_done().filter(responded_at__isnull=True)


# What the queue's SLA counts read besides the indexed columns (handoff.selectors).
SLA_COUNT_COLUMNS = ("warn_at", "responded_at", "sla_state")


class Handoff(models.Model):
    lead = models.ForeignKey(
        "leadops.Lead", verbose_name=_("lead"), on_delete=models.CASCADE, related_name="handoffs"
    )
    kind = models.CharField(_("kind"), max_length=20, choices=HandoffKind.choices)
    status = models.CharField(
        _("status"), max_length=10, choices=HandoffStatus.choices, default=HandoffStatus.OPEN
    )
    assignee = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        verbose_name=_("assignee"),
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="handoffs",
    )
    # The lead's source, copied so the dashboard filters hand-offs by source without
    # joining a million leads; a trigger keeps it equal to the lead's (migration 0006).
    lead_source = models.CharField(_("lead source"), max_length=100, blank=True)
    opened_at = models.DateTimeField(_("opened"))
    due_at = models.DateTimeField(_("SLA due"))
    # The moment the SLA monitor warns (75% of the business time by default), fixed
    # when the hand-off opens so the monitor is one indexed range scan.
    warn_at = models.DateTimeField(_("SLA warning at"))
    sla_state = models.CharField(
        _("SLA"), max_length=10, choices=SlaState.choices, default=SlaState.ON_TRACK
    )
    claimed_at = models.DateTimeField(_("claimed"), null=True, blank=True)
    # First contact (IS) or the sales answer: the moment the SLA is met.
    responded_at = models.DateTimeField(_("responded"), null=True, blank=True)
    closed_at = models.DateTimeField(_("closed"), null=True, blank=True)
    outcome = models.CharField(
        _("outcome"), max_length=20, choices=HandoffOutcome.choices, blank=True
    )
    reason = models.CharField(_("reason"), max_length=200, blank=True)
    comment = models.TextField(_("comment"), blank=True)
    bant = models.JSONField(_("BANT"), default=dict, blank=True)
    # Why it was opened: the MQL rule, a trigger, or the IS rep who qualified the lead.
    opened_reason = models.CharField(_("opened because"), max_length=300, blank=True)
    opened_by = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        verbose_name=_("opened by"),
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="+",
    )

    objects = HandoffQuerySet.as_manager()

    class Meta:
        verbose_name = _("hand-off")
        verbose_name_plural = _("hand-offs")
        constraints = [
            models.UniqueConstraint(
                fields=["lead", "kind"],
                condition=~Q(status="done"),
                name="handoff_one_open_per_lead_kind",
            ),
        ]
        indexes = [
            # The queue: open hand-offs of a kind by SLA due time (whole team, unassigned).
            # Each carries the columns of the queue's SLA counts (SLA_COUNT_COLUMNS), so
            # counting is an index-only scan: with a million closed hand-offs the planner
            # overestimates the open ones (it takes "unassigned" and "open" as independent)
            # and, needing the heap for those columns, scanned the table (150 ms).
            models.Index(
                fields=["kind", "due_at", "id"],
                include=SLA_COUNT_COLUMNS,
                condition=~Q(status="done"),
                name="handoff_open_due",
            ),
            # "Mine": a rep's open hand-offs by due time; also counts their load.
            models.Index(
                fields=["assignee", "kind", "due_at", "id"],
                include=SLA_COUNT_COLUMNS,
                condition=~Q(status="done"),
                name="handoff_open_assignee_due",
            ),
            # The unassigned queue and its count: with many closed unassigned hand-offs
            # the planner misjudges "assignee IS NULL" on the index above and scans.
            models.Index(
                fields=["kind", "due_at", "id"],
                include=SLA_COUNT_COLUMNS,
                condition=Q(assignee__isnull=True) & ~Q(status="done"),
                name="handoff_open_unassigned",
            ),
            # The SLA monitor: clocks still running, by the next moment they change state.
            models.Index(
                fields=["warn_at"],
                condition=Q(responded_at__isnull=True, sla_state="on_track") & ~Q(status="done"),
                name="handoff_sla_warn",
            ),
            models.Index(
                fields=["due_at"],
                condition=Q(responded_at__isnull=True)
                & ~Q(sla_state="breached")
                & ~Q(status="done"),
                name="handoff_sla_due",
            ),
            models.Index(fields=["lead", "-opened_at"], name="handoff_lead_time"),
            # The dashboard: SLA compliance and sales answers in a period.
            models.Index(fields=["opened_at"], name="handoff_opened"),
            models.Index(
                fields=["closed_at"],
                condition=Q(kind="sales", outcome__in=["accepted", "rejected"]),
                name="handoff_sales_answered",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.get_kind_display()} #{self.pk} ({self.lead_id})"


class ContactChannel(models.TextChoices):
    CALL = "call", _("Call")
    EMAIL = "email", _("Email")
    MEETING = "meeting", _("Meeting")


class ContactOutcome(models.TextChoices):
    REACHED = "reached", _("Reached")
    NO_ANSWER = "no_answer", _("No answer")
    LEFT_MESSAGE = "left_message", _("Left a message")
    MEETING_SET = "meeting_set", _("Meeting set")
    WRONG_CONTACT = "wrong_contact", _("Wrong contact details")


class ContactAttempt(models.Model):
    """An IS rep's call, email or meeting with a lead; the first one meets the SLA."""

    lead = models.ForeignKey(
        "leadops.Lead",
        verbose_name=_("lead"),
        on_delete=models.CASCADE,
        related_name="contact_attempts",
    )
    handoff = models.ForeignKey(
        Handoff,
        verbose_name=_("hand-off"),
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="contact_attempts",
    )
    actor = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        verbose_name=_("by"),
        null=True,
        on_delete=models.SET_NULL,
        related_name="+",
    )
    channel = models.CharField(_("channel"), max_length=10, choices=ContactChannel.choices)
    outcome = models.CharField(_("outcome"), max_length=20, choices=ContactOutcome.choices)
    note = models.TextField(_("note"), blank=True)
    created_at = models.DateTimeField(_("time"), auto_now_add=True)

    class Meta:
        verbose_name = _("contact attempt")
        verbose_name_plural = _("contact attempts")
        indexes = [models.Index(fields=["lead", "-created_at"], name="contact_lead_time")]

    def __str__(self) -> str:
        return f"{self.get_channel_display()}: {self.get_outcome_display()}"


class LeadNote(models.Model):
    """A free note on a lead, by anyone who may act on it; shown on the timeline."""

    lead = models.ForeignKey(
        "leadops.Lead", verbose_name=_("lead"), on_delete=models.CASCADE, related_name="notes"
    )
    author = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        verbose_name=_("author"),
        null=True,
        on_delete=models.SET_NULL,
        related_name="+",
    )
    body = models.TextField(_("note"))
    created_at = models.DateTimeField(_("time"), auto_now_add=True)

    class Meta:
        verbose_name = _("note")
        verbose_name_plural = _("notes")
        indexes = [models.Index(fields=["lead", "-created_at"], name="note_lead_time")]

    def __str__(self) -> str:
        return self.body[:50]


# --- notifications ----------------------------------------------------------------------


class NotificationKind(models.TextChoices):
    MQL_ASSIGNED = "mql_assigned", _("MQL assigned")
    SLA_WARNING = "sla_warning", _("SLA warning")
    SLA_BREACHED = "sla_breached", _("SLA breached")
    SQL_ASSIGNED = "sql_assigned", _("SQL assigned")
    SQL_REJECTED = "sql_rejected", _("SQL rejected")


class Notification(models.Model):
    """One message to one person about one event, shown in-app (the bell) and emailed.

    `event_key` names the event (e.g. "sla_warning:42"); unique with the
    recipient, so an event re-announced by a retried task notifies nobody twice.
    """

    recipient = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        verbose_name=_("recipient"),
        on_delete=models.CASCADE,
        related_name="notifications",
    )
    kind = models.CharField(_("kind"), max_length=20, choices=NotificationKind.choices)
    event_key = models.CharField(_("event"), max_length=100)
    lead = models.ForeignKey(
        "leadops.Lead",
        verbose_name=_("lead"),
        null=True,
        blank=True,
        on_delete=models.CASCADE,
        related_name="+",
    )
    handoff = models.ForeignKey(
        Handoff,
        verbose_name=_("hand-off"),
        null=True,
        blank=True,
        on_delete=models.CASCADE,
        related_name="notifications",
    )
    title = models.CharField(_("title"), max_length=200)
    body = models.TextField(_("message"), blank=True)
    created_at = models.DateTimeField(_("time"), auto_now_add=True)
    read_at = models.DateTimeField(_("read"), null=True, blank=True)

    class Meta:
        verbose_name = _("notification")
        verbose_name_plural = _("notifications")
        constraints = [
            models.UniqueConstraint(
                fields=["event_key", "recipient"], name="notification_once_per_recipient"
            ),
        ]
        indexes = [
            models.Index(
                fields=["recipient", "-created_at"],
                condition=Q(read_at__isnull=True),
                name="notification_unread",
            ),
            models.Index(fields=["recipient", "-created_at"], name="notification_recipient"),
        ]

    def __str__(self) -> str:
        return self.title


class WebhookEndpoint(models.Model):
    """A Slack-compatible incoming webhook ({"text": …} POSTed as JSON) for team events."""

    name = models.CharField(_("name"), max_length=100)
    url = models.URLField(_("URL"), max_length=500, help_text=_("HTTPS only."))
    active = models.BooleanField(_("active"), default=True)
    kinds = models.JSONField(
        _("events"),
        default=list,
        blank=True,
        help_text=_("Notification kinds to post; empty posts every kind."),
    )
    created_at = models.DateTimeField(_("created at"), auto_now_add=True)

    class Meta:
        verbose_name = _("webhook")
        verbose_name_plural = _("webhooks")

    def __str__(self) -> str:
        return self.name


class DeliveryChannel(models.TextChoices):
    EMAIL = "email", _("Email")
    WEBHOOK = "webhook", _("Webhook")


class DeliveryStatus(models.TextChoices):
    PENDING = "pending", _("Pending")
    SENDING = "sending", _("Sending")
    SENT = "sent", _("Sent")
    FAILED = "failed", _("Failed")


class Delivery(models.Model):
    """One send of an event over a channel: an email to a recipient, or a webhook post.

    Unique per (event, channel, target), claimed by a conditional UPDATE before sending:
    a task that runs twice cannot deliver twice.
    """

    event_key = models.CharField(_("event"), max_length=100)
    channel = models.CharField(_("channel"), max_length=10, choices=DeliveryChannel.choices)
    notification = models.ForeignKey(
        Notification,
        verbose_name=_("notification"),
        null=True,
        blank=True,
        on_delete=models.CASCADE,
        related_name="deliveries",
    )
    endpoint = models.ForeignKey(
        WebhookEndpoint,
        verbose_name=_("webhook"),
        null=True,
        blank=True,
        on_delete=models.CASCADE,
        related_name="deliveries",
    )
    target = models.CharField(_("to"), max_length=500)
    payload = models.JSONField(_("payload"), default=dict)
    status = models.CharField(
        _("status"), max_length=10, choices=DeliveryStatus.choices, default=DeliveryStatus.PENDING
    )
    attempts = models.PositiveIntegerField(_("attempts"), default=0)
    next_attempt_at = models.DateTimeField(_("next attempt"), null=True, blank=True)
    last_error = models.TextField(_("last error"), blank=True)
    created_at = models.DateTimeField(_("created at"), auto_now_add=True)
    sent_at = models.DateTimeField(_("sent"), null=True, blank=True)

    class Meta:
        verbose_name = _("delivery")
        verbose_name_plural = _("deliveries")
        constraints = [
            models.UniqueConstraint(
                fields=["event_key", "channel", "target"], name="delivery_once_per_target"
            ),
        ]
        indexes = [
            models.Index(
                fields=["next_attempt_at"],
                condition=Q(status__in=["pending", "sending"]),
                name="delivery_due",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.channel} → {self.target}: {self.status}"
