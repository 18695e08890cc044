"""API v1 of the lead core: leads (create-or-update, list, detail, timeline) and events.

Views stay thin: a serializer validates, one service call writes, a serializer answers.
Reads go through `Lead.objects.visible_to(user)`, so a sales rep's other leads are 404.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import django_filters
from django import forms
from django.db.models import Q, QuerySet
from django.urls import path
from django.utils.dateparse import parse_datetime
from django.utils.translation import gettext as _
from django.utils.translation import gettext_lazy
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import (
    OpenApiParameter,
    OpenApiResponse,
    PolymorphicProxySerializer,
    extend_schema,
    extend_schema_view,
)
from rest_framework import mixins, serializers, status, viewsets
from rest_framework.decorators import action
from rest_framework.exceptions import ParseError, ValidationError
from rest_framework.pagination import CursorPagination
from rest_framework.parsers import JSONParser
from rest_framework.permissions import SAFE_METHODS, BasePermission, IsAuthenticated
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.routers import SimpleRouter
from rest_framework.utils.urls import replace_query_param
from rest_framework.views import APIView

from leadops.ingest import ingest_events
from leadops.models import Lead, Stage, Temperature
from leadops.roles import can_write_leads
from leadops.serializers import (
    ActivityEntrySerializer,
    EventBatchSerializer,
    EventSerializer,
    EventsResultSerializer,
    LeadSerializer,
    LeadWriteSerializer,
    TimelinePageSerializer,
    event_items_from,
)
from leadops.services import upsert_lead
from leadops.throttling import IngestRateThrottle

ERROR_RESPONSES = {
    400: OpenApiResponse(description="Invalid input: messages per field, and a `detail`."),
    401: OpenApiResponse(description="Missing or invalid `Authorization: Token <key>`."),
    403: OpenApiResponse(description="The user's role may not do this."),
}


class JSONBodyParser(JSONParser):
    """JSON; a document nested too deeply to decode is a 400, not a crash."""

    def parse(self, stream, media_type=None, parser_context=None):
        try:
            return super().parse(stream, media_type, parser_context)
        except RecursionError as exc:
            raise ParseError(_("JSON parse error: the document is nested too deeply.")) from exc


class CanWriteLeads(BasePermission):
    message = gettext_lazy(
        "Your role may read leads but not create or change them. Ask a manager for a "
        "marketer, inside sales or manager account (or its API token)."
    )

    def has_permission(self, request: Request, view: Any) -> bool:
        return request.method in SAFE_METHODS or can_write_leads(request.user)


# --- leads ------------------------------------------------------------------------------


class IntegerFilter(django_filters.NumberFilter):
    field_class = forms.IntegerField


class LeadFilter(django_filters.FilterSet):
    stage = django_filters.ChoiceFilter(choices=Stage.choices)
    temperature = django_filters.ChoiceFilter(choices=Temperature.choices)
    owner = django_filters.CharFilter(
        field_name="owner__username", help_text=gettext_lazy("Owner's username.")
    )
    score_min = IntegerFilter(field_name="score", lookup_expr="gte")
    score_max = IntegerFilter(field_name="score", lookup_expr="lte")
    source = django_filters.CharFilter()

    class Meta:
        model = Lead
        fields = ("stage", "temperature", "owner", "score_min", "score_max", "source")


class LeadCursorPagination(CursorPagination):
    # Keyset pages: constant cost however deep the caller pages through millions of leads.
    ordering = "-id"
    page_size = 50
    page_size_query_param = "page_size"
    max_page_size = 200

    def get_page_size(self, request: Request) -> int:
        # DRF falls back to the default on a bad value; a caller should hear about it.
        _page_size(request)
        return super().get_page_size(request)


@extend_schema_view(
    list=extend_schema(
        summary="Leads, newest first",
        description="Filter by stage, temperature, owner (username), score range, source. "
        "Cursor pages: follow `next`; `page_size` up to 200. A sales rep sees only their leads.",
    ),
    retrieve=extend_schema(
        summary="One lead, with its score breakdown",
        responses={200: LeadSerializer, 404: OpenApiResponse(description="No such lead.")},
    ),
)
class LeadViewSet(mixins.ListModelMixin, mixins.RetrieveModelMixin, viewsets.GenericViewSet):
    serializer_class = LeadSerializer
    filterset_class = LeadFilter
    pagination_class = LeadCursorPagination
    permission_classes = (IsAuthenticated, CanWriteLeads)
    parser_classes = (JSONBodyParser,)
    throttle_classes = (IngestRateThrottle,)  # counts the create-or-update POSTs only

    def get_queryset(self) -> QuerySet[Lead]:
        if getattr(self, "swagger_fake_view", False):  # schema generation: no user
            return Lead.objects.none()
        return Lead.objects.visible_to(self.request.user).select_related(
            "account", "owner", "score_state"
        )

    @extend_schema(
        summary="Create a lead, or update the lead with this email",
        description=(
            "Matches the email case-insensitively (stored lower-case). Only the fields "
            "sent are written. Read-only fields (score, stage, owner…) are refused by name."
        ),
        request=LeadWriteSerializer,
        responses={
            201: OpenApiResponse(LeadSerializer, description="Created."),
            200: OpenApiResponse(LeadSerializer, description="Updated."),
            **ERROR_RESPONSES,
        },
    )
    def create(self, request: Request) -> Response:
        serializer = LeadWriteSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        lead, created = upsert_lead(
            **serializer.upsert_arguments(), create_defaults={"source": "API"}
        )
        answer = status.HTTP_201_CREATED if created else status.HTTP_200_OK
        return Response(LeadSerializer(lead).data, status=answer)

    @extend_schema(
        summary="The lead's timeline, newest first",
        parameters=[
            OpenApiParameter("cursor", OpenApiTypes.STR, description="From `next`."),
            OpenApiParameter("page_size", OpenApiTypes.INT, description="1–200, default 50."),
        ],
        responses={200: TimelinePageSerializer, 404: OpenApiResponse(description="No such lead.")},
    )
    @action(detail=True, pagination_class=None, filter_backends=[])
    def timeline(self, request: Request, pk: str | None = None) -> Response:
        lead = self.get_object()
        page_size = _page_size(request)
        entries, after = timeline_page(lead, cursor=_decode_cursor(request), size=page_size)
        next_url = None
        if after is not None:
            url = request.build_absolute_uri()
            next_url = replace_query_param(url, "cursor", _encode_cursor(after))
        return Response({"next": next_url, "results": entries})


# --- timeline: keyset pages over several kinds of entries -------------------------------


@dataclass(frozen=True)
class TimelineSource:
    """One kind of timeline entry: the lead's rows, their time field, their JSON shape."""

    kind: str
    rows: Callable[[Lead], QuerySet]
    time_field: str
    serializer: type[serializers.Serializer]


