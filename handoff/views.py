"""The pages IS and sales work in: the queue, the inbox, the lead page and the bell.

Views parse the request, check the role, read with `handoff.selectors`, shape rows with
`handoff.presenters` and write through one `handoff.services` call per action (the
action table and its forms are in `handoff.forms`). Every action is a plain POST form
that also works without JavaScript (redirect with a message); with htmx it swaps the
row, card or panel it came from in place. The form's hidden `from` says which one:
"queue", "inbox" or "lead".
"""

from __future__ import annotations

import base64
import binascii
import json
from dataclasses import dataclass
from datetime import datetime
from functools import cached_property
from typing import Any

from django import forms
from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.exceptions import PermissionDenied
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.urls import reverse
from django.utils import timezone
from django.utils.dateparse import parse_datetime
from django.utils.http import url_has_allowed_host_and_scheme, urlencode
from django.utils.translation import gettext as _
from django.utils.translation import ngettext
from django.views.decorators.http import require_GET, require_http_methods, require_POST
from django_htmx.http import push_url

from handoff import selectors
from handoff.forms import (
    HANDOFF_ACTIONS,
    LEAD_ACTIONS,
    Action,
    BoundAction,
    add_service_errors,
    bind_handoff_action,
    bind_lead_action,
    form_id,
    sales_reps,
)
from handoff.models import Handoff, HandoffKind, HandoffStatus
from handoff.presenters import (
    AcceptedRow,
    HandoffPanel,
    InboxCard,
    QueueRow,
    accepted_row,
    encode_cursor,
    format_after,
    inbox_cards,
    lead_name,
    queue_rows,
    sla_view,
    stage_moves,
    timeline_entry,
)
from handoff.selectors import INBOX_LIMIT
from handoff.services import IllegalTransition, InvalidInput, calendar_for, get_policy
from leadops.api import timeline_page
from leadops.models import Lead
from leadops.roles import Role, has_role
from scoring.services.explain import lead_explanation

# Page sizes and the timeline read are looked up here at call time: tests shrink the
# pages and substitute the timeline through this module.
QUEUE_PAGE_SIZE = 25
QUEUE_VIEWS = ("mine", "unassigned", "team")
SEARCH_MAX_LENGTH = 100
TIMELINE_PAGE_SIZE = 30
NOTIFICATIONS_SHOWN = 50
ORIGINS = ("queue", "inbox", "lead")

# Kept importable here: tests/handoff/test_pages.py clears the team count cache and
# explains the queue's query through these names.
TEAM_COUNTS_CACHE_KEY = selectors.TEAM_COUNTS_CACHE_KEY
open_is_handoffs = selectors.open_is_handoffs
_view_filter = selectors.in_queue_view
_after_filter = selectors.after_cursor


class BadRequest(Exception):
    """A query parameter the page cannot use: answered 400 with the message."""


# --- who may do what (mirrors the services' checks, to show only usable actions) --------


def may_read_queue(user) -> bool:
    return has_role(user, Role.INSIDE_SALES, Role.MANAGER, Role.MARKETER)


def may_work_queue(user) -> bool:
    return has_role(user, Role.INSIDE_SALES, Role.MANAGER)


def may_use_inbox(user) -> bool:
    return has_role(user, Role.SALES, Role.MANAGER)


def may_write_notes(user) -> bool:
    return has_role(user, Role.INSIDE_SALES, Role.SALES, Role.MANAGER)


def may_move_stage(user, lead: Lead) -> bool:
    return lead.owner_id == user.pk or has_role(user, Role.MANAGER)


def _require(allowed: bool) -> None:
    if not allowed:
        raise PermissionDenied(_("Your role does not give access to this page."))


# --- the header: bell and role links, lazily (one cheap query only when shown) -----------


