"""API v1 of the hand-off (included at /api/v1/): the IS queue, its actions, and the
sales rep's answers on a lead.

- `GET /handoffs/`: the queue, ordered by SLA due time, in keyset pages over
  (due_at, id); `GET /handoffs/{id}/`: one hand-off in full.
- `POST /handoffs/{id}/claim|assign|contact|bant|qualify|return|disqualify/`: IS reps
  and managers; each answers the hand-off (qualify: the new sales hand-off).
- `POST /leads/{id}/accept|reject|opportunity|won|lost/`: answer the lead (its new
  stage, owner and scores); `POST /leads/{id}/notes/`: 201 with the timeline entry.

Views stay thin: a serializer checks the body, one service writes, a serializer answers.
Service refusals map to HTTP: InvalidInput 400 (messages per field), PermissionDenied
403, IllegalTransition 409, a hand-off or lead the caller may not see 404.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from typing import Any

from django.db.models import BooleanField, F, Func, Q, QuerySet, Value
from django.utils import timezone
from django.utils.dateparse import parse_datetime
from django.utils.translation import gettext as _
from django.utils.translation import gettext_lazy
from drf_spectacular.utils import OpenApiResponse, extend_schema
from rest_framework import serializers, status, viewsets
from rest_framework.decorators import action
from rest_framework.exceptions import NotFound, ValidationError
from rest_framework.permissions import SAFE_METHODS, BasePermission, IsAuthenticated
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.routers import SimpleRouter
from rest_framework.utils.urls import replace_query_param

from handoff import services
from handoff.models import Handoff, HandoffKind, HandoffStatus, SlaState
from handoff.serializers import (
    QUEUE_COLUMNS,
    ActionSerializer,
    AssignSerializer,
    BantBodySerializer,
    ContactSerializer,
    DisqualifySerializer,
    HandoffPageSerializer,
    HandoffQuerySerializer,
    HandoffSerializer,
    NoteAnswerSerializer,
    NoteSerializer,
    QualifySerializer,
    RejectSerializer,
    ReturnSerializer,
    StageNoteSerializer,
)
from leadops.api import JSONBodyParser
from leadops.api_errors import Conflict
from leadops.models import Lead
from leadops.roles import Role, has_role, sees_only_own_leads
from leadops.serializers import LeadSerializer

DEFAULT_PAGE_SIZE = 50

ACTION_ERRORS = {
    400: OpenApiResponse(description="Invalid body: a message per field, and a `detail`."),
    403: OpenApiResponse(description="The caller's role may see this but not do it."),
    404: OpenApiResponse(description="No such hand-off or lead, or not one the caller sees."),
    409: OpenApiResponse(description="The stage or the hand-off's state does not allow it."),
}


@contextmanager
def service_errors() -> Iterator[None]:
    """The services' refusals as API errors (PermissionDenied DRF maps itself: 403)."""
    try:
        yield
    except services.InvalidInput as exc:
        raise ValidationError(exc.errors) from None
    except services.IllegalTransition as exc:
        raise Conflict(str(exc)) from None
    except (Handoff.DoesNotExist, Lead.DoesNotExist):
        raise NotFound() from None


class WorksTheQueue(BasePermission):
    """Everyone reads the hand-offs they may see; IS reps and managers act on them."""

    message = gettext_lazy(
        "Only inside sales reps and managers work the hand-off queue; your role reads it."
    )

    def has_object_permission(self, request: Request, view: Any, obj: Any) -> bool:
        return request.method in SAFE_METHODS or has_role(
            request.user, Role.INSIDE_SALES, Role.MANAGER
        )


class ActsOnLeads(BasePermission):
    """Marketers read leads; IS, sales reps (on their own leads) and managers act."""

    message = gettext_lazy(
        "Your role reads leads but does not act on them: inside sales, sales and managers do."
    )

    def has_object_permission(self, request: Request, view: Any, obj: Any) -> bool:
        return request.method in SAFE_METHODS or has_role(
            request.user, Role.INSIDE_SALES, Role.SALES, Role.MANAGER
        )


