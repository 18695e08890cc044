"""The hand-off: MQL → IS queue → SQL → sales answer, every write in one function each.

Every action runs in one transaction, moves the lead's stage through
`transition_lead` (legal edges only, one winner of two concurrent actions) and changes
its hand-off with a conditional UPDATE on the status it read, so a double click, two
tabs or two reps cannot both win. Refusals:

- `InvalidInput` (400): a missing or wrong field, with a message per field;
- `PermissionDenied` (403): the actor may see the lead but not do this;
- `IllegalTransition` (409): the lead's stage or the hand-off's state does not allow it.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any

from django.contrib.auth import get_user_model
from django.core.exceptions import PermissionDenied
from django.db import transaction
from django.db.models import Q
from django.utils import timezone
from django.utils.translation import gettext as _

from handoff.models import (
    ContactAttempt,
    ContactChannel,
    ContactOutcome,
    Handoff,
    HandoffKind,
    HandoffOutcome,
    HandoffStatus,
    LeadNote,
    NotificationKind,
    RejectReason,
    ReturnReason,
    SlaState,
)
from handoff.services.assignment import choose_is_assignees, is_rep_ids, users_in_role
from handoff.services.calendar import calendar_for, get_policy, sla_clock
from handoff.services.stages import IllegalTransition, transition_lead
from leadops.models import Lead, Stage
from leadops.roles import Role, has_role

BANT_KEYS = ("budget", "authority", "need", "timeline")
BANT_MAX_LENGTH = 500
NOTE_MAX_LENGTH = 5000


class InvalidInput(Exception):
    """Bad input for an action: {field: [messages]} (the API answers 400)."""

    def __init__(self, errors: Mapping[str, list[str]]) -> None:
        super().__init__(errors)
        self.errors = dict(errors)


def _notify(kind: str, recipients_by_handoff: Mapping[int, list[int]], **extra: str) -> None:
    from handoff.notifications import notify

    notify(kind, recipients_by_handoff, extra=extra or None)


# --- opening: "a lead became MQL" lands here ----------------------------------------------


def open_is_handoffs(
    reasons: Mapping[int, str], *, actor: Any = None, now: datetime | None = None
) -> list[Handoff]:
    """Open one first-contact hand-off per lead that just became an MQL.

    Called by `mark_leads_mql` in its transaction. Assigns by the team's rule, sets the
    first-contact SLA in business hours, and tells the assignee (or every IS rep when
    nobody could be assigned). A stale hand-off still open for the lead is closed first,
    so the lead has exactly one.
    """
    if not reasons:
        return []
    now = now or timezone.now()
    policy = get_policy()
    clock = sla_clock(
        now, hours=policy.first_contact_sla_hours, policy=policy, calendar=calendar_for(policy)
    )
    _close_open_handoffs(list(reasons), kind=HandoffKind.INSIDE_SALES, now=now)
    leads = list(Lead.objects.filter(pk__in=reasons).order_by("pk"))
    assignees = choose_is_assignees(leads, policy=policy, now=now)
    handoffs = Handoff.objects.bulk_create(
        Handoff(
            lead=lead,
            lead_source=lead.source,
            kind=HandoffKind.INSIDE_SALES,
            assignee_id=assignees[lead.pk],
            opened_at=now,
            due_at=clock.due_at,
            warn_at=clock.warn_at,
            opened_reason=reasons[lead.pk][:300],
            opened_by=actor,
        )
        for lead in leads
    )
    team = is_rep_ids()
    _notify(
        NotificationKind.MQL_ASSIGNED,
        {h.pk: [h.assignee_id] if h.assignee_id else team for h in handoffs},
    )
    return handoffs


def _close_open_handoffs(lead_ids: list[int], *, kind: str, now: datetime) -> int:
    return (
        Handoff.objects.not_done()
        .filter(lead_id__in=lead_ids, kind=kind)
        .update(status=HandoffStatus.DONE, outcome=HandoffOutcome.CLOSED, closed_at=now)
    )


# --- the IS queue ----------------------------------------------------------------------


def _require_is(actor) -> None:
    if not has_role(actor, Role.INSIDE_SALES, Role.MANAGER):
        raise PermissionDenied(_("Only inside sales and managers work the hand-off queue."))


def _open_handoff(handoff_id: int, *, kind: str) -> Handoff:
    handoff = Handoff.objects.select_related("lead").get(pk=handoff_id, kind=kind)
    if handoff.status == HandoffStatus.DONE:
        raise IllegalTransition(_("This hand-off is already closed."))
    return handoff


@transaction.atomic
def claim_handoff(handoff_id: int, *, actor) -> Handoff:
    """The IS rep takes the hand-off: unassigned, or assigned to them and not yet claimed."""
    _require_is(actor)
    handoff = _open_handoff(handoff_id, kind=HandoffKind.INSIDE_SALES)
    claimed = (
        Handoff.objects.filter(pk=handoff_id, status=HandoffStatus.OPEN)
        .filter(Q(assignee__isnull=True) | Q(assignee=actor))
        .update(status=HandoffStatus.CLAIMED, assignee=actor, claimed_at=timezone.now())
    )
    if not claimed:
        holder = handoff.assignee or actor
        raise IllegalTransition(
            _("This hand-off is already taken by %(name)s.") % {"name": _name(holder)}
        )
    handoff.refresh_from_db()
    return handoff


@transaction.atomic
def assign_handoff(handoff_id: int, *, actor, assignee) -> Handoff:
    """Manual (re)assignment to an IS rep; the new assignee is told."""
    _require_is(actor)
    if assignee is None or not assignee.is_active or not has_role(assignee, Role.INSIDE_SALES):
        raise InvalidInput({"assignee": [_("Choose an active inside sales rep.")]})
    handoff = _open_handoff(handoff_id, kind=HandoffKind.INSIDE_SALES)
    moved = Handoff.objects.filter(pk=handoff_id, status=handoff.status).update(
        assignee=assignee, status=HandoffStatus.OPEN, claimed_at=None
    )
    if not moved:
        raise IllegalTransition(_("The hand-off changed meanwhile; reload it and try again."))
    _notify_reassigned(handoff.pk, assignee.pk)
    handoff.refresh_from_db()
    return handoff


def _notify_reassigned(handoff_id: int, assignee_id: int) -> None:
    _notify(NotificationKind.MQL_ASSIGNED, {handoff_id: [assignee_id]})


@transaction.atomic
def log_contact_attempt(
    handoff_id: int, *, actor, channel: str, outcome: str, note: str = ""
) -> ContactAttempt:
    """Record a call, email or meeting; the first one meets the first-contact SLA.

    Logging on an unclaimed hand-off claims it for the actor.
    """
    _require_is(actor)
    errors = _choice_errors(channel=(channel, ContactChannel), outcome=(outcome, ContactOutcome))
    if len(note) > NOTE_MAX_LENGTH:
        errors["note"] = [_("Keep the note under %d characters.") % NOTE_MAX_LENGTH]
    if errors:
        raise InvalidInput(errors)
    handoff = _open_handoff(handoff_id, kind=HandoffKind.INSIDE_SALES)
    _take_if_unclaimed(handoff, actor=actor)
    now = timezone.now()
    _meet_sla(handoff.pk, now=now)
    return ContactAttempt.objects.create(
        lead_id=handoff.lead_id,
        handoff=handoff,
        actor=actor,
        channel=channel,
        outcome=outcome,
        note=note,
    )


def _take_if_unclaimed(handoff: Handoff, *, actor) -> None:
    if handoff.status == HandoffStatus.OPEN and handoff.assignee_id in (None, actor.pk):
        Handoff.objects.filter(pk=handoff.pk, status=HandoffStatus.OPEN).update(
            status=HandoffStatus.CLAIMED, assignee=actor, claimed_at=timezone.now()
        )


def _meet_sla(handoff_id: int, *, now: datetime) -> None:
    """The clock stops at the first response; a breach stays on record as breached."""
    running = Handoff.objects.filter(pk=handoff_id, responded_at__isnull=True)
    # In time: met. Past the deadline (the monitor may not have run yet): breached.
    running.filter(due_at__gte=now).exclude(sla_state=SlaState.BREACHED).update(
        responded_at=now, sla_state=SlaState.MET
    )
    running.update(responded_at=now, sla_state=SlaState.BREACHED)


@transaction.atomic
def save_bant(handoff_id: int, *, actor, bant: Mapping[str, Any]) -> Handoff:
    """Record BANT (budget, authority, need, timeline) on the hand-off as the rep learns it."""
    _require_is(actor)
    clean = clean_bant(bant)
    handoff = _open_handoff(handoff_id, kind=HandoffKind.INSIDE_SALES)
    Handoff.objects.filter(pk=handoff.pk).update(bant={**handoff.bant, **clean})
    handoff.refresh_from_db()
    return handoff


def clean_bant(bant: Any) -> dict[str, str]:
    if bant in (None, ""):
        return {}
    if not isinstance(bant, Mapping):
        raise InvalidInput(
            {"bant": [_("Send BANT as an object with budget, authority, need and timeline.")]}
        )
    errors: dict[str, list[str]] = {}
    unknown = sorted(set(bant) - set(BANT_KEYS))
    if unknown:
        errors["bant"] = [_("Unknown BANT fields: %s.") % ", ".join(map(str, unknown))]
    for key in BANT_KEYS:
        value = bant.get(key, "")
        if not isinstance(value, str):
            errors[f"bant.{key}"] = [_("Write this as text.")]
        elif len(value) > BANT_MAX_LENGTH:
            errors[f"bant.{key}"] = [_("Keep this under %d characters.") % BANT_MAX_LENGTH]
    if errors:
        raise InvalidInput(errors)
    return {key: bant[key].strip() for key in BANT_KEYS if key in bant}


@transaction.atomic
def qualify_lead(
    handoff_id: int, *, actor, sales_rep, bant: Mapping[str, Any] | None = None
) -> Handoff:
    """MQL → SQL: the lead goes to `sales_rep` (its new owner) with the acceptance SLA.

    Closes the first-contact hand-off (qualified, BANT kept; qualifying counts as the
    first contact if none was logged) and opens the sales hand-off, telling the rep.
    """
    _require_is(actor)
    if sales_rep is None or not sales_rep.is_active or not has_role(sales_rep, Role.SALES):
        raise InvalidInput({"sales_rep": [_("Choose an active user in the sales team.")]})
    clean = clean_bant(bant)
    handoff = _open_handoff(handoff_id, kind=HandoffKind.INSIDE_SALES)
    reason = _("Qualified by %(is)s for %(sales)s") % {
        "is": _name(actor),
        "sales": _name(sales_rep),
    }
    transition_lead(handoff.lead_id, to_stage=Stage.SQL, actor=actor, reason=reason)
    now = timezone.now()
    _meet_sla(handoff.pk, now=now)
    handoff.bant = {**handoff.bant, **clean}
    _finish(handoff, outcome=HandoffOutcome.QUALIFIED, now=now, bant=handoff.bant)
    Lead.objects.filter(pk=handoff.lead_id).update(owner=sales_rep, updated_at=now)
    return _open_sales_handoff(handoff, sales_rep=sales_rep, actor=actor, now=now)


def _open_sales_handoff(is_handoff: Handoff, *, sales_rep, actor, now: datetime) -> Handoff:
    policy = get_policy()
    clock = sla_clock(
        now, hours=policy.acceptance_sla_hours, policy=policy, calendar=calendar_for(policy)
    )
    _close_open_handoffs([is_handoff.lead_id], kind=HandoffKind.SALES, now=now)
    sales = Handoff.objects.create(
        lead_id=is_handoff.lead_id,
        lead_source=is_handoff.lead_source,
        kind=HandoffKind.SALES,
        status=HandoffStatus.CLAIMED,
        assignee=sales_rep,
        opened_at=now,
        claimed_at=now,
        due_at=clock.due_at,
        warn_at=clock.warn_at,
        bant=is_handoff.bant,
        opened_reason=_("Qualified by %s") % _name(actor),
        opened_by=actor,
    )
    _notify(NotificationKind.SQL_ASSIGNED, {sales.pk: [sales_rep.pk]})
    return sales


def _finish(handoff: Handoff, *, outcome: str, now: datetime, **fields: Any) -> None:
    done = Handoff.objects.filter(pk=handoff.pk, status=handoff.status).update(
        status=HandoffStatus.DONE, outcome=outcome, closed_at=now, **fields
    )
    if not done:
        raise IllegalTransition(_("The hand-off changed meanwhile; reload it and try again."))


@transaction.atomic
def return_to_nurturing(handoff_id: int, *, actor, reason: str, comment: str = "") -> Handoff:
    """MQL → nurturing: not ready yet. The behaviour score resets, so the lead must earn
    its way back to MQL."""
    _require_is(actor)
    _check_reason(reason, ReturnReason, comment=comment, comment_required=False)
    handoff = _open_handoff(handoff_id, kind=HandoffKind.INSIDE_SALES)
    label = _reason_text(ReturnReason(reason).label, comment)
    transition_lead(handoff.lead_id, to_stage=Stage.NURTURING, actor=actor, reason=label)
    now = timezone.now()
    _finish(handoff, outcome=HandoffOutcome.RETURNED, now=now, reason=reason, comment=comment)
    _reset_behavior(handoff.lead_id, now=now)
    _enroll_returned(handoff.lead_id)
    handoff.refresh_from_db()
    return handoff


@transaction.atomic
def disqualify_lead(handoff_id: int, *, actor, reason: str) -> Handoff:
    """MQL → disqualified (対象外): not a prospect at all; the reason is required."""
    _require_is(actor)
    if not reason.strip():
        raise InvalidInput({"reason": [_("Say why this lead is disqualified.")]})
    if len(reason) > 200:
        raise InvalidInput({"reason": [_("Keep the reason under 200 characters.")]})
    handoff = _open_handoff(handoff_id, kind=HandoffKind.INSIDE_SALES)
    transition_lead(handoff.lead_id, to_stage=Stage.DISQUALIFIED, actor=actor, reason=reason)
    _finish(handoff, outcome=HandoffOutcome.DISQUALIFIED, now=timezone.now(), reason=reason)
    handoff.refresh_from_db()
    return handoff


# --- the sales answer --------------------------------------------------------------------


def _sales_handoff_of(lead_id: int, *, actor) -> Handoff:
    handoff = (
        Handoff.objects.for_sales()
        .not_done()
        .filter(lead_id=lead_id)
        .select_related("lead")
        .first()
    )
    if handoff is None:
        raise IllegalTransition(_("This lead is not waiting for a sales answer."))
    if handoff.assignee_id != actor.pk:
        raise PermissionDenied(_("Only the sales rep this lead was handed to can answer it."))
    return handoff


@transaction.atomic
def accept_sql(lead_id: int, *, actor) -> Handoff:
    """SQL → SAL: the sales rep takes the lead on."""
    handoff = _sales_handoff_of(lead_id, actor=actor)
    transition_lead(lead_id, to_stage=Stage.SAL, actor=actor, reason=_("Accepted by sales"))
    now = timezone.now()
    _meet_sla(handoff.pk, now=now)
    _finish(handoff, outcome=HandoffOutcome.ACCEPTED, now=now)
    handoff.refresh_from_db()
    return handoff


@transaction.atomic
def reject_sql(lead_id: int, *, actor, reason: str, comment: str) -> Handoff:
    """SQL → nurturing with a reason code and comment, both required.

    The lead loses its owner and its behaviour score (it must earn its way back), and
    the IS rep who qualified it and the marketers are told why: the feedback loop.
    """
    _check_reason(reason, RejectReason, comment=comment, comment_required=True)
    handoff = _sales_handoff_of(lead_id, actor=actor)
    label = _reason_text(RejectReason(reason).label, comment)
    transition_lead(lead_id, to_stage=Stage.NURTURING, actor=actor, reason=label)
    now = timezone.now()
    _meet_sla(handoff.pk, now=now)
    _finish(handoff, outcome=HandoffOutcome.REJECTED, now=now, reason=reason, comment=comment)
    Lead.objects.filter(pk=lead_id).update(owner=None, updated_at=now)
    _reset_behavior(lead_id, now=now)
    _enroll_returned(lead_id)
    recipients = {*_qualifiers_of(lead_id), *users_in_role(Role.MARKETER)}
    _notify(
        NotificationKind.SQL_REJECTED,
        {handoff.pk: sorted(recipients)},
        reason=str(RejectReason(reason).label),
        comment=comment,
    )
    handoff.refresh_from_db()
    return handoff


def _qualifiers_of(lead_id: int) -> list[int]:
    last = (
        Handoff.objects.for_inside_sales()
        .filter(lead_id=lead_id, outcome=HandoffOutcome.QUALIFIED)
        .order_by("-closed_at")
        .values_list("assignee_id", flat=True)
        .first()
    )
    return [last] if last else []


def _require_owner(lead_id: int, *, actor) -> None:
    owner = Lead.objects.values_list("owner_id", flat=True).get(pk=lead_id)
    if owner != actor.pk and not has_role(actor, Role.MANAGER):
        raise PermissionDenied(_("Only the lead's owner or a manager can do this."))


@transaction.atomic
def open_opportunity(lead_id: int, *, actor, note: str = "") -> None:
    """SAL → opportunity (商談化)."""
    _require_owner(lead_id, actor=actor)
    transition_lead(lead_id, to_stage=Stage.OPPORTUNITY, actor=actor, reason=note)


@transaction.atomic
def close_opportunity(lead_id: int, *, actor, won: bool, note: str = "") -> None:
    """Opportunity → won or lost."""
    _require_owner(lead_id, actor=actor)
    to_stage = Stage.WON if won else Stage.LOST
    transition_lead(lead_id, to_stage=to_stage, actor=actor, reason=note)


# --- notes and shared checks ------------------------------------------------------------


@transaction.atomic
def add_lead_note(lead_id: int, *, author, body: str) -> LeadNote:
    """A free note on the lead's timeline (IS, sales on their own leads, managers)."""
    if has_role(author, Role.MARKETER) and not has_role(
        author, Role.INSIDE_SALES, Role.SALES, Role.MANAGER
    ):
        raise PermissionDenied(_("Marketers read leads; notes are written by IS and sales."))
    body = body.strip()
    if not body:
        raise InvalidInput({"body": [_("Write the note first.")]})
    if len(body) > NOTE_MAX_LENGTH:
        raise InvalidInput({"body": [_("Keep the note under %d characters.") % NOTE_MAX_LENGTH]})
    return LeadNote.objects.create(lead_id=lead_id, author=author, body=body)