class HeaderContext:
    """What base.html shows for the signed-in user: the links of their role, the bell."""

    def __init__(self, user) -> None:
        self.user = user

    @cached_property
    def unread(self) -> int:
        from handoff.notifications import unread_count

        return unread_count(self.user)

    @cached_property
    def shows_queue(self) -> bool:
        return may_read_queue(self.user)

    @cached_property
    def shows_inbox(self) -> bool:
        return may_use_inbox(self.user)

    @cached_property
    def shows_dashboard(self) -> bool:
        from leadops.dashboard_views import may_read_dashboard

        return may_read_dashboard(self.user)


def header_context(request: HttpRequest) -> dict[str, Any]:
    """Template context processor for base.html's header (add it to TEMPLATES)."""
    user = getattr(request, "user", None)
    if user is None or not user.is_authenticated:
        return {}
    return {"handoff_header": HeaderContext(user)}


def _page(request: HttpRequest, template: str, context: dict[str, Any], status: int = 200):
    return render(request, template, {**header_context(request), **context}, status=status)


def _bad_request(request: HttpRequest, message: str) -> HttpResponse:
    return _page(request, "handoff/error.html", {"message": message}, status=400)


# --- request parsing: cursors and the inbox's rep -------------------------------------------


def parse_after(value: str | None) -> tuple[datetime, int] | None:
    """The keyset cursor `<due_at ISO 8601>,<id>`: rows strictly after it in (due_at, id)."""
    if not value:
        return None
    moment_text, _sep, pk_text = value.rpartition(",")
    moment = parse_datetime(moment_text)
    if moment is None or not pk_text.isdigit() or timezone.is_naive(moment):
        raise BadRequest(_("This page link is broken: go back to the first page of the queue."))
    return moment, int(pk_text)


def decode_cursor(value: str | None) -> tuple[datetime, str, int] | None:
    """The lead timeline's cursor, as `presenters.encode_cursor` wrote it."""
    if not value:
        return None
    try:
        at, kind, pk = json.loads(base64.urlsafe_b64decode(value.encode()))
        moment = parse_datetime(at)
        if moment is None or not isinstance(kind, str) or not isinstance(pk, int):
            raise ValueError(value)
    except (ValueError, TypeError, binascii.Error) as exc:
        raise BadRequest(_("This timeline link is broken: open the lead page again.")) from exc
    return moment, kind, pk


def _inbox_scope(request: HttpRequest, rep_name: str | None):
    """The sales rep whose inbox is shown: yourself, or for a manager anyone (None: all)."""
    user = request.user
    if not has_role(user, Role.MANAGER):
        return user
    if not rep_name:
        return None
    rep = selectors.active_sales_rep_named(rep_name)
    if rep is None:
        raise BadRequest(_("No active sales rep is called %(name)s.") % {"name": rep_name})
    return rep


def _rep_from_post(request: HttpRequest):
    try:
        return _inbox_scope(request, request.POST.get("rep"))
    except BadRequest:
        return request.user


def _next_for(request: HttpRequest) -> str:
    if request.method == "POST":
        posted = request.POST.get("next", "")
        if url_has_allowed_host_and_scheme(
            posted, allowed_hosts={request.get_host()}, require_https=request.is_secure()
        ):
            return posted
        return ""
    return request.get_full_path()


def _origin(request: HttpRequest) -> str:
    origin = request.POST.get("from") or request.GET.get("from") or "lead"
    return origin if origin in ORIGINS else "lead"


# --- the IS queue -----------------------------------------------------------------------


def _queue_row(handoff_id: int, request: HttpRequest, **extra: Any) -> QueueRow:
    handoff = get_object_or_404(selectors.is_handoff_rows(), pk=handoff_id)
    user = request.user
    row = queue_rows([handoff], user=user, can_act=may_work_queue(user), now=timezone.now())[0]
    for key, value in extra.items():
        setattr(row, key, value)
    return row