def _timeline_sources() -> list[TimelineSource]:
    """Every kind of entry: one query each per page, the people on them joined in.

    The later apps' models are imported here, beside the only lead-core code that reads
    them.
    """
    from handoff import serializers as handoff_serializers
    from handoff.models import ContactAttempt, LeadNote, StageTransition
    from scoring.models import ScoreChange

    return [
        TimelineSource(
            "activity", lambda lead: lead.activities.all(), "occurred_at", ActivityEntrySerializer
        ),
        TimelineSource(
            "score_change",
            lambda lead: ScoreChange.objects.filter(lead=lead),
            "created_at",
            handoff_serializers.ScoreChangeEntrySerializer,
        ),
        TimelineSource(
            "transition",
            lambda lead: StageTransition.objects.filter(lead=lead).select_related("actor"),
            "created_at",
            handoff_serializers.TransitionEntrySerializer,
        ),
        TimelineSource(
            "contact_attempt",
            lambda lead: ContactAttempt.objects.filter(lead=lead).select_related("actor"),
            "created_at",
            handoff_serializers.ContactAttemptEntrySerializer,
        ),
        TimelineSource(
            "note",
            lambda lead: LeadNote.objects.filter(lead=lead).select_related("author"),
            "created_at",
            handoff_serializers.NoteEntrySerializer,
        ),
    ]


# Order and cursors handle any number of kinds: a new kind is one more source here.
TIMELINE_SOURCES: list[TimelineSource] = _timeline_sources()