def _body(serializer_class: type[serializers.Serializer], request: Request) -> dict[str, Any]:
    serializer = serializer_class(data=request.data)
    serializer.is_valid(raise_exception=True)
    return serializer.validated_data


# --- the queue: keyset pages over (due_at, id) ----------------------------------------------


def visible_handoffs(user: Any) -> QuerySet[Handoff]:
    """Hand-offs the user may see: a sales rep only those of leads they own."""
    rows = Handoff.objects.all()
    return rows.filter(lead__owner=user) if sees_only_own_leads(user) else rows


class RowAfter(Func):
    """`(due_at, id) > (x, y)`: PostgreSQL reads this row comparison straight off the
    queue's (…, due_at, id) indexes, where the equivalent OR does not bound the scan."""

    output_field = BooleanField()

    def __init__(self, due_at: datetime, pk: int) -> None:
        super().__init__(F("due_at"), F("id"), Value(due_at), Value(pk))

    def as_sql(self, compiler: Any, connection: Any, **extra: Any) -> tuple[str, list[Any]]:
        parts, params = [], []
        for expression in self.get_source_expressions():
            sql, values = compiler.compile(expression)
            parts.append(sql)
            params.extend(values)
        return "({}, {}) > ({}, {})".format(*parts), params


def _live_sla_state(state: str, now: datetime) -> Q:
    """Hand-offs whose live SLA state (as `sla_state_at` computes it) is `state`."""
    answered = Q(responded_at__isnull=False) | Q(status=HandoffStatus.DONE)
    running = {
        SlaState.BREACHED: Q(due_at__lte=now),
        SlaState.WARNING: Q(warn_at__lte=now, due_at__gt=now),
        SlaState.ON_TRACK: Q(warn_at__gt=now),
    }
    stopped = answered & Q(sla_state=state)
    return stopped | (~answered & running[state]) if state in running else stopped


# Status sets that need no `status IN (…)`: "not done" already says it, or everything.
_STATUS_SETS_WITHOUT_FILTER = (
    {HandoffStatus.OPEN, HandoffStatus.CLAIMED},
    set(HandoffStatus.values),
)


def queue_rows(
    user: Any, filters: dict[str, Any], *, now: datetime, after: tuple[datetime, int] | None
) -> QuerySet[Handoff]:
    """The caller's view of the queue, filtered, in due order, after `after`."""
    kinds = filters.get("kind") or [HandoffKind.INSIDE_SALES]
    statuses = filters.get("status") or [HandoffStatus.OPEN, HandoffStatus.CLAIMED]
    rows = visible_handoffs(user).filter(kind__in=kinds)
    if HandoffStatus.DONE not in statuses:
        # Spelled as the partial indexes' own predicate, so the planner uses them.
        rows = rows.not_done()
    if set(statuses) not in _STATUS_SETS_WITHOUT_FILTER:
        rows = rows.filter(status__in=statuses)
    assignee = filters.get("assignee")
    if assignee == "none":
        rows = rows.filter(assignee__isnull=True)
    elif assignee is not None:
        rows = rows.filter(assignee=user if assignee == "me" else assignee)
    if filters.get("sla_state"):
        wanted = Q()
        for state in filters["sla_state"]:
            wanted |= _live_sla_state(state, now)
        rows = rows.filter(wanted)
    if after is not None:
        rows = rows.filter(RowAfter(*after))
    rows = rows.select_related("lead__account", "assignee").only(*QUEUE_COLUMNS)
    return rows.order_by("due_at", "id")


def _encode_cursor(handoff: Handoff) -> str:
    raw = json.dumps([handoff.due_at.isoformat(), handoff.pk]).encode()
    return base64.urlsafe_b64encode(raw).decode()