@login_required
@require_GET
def queue(request: HttpRequest) -> HttpResponse:
    """The IS queue: open first-contact hand-offs by SLA due time, a keyset page at a time."""
    user = request.user
    _require(may_read_queue(user))
    default_view = "mine" if has_role(user, Role.INSIDE_SALES) else "team"
    view = request.GET.get("view") or default_view
    search = request.GET.get("q", "").strip()
    if view not in QUEUE_VIEWS:
        return _bad_request(request, _("Unknown queue view: choose mine, unassigned or team."))
    if len(search) > SEARCH_MAX_LENGTH:
        return _bad_request(request, _("Search for at most 100 characters."))
    try:
        after = parse_after(request.GET.get("after"))
    except BadRequest as exc:
        return _bad_request(request, str(exc))
    now = timezone.now()
    page, more = selectors.queue_page(
        user, view=view, search=search, after=after, size=QUEUE_PAGE_SIZE
    )
    context = {
        "rows": queue_rows(page, user=user, can_act=may_work_queue(user), now=now),
        "view": view,
        "views": [(v, _queue_view_label(v)) for v in QUEUE_VIEWS],
        "search": search,
        "after": after,
        "next_after": format_after(page[-1]) if more else "",
        "counts": selectors.queue_counts(user, view=view, now=now),
        "next_url": request.get_full_path(),
        "next_query": urlencode({"from": "queue", "next": request.get_full_path()}),
    }
    return _page(request, "handoff/queue.html", context)


def _queue_view_label(view: str) -> str:
    labels = {"mine": _("Mine"), "unassigned": _("Unassigned"), "team": _("Whole team")}
    return labels[view]


# --- the sales inbox ----------------------------------------------------------------------


def _inbox_cards(handoffs: list[Handoff], request: HttpRequest, *, rep) -> list[InboxCard]:
    next_url = _next_for(request)
    return inbox_cards(handoffs, user=request.user, rep=rep, next_url=next_url, now=timezone.now())


def _accepted_rows(request: HttpRequest, *, rep) -> list[AcceptedRow]:
    return [_accepted_row(lead, request, rep=rep) for lead in selectors.accepted_leads(rep)]


def _accepted_row(lead: Lead, request: HttpRequest, *, rep, **extra: Any) -> AcceptedRow:
    allowed = may_move_stage(request.user, lead)
    return accepted_row(lead, rep=rep, next_url=_next_for(request), allowed=allowed, **extra)


@login_required
@require_GET
def inbox(request: HttpRequest) -> HttpResponse:
    """A sales rep's SQLs awaiting an answer (acceptance SLA), then their accepted leads."""
    _require(may_use_inbox(request.user))
    try:
        rep = _inbox_scope(request, request.GET.get("rep"))
    except BadRequest as exc:
        return _bad_request(request, str(exc))
    handoffs = selectors.handoffs_awaiting_sales_answer(rep)
    context = {
        "cards": _inbox_cards(handoffs, request, rep=rep),
        "accepted": _accepted_rows(request, rep=rep),
        "rep": rep,
        "is_manager": has_role(request.user, Role.MANAGER),
        "reps": sales_reps() if has_role(request.user, Role.MANAGER) else [],
        "limit": INBOX_LIMIT,
    }
    return _page(request, "handoff/inbox.html", context)


# --- the lead page --------------------------------------------------------------------------


def lead_actions(
    request: HttpRequest, lead: Lead, handoffs: list[Handoff], bound: dict[str, forms.Form]
) -> list[BoundAction]:
    """The forms the viewer's role allows on this lead, in the order of the work."""
    user = request.user
    place = {"origin": "lead", "target": "#lead-work", "next_url": _next_for(request)}
    is_handoff = next((h for h in handoffs if h.kind == HandoffKind.INSIDE_SALES), None)
    sales = next((h for h in handoffs if h.kind == HandoffKind.SALES), None)
    actions: list[BoundAction] = []
    if is_handoff is not None and may_work_queue(user):
        names = ["contact", "bant", "qualify", "return", "disqualify"]
        if is_handoff.status == HandoffStatus.OPEN and is_handoff.assignee_id in (None, user.pk):
            names.insert(0, "claim")
        actions += [bind_handoff_action(n, is_handoff, form=bound.get(n), **place) for n in names]
    if sales is not None and sales.assignee_id == user.pk:
        actions += [
            bind_lead_action(n, lead.pk, form=bound.get(n), **place) for n in ("accept", "reject")
        ]
    if may_move_stage(user, lead):
        names = stage_moves(lead)
        actions += [bind_lead_action(n, lead.pk, form=bound.get(n), **place) for n in names]
    return actions


