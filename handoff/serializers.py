"""JSON shapes of the hand-off API (v1) and of the lifecycle's timeline entries.

Output: a hand-off in the queue (list) and in full (detail), and the timeline entries
of kinds "score_change", "transition", "contact_attempt" and "note".

Input: one serializer per action body. They check the shape (types, required keys,
unknown keys refused by name); the services check the values (reason codes, channels,
BANT), with the same messages the pages show.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any

from django.db import models
from django.utils import timezone
from django.utils.text import format_lazy
from django.utils.translation import gettext as _
from django.utils.translation import gettext_lazy
from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers

from handoff.models import (
    ContactAttempt,
    ContactChannel,
    ContactOutcome,
    Handoff,
    HandoffKind,
    HandoffStatus,
    LeadNote,
    RejectReason,
    ReturnReason,
    SlaState,
    StageTransition,
)
from handoff.services import BANT_KEYS, sla_state_at, user_named
from scoring.models import ScoreChange

# --- hand-offs out -----------------------------------------------------------------------


class HandoffSerializer(serializers.ModelSerializer):
    """A hand-off: its SLA, enough of the lead to triage it, what IS learned (BANT) and
    how it ended (outcome, reason, comment).

    One shape for the queue, the detail and the actions' answers: the extra fields are
    columns of the same row, and one component keeps the OpenAPI enums unambiguous.
    `sla_state` is live (what the SLA monitor will make it at the request's time, which
    the serializer's context carries as `now`), so a deadline passed a few seconds ago
    reads "breached" before the monitor's next run.
    """

    lead = serializers.IntegerField(source="lead_id", read_only=True)
    assignee = serializers.SlugRelatedField(
        slug_field="username",
        read_only=True,
        help_text=gettext_lazy("The assignee's username, or null when unassigned."),
    )
    sla_state = serializers.SerializerMethodField(
        help_text=gettext_lazy("on_track, warning, breached, or met once answered in time.")
    )
    lead_email = serializers.EmailField(source="lead.email", read_only=True)
    lead_name = serializers.SerializerMethodField()
    company = serializers.SerializerMethodField()
    score = serializers.IntegerField(source="lead.score", read_only=True)
    temperature = serializers.CharField(source="lead.temperature", read_only=True)
    bant = serializers.DictField(
        child=serializers.CharField(),
        read_only=True,
        help_text=gettext_lazy("Budget, authority, need, timeline as recorded by IS."),
    )

    class Meta:
        model = Handoff
        fields = (
            "id",
            "lead",
            "kind",
            "status",
            "assignee",
            "opened_at",
            "due_at",
            "sla_state",
            "claimed_at",
            "responded_at",
            "closed_at",
            "lead_email",
            "lead_name",
            "company",
            "score",
            "temperature",
            "bant",
            "outcome",
            "reason",
            "comment",
            "opened_reason",
        )
        read_only_fields = fields

    def to_representation(self, handoff: Handoff) -> dict[str, Any]:
        """The declared fields' output, built directly: DRF's per-field machinery was
        half the time of a 50-row queue page (a test holds the two outputs equal)."""
        zone = timezone.get_current_timezone()
        lead = handoff.lead
        data = {name: getattr(handoff, name) for name in _PLAIN_HANDOFF_FIELDS}
        for name in _DATETIME_HANDOFF_FIELDS:
            value = getattr(handoff, name)
            data[name] = None if value is None else _iso(value.astimezone(zone))
        data["lead"] = handoff.lead_id
        data["assignee"] = handoff.assignee.username if handoff.assignee_id else None
        data["sla_state"] = self.get_sla_state(handoff)
        data["lead_email"] = lead.email
        data["lead_name"] = self.get_lead_name(handoff)
        data["company"] = self.get_company(handoff)
        data["score"] = lead.score
        data["temperature"] = lead.temperature
        data["bant"] = {str(key): str(value) for key, value in handoff.bant.items()}
        return {name: data[name] for name in self.Meta.fields}

    @extend_schema_field(serializers.ChoiceField(choices=SlaState.choices))
    def get_sla_state(self, handoff: Handoff) -> str:
        now: datetime = self.context["now"]
        return sla_state_at(handoff, now)

    def get_lead_name(self, handoff: Handoff) -> str:
        # Family name first, as Japanese teams write it (Lead.__str__ does the same).
        return f"{handoff.lead.last_name} {handoff.lead.first_name}".strip()

    def get_company(self, handoff: Handoff) -> str:
        return handoff.lead.company


_DATETIME_HANDOFF_FIELDS = ("opened_at", "due_at", "claimed_at", "responded_at", "closed_at")
_PLAIN_HANDOFF_FIELDS = ("id", "kind", "status", "outcome", "reason", "comment", "opened_reason")
# The columns the queue reads: a page loads no more than it shows.
QUEUE_COLUMNS = (
    "lead",
    "assignee",
    "lead__account",
    *_DATETIME_HANDOFF_FIELDS,
    *_PLAIN_HANDOFF_FIELDS,
    "warn_at",
    "sla_state",
    "bant",
    "lead__email",
    "lead__first_name",
    "lead__last_name",
    "lead__score",
    "lead__temperature",
    "lead__account__name",
    "assignee__username",
)


def _iso(value: datetime) -> str:
    # As DRF's DateTimeField renders it (ISO 8601, "Z" for UTC).
    text = value.isoformat()
    return text[:-6] + "Z" if text.endswith("+00:00") else text


class HandoffPageSerializer(serializers.Serializer):
    """A page of the queue: follow `next` (null on the last page)."""

    next = serializers.URLField(allow_null=True)
    results = HandoffSerializer(many=True)


# --- the queue's filters -------------------------------------------------------------------


def _one_of(choices: type[models.TextChoices]) -> Any:
    return format_lazy(gettext_lazy("One of: {choices}."), choices=", ".join(choices.values))


def _comma_list(value: str, choices: type[models.TextChoices]) -> list[str]:
    """The values of a comma-separated filter; unknown ones are a per-field error."""
    values = [part.strip() for part in value.split(",") if part.strip()]
    unknown = [part for part in values if part not in choices.values]
    if unknown:
        raise serializers.ValidationError(
            _("Unknown value %(values)s. Use %(choices)s (comma-separated).")
            % {"values": ", ".join(unknown), "choices": ", ".join(choices.values)}
        )
    return list(dict.fromkeys(values))


class HandoffQuerySerializer(serializers.Serializer):
    """The query string of `GET /handoffs/`."""

    status = serializers.CharField(
        required=False,
        allow_blank=True,
        help_text=gettext_lazy(
            "open, claimed, done, comma-separated; default open,claimed (the queue)."
        ),
    )
    kind = serializers.CharField(
        required=False,
        allow_blank=True,
        help_text=gettext_lazy("inside_sales (default), sales, or both comma-separated."),
    )
    assignee = serializers.CharField(
        required=False,
        allow_blank=True,
        help_text=gettext_lazy(
            'A username, "me" (the caller\'s hand-offs) or "none" (unassigned).'
        ),
    )
    sla_state = serializers.CharField(
        required=False,
        allow_blank=True,
        help_text=gettext_lazy("on_track, warning, breached, met, comma-separated (live)."),
    )
    cursor = serializers.CharField(
        required=False, allow_blank=True, help_text=gettext_lazy("From `next`: the page after it.")
    )
    page_size = serializers.IntegerField(
        required=False, min_value=1, max_value=200, help_text=gettext_lazy("1–200, default 50.")
    )

    def validate_status(self, value: str) -> list[str]:
        return _comma_list(value, HandoffStatus)

    def validate_kind(self, value: str) -> list[str]:
        return _comma_list(value, HandoffKind)

    def validate_sla_state(self, value: str) -> list[str]:
        return _comma_list(value, SlaState)

    def validate_assignee(self, value: str) -> Any:
        """The user with this username, or "me" or "none" as such. Resolved here: a name
        that matches nobody is an error, not an empty queue."""
        if value in ("me", "none", ""):
            return value or None
        user = user_named(value)
        if user is None:
            raise serializers.ValidationError(
                _('No active user is named "%(name)s". Use a username, "me" or "none".')
                % {"name": value}
            )
        return user


# --- action bodies -----------------------------------------------------------------------


class ActionSerializer(serializers.Serializer):
    """An action's body: a JSON object whose unknown keys are refused by name, so a
    misspelt field is heard about rather than silently ignored."""

    def to_internal_value(self, data: Any) -> dict[str, Any]:
        unknown = _unknown_key_errors(data, self.fields) if isinstance(data, Mapping) else {}
        try:
            values = super().to_internal_value(data)
        except serializers.ValidationError as exc:
            if unknown and isinstance(exc.detail, dict):
                raise serializers.ValidationError({**exc.detail, **unknown}) from exc
            raise
        if unknown:
            raise serializers.ValidationError(unknown)
        return values


def _unknown_key_errors(data: Mapping[str, Any], fields: Mapping[str, Any]) -> dict[str, list]:
    allowed = ", ".join(fields) or "-"
    message = _("Unknown field. This request takes: %s.") % allowed
    return {str(key): [message] for key in data if key not in fields}


def _text(help_text: Any, *, required: bool = False) -> Any:
    # Blank passes here on purpose: the service says what a blank value is missing.
    return serializers.CharField(
        required=required,
        allow_blank=True,
        default=serializers.empty if required else "",
        trim_whitespace=False,
        help_text=help_text,
    )


class UsernameField(serializers.CharField):
    """A username in, the active user out; a name that matches nobody is a field error."""

    def to_internal_value(self, data: Any) -> Any:
        name = super().to_internal_value(data)
        user = user_named(name)
        if user is None:
            raise serializers.ValidationError(
                _('No active user is named "%(name)s".') % {"name": name}
            )
        return user


class BantSerializer(serializers.Serializer):
    """BANT as IS records it: four short texts, each optional."""

    budget = serializers.CharField(required=False, allow_blank=True)
    authority = serializers.CharField(required=False, allow_blank=True)
    need = serializers.CharField(required=False, allow_blank=True)
    timeline = serializers.CharField(required=False, allow_blank=True)


@extend_schema_field(BantSerializer)
class BantField(serializers.JSONField):
    """The `bant` object, passed on as sent: `handoff.services.clean_bant` checks it."""


class AssignSerializer(ActionSerializer):
    """Body of `assign`: the IS rep who takes the hand-off over."""

    assignee = UsernameField(help_text=gettext_lazy("Username of an active inside sales rep."))


class ContactSerializer(ActionSerializer):
    """Body of `contact`: a call, email or meeting and how it went."""

    channel = _text(_one_of(ContactChannel), required=True)
    outcome = _text(_one_of(ContactOutcome), required=True)
    note = _text(gettext_lazy("What was said; shown on the lead's timeline."))


class BantBodySerializer(ActionSerializer):
    """Body of `bant`: the fields sent replace those recorded, the others stay."""

    bant = BantField(
        help_text=format_lazy(gettext_lazy("An object with {keys}."), keys=", ".join(BANT_KEYS))
    )


class QualifySerializer(ActionSerializer):
    """Body of `qualify`: the sales rep who gets the SQL, and BANT as last recorded."""

    sales_rep = UsernameField(
        help_text=gettext_lazy("Username of the active sales rep who gets the SQL.")
    )
    bant = BantField(required=False, default=dict)


class ReturnSerializer(ActionSerializer):
    """Body of `return`: why the lead goes back to nurturing."""

    reason = _text(_one_of(ReturnReason), required=True)
    comment = _text(gettext_lazy("Optional: what marketing should know."))


class DisqualifySerializer(ActionSerializer):
    """Body of `disqualify`: why the lead is not a prospect."""

    reason = _text(gettext_lazy("Why this lead is not a prospect (required)."), required=True)


class RejectSerializer(ActionSerializer):
    """Body of `reject`: a reason code and a comment, both required."""

    reason = _text(_one_of(RejectReason), required=True)
    comment = _text(
        gettext_lazy("Required: what marketing should change (the feedback loop)."),
        required=True,
    )


class StageNoteSerializer(ActionSerializer):
    """Body of `opportunity`, `won`, `lost`: an optional note."""

    note = _text(gettext_lazy("Optional: recorded as the reason of the stage change."))


class NoteSerializer(ActionSerializer):
    """Body of `notes`: the note's text."""

    body = _text(gettext_lazy("The note (plain text)."), required=True)


# --- timeline entries -----------------------------------------------------------------------


ACTOR_HELP = gettext_lazy("Username, or null for LeadOps itself (or a deleted user).")


class ScoreChangeEntrySerializer(serializers.ModelSerializer):
    """Timeline entry "score_change": a row of the score ledger."""

    rule = serializers.SerializerMethodField(
        help_text=gettext_lazy("The rule's label, or why the score changed without one.")
    )
    activity_id = serializers.IntegerField(
        allow_null=True, read_only=True, help_text=gettext_lazy("The event that scored.")
    )

    class Meta:
        model = ScoreChange
        fields = ("id", "points", "reason", "rule", "activity_id", "model_version")
        read_only_fields = fields

    def get_rule(self, change: ScoreChange) -> str:
        return change.describe()


class TransitionEntrySerializer(serializers.ModelSerializer):
    """Timeline entry "transition": a stage change with who, why and the score then."""

    actor = serializers.SlugRelatedField(
        slug_field="username", read_only=True, help_text=ACTOR_HELP
    )
    score = serializers.IntegerField(source="score_snapshot", read_only=True)

    class Meta:
        model = StageTransition
        fields = ("id", "from_stage", "to_stage", "actor", "reason", "score")
        read_only_fields = fields


class ContactAttemptEntrySerializer(serializers.ModelSerializer):
    """Timeline entry "contact_attempt": a call, email or meeting logged by IS."""

    actor = serializers.SlugRelatedField(
        slug_field="username", read_only=True, help_text=ACTOR_HELP
    )

    class Meta:
        model = ContactAttempt
        fields = ("id", "channel", "outcome", "note", "actor")
        read_only_fields = fields


class NoteEntrySerializer(serializers.ModelSerializer):
    """Timeline entry "note" (`POST /leads/{id}/notes/` answers the same entry)."""

    author = serializers.SlugRelatedField(
        slug_field="username", read_only=True, help_text=ACTOR_HELP
    )

    class Meta:
        model = LeadNote
        fields = ("id", "body", "author")
        read_only_fields = fields


class NoteAnswerSerializer(NoteEntrySerializer):
    """A new note as its timeline entry: kind "note", its time, then the note."""

    kind = serializers.SerializerMethodField()
    at = serializers.DateTimeField(source="created_at", read_only=True)

    class Meta(NoteEntrySerializer.Meta):
        fields = ("kind", "at", *NoteEntrySerializer.Meta.fields)
        read_only_fields = fields

    def get_kind(self, note: LeadNote) -> str:
        return "note"
