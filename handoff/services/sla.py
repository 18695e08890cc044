"""The SLA monitor: warn at 75% of the deadline, escalate a breach to the managers.

Each run is two conditional UPDATEs over the partial indexes of running clocks: a
hand-off changes state once (on_track → warning → breached) and the UPDATE that
changes it is the one that announces it. Two schedulers running at once cannot both
warn: the second UPDATE finds the row already moved. Hand-offs whose state does not
change are not touched.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from functools import partial

from django.db import connection, transaction
from django.utils import timezone

from handoff.models import Handoff, HandoffKind, HandoffStatus, NotificationKind, SlaState
from handoff.services.assignment import choose_is_assignees, is_rep_ids, users_in_role
from handoff.services.calendar import get_policy
from leadops.models import Lead
from leadops.roles import Role

_WARN = """
UPDATE handoff_handoff SET sla_state = 'warning'
WHERE status <> 'done' AND responded_at IS NULL AND sla_state = 'on_track'
  AND warn_at <= %(now)s AND due_at > %(now)s
RETURNING id, assignee_id, kind"""

_BREACH = """
UPDATE handoff_handoff SET sla_state = 'breached'
WHERE status <> 'done' AND responded_at IS NULL AND sla_state IN ('on_track', 'warning')
  AND due_at <= %(now)s
RETURNING id, assignee_id, kind"""


def _moved(sql: str, now: datetime) -> list[tuple[int, int | None, str]]:
    with connection.cursor() as cursor:
        cursor.execute(sql, {"now": now})
        return sorted(cursor.fetchall())


# Hand-offs announced per task. The monitor's own run stays two UPDATEs however many
# clocks move at once (a weekend's MQLs reach their warning point together on Monday);
# the fan-out, about four notifications and emails per breach, runs in the workers.
ANNOUNCE_BATCH = 500


@transaction.atomic
def check_slas(*, now: datetime | None = None) -> dict[str, int]:
    """Move hand-offs whose SLA reached its warning point or deadline; after commit,
    hand them to `announce_sla_change` in batches (Celery) to tell people.

    With "reassign on breach" set, a breached first contact goes to the next IS rep in
    turn. Returns {"warned": n, "breached": n, "reassigned": n}.
    """
    now = now or timezone.now()
    warned = _moved(_WARN, now)
    breached = _moved(_BREACH, now)
    _announce_after_commit(NotificationKind.SLA_WARNING, [pk for pk, _a, _k in warned])
    _announce_after_commit(NotificationKind.SLA_BREACHED, [pk for pk, _a, _k in breached])
    reassigned = _reassign_breached(breached, now=now)
    announce_missed_sla_changes(now=now)
    return {"warned": len(warned), "breached": len(breached), "reassigned": reassigned}


def _announce_after_commit(kind: str, handoff_ids: list[int]) -> None:
    from handoff.tasks import announce_sla_change

    for start in range(0, len(handoff_ids), ANNOUNCE_BATCH):
        batch = handoff_ids[start : start + ANNOUNCE_BATCH]
        transaction.on_commit(partial(announce_sla_change.delay, kind, batch), robust=True)


def announce_sla_change(kind: str, handoff_ids: list[int]) -> int:
    """Tell people the monitor moved these hand-offs: a warning to the assignee (every
    IS rep if unassigned), a breach to the managers and the assignee. Safe to run twice
    (notify's event keys). Returns how many hand-offs were announced."""
    from handoff.notifications import notify

    rows = list(Handoff.objects.filter(pk__in=handoff_ids).values_list("pk", "assignee_id"))
    team = is_rep_ids() if any(a is None for _pk, a in rows) else []
    managers = users_in_role(Role.MANAGER) if kind == NotificationKind.SLA_BREACHED else []
    notify(kind, {pk: sorted({*managers, *([a] if a else team)}) for pk, a in rows})
    return len(rows)


# A safety net for announcements lost between commit and the broker (Redis down at
# that moment): hand-offs moved a while ago whose notification does not exist yet.
ANNOUNCE_GRACE = timedelta(minutes=5)
ANNOUNCE_LOOKBACK = timedelta(days=7)
SWEEP_LIMIT = 200
_MISSED = """
SELECT h.id, h.sla_state FROM handoff_handoff h
WHERE h.status <> 'done' AND h.responded_at IS NULL
  AND ((h.sla_state = 'warning' AND h.warn_at BETWEEN %(since)s AND %(cutoff)s)
       OR (h.sla_state = 'breached' AND h.due_at BETWEEN %(since)s AND %(cutoff)s))
  AND NOT EXISTS (
      SELECT 1 FROM handoff_notification n
      WHERE n.event_key = 'sla_' || h.sla_state || ':' || h.id)
ORDER BY h.id LIMIT %(limit)s"""


def announce_missed_sla_changes(
    *, now: datetime, grace: timedelta = ANNOUNCE_GRACE, limit: int = SWEEP_LIMIT
) -> int:
    """Announce (inline, at most `limit`) warnings and breaches of the last week that
    nobody was told about; returns how many hand-offs were announced."""
    params = {"since": now - ANNOUNCE_LOOKBACK, "cutoff": now - grace, "limit": limit}
    with connection.cursor() as cursor:
        cursor.execute(_MISSED, params)
        rows = cursor.fetchall()
    by_state: dict[str, list[int]] = {}
    for pk, state in rows:
        by_state.setdefault(state, []).append(pk)
    kinds = {
        SlaState.WARNING: NotificationKind.SLA_WARNING,
        SlaState.BREACHED: NotificationKind.SLA_BREACHED,
    }
    return sum(announce_sla_change(kinds[state], ids) for state, ids in by_state.items())


def _reassign_breached(breached: list[tuple[int, int | None, str]], *, now: datetime) -> int:
    from handoff.notifications import notify

    policy = get_policy()
    first_contacts = {pk: a for pk, a, kind in breached if kind == HandoffKind.INSIDE_SALES}
    if not policy.reassign_on_breach or not first_contacts:
        return 0
    handoffs = Handoff.objects.filter(pk__in=first_contacts).select_related("lead")
    moved: dict[int, list[int]] = {}
    for handoff in handoffs:
        lead: Lead = handoff.lead
        chosen = choose_is_assignees([lead], policy=policy, now=now, exclude=handoff.assignee_id)[
            lead.pk
        ]
        if chosen is not None:
            Handoff.objects.filter(pk=handoff.pk).update(
                assignee_id=chosen, status=HandoffStatus.OPEN, claimed_at=None
            )
            moved[handoff.pk] = [chosen]
    if moved:
        notify(NotificationKind.MQL_ASSIGNED, moved)
    return len(moved)


def sla_state_at(handoff: Handoff, now: datetime) -> str:
    """The state the monitor will give this hand-off at `now` (pages show it live,
    between two monitor runs)."""
    if handoff.responded_at is not None or handoff.status == HandoffStatus.DONE:
        return handoff.sla_state
    if now >= handoff.due_at:
        return SlaState.BREACHED
    if now >= handoff.warn_at:
        return SlaState.WARNING
    return SlaState.ON_TRACK