def _note_action(request: HttpRequest, lead: Lead, form: forms.Form | None) -> BoundAction | None:
    if not may_write_notes(request.user):
        return None
    place = {"origin": "lead", "target": "#lead-work", "next_url": _next_for(request)}
    return bind_lead_action("note", lead.pk, form=form, **place)


def lead_context(
    request: HttpRequest,
    lead: Lead,
    *,
    bound: dict[str, forms.Form] | None = None,
    cursor: tuple[datetime, str, int] | None = None,
    notice: str = "",
    error: str = "",
) -> dict[str, Any]:
    bound = bound or {}
    now = timezone.now()
    calendar = calendar_for(get_policy())
    handoffs = selectors.open_handoffs_of(lead)
    entries, after = timeline_page(lead, cursor=cursor, size=TIMELINE_PAGE_SIZE)
    return {
        "lead": lead,
        "explanation": lead_explanation(lead, now=now),
        "panels": [HandoffPanel(h, sla_view(h, now=now, calendar=calendar)) for h in handoffs],
        "actions": lead_actions(request, lead, handoffs, bound),
        "note_action": _note_action(request, lead, bound.get("note")),
        "timeline": [timeline_entry(e) for e in entries],
        "timeline_next": encode_cursor(after) if after is not None else "",
        "timeline_is_first_page": cursor is None,
        "notice": notice,
        "error": error,
    }


def _visible_lead(request: HttpRequest, pk: int) -> Lead:
    return get_object_or_404(selectors.leads_visible_to(request.user), pk=pk)


@login_required
@require_GET
def lead_detail(request: HttpRequest, pk: int) -> HttpResponse:
    """Everything about one lead: profile, score and why, hand-offs, timeline, actions."""
    lead = _visible_lead(request, pk)
    try:
        cursor = decode_cursor(request.GET.get("before"))
    except BadRequest as exc:
        return _bad_request(request, str(exc))
    return _page(request, "handoff/lead.html", lead_context(request, lead, cursor=cursor))


# --- posting an action ----------------------------------------------------------------------


@dataclass
class Outcome:
    """What running an action gave: the form (with errors), a conflict message, or done."""

    form: forms.Form
    conflict: str = ""
    result: Any = None

    @property
    def ok(self) -> bool:
        return not self.conflict and not self.form.errors


def run_action(action: Action, target_id: int, request: HttpRequest, *, origin: str) -> Outcome:
    """Validate the form, call the action's one service; map refusals to the form."""
    form = action.form_class(request.POST, auto_id=form_id(origin, target_id, action.name))
    if not form.is_valid():
        return Outcome(form)
    try:
        return Outcome(form, result=action.run(target_id, request.user, form))
    except InvalidInput as exc:
        add_service_errors(form, exc.errors)
        return Outcome(form)
    except IllegalTransition as exc:
        return Outcome(form, conflict=str(exc))
    except (Handoff.DoesNotExist, Lead.DoesNotExist) as exc:
        raise Http404(_("This lead or hand-off no longer exists.")) from exc


