"""What the queue, inbox and lead pages show, worked out before the template: SLA
countdowns, queue rows, inbox cards, timeline entries and their labels.

Rows are built from what handoff/selectors.py read; nothing here queries beyond the
policy, the score catalogue and the action forms' choices.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Callable
from dataclasses import InitVar, dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from django.urls import reverse
from django.utils import formats, timezone
from django.utils.dateparse import parse_datetime
from django.utils.timesince import timesince
from django.utils.translation import gettext as _

from handoff.forms import BantForm, BoundAction, bind_lead_action
from handoff.models import (
    ContactChannel,
    ContactOutcome,
    Handoff,
    HandoffOutcome,
    HandoffStatus,
    SlaState,
)
from handoff.selectors import top_reasons
from handoff.services import BANT_KEYS, calendar_for, get_policy, sla_state_at
from handoff.services.calendar import BusinessCalendar
from leadops.models import EventType, Lead, Stage, Temperature

# --- SLA and countdown: what every row and card shows ----------------------------------


SLA_MARKS = {"breached": "✖", "warning": "▲", "met": "✓", "on_track": "●"}


@dataclass(frozen=True)
class SlaView:
    """A hand-off's SLA as pages show it: live state and the business time left or over."""

    state: str
    label: str
    due_at: datetime
    countdown: str
    overdue: bool
    responded_at: datetime | None

    @property
    def mark(self) -> str:
        return SLA_MARKS.get(self.state, "")

    @property
    def when(self) -> str:
        """The due time, or the time of the answer once the clock stopped."""
        if self.responded_at is not None:
            return _("answered %(time)s") % {"time": short_datetime(self.responded_at)}
        return _("due %(time)s") % {"time": short_datetime(self.due_at)}


def short_datetime(moment: datetime) -> str:
    return formats.date_format(timezone.localtime(moment), "SHORT_DATETIME_FORMAT")


