"""Forms of the queue, inbox and lead pages: one per action, validated again by the service.

The forms give the browser its widgets and first checks (required fields, choices,
lengths); the services stay the authority, and their `InvalidInput` errors come back
onto the same form with `add_service_errors`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from django import forms
from django.contrib.auth import get_user_model
from django.urls import reverse
from django.utils.translation import gettext_lazy as _
from django.utils.translation import pgettext_lazy

from handoff.models import ContactChannel, ContactOutcome, Handoff, RejectReason, ReturnReason
from handoff.services import (
    BANT_KEYS,
    accept_sql,
    add_lead_note,
    claim_handoff,
    close_opportunity,
    disqualify_lead,
    log_contact_attempt,
    open_opportunity,
    qualify_lead,
    reject_sql,
    return_to_nurturing,
)
from handoff.services import save_bant as save_bant_service
from handoff.services.handoffs import BANT_MAX_LENGTH, NOTE_MAX_LENGTH
from leadops.roles import Role

EMPTY_CHOICE = [("", _("Choose…"))]


def add_service_errors(form: forms.Form, errors: Mapping[str, list[str]]) -> None:
    """Put a service's {field: [messages]} on the form, next to the field it names.

    "bant.budget" lands on "budget"; a field the form does not have becomes a
    form-wide error, so no message is lost.
    """
    for key, messages in errors.items():
        field = key.split(".", 1)[-1]
        for message in messages:
            form.add_error(field if field in form.fields else None, message)


def _text(label: Any, *, max_length: int, required: bool = False, rows: int = 0) -> forms.Field:
    widget = forms.Textarea(attrs={"rows": rows}) if rows else forms.TextInput()
    return forms.CharField(label=label, max_length=max_length, required=required, widget=widget)


class ClaimForm(forms.Form):
    """Claiming takes no input; the form exists so every action has one."""


class ContactAttemptForm(forms.Form):
    channel = forms.ChoiceField(label=_("Channel"), choices=EMPTY_CHOICE + ContactChannel.choices)
    outcome = forms.ChoiceField(label=_("Outcome"), choices=EMPTY_CHOICE + ContactOutcome.choices)
    note = _text(_("Note"), max_length=NOTE_MAX_LENGTH, rows=3)


class BantForm(forms.Form):
    budget = _text(_("Budget"), max_length=BANT_MAX_LENGTH)
    authority = _text(_("Authority"), max_length=BANT_MAX_LENGTH)
    need = _text(_("Need"), max_length=BANT_MAX_LENGTH)
    timeline = _text(pgettext_lazy("BANT", "Timeline"), max_length=BANT_MAX_LENGTH)

    def bant(self) -> dict[str, str]:
        return {key: self.cleaned_data.get(key, "") for key in BANT_KEYS}


def sales_reps():
    """Active users of the sales team, by name: the reps an SQL can go to."""
    users = get_user_model().objects.filter(is_active=True, groups__name=Role.SALES)
    return users.distinct().order_by("last_name", "first_name", "username")


class SalesRepChoiceField(forms.ModelChoiceField):
    def label_from_instance(self, obj) -> str:
        return obj.get_full_name() or obj.get_username()


class QualifyForm(BantForm):
    """MQL → SQL: the sales rep who gets the lead, and BANT as IS learned it."""

    sales_rep = SalesRepChoiceField(
        label=_("Sales rep"),
        queryset=get_user_model().objects.none(),
        empty_label=_("Choose a sales rep…"),
        error_messages={
            "required": _("Choose the sales rep who gets this lead."),
            "invalid_choice": _("Choose an active user in the sales team."),
        },
    )
    field_order = ["sales_rep", *BANT_KEYS]

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.fields["sales_rep"].queryset = sales_reps()


class ReturnForm(forms.Form):
    """MQL → nurturing: why it is not ready (a code) and what IS learned (a comment)."""

    reason = forms.ChoiceField(
        label=_("Reason"),
        choices=EMPTY_CHOICE + ReturnReason.choices,
        error_messages={"required": _("Choose a reason.")},
    )
    comment = _text(_("Comment"), max_length=NOTE_MAX_LENGTH, rows=2)


class DisqualifyForm(forms.Form):
    reason = forms.CharField(
        label=_("Why is this lead not a prospect?"),
        max_length=200,
        error_messages={"required": _("Say why this lead is disqualified.")},
    )


class RejectForm(forms.Form):
    """A sales rep's "no" to an SQL: a reason code and a comment, both required."""

    reason = forms.ChoiceField(
        label=_("Reason"),
        choices=EMPTY_CHOICE + RejectReason.choices,
        error_messages={"required": _("Choose a reason.")},
    )
    comment = forms.CharField(
        label=_("Comment for marketing and IS"),
        max_length=NOTE_MAX_LENGTH,
        widget=forms.Textarea(attrs={"rows": 3}),
        error_messages={"required": _("Add a comment so marketing knows what to change.")},
    )


class AcceptForm(forms.Form):
    """Accepting takes no input."""


class StageNoteForm(forms.Form):
    """Opportunity, won, lost: an optional note for the timeline."""

    note = _text(_("Note (optional)"), max_length=NOTE_MAX_LENGTH)


class NoteForm(forms.Form):
    body = forms.CharField(
        label=_("Note"),
        max_length=NOTE_MAX_LENGTH,
        widget=forms.Textarea(attrs={"rows": 3}),
        error_messages={"required": _("Write the note first.")},
    )


# --- actions: one form and one service call each, and their forms as placed on a page ---


@dataclass(frozen=True)
class Action:
    name: str
    form_class: type[forms.Form]
    run: Callable[[int, Any, forms.Form], Any]
    title: Any
    submit: Any
    done: Any