def _check_reason(reason: str, codes, *, comment: str, comment_required: bool) -> None:
    errors: dict[str, list[str]] = {}
    if not reason:
        errors["reason"] = [_("Choose a reason.")]
    elif reason not in codes.values:
        errors["reason"] = [_("Choose one of: %s.") % ", ".join(codes.values)]
    if comment_required and not (comment or "").strip():
        errors["comment"] = [_("Add a comment so marketing knows what to change.")]
    elif len(comment or "") > NOTE_MAX_LENGTH:
        errors["comment"] = [_("Keep the comment under %d characters.") % NOTE_MAX_LENGTH]
    if errors:
        raise InvalidInput(errors)


def _choice_errors(**pairs: tuple[str, Any]) -> dict[str, list[str]]:
    return {
        name: [_("Choose one of: %s.") % ", ".join(choices.values)]
        for name, (value, choices) in pairs.items()
        if value not in choices.values
    }


def _reason_text(label: Any, comment: str) -> str:
    return f"{label}: {comment.strip()}" if comment.strip() else str(label)


def _reset_behavior(lead_id: int, *, now: datetime) -> None:
    from scoring.services import reset_behavior_score

    reset_behavior_score(lead_id, now=now)


def _enroll_returned(lead_id: int) -> None:
    """Back in nurturing: the tracks for returned leads take it from here."""
    from nurturing.enrollment import enroll_returned_lead

    enroll_returned_lead(lead_id)


def _name(user) -> str:
    return user.get_full_name() or user.get_username()


def user_named(username: str | None):
    """The active user with this username, or None."""
    if not username:
        return None
    return get_user_model().objects.filter(username=username, is_active=True).first()