def _decode_cursor(value: str | None) -> tuple[datetime, int] | None:
    if not value:
        return None
    try:
        at, pk = json.loads(base64.urlsafe_b64decode(value.encode()))
        moment = parse_datetime(at)
        if moment is None or moment.tzinfo is None or not isinstance(pk, int):
            raise ValueError(value)
    except (ValueError, TypeError, binascii.Error) as exc:
        raise ValidationError(
            {"cursor": [_("Invalid cursor: use the `next` link as given.")]}
        ) from exc
    return moment, pk


# --- hand-offs -------------------------------------------------------------------------------


class HandoffViewSet(viewsets.GenericViewSet):
    """The hand-off queue and its actions."""

    serializer_class = HandoffSerializer
    permission_classes = (IsAuthenticated, WorksTheQueue)
    parser_classes = (JSONBodyParser,)
    pagination_class = None
    filter_backends: list = []
    lookup_value_regex = r"\d+"

    def get_queryset(self) -> QuerySet[Handoff]:
        if getattr(self, "swagger_fake_view", False):  # schema generation: no user
            return Handoff.objects.none()
        return visible_handoffs(self.request.user).select_related("lead__account", "assignee")

    def get_serializer_context(self) -> dict[str, Any]:
        return {**super().get_serializer_context(), "now": timezone.now()}

    @extend_schema(
        summary="The hand-off queue, by SLA due time",
        description=(
            "Not-done first-contact hand-offs by default. Filters: `status`, `kind`, "
            "`sla_state` (each comma-separated), `assignee` (username, `me`, `none`). "
            "`sla_state` is live: a deadline passed since the monitor's last run already "
            "reads `breached`. Keyset pages: follow `next`. A sales rep sees only the "
            "hand-offs of leads they own. An unknown filter value is a 400 naming it."
        ),
        parameters=[HandoffQuerySerializer],
        responses={200: HandoffPageSerializer, 400: ACTION_ERRORS[400]},
    )
    def list(self, request: Request) -> Response:
        query = HandoffQuerySerializer(data=request.query_params)
        query.is_valid(raise_exception=True)
        filters = query.validated_data
        size = filters.get("page_size", DEFAULT_PAGE_SIZE)
        context = self.get_serializer_context()
        after = _decode_cursor(filters.get("cursor"))
        found = list(queue_rows(request.user, filters, now=context["now"], after=after)[: size + 1])
        page, more = found[:size], len(found) > size
        next_url = None
        if more:
            url = request.build_absolute_uri()
            next_url = replace_query_param(url, "cursor", _encode_cursor(page[-1]))
        results = HandoffSerializer(page, many=True, context=context).data
        return Response({"next": next_url, "results": results})

    @extend_schema(
        summary="One hand-off in full: BANT, outcome, reason and comment",
        responses={200: HandoffSerializer, 404: ACTION_ERRORS[404]},
    )
    def retrieve(self, request: Request, pk: str | None = None) -> Response:
        return Response(self.get_serializer(self.get_object()).data)

    def _first_contact(self) -> Handoff:
        """The hand-off named in the URL: visible (404), actionable by the caller (403),
        and a first contact (the sales one is answered on the lead: 409)."""
        handoff = self.get_object()
        if handoff.kind != HandoffKind.INSIDE_SALES:
            raise Conflict(
                _(
                    "This is a sales hand-off: the sales rep answers it with "
                    "/api/v1/leads/%(lead)d/accept/ or /reject/."
                )
                % {"lead": handoff.lead_id}
            )
        return handoff

    def _answer(self, handoff_id: int) -> Response:
        handoff = Handoff.objects.select_related("lead__account", "assignee").get(pk=handoff_id)
        return Response(self.get_serializer(handoff).data)

    @extend_schema(
        summary="Claim the hand-off (unassigned, or assigned to me)",
        request=None,
        responses={200: HandoffSerializer, **ACTION_ERRORS},
    )
    @action(detail=True, methods=["post"])
    def claim(self, request: Request, pk: str | None = None) -> Response:
        handoff = self._first_contact()
        _body(ActionSerializer, request)  # takes no field: any key sent is refused by name
        with service_errors():
            services.claim_handoff(handoff.pk, actor=request.user)
        return self._answer(handoff.pk)

    @extend_schema(
        summary="Assign (or reassign) the hand-off to an IS rep",
        request=AssignSerializer,
        responses={200: HandoffSerializer, **ACTION_ERRORS},
    )
    @action(detail=True, methods=["post"])
    def assign(self, request: Request, pk: str | None = None) -> Response:
        handoff = self._first_contact()
        body = _body(AssignSerializer, request)
        with service_errors():
            services.assign_handoff(handoff.pk, actor=request.user, assignee=body["assignee"])
        return self._answer(handoff.pk)

    @extend_schema(
        summary="Log a contact attempt (the first one meets the SLA)",
        description="Logging on an unclaimed hand-off claims it for the caller.",
        request=ContactSerializer,
        responses={200: HandoffSerializer, **ACTION_ERRORS},
    )
    @action(detail=True, methods=["post"])
    def contact(self, request: Request, pk: str | None = None) -> Response:
        handoff = self._first_contact()
        body = _body(ContactSerializer, request)
        with service_errors():
            services.log_contact_attempt(handoff.pk, actor=request.user, **body)
        return self._answer(handoff.pk)

    @extend_schema(
        summary="Record BANT (merged into what is already recorded)",
        request=BantBodySerializer,
        responses={200: HandoffSerializer, **ACTION_ERRORS},
    )
    @action(detail=True, methods=["post"])
    def bant(self, request: Request, pk: str | None = None) -> Response:
        handoff = self._first_contact()
        body = _body(BantBodySerializer, request)
        with service_errors():
            services.save_bant(handoff.pk, actor=request.user, bant=body["bant"])
        return self._answer(handoff.pk)

    @extend_schema(
        summary="Qualify: MQL → SQL, handed to a sales rep",
        description="Answers the new sales hand-off (acceptance SLA running).",
        request=QualifySerializer,
        responses={200: HandoffSerializer, **ACTION_ERRORS},
    )
    @action(detail=True, methods=["post"])
    def qualify(self, request: Request, pk: str | None = None) -> Response:
        handoff = self._first_contact()
        body = _body(QualifySerializer, request)
        with service_errors():
            sales = services.qualify_lead(
                handoff.pk, actor=request.user, sales_rep=body["sales_rep"], bant=body["bant"]
            )
        return self._answer(sales.pk)

    @extend_schema(
        summary="Return the lead to nurturing (its behaviour score resets)",
        request=ReturnSerializer,
        responses={200: HandoffSerializer, **ACTION_ERRORS},
    )
    @action(detail=True, methods=["post"], url_path="return")
    def return_(self, request: Request, pk: str | None = None) -> Response:
        handoff = self._first_contact()
        body = _body(ReturnSerializer, request)
        with service_errors():
            services.return_to_nurturing(handoff.pk, actor=request.user, **body)
        return self._answer(handoff.pk)

    @extend_schema(
        summary="Disqualify the lead (対象外)",
        request=DisqualifySerializer,
        responses={200: HandoffSerializer, **ACTION_ERRORS},
    )
    @action(detail=True, methods=["post"])
    def disqualify(self, request: Request, pk: str | None = None) -> Response:
        handoff = self._first_contact()
        body = _body(DisqualifySerializer, request)
        with service_errors():
            services.disqualify_lead(handoff.pk, actor=request.user, reason=body["reason"])
        return self._answer(handoff.pk)


