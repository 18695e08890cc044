"""Who gets a new hand-off: the team's rule (round-robin, assignment rules, or manual).

Round-robin goes to the IS rep whose turn it is (longest since their last assignment)
among those who are active, available and under their capacity of open hand-offs.
Assignment rules pick the reps first (by industry, employee count, region), then
round-robin among them. Several workers opening hand-offs at once take turns through
a transaction-scoped advisory lock, so two hand-offs never see the same "next rep".
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime

from django.contrib.auth import get_user_model
from django.db import connection
from django.db.models import Count

from handoff.models import (
    AssignmentMode,
    AssignmentRule,
    Handoff,
    HandoffKind,
    HandoffPolicy,
    RepProfile,
)
from leadops.models import Lead
from leadops.roles import Role

_ASSIGNMENT_LOCK = 0x1EAD_0A55  # any constant: the key of the advisory lock


def users_in_role(role: str) -> list[int]:
    """Ids of the active users in `role`, in id order."""
    users = get_user_model().objects.filter(is_active=True, groups__name=role)
    return list(users.order_by("id").values_list("id", flat=True).distinct())


@dataclass
class _Rep:
    user_id: int
    capacity: int
    load: int
    last_assigned_at: datetime | None

    def turn(self) -> tuple:
        # Never assigned first, then the longest wait, then the lightest load.
        return (self.last_assigned_at is not None, self.last_assigned_at, self.load, self.user_id)


@dataclass
class _Roster:
    reps: dict[int, _Rep]
    rules: list[AssignmentRule] = field(default_factory=list)

    def pick(self, lead: Lead, *, now: datetime, exclude: int | None = None) -> int | None:
        for rule in self.rules:
            if _rule_matches(rule, lead):
                chosen = self._next_of(rule.rep_ids, now=now, exclude=exclude)
                if chosen is not None:
                    return chosen
        return self._next_of(self.reps, now=now, exclude=exclude)

    def _next_of(
        self, user_ids: Iterable[int], *, now: datetime, exclude: int | None
    ) -> int | None:
        free = [
            self.reps[uid]
            for uid in user_ids
            if uid in self.reps and uid != exclude and self.reps[uid].load < self.reps[uid].capacity
        ]
        if not free:
            return None
        rep = min(free, key=_Rep.turn)
        rep.load += 1
        rep.last_assigned_at = now
        return rep.user_id


def _rule_matches(rule: AssignmentRule, lead: Lead) -> bool:
    if rule.industries and lead.industry not in rule.industries:
        return False
    size = lead.employee_count
    if rule.min_employees is not None and (size is None or size < rule.min_employees):
        return False
    if rule.max_employees is not None and (size is None or size > rule.max_employees):
        return False
    return not rule.regions or lead.region in rule.regions


def _load_roster(policy: HandoffPolicy) -> _Roster:
    ids = users_in_role(Role.INSIDE_SALES)
    profiles = {p.user_id: p for p in RepProfile.objects.filter(user_id__in=ids)}
    loads = dict(
        Handoff.objects.not_done()
        .filter(kind=HandoffKind.INSIDE_SALES, assignee_id__in=ids)
        .values_list("assignee_id")
        .annotate(n=Count("id"))
    )
    reps = {}
    for uid in ids:
        profile = profiles.get(uid)
        if profile is not None and not profile.available:
            continue
        capacity = (profile and profile.capacity) or policy.default_is_capacity
        last = profile.last_assigned_at if profile else None
        reps[uid] = _Rep(uid, capacity, loads.get(uid, 0), last)
    roster = _Roster(reps)
    if policy.assignment_mode == AssignmentMode.RULES:
        roster.rules = list(
            AssignmentRule.objects.filter(active=True)
            .prefetch_related("reps")
            .order_by("priority", "id")
        )
        for rule in roster.rules:
            rule.rep_ids = [rep.pk for rep in rule.reps.all()]
    return roster


def choose_is_assignees(
    leads: Sequence[Lead], *, policy: HandoffPolicy, now: datetime, exclude: int | None = None
) -> dict[int, int | None]:
    """{lead id: IS rep id or None} for new hand-offs, in the order given; records turns.

    Must run inside the transaction that creates the hand-offs: the advisory lock it
    takes is held until that transaction ends.
    """
    if policy.assignment_mode == AssignmentMode.MANUAL:
        return dict.fromkeys((lead.pk for lead in leads), None)
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_advisory_xact_lock(%s)", [_ASSIGNMENT_LOCK])
    roster = _load_roster(policy)
    chosen = {lead.pk: roster.pick(lead, now=now, exclude=exclude) for lead in leads}
    _record_turns({uid for uid in chosen.values() if uid is not None}, now=now)
    return chosen


def _record_turns(user_ids: set[int], *, now: datetime) -> None:
    for uid in user_ids:
        RepProfile.objects.update_or_create(user_id=uid, defaults={"last_assigned_at": now})


def is_rep_ids() -> list[int]:
    return users_in_role(Role.INSIDE_SALES)