@login_required
@require_http_methods(["GET", "POST"])
def handoff_action(request: HttpRequest, pk: int, name: str) -> HttpResponse:
    """An IS action on a first-contact hand-off (claim, contact, BANT, qualify, return,
    disqualify). GET shows its form (a panel for htmx, a page otherwise)."""
    action = HANDOFF_ACTIONS.get(name) or _not_found()
    handoff = get_object_or_404(selectors.handoffs_workable_by(request.user), pk=pk)
    _require(may_work_queue(request.user))
    origin = _origin(request)
    place = {"origin": origin, "target": _handoff_target(origin, handoff), "next_url": ""}
    if request.method == "GET":
        place["next_url"] = request.GET.get("next", "")
        bound = bind_handoff_action(name, handoff, **place)
        return _show_form(request, bound, lead=handoff.lead)
    outcome = run_action(action, handoff.pk, request, origin=origin)
    place["next_url"] = _next_for(request)
    bound = bind_handoff_action(name, handoff, form=outcome.form, **place)
    return _answer(request, outcome, bound, lead=handoff.lead, handoff=handoff)


def _handoff_target(origin: str, handoff: Handoff) -> str:
    if origin == "queue":
        return f"#handoff-{handoff.pk}"
    if origin == "inbox":
        return f"#inbox-{handoff.lead_id}"
    return "#lead-work"


@login_required
@require_http_methods(["GET", "POST"])
def lead_action(request: HttpRequest, pk: int, name: str) -> HttpResponse:
    """A sales rep's answer or a stage move on a lead (accept, reject, opportunity, won,
    lost) or a note. Only leads the user may see (404 otherwise)."""
    action = LEAD_ACTIONS.get(name) or _not_found()
    lead = _visible_lead(request, pk)
    origin = _origin(request)
    target = f"#{_inbox_dom_id(name)}-{lead.pk}" if origin == "inbox" else "#lead-work"
    hidden = {"rep": request.POST.get("rep", "")} if request.POST.get("rep") else {}
    place = {"origin": origin, "target": target, "hidden": hidden}
    if request.method == "GET":
        bound = bind_lead_action(name, lead.pk, next_url=request.GET.get("next", ""), **place)
        return _show_form(request, bound, lead=lead)
    outcome = run_action(action, lead.pk, request, origin=origin)
    bound = bind_lead_action(name, lead.pk, form=outcome.form, next_url=_next_for(request), **place)
    return _answer(request, outcome, bound, lead=lead)


def _inbox_dom_id(name: str) -> str:
    return "inbox" if name in ("accept", "reject") else "accepted"


def _not_found():
    raise Http404(_("No such action."))


def _show_form(request: HttpRequest, bound: BoundAction, *, lead: Lead) -> HttpResponse:
    if request.htmx:
        panel = _page(request, "handoff/_action_form.html", {"bound": bound, "in_panel": True})
        # The queue's action links are boosted into the row's panel, and htmx 2.0.10
        # pushes a boosted link's URL even under hx-push-url="false" (htmx#3966); the
        # header wins, so the address bar (reload, Back) stays on the queue.
        return push_url(panel, False)
    return _page(request, "handoff/action.html", {"bound": bound, "lead": lead})


def _answer(
    request: HttpRequest,
    outcome: Outcome,
    bound: BoundAction,
    *,
    lead: Lead,
    handoff: Handoff | None = None,
) -> HttpResponse:
    """htmx: the swapped fragment (400 with the form's errors, 409 with the conflict).
    Without JavaScript: redirect with a message, or the form page again with its errors."""
    status = 200 if outcome.ok else (409 if outcome.conflict else 400)
    notice = str(bound.action.done % {"lead": lead_name(lead)}) if outcome.ok else ""
    if request.htmx:
        return _fragment(
            request,
            bound,
            lead=lead,
            handoff=handoff,
            status=status,
            notice=notice,
            error=outcome.conflict,
        )
    if status == 400:
        return _page(request, "handoff/action.html", {"bound": bound, "lead": lead}, status=400)
    if outcome.conflict:
        messages.error(request, outcome.conflict)
    else:
        messages.success(request, notice)
    lead_url = reverse("handoff:lead", args=[lead.pk])
    next_url = bound.next_url or lead_url
    if next_url.startswith(lead_url) and not _still_visible(request, lead):
        next_url = _landing(request)
    return redirect(next_url)