Position = tuple[datetime, str, int]  # (at, kind, id): entries are ordered by it, descending
_at_field = serializers.DateTimeField()


def timeline_page(
    lead: Lead, *, cursor: Position | None, size: int
) -> tuple[list[dict[str, Any]], Position | None]:
    """(up to `size` entries after `cursor`, newest first; the position to continue from)."""
    found: list[tuple[Position, TimelineSource, Any]] = []
    for source in TIMELINE_SOURCES:
        rows = source.rows(lead)
        if cursor is not None:
            rows = rows.filter(_after(source, cursor))
        for row in rows.order_by(f"-{source.time_field}", "-pk")[: size + 1]:
            found.append(((getattr(row, source.time_field), source.kind, row.pk), source, row))
    found.sort(key=lambda entry: entry[0], reverse=True)
    page = found[:size]
    entries = [
        {"kind": source.kind, "at": _at_field.to_representation(position[0])}
        | source.serializer(row).data
        for position, source, row in page
    ]
    return entries, (page[-1][0] if len(found) > size else None)


def _after(source: TimelineSource, cursor: Position) -> Q:
    """Rows of `source` that come after `cursor` in (at, kind, id) descending order."""
    at, kind, pk = cursor
    earlier = Q(**{f"{source.time_field}__lt": at})
    if source.kind < kind:
        return earlier | Q(**{source.time_field: at})
    if source.kind > kind:
        return earlier
    return earlier | Q(**{source.time_field: at, "pk__lt": pk})


def _page_size(request: Request) -> int:
    """`page_size` clamped to 1–200 (default 50); a value that is not a number is a 400."""
    try:
        return min(max(int(request.query_params.get("page_size", 50)), 1), 200)
    except ValueError:
        raise ValidationError({"page_size": [_("Send a whole number from 1 to 200.")]}) from None


def _encode_cursor(position: Position) -> str:
    at, kind, pk = position
    raw = json.dumps([at.isoformat(), kind, pk]).encode()
    return base64.urlsafe_b64encode(raw).decode()


def _decode_cursor(request: Request) -> Position | None:
    value = request.query_params.get("cursor")
    if not value:
        return None
    try:
        at, kind, pk = json.loads(base64.urlsafe_b64decode(value.encode()))
        moment = parse_datetime(at)
        if moment is None or not isinstance(kind, str) or not isinstance(pk, int):
            raise ValueError(value)
    except (ValueError, TypeError, binascii.Error) as exc:
        raise ValidationError(
            {"cursor": [_("Invalid cursor: use the `next` link as given.")]}
        ) from exc
    return moment, kind, pk


# --- events -----------------------------------------------------------------------------


class EventsView(APIView):
    permission_classes = (IsAuthenticated, CanWriteLeads)
    parser_classes = (JSONBodyParser,)
    throttle_classes = (IngestRateThrottle,)

    @extend_schema(
        summary="Send behaviour events: one, or a batch of up to 1,000",
        description=(
            "Idempotent by `event_id`: a resent event with the same body counts as a "
            "duplicate, the same id with another body is an error for that item. In a "
            "batch, valid events are stored even when others fail (their errors come back "
            "by index); more than 1,000 events reject the whole request. A single invalid "
            "event is a 400 with messages per field. An unknown email creates the lead."
        ),
        request=PolymorphicProxySerializer(
            component_name="EventsRequest",
            serializers=[EventSerializer, EventBatchSerializer],
            resource_type_field_name=None,
        ),
        responses={
            202: OpenApiResponse(EventsResultSerializer, description="Accepted."),
            413: OpenApiResponse(description="Body over 2 MB: send smaller batches."),
            **ERROR_RESPONSES,
        },
    )
    def post(self, request: Request) -> Response:
        items, batch = event_items_from(request.data)
        result = ingest_events(items, actor=request.user)
        if not batch and result.errors:
            raise ValidationError(result.errors[0]["errors"])
        answer = {"accepted": result.accepted, "duplicates": result.duplicates}
        return Response({**answer, "errors": result.errors}, status=status.HTTP_202_ACCEPTED)


router = SimpleRouter()
router.register("leads", LeadViewSet, basename="lead")

urlpatterns = [
    *router.urls,
    path("events/", EventsView.as_view(), name="events"),
]