def _data(form: forms.Form, key: str) -> Any:
    return form.cleaned_data.get(key, "")


HANDOFF_ACTIONS = {
    action.name: action
    for action in [
        Action(
            "claim",
            ClaimForm,
            lambda pk, user, form: claim_handoff(pk, actor=user),
            _("Claim"),
            _("Claim"),
            _("Claimed: %(lead)s is yours."),
        ),
        Action(
            "contact",
            ContactAttemptForm,
            lambda pk, user, form: log_contact_attempt(
                pk,
                actor=user,
                channel=_data(form, "channel"),
                outcome=_data(form, "outcome"),
                note=_data(form, "note"),
            ),
            _("Log a contact attempt"),
            _("Log contact"),
            _("Contact attempt logged for %(lead)s."),
        ),
        Action(
            "bant",
            BantForm,
            lambda pk, user, form: save_bant_service(pk, actor=user, bant=form.bant()),
            _("BANT"),
            _("Save BANT"),
            _("BANT saved for %(lead)s."),
        ),
        Action(
            "qualify",
            QualifyForm,
            lambda pk, user, form: qualify_lead(
                pk, actor=user, sales_rep=_data(form, "sales_rep"), bant=form.bant()
            ),
            _("Qualify to SQL"),
            _("Qualify and hand to sales"),
            _("%(lead)s is now an SQL, handed to sales."),
        ),
        Action(
            "return",
            ReturnForm,
            lambda pk, user, form: return_to_nurturing(
                pk, actor=user, reason=_data(form, "reason"), comment=_data(form, "comment")
            ),
            _("Return to nurturing"),
            _("Return to nurturing"),
            _("%(lead)s went back to nurturing."),
        ),
        Action(
            "disqualify",
            DisqualifyForm,
            lambda pk, user, form: disqualify_lead(pk, actor=user, reason=_data(form, "reason")),
            _("Disqualify"),
            _("Disqualify"),
            _("%(lead)s is disqualified."),
        ),
    ]
}

LEAD_ACTIONS = {
    action.name: action
    for action in [
        Action(
            "accept",
            AcceptForm,
            lambda pk, user, form: accept_sql(pk, actor=user),
            _("Accept"),
            _("Accept (SAL)"),
            _("Accepted: %(lead)s is now a SAL."),
        ),
        Action(
            "reject",
            RejectForm,
            lambda pk, user, form: reject_sql(
                pk, actor=user, reason=_data(form, "reason"), comment=_data(form, "comment")
            ),
            _("Reject"),
            _("Reject"),
            _("Rejected: %(lead)s went back to nurturing."),
        ),
        Action(
            "opportunity",
            StageNoteForm,
            lambda pk, user, form: open_opportunity(pk, actor=user, note=_data(form, "note")),
            _("Open an opportunity"),
            _("→ Opportunity"),
            _("%(lead)s is now an opportunity."),
        ),
        Action(
            "won",
            StageNoteForm,
            lambda pk, user, form: close_opportunity(
                pk, actor=user, won=True, note=_data(form, "note")
            ),
            _("Won"),
            _("→ Won"),
            _("%(lead)s is won."),
        ),
        Action(
            "lost",
            StageNoteForm,
            lambda pk, user, form: close_opportunity(
                pk, actor=user, won=False, note=_data(form, "note")
            ),
            _("Lost"),
            _("→ Lost"),
            _("%(lead)s is lost."),
        ),
        Action(
            "note",
            NoteForm,
            lambda pk, user, form: add_lead_note(pk, author=user, body=_data(form, "body")),
            _("Add a note"),
            _("Add note"),
            _("Note added to %(lead)s."),
        ),
    ]
}


@dataclass
class BoundAction:
    """An action's form as placed on a page: where it posts, what it swaps, where to go."""

    action: Action
    url: str
    form: forms.Form
    origin: str
    target: str
    next_url: str
    hidden: dict[str, str] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return self.action.name

    @property
    def has_errors(self) -> bool:
        return self.form.is_bound and bool(self.form.errors)


def form_id(origin: str, target_id: int, name: str) -> str:
    """`auto_id` of an action's form: a page may hold many forms with the same fields."""
    return f"{origin}-{target_id}-{name}-%s"


def _initial_form(action: Action, *, auto_id: str, handoff: Handoff | None = None) -> forms.Form:
    initial = dict(handoff.bant) if handoff is not None and handoff.bant else {}
    return action.form_class(initial=initial, auto_id=auto_id)


def bind_handoff_action(
    name: str,
    handoff: Handoff,
    *,
    origin: str,
    target: str,
    next_url: str,
    form: forms.Form | None = None,
) -> BoundAction:
    action = HANDOFF_ACTIONS[name]
    return BoundAction(
        action=action,
        url=reverse("handoff:handoff_action", args=[handoff.pk, name]),
        form=form
        or _initial_form(action, auto_id=form_id(origin, handoff.pk, name), handoff=handoff),
        origin=origin,
        target=target,
        next_url=next_url,
    )


def bind_lead_action(
    name: str,
    lead_id: int,
    *,
    origin: str,
    target: str,
    next_url: str,
    form: forms.Form | None = None,
    hidden: dict[str, str] | None = None,
) -> BoundAction:
    action = LEAD_ACTIONS[name]
    return BoundAction(
        action=action,
        url=reverse("handoff:lead_action", args=[lead_id, name]),
        form=form or _initial_form(action, auto_id=form_id(origin, lead_id, name)),
        origin=origin,
        target=target,
        next_url=next_url,
        hidden=hidden or {},
    )