def _still_visible(request: HttpRequest, lead: Lead) -> bool:
    """A sales rep who rejected an SQL no longer owns it: its page is gone for them."""
    return selectors.lead_is_visible_to(request.user, lead)


def _landing(request: HttpRequest) -> str:
    return reverse("handoff:inbox") if may_use_inbox(request.user) else reverse("home")


def _fragment(
    request: HttpRequest,
    bound: BoundAction,
    *,
    lead: Lead,
    handoff: Handoff | None,
    status: int,
    notice: str,
    error: str,
) -> HttpResponse:
    errors = {bound.name: bound.form} if status == 400 else {}
    if bound.origin == "queue" and handoff is not None:
        row = _queue_row(handoff.pk, request, notice=notice, error=error)
        row.panel = bound if status == 400 else None
        context = {
            "row": row,
            "next_url": bound.next_url,
            "next_query": urlencode({"from": "queue", "next": bound.next_url}),
        }
        return _page(request, "handoff/_queue_row.html", context, status=status)
    if bound.origin == "inbox":
        return _inbox_fragment(request, bound, lead=lead, status=status, notice=notice, error=error)
    if not _still_visible(request, lead):
        messages.success(request, notice)
        return HttpResponse(status=200, headers={"HX-Redirect": _landing(request)})
    fresh = _visible_lead(request, lead.pk)
    context = lead_context(request, fresh, bound=errors, notice=notice, error=error)
    return _page(request, "handoff/_lead_work.html", {**context, "oob": True}, status=status)


def _inbox_fragment(
    request: HttpRequest, bound: BoundAction, *, lead: Lead, status: int, notice: str, error: str
) -> HttpResponse:
    rep = _rep_from_post(request)
    if bound.target.startswith("#accepted-"):
        fresh = get_object_or_404(selectors.leads_with_owner(), pk=lead.pk)
        row = _accepted_row(fresh, request, rep=rep, notice=notice, error=error)
        if status == 400:
            row.actions = [bound if a.name == bound.name else a for a in row.actions]
        return _page(request, "handoff/_accepted_row.html", {"row": row}, status=status)
    handoff = selectors.latest_sales_handoff_of(lead.pk)
    if handoff is None:
        raise Http404(_("This lead is not waiting for a sales answer."))
    card = _inbox_cards([handoff], request, rep=rep)[0]
    card.notice, card.error = notice, error
    if status == 400 and bound.name == "reject":
        card.reject = bound
    context: dict[str, Any] = {"card": card}
    if status == 200 and bound.name == "accept":
        context.update(accepted_oob=True, accepted=_accepted_rows(request, rep=rep))
    return _page(request, "handoff/_inbox_card.html", context, status=status)


# --- notifications ----------------------------------------------------------------------------


@require_GET
def notification_bell(request: HttpRequest) -> HttpResponse:
    """The bell alone, for htmx polling every 30 s (204 when signed out: nothing to swap)."""
    if not request.user.is_authenticated:
        return HttpResponse(status=204)
    return _page(request, "handoff/_bell.html", {})


@login_required
@require_GET
def notifications(request: HttpRequest) -> HttpResponse:
    """The user's recent notifications, newest first, each with a link to its lead."""
    from handoff.notifications import recent_notifications

    items = recent_notifications(request.user, limit=NOTIFICATIONS_SHOWN)
    return _page(request, "handoff/notifications.html", {"items": items})


@login_required
@require_POST
def mark_read(request: HttpRequest) -> HttpResponse:
    """Mark all (or the posted `ids` of) the user's notifications read."""
    from handoff.notifications import mark_notifications_read

    raw = request.POST.getlist("ids")
    if not all(value.isdigit() for value in raw):
        return _bad_request(request, _("Choose notifications from the list."))
    marked = mark_notifications_read(request.user, ids=[int(v) for v in raw] if raw else None)
    text = ngettext(
        "Marked %(count)d notification read.", "Marked %(count)d notifications read.", marked
    )
    messages.success(request, text % {"count": marked})
    return redirect("handoff:notifications")