def format_business_time(duration: timedelta) -> str:
    minutes = int(duration.total_seconds() // 60)
    hours, minutes = divmod(minutes, 60)
    if hours:
        return _("%(hours)dh %(minutes)02dm") % {"hours": hours, "minutes": minutes}
    return _("%(minutes)dm") % {"minutes": minutes}


def sla_view(
    handoff: Handoff,
    *,
    now: datetime,
    calendar: BusinessCalendar,
    labels: dict[str, str] | None = None,
) -> SlaView:
    """The countdown is in business time (the team's working hours), like the SLA itself."""
    state = sla_state_at(handoff, now)
    running = handoff.responded_at is None and handoff.status != HandoffStatus.DONE
    overdue = running and now >= handoff.due_at
    if not running:
        countdown = ""
    elif overdue:
        over = calendar.business_time_between(handoff.due_at, now)
        countdown = _("%(time)s overdue") % {"time": format_business_time(over)}
    else:
        left = calendar.business_time_between(now, handoff.due_at)
        countdown = _("%(time)s left") % {"time": format_business_time(left)}
    return SlaView(
        state=state,
        label=labels[state] if labels else str(SlaState(state).label),
        due_at=handoff.due_at,
        countdown=countdown,
        overdue=overdue,
        responded_at=handoff.responded_at,
    )


def format_after(handoff: Handoff) -> str:
    return f"{handoff.due_at.astimezone(UTC).isoformat()},{handoff.pk}"


QUEUE_ROW_ACTIONS = ("claim", "contact", "bant", "qualify", "return", "disqualify")


@dataclass
class QueueRow:
    """One queue row, its text worked out here: the page renders a page of them, and a
    flat row costs the template a fraction of the lookups."""

    handoff: Handoff
    sla: SlaView
    reasons: list[dict]
    claimable: bool
    can_act: bool
    urls: dict[str, str]
    labels: InitVar[dict[str, dict[str, str]]]
    panel: BoundAction | None = None
    notice: str = ""
    error: str = ""

    def __post_init__(self, labels: dict[str, dict[str, str]]) -> None:
        h, lead = self.handoff, self.handoff.lead
        self.dom_id = f"handoff-{h.pk}"
        self.done = h.status == HandoffStatus.DONE
        self.name = lead_name(lead)
        self.company = lead.company
        self.assignee = user_name(h.assignee) if h.assignee_id else ""
        self.outcome = labels["outcome"].get(h.outcome, h.outcome) if self.done else ""
        self.status = labels["status"].get(h.status, h.status)
        self.temperature = labels["temperature"].get(lead.temperature, lead.temperature)
        self.last_activity = lead.last_activity_at
        self.last_activity_ago = ""
        if lead.last_activity_at is not None:
            ago = timesince(lead.last_activity_at, timezone.now())
            self.last_activity_ago = _("%(time)s ago") % {"time": ago}

    @property
    def lead(self) -> Lead:
        return self.handoff.lead


def lead_name(lead: Lead) -> str:
    return f"{lead.last_name} {lead.first_name}".strip() or lead.email


def user_name(user) -> str:
    return user.get_full_name() or user.get_username()


def _url_maker(name: str, *args: Any) -> Callable[..., str]:
    """reverse() once for a page of rows, then a function filling in the id (a row has
    seven links)."""
    template = reverse(name, args=[987654321, *args])
    return lambda pk: template.replace("987654321", str(pk), 1)


def choice_labels() -> dict[str, dict[str, str]]:
    """The choice labels a page of rows shows, translated once (get_FOO_display() per
    row and field costs more than the rest of the row)."""
    return {
        name: {value: str(label) for value, label in choices.choices}
        for name, choices in (
            ("outcome", HandoffOutcome),
            ("status", HandoffStatus),
            ("temperature", Temperature),
            ("sla", SlaState),
        )
    }


def queue_rows(handoffs: list[Handoff], *, user, can_act: bool, now: datetime) -> list[QueueRow]:
    """A page of queue rows; `can_act` is whether the viewer may work the queue."""
    calendar = calendar_for(get_policy())
    reasons = top_reasons([h.lead for h in handoffs])
    makers = {n: _url_maker("handoff:handoff_action", n) for n in QUEUE_ROW_ACTIONS}
    lead_url = _url_maker("handoff:lead")
    labels = choice_labels()
    return [
        QueueRow(
            handoff=h,
            sla=sla_view(h, now=now, calendar=calendar, labels=labels["sla"]),
            labels=labels,
            reasons=reasons.get(h.lead_id, []),
            claimable=can_act
            and h.status == HandoffStatus.OPEN
            and h.assignee_id in (None, user.pk),
            can_act=can_act,
            urls={"lead": lead_url(h.lead_id)} | {n: make(h.pk) for n, make in makers.items()},
        )
        for h in handoffs
    ]


# --- the sales inbox ----------------------------------------------------------------------


def bant_items(bant: dict[str, str]) -> list[tuple[str, str]]:
    """[(label, value)] of the filled BANT fields, in B-A-N-T order."""
    fields = BantForm.base_fields
    return [(str(fields[key].label), bant[key]) for key in BANT_KEYS if bant.get(key)]


@dataclass
class InboxCard:
    handoff: Handoff
    sla: SlaView
    reasons: list[dict]
    can_answer: bool
    reject: BoundAction | None = None
    accept: BoundAction | None = None
    notice: str = ""
    error: str = ""

    @property
    def lead(self) -> Lead:
        return self.handoff.lead

    @property
    def done(self) -> bool:
        return self.handoff.status == HandoffStatus.DONE

    @property
    def bant(self) -> list[tuple[str, str]]:
        return bant_items(self.handoff.bant)


@dataclass
class AcceptedRow:
    lead: Lead
    actions: list[BoundAction]
    notice: str = ""
    error: str = ""


def inbox_hidden(rep) -> dict[str, str]:
    return {"rep": rep.get_username()} if rep is not None else {}


def inbox_cards(
    handoffs: list[Handoff], *, user, rep, next_url: str, now: datetime
) -> list[InboxCard]:
    """Inbox cards; only the assigned rep gets the accept / reject forms."""
    calendar = calendar_for(get_policy())
    reasons = top_reasons([h.lead for h in handoffs])
    cards = []
    for handoff in handoffs:
        can_answer = handoff.assignee_id == user.pk and handoff.status != "done"
        place = {
            "origin": "inbox",
            "target": f"#inbox-{handoff.lead_id}",
            "next_url": next_url,
            "hidden": inbox_hidden(rep),
        }
        cards.append(
            InboxCard(
                handoff=handoff,
                sla=sla_view(handoff, now=now, calendar=calendar),
                reasons=reasons.get(handoff.lead_id, []),
                can_answer=can_answer,
                accept=bind_lead_action("accept", handoff.lead_id, **place) if can_answer else None,
                reject=bind_lead_action("reject", handoff.lead_id, **place) if can_answer else None,
            )
        )
    return cards


def stage_moves(lead: Lead) -> list[str]:
    """The stage actions that follow the lead's stage (SAL → opportunity → won / lost)."""
    return {Stage.SAL: ["opportunity"], Stage.OPPORTUNITY: ["won", "lost"]}.get(lead.stage, [])


def accepted_row(
    lead: Lead, *, rep, next_url: str, allowed: bool, notice: str = "", error: str = ""
) -> AcceptedRow:
    """An accepted lead's row; `allowed` is whether the viewer may move its stage."""
    place = {
        "origin": "inbox",
        "target": f"#accepted-{lead.pk}",
        "next_url": next_url,
        "hidden": inbox_hidden(rep),
    }
    actions = [bind_lead_action(n, lead.pk, **place) for n in stage_moves(lead)] if allowed else []
    return AcceptedRow(lead=lead, actions=actions, notice=notice, error=error)


# --- the lead page --------------------------------------------------------------------------


def encode_cursor(position: tuple[datetime, str, int]) -> str:
    at, kind, pk = position
    raw = json.dumps([at.isoformat(), kind, pk]).encode()
    return base64.urlsafe_b64encode(raw).decode()


def timeline_entry(entry: dict[str, Any]) -> dict[str, Any]:
    """A timeline entry (from leadops.api.timeline_page) ready to show: a title, detail
    lines and who; kinds this page does not know are shown field by field."""
    kind = entry.get("kind", "")
    shown = _TIMELINE_KINDS.get(kind, _generic_entry)(entry)
    return {"kind": kind, "at": parse_datetime(str(entry.get("at", ""))), **shown}


def _label(choices, value: Any) -> str:
    return str(choices(value).label) if value in choices.values else str(value or "")


def _activity_entry(entry: dict) -> dict:
    properties = entry.get("properties") or {}
    lines = [str(properties[k]) for k in ("title", "url", "campaign") if properties.get(k)]
    return {"title": _label(EventType, entry.get("type")), "lines": lines, "actor": ""}


def _score_entry(entry: dict) -> dict:
    points = int(entry.get("points") or 0)
    why = entry.get("rule") or entry.get("reason") or ""
    title = _("Score %(points)+d") % {"points": points}
    return {"title": title, "lines": [str(why)] if why else [], "actor": ""}


def _transition_entry(entry: dict) -> dict:
    title = _("Stage: %(from)s → %(to)s") % {
        "from": _label(Stage, entry.get("from_stage")),
        "to": _label(Stage, entry.get("to_stage")),
    }
    lines = [str(entry["reason"])] if entry.get("reason") else []
    if entry.get("score") is not None:
        lines.append(_("Score at the time: %(score)s") % {"score": entry["score"]})
    return {"title": title, "lines": lines, "actor": entry.get("actor") or ""}


def _contact_entry(entry: dict) -> dict:
    title = _("%(channel)s: %(outcome)s") % {
        "channel": _label(ContactChannel, entry.get("channel")),
        "outcome": _label(ContactOutcome, entry.get("outcome")),
    }
    lines = [str(entry["note"])] if entry.get("note") else []
    return {"title": title, "lines": lines, "actor": entry.get("actor") or ""}


def _note_entry(entry: dict) -> dict:
    return {"title": _("Note"), "lines": [str(entry.get("body", ""))], "actor": entry.get("author")}


def _generic_entry(entry: dict) -> dict:
    lines = [
        f"{k}: {v}" for k, v in entry.items() if k not in ("kind", "at") and v not in ("", None)
    ]
    return {"title": str(entry.get("kind", "")), "lines": lines, "actor": ""}


_TIMELINE_KINDS: dict[str, Callable[[dict], dict]] = {
    "activity": _activity_entry,
    "score_change": _score_entry,
    "transition": _transition_entry,
    "contact_attempt": _contact_entry,
    "note": _note_entry,
}


@dataclass
class HandoffPanel:
    handoff: Handoff
    sla: SlaView

    @property
    def bant(self) -> list[tuple[str, str]]:
        return bant_items(self.handoff.bant)
