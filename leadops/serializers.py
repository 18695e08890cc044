"""JSON shapes of the lead core's API v1: lead in/out, events in/out, timeline entries."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from datetime import datetime
from functools import cache
from typing import Any

from django.db import models
from django.utils import timezone
from django.utils.translation import gettext as _
from django.utils.translation import gettext_lazy
from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers

from leadops.ingest import MAX_EVENTS_PER_REQUEST
from leadops.models import Activity, EventType, Lead
from leadops.services import WRITABLE_LEAD_FIELDS, normalize_email

# --- leads ------------------------------------------------------------------------------


class ScoreBreakdownItemSerializer(serializers.Serializer):
    rule = serializers.CharField(help_text=gettext_lazy("The scoring rule."))
    points = serializers.IntegerField(help_text=gettext_lazy("Points the rule adds now."))
    count = serializers.IntegerField(help_text=gettext_lazy("How many times it matched."))


BreakdownItem = dict[str, Any]


@cache
def _score_breakdown_functions() -> tuple[Callable | None, Callable | None]:
    """(batched, per-lead) breakdown functions of the scoring app, None where missing.

    Looked up once per process: scoring is built separately, and a failed import is slow
    to repeat for every lead of every page.
    """
    try:
        import scoring.services as scoring
    except ImportError:
        return None, None
    return getattr(scoring, "score_breakdowns_for", None), getattr(
        scoring, "score_breakdown_for", None
    )


def score_breakdowns(leads: Sequence[Lead]) -> dict[int, list[BreakdownItem]]:
    """{lead id: [{rule, points, count}, …]}: why each lead has its score.

    Scoring's batched `score_breakdowns_for(leads)` keeps a page of leads at a constant
    number of queries; its per-lead `score_breakdown_for(lead)` is the fallback; without
    scoring no lead has a breakdown.
    """
    batched, single = _score_breakdown_functions()
    if batched is not None:
        return batched(leads)
    if single is not None:
        return {lead.pk: single(lead) for lead in leads}
    return {lead.pk: [] for lead in leads}


class LeadListSerializer(serializers.ListSerializer):
    """A page of leads: their score breakdowns are fetched for the page at once."""

    def to_representation(self, data: Any) -> list[dict[str, Any]]:
        leads = list(data.all() if hasattr(data, "all") else data)
        self.context["score_breakdowns"] = score_breakdowns(leads)
        return super().to_representation(leads)


class LeadSerializer(serializers.ModelSerializer):
    """A lead as integrations read it (all fields read-only here)."""

    company = serializers.CharField(read_only=True, help_text=gettext_lazy("Account name."))
    owner = serializers.SlugRelatedField(
        slug_field="username", read_only=True, help_text=gettext_lazy("Owner's username.")
    )
    score_breakdown = serializers.SerializerMethodField()

    class Meta:
        model = Lead
        fields = (
            "id",
            "email",
            "first_name",
            "last_name",
            "company",
            "title",
            "job_level",
            "department",
            "industry",
            "employee_count",
            "phone",
            "region",
            "source",
            "consent",
            "unsubscribed",
            "owner",
            "stage",
            "attribute_score",
            "behavior_score",
            "score",
            "temperature",
            "last_activity_at",
            "score_breakdown",
            "created_at",
            "updated_at",
        )
        read_only_fields = fields
        list_serializer_class = LeadListSerializer

    def to_representation(self, lead: Lead) -> dict[str, Any]:
        """The declared fields' output, built directly: DRF's per-field machinery costs
        ~0.3 ms a lead, most of a 50-lead page (a test holds the two outputs equal)."""
        data = {name: getattr(lead, name) for name in _PLAIN_LEAD_FIELDS}
        zone = timezone.get_current_timezone()
        for name in _DATETIME_LEAD_FIELDS:
            value = getattr(lead, name)
            data[name] = None if value is None else _iso(value.astimezone(zone))
        data["company"] = lead.account.name if lead.account_id else ""
        data["owner"] = lead.owner.username if lead.owner_id else None
        data["score_breakdown"] = self.get_score_breakdown(lead)
        return {name: data[name] for name in self.Meta.fields}

    @extend_schema_field(ScoreBreakdownItemSerializer(many=True))
    def get_score_breakdown(self, lead: Lead) -> list[BreakdownItem]:
        page = self.context.get("score_breakdowns") or {}
        if lead.pk in page:
            return page[lead.pk]
        return score_breakdowns([lead]).get(lead.pk, [])


_DATETIME_LEAD_FIELDS = ("last_activity_at", "created_at", "updated_at")
_PLAIN_LEAD_FIELDS = tuple(
    f
    for f in LeadSerializer.Meta.fields
    if f not in {*_DATETIME_LEAD_FIELDS, "company", "owner", "score_breakdown"}
)


def _iso(value: datetime) -> str:
    # As DRF's DateTimeField renders it (ISO 8601, "Z" for UTC).
    text = value.isoformat()
    return text[:-6] + "Z" if text.endswith("+00:00") else text


LEAD_INPUT_FIELDS = ("email", "company", *WRITABLE_LEAD_FIELDS)
READ_ONLY_LEAD_FIELDS = tuple(f for f in LeadSerializer.Meta.fields if f not in LEAD_INPUT_FIELDS)


class StrictBooleanField(serializers.BooleanField):
    """JSON true or false only: DRF's BooleanField also takes "yes", 0, "off"…, so a
    caller sending `"consent": "no"` or 0 by mistake would silently record a choice."""

    def to_internal_value(self, data: Any) -> bool:
        if isinstance(data, bool):
            return data
        self.fail("invalid", input=data)


class StrictCharField(serializers.CharField):
    """Text only: DRF's CharField also turns numbers into text, which hides a caller's
    mix-up of fields (an id sent as `source`) instead of naming it."""

    def to_internal_value(self, data: Any) -> str:
        if not isinstance(data, str):
            self.fail("invalid")
        return super().to_internal_value(data)


class StrictEmailField(serializers.EmailField):
    def to_internal_value(self, data: Any) -> str:
        if not isinstance(data, str):
            self.fail("invalid")
        return super().to_internal_value(data)


class LeadWriteSerializer(serializers.ModelSerializer):
    """Body of `POST /leads/`: create, or update the fields sent of the lead with this email.

    Read-only and unknown keys are refused by name rather than ignored, so a caller who
    thinks they set `score` or `stage` hears that they did not.
    """

    company = StrictCharField(
        max_length=200, allow_blank=True, required=False, help_text=gettext_lazy("Account name.")
    )

    serializer_field_mapping = {
        **serializers.ModelSerializer.serializer_field_mapping,
        models.BooleanField: StrictBooleanField,
        models.CharField: StrictCharField,
        models.TextField: StrictCharField,
        models.EmailField: StrictEmailField,
    }

    class Meta:
        model = Lead
        fields = LEAD_INPUT_FIELDS
        # Update-by-email: the unique validator would refuse every update.
        extra_kwargs = {"email": {"validators": []}}

    def validate_email(self, value: str) -> str:
        return normalize_email(value)

    def to_internal_value(self, data: Any) -> dict[str, Any]:
        key_errors = _unexpected_key_errors(data) if isinstance(data, Mapping) else {}
        try:
            values = super().to_internal_value(data)
        except serializers.ValidationError as exc:
            if key_errors and isinstance(exc.detail, dict):
                raise serializers.ValidationError({**exc.detail, **key_errors}) from exc
            raise
        if key_errors:
            raise serializers.ValidationError(key_errors)
        return values

    def upsert_arguments(self) -> dict[str, Any]:
        """Keyword arguments for `upsert_lead` from the validated data."""
        data = self.validated_data
        return {
            "email": data["email"],
            "fields": {name: data[name] for name in WRITABLE_LEAD_FIELDS if name in data},
            "company": data.get("company"),
        }


def _unexpected_key_errors(data: Mapping[str, Any]) -> dict[str, list[str]]:
    errors: dict[str, list[str]] = {}
    for key in data:
        if key in READ_ONLY_LEAD_FIELDS:
            errors[key] = [
                _("This field is read-only: LeadOps sets it. Remove it from the request.")
            ]
        elif key not in LEAD_INPUT_FIELDS:
            errors[str(key)] = [
                _("Unknown field. Writable fields are: %s.") % ", ".join(LEAD_INPUT_FIELDS)
            ]
    return errors


# --- events -----------------------------------------------------------------------------


class EventSerializer(serializers.Serializer):
    """One behaviour event (documentation of the contract; `leadops.ingest` validates)."""

    event_id = serializers.CharField(
        max_length=200, help_text=gettext_lazy("The sender's unique id: resending is safe.")
    )
    email = serializers.EmailField(
        required=False, help_text=gettext_lazy("The lead; unknown emails create the lead.")
    )
    lead_id = serializers.IntegerField(
        required=False, help_text=gettext_lazy("The lead's id, instead of email.")
    )
    type = serializers.ChoiceField(choices=EventType.choices)
    occurred_at = serializers.DateTimeField(
        required=False,
        help_text=gettext_lazy("ISO 8601; default now; not before 2000, at most a day ahead."),
    )
    properties = serializers.DictField(
        required=False,
        help_text=gettext_lazy("Free-form object (url, title, campaign…), ≤ 16 KB, depth ≤ 5."),
    )
    source = serializers.CharField(max_length=100, required=False)


class EventBatchSerializer(serializers.Serializer):
    events = EventSerializer(many=True, max_length=MAX_EVENTS_PER_REQUEST)


class EventItemErrorSerializer(serializers.Serializer):
    index = serializers.IntegerField(help_text=gettext_lazy("Position in `events`, from 0."))
    errors = serializers.DictField(
        child=serializers.ListField(child=serializers.CharField()),
        help_text=gettext_lazy("Messages per field."),
    )


class EventsResultSerializer(serializers.Serializer):
    accepted = serializers.IntegerField(help_text=gettext_lazy("Events stored now."))
    duplicates = serializers.IntegerField(
        help_text=gettext_lazy("Events whose event_id was stored before with the same body.")
    )
    errors = EventItemErrorSerializer(many=True)


def event_items_from(data: Any) -> tuple[list[Any], bool]:
    """(the event items of a request body, whether it was a batch); 400 on a wrong envelope.

    The items themselves are validated by `ingest_events`, one by one, so that one bad
    event does not reject its batch.
    """
    if not isinstance(data, Mapping):
        raise serializers.ValidationError(
            {"non_field_errors": [_('Send one event object, or {"events": [...]}.')]}
        )
    if "events" not in data:
        return [data], False
    events = data["events"]
    errors = {str(key): [_("Unknown field next to events.")] for key in data if key != "events"}
    if not isinstance(events, list):
        errors["events"] = [_("Send a list of event objects.")]
    elif len(events) > MAX_EVENTS_PER_REQUEST:
        errors["events"] = [
            _("At most %(max)d events per request, got %(count)d: split the batch.")
            % {"max": MAX_EVENTS_PER_REQUEST, "count": len(events)}
        ]
    if errors:
        raise serializers.ValidationError(errors)
    return events, True


# --- timeline ---------------------------------------------------------------------------


class ActivityEntrySerializer(serializers.ModelSerializer):
    """A timeline entry of kind "activity" (a behaviour event)."""

    class Meta:
        model = Activity
        fields = ("type", "occurred_at", "properties", "event_id", "source")
        read_only_fields = fields


class TimelineEntrySerializer(serializers.Serializer):
    """Every entry has `kind` and `at`; the rest depends on the kind."""

    kind = serializers.ChoiceField(
        choices=["activity", "score_change", "transition", "contact_attempt", "note"]
    )
    at = serializers.DateTimeField()
    # activity
    type = serializers.CharField(required=False)
    occurred_at = serializers.DateTimeField(required=False)
    properties = serializers.DictField(required=False)
    event_id = serializers.CharField(required=False)
    source = serializers.CharField(required=False)
    # score_change, transition, contact_attempt, note
    id = serializers.IntegerField(required=False)
    points = serializers.IntegerField(required=False)
    reason = serializers.CharField(required=False)
    rule = serializers.CharField(required=False)
    activity_id = serializers.IntegerField(required=False, allow_null=True)
    model_version = serializers.IntegerField(required=False)
    from_stage = serializers.CharField(required=False)
    to_stage = serializers.CharField(required=False)
    score = serializers.IntegerField(required=False)
    actor = serializers.CharField(required=False, allow_null=True)
    channel = serializers.CharField(required=False)
    outcome = serializers.CharField(required=False)
    note = serializers.CharField(required=False)
    body = serializers.CharField(required=False)
    author = serializers.CharField(required=False, allow_null=True)


class TimelinePageSerializer(serializers.Serializer):
    next = serializers.URLField(allow_null=True)
    results = TimelineEntrySerializer(many=True)