# --- the sales rep's answers on a lead -------------------------------------------------------


class LeadAnswerViewSet(viewsets.GenericViewSet):
    """Accept or reject an SQL, move an accepted lead on, write notes.

    The lead comes from `Lead.objects.visible_to`: a sales rep naming someone else's
    lead gets 404, as everywhere else in the API.
    """

    serializer_class = LeadSerializer
    permission_classes = (IsAuthenticated, ActsOnLeads)
    parser_classes = (JSONBodyParser,)
    pagination_class = None
    filter_backends: list = []
    lookup_value_regex = r"\d+"

    def get_queryset(self) -> QuerySet[Lead]:
        if getattr(self, "swagger_fake_view", False):  # schema generation: no user
            return Lead.objects.none()
        return Lead.objects.visible_to(self.request.user)

    def _answer(self, lead_id: int) -> Response:
        lead = Lead.objects.select_related("account", "owner").get(pk=lead_id)
        return Response(LeadSerializer(lead).data)

    @extend_schema(
        summary="Accept the SQL (→ SAL); only the sales rep it was handed to",
        request=None,
        responses={200: LeadSerializer, **ACTION_ERRORS},
    )
    @action(detail=True, methods=["post"])
    def accept(self, request: Request, pk: str | None = None) -> Response:
        lead = self.get_object()
        _body(ActionSerializer, request)  # takes no field: any key sent is refused by name
        with service_errors():
            services.accept_sql(lead.pk, actor=request.user)
        return self._answer(lead.pk)

    @extend_schema(
        summary="Reject the SQL with a reason code and a comment (→ nurturing)",
        description=(
            "The lead loses its owner and its behaviour score; the IS rep who qualified "
            "it and the marketers are told why."
        ),
        request=RejectSerializer,
        responses={200: LeadSerializer, **ACTION_ERRORS},
    )
    @action(detail=True, methods=["post"])
    def reject(self, request: Request, pk: str | None = None) -> Response:
        lead = self.get_object()
        body = _body(RejectSerializer, request)
        with service_errors():
            services.reject_sql(lead.pk, actor=request.user, **body)
        return self._answer(lead.pk)

    @extend_schema(
        summary="SAL → opportunity (商談化); the lead's owner or a manager",
        request=StageNoteSerializer,
        responses={200: LeadSerializer, **ACTION_ERRORS},
    )
    @action(detail=True, methods=["post"])
    def opportunity(self, request: Request, pk: str | None = None) -> Response:
        lead = self.get_object()
        body = _body(StageNoteSerializer, request)
        with service_errors():
            services.open_opportunity(lead.pk, actor=request.user, note=body["note"])
        return self._answer(lead.pk)

    @extend_schema(
        summary="Opportunity → won",
        request=StageNoteSerializer,
        responses={200: LeadSerializer, **ACTION_ERRORS},
    )
    @action(detail=True, methods=["post"])
    def won(self, request: Request, pk: str | None = None) -> Response:
        return self._close(request, won=True)

    @extend_schema(
        summary="Opportunity → lost",
        request=StageNoteSerializer,
        responses={200: LeadSerializer, **ACTION_ERRORS},
    )
    @action(detail=True, methods=["post"])
    def lost(self, request: Request, pk: str | None = None) -> Response:
        return self._close(request, won=False)

    def _close(self, request: Request, *, won: bool) -> Response:
        lead = self.get_object()
        body = _body(StageNoteSerializer, request)
        with service_errors():
            services.close_opportunity(lead.pk, actor=request.user, won=won, note=body["note"])
        return self._answer(lead.pk)

    @extend_schema(
        summary="Add a note to the lead's timeline",
        description="Answers the new timeline entry (kind `note`). The body is stored as "
        "plain text and returned as data: pages escape it.",
        request=NoteSerializer,
        responses={201: NoteAnswerSerializer, **ACTION_ERRORS},
    )
    @action(detail=True, methods=["post"])
    def notes(self, request: Request, pk: str | None = None) -> Response:
        lead = self.get_object()
        body = _body(NoteSerializer, request)
        with service_errors():
            note = services.add_lead_note(lead.pk, author=request.user, body=body["body"])
        return Response(NoteAnswerSerializer(note).data, status=status.HTTP_201_CREATED)


router = SimpleRouter()
router.register("handoffs", HandoffViewSet, basename="handoff")
router.register("leads", LeadAnswerViewSet, basename="lead-answer")

urlpatterns = [*router.urls]
