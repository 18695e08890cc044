"""Reads behind the queue, the inbox and the lead page: querysets, pages and counts.

Pages (handoff/views.py) call these and hand the rows to handoff/presenters.py; nothing
here writes.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime
from typing import Any

from django.core.cache import cache
from django.core.exceptions import ValidationError
from django.core.validators import validate_email
from django.db.models import Count, Q, QuerySet

from handoff.forms import sales_reps
from handoff.models import Handoff, SlaState
from leadops.models import Account, Lead, Stage
from leadops.roles import sees_only_own_leads
from scoring.models import LeadScoreState
from scoring.services.explain import breakdown_items, rule_catalog

TOP_REASONS = 3
INBOX_LIMIT = 100

# --- the IS queue -----------------------------------------------------------------------


# What a queue row shows, and nothing more: a page of rows of five joined models.
QUEUE_ROW_FIELDS = (
    *("kind", "status", "lead", "assignee", "due_at", "warn_at", "sla_state"),
    *("responded_at", "outcome"),
    *("lead__email", "lead__first_name", "lead__last_name", "lead__account", "lead__score"),
    *("lead__temperature", "lead__last_activity_at"),
    *("lead__account__name", "lead__score_state__breakdown"),
    *("assignee__username", "assignee__first_name", "assignee__last_name"),
)


def is_handoff_rows() -> QuerySet[Handoff]:
    """First-contact hand-offs with what their queue rows show (done ones included: a
    row closed by an action is shown once more, with its outcome)."""
    related = ("lead", "lead__account", "lead__score_state", "assignee")
    return Handoff.objects.for_inside_sales().select_related(*related).only(*QUEUE_ROW_FIELDS)


def open_is_handoffs() -> QuerySet[Handoff]:
    return is_handoff_rows().not_done()


def in_queue_view(view: str, user) -> Q:
    if view == "mine":
        return Q(assignee=user)
    if view == "unassigned":
        return Q(assignee__isnull=True)
    return Q()


def matching_search(text: str) -> Q:
    """A whole email address finds its lead through the unique index (emails are stored
    lower-case). Anything else is a substring of the lead's name or email, or of its
    company's name: two id subqueries, so trigram indexes on those columns serve it
    (without them it reads the lead table once)."""
    if "@" in text and _is_email(text):
        return Q(lead__email=text.lower())
    named = Q(email__icontains=text) | Q(last_name__icontains=text)
    named |= Q(first_name__icontains=text)
    companies = Account.objects.filter(name__icontains=text).values("pk")
    return Q(lead__in=Lead.objects.filter(named).values("pk")) | Q(
        lead__in=Lead.objects.filter(account__in=companies).values("pk")
    )


def _is_email(text: str) -> bool:
    try:
        validate_email(text)
    except ValidationError:
        return False
    return True


def after_cursor(after: tuple[datetime, int]) -> Q:
    # The `>=` bound gives the index scan its start; the OR only breaks the tie on due_at.
    due, pk = after
    return Q(due_at__gte=due) & (Q(due_at__gt=due) | Q(pk__gt=pk))


def queue_page(
    user, *, view: str, search: str, after: tuple[datetime, int] | None, size: int
) -> tuple[list[Handoff], bool]:
    """One keyset page of `size` open first-contact hand-offs by SLA due time, and
    whether another page follows."""
    handoffs = open_is_handoffs().filter(in_queue_view(view, user))
    if search:
        handoffs = handoffs.filter(matching_search(search))
    if after:
        handoffs = handoffs.filter(after_cursor(after))
    page = list(handoffs.order_by("due_at", "pk")[: size + 1])
    return page[:size], len(page) > size


TEAM_COUNTS_CACHE_KEY = "handoff:queue-team-sla:v1"
# Warning / breached over the whole team reads every open hand-off (50k in a big team):
# the team shares one count for half a minute. Mine and unassigned ride the assignee
# index and stay live.
TEAM_COUNTS_CACHE_SECONDS = 30


def _sla_counts(scope: Q, *, now: datetime) -> dict[str, int]:
    """{total, warning, breached} of the open first-contact hand-offs in `scope`, by the
    live SLA state the rows show (not waiting for the monitor's next run). One query,
    one scope: scopes joined by OR (mine or unassigned) defeat the partial index on open
    hand-offs, and with a million closed ones the planner then scans the table."""
    warning = Q(responded_at__isnull=True, warn_at__lte=now, due_at__gt=now)
    breached = Q(responded_at__isnull=True, due_at__lte=now) | Q(sla_state=SlaState.BREACHED)
    return (
        Handoff.objects.for_inside_sales()
        .not_done()
        .filter(scope)
        .aggregate(
            total=Count("pk"),
            warning=Count("pk", filter=warning),
            breached=Count("pk", filter=breached),
        )
    )


def queue_counts(user, *, view: str, now: datetime) -> dict[str, Any]:
    """The numbers on top of the queue: my open hand-offs, the unassigned ones, and the
    warning / breached ones of the chosen view. Mine and unassigned ride the assignee
    index, a query each; the whole team's are cached."""
    counts = {
        "mine": _sla_counts(Q(assignee=user), now=now),
        "unassigned": _sla_counts(Q(assignee__isnull=True), now=now),
    }
    scoped = counts.get(view)
    if scoped is None:
        scoped = cache.get(TEAM_COUNTS_CACHE_KEY)
        if scoped is None:
            scoped = {**_sla_counts(Q(), now=now), "counted_at": now}
            cache.set(TEAM_COUNTS_CACHE_KEY, scoped, TEAM_COUNTS_CACHE_SECONDS)
    return {
        "mine": counts["mine"]["total"],
        "unassigned": counts["unassigned"]["total"],
        "warning": scoped["warning"],
        "breached": scoped["breached"],
        "counted_at": scoped.get("counted_at"),
    }


def handoffs_workable_by(user) -> QuerySet[Handoff]:
    """First-contact hand-offs an IS action may target (a sales rep: only their leads')."""
    handoffs = Handoff.objects.for_inside_sales().select_related("lead", "lead__account")
    if sees_only_own_leads(user):
        handoffs = handoffs.filter(lead__owner=user)
    return handoffs


# --- score reasons ----------------------------------------------------------------------


def top_reasons(leads: Iterable[Lead], *, limit: int = TOP_REASONS) -> dict[int, list[dict]]:
    """{lead id: its `limit` biggest positive score reasons} for leads loaded with their
    score state (select_related): one catalogue lookup for all, usually cached."""
    breakdowns = {lead.pk: _breakdown_of(lead) for lead in leads}
    attribute_ids = {pk for b in breakdowns.values() for pk in b.get("a", [])}
    behavior_ids = {row[0] for b in breakdowns.values() for row in b.get("b", [])}
    catalog = rule_catalog(attribute_ids, behavior_ids)
    reasons = {}
    for lead_id, breakdown in breakdowns.items():
        items = [i for i in breakdown_items(breakdown, catalog) if i["points"] > 0]
        reasons[lead_id] = sorted(items, key=lambda i: -i["points"])[:limit]
    return reasons


def _breakdown_of(lead: Lead) -> dict:
    try:
        return lead.score_state.breakdown or {}
    except LeadScoreState.DoesNotExist:
        return {}


# --- the sales inbox --------------------------------------------------------------------


def active_sales_rep_named(username: str):
    """The active sales rep with this username, or None."""
    return sales_reps().filter(username=username).first()


def sales_handoffs() -> QuerySet[Handoff]:
    return Handoff.objects.for_sales().select_related(
        "lead", "lead__account", "lead__score_state", "assignee", "opened_by"
    )


def handoffs_awaiting_sales_answer(rep) -> list[Handoff]:
    """The SQLs waiting for `rep`'s answer (None: every rep's), by acceptance due time."""
    waiting = sales_handoffs().not_done()
    if rep is not None:
        waiting = waiting.filter(assignee=rep)
    return list(waiting.order_by("due_at", "pk")[:INBOX_LIMIT])


def latest_sales_handoff_of(lead_id: int) -> Handoff | None:
    return sales_handoffs().filter(lead_id=lead_id).order_by("-opened_at", "-pk").first()


def accepted_leads(rep) -> QuerySet[Lead]:
    """`rep`'s accepted leads and opportunities (None: every owned one), latest first."""
    leads = Lead.objects.filter(stage__in=[Stage.SAL, Stage.OPPORTUNITY]).select_related("account")
    leads = leads.filter(owner=rep) if rep is not None else leads.filter(owner__isnull=False)
    return leads.select_related("owner").order_by("-updated_at", "-pk")[:INBOX_LIMIT]


# --- the lead page ----------------------------------------------------------------------


def leads_visible_to(user) -> QuerySet[Lead]:
    return Lead.objects.visible_to(user).select_related("account", "owner")


def lead_is_visible_to(user, lead: Lead) -> bool:
    return Lead.objects.visible_to(user).filter(pk=lead.pk).exists()


def leads_with_owner() -> QuerySet[Lead]:
    return Lead.objects.select_related("account", "owner")


def open_handoffs_of(lead: Lead) -> list[Handoff]:
    """The lead's open hand-offs with who holds and who opened them, oldest first."""
    return list(
        lead.handoffs.not_done().select_related("assignee", "opened_by").order_by("opened_at")
    )
