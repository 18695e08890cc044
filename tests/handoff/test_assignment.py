"""Who gets a new MQL: round-robin over available reps under capacity, rules, manual."""

from __future__ import annotations

import pytest

from handoff.models import AssignmentRule, Handoff, Notification, RepProfile
from handoff.services import get_policy, mark_leads_mql
from leadops.roles import assign_role
from tests.factories import LeadFactory

pytestmark = pytest.mark.django_db


@pytest.fixture
def reps(django_user_model):
    made = []
    for name in ("is-a", "is-b", "is-c"):
        user = django_user_model.objects.create_user(name, password="x", email=f"{name}@x.jp")
        assign_role(user, role="inside_sales")
        made.append(user)
    return made


def make_mqls(count: int, **fields) -> list[Handoff]:
    leads = [LeadFactory(stage="nurturing", **fields) for _ in range(count)]
    mark_leads_mql({lead.pk: "test" for lead in leads})
    return list(Handoff.objects.filter(lead__in=leads).order_by("lead_id"))


def test_round_robin_spreads_evenly_and_keeps_turns_across_calls(reps):
    first = make_mqls(3)
    assert sorted(h.assignee_id for h in first) == sorted(r.pk for r in reps)
    second = make_mqls(3)
    assert sorted(h.assignee_id for h in second) == sorted(r.pk for r in reps)


def test_round_robin_skips_inactive_unavailable_and_full_reps(reps):
    inactive, on_leave, full = reps
    inactive.is_active = False
    inactive.save()
    RepProfile.objects.create(user=on_leave, available=False)
    policy = get_policy()
    policy.default_is_capacity = 1
    policy.save()
    handoffs = make_mqls(3)
    assert [h.assignee_id for h in handoffs] == [full.pk, None, None]
    # Nobody free: the whole IS team hears about the unassigned MQLs.
    told = set(Notification.objects.filter(handoff=handoffs[1]).values_list("recipient", flat=True))
    assert told == {on_leave.pk, full.pk}


def test_rules_route_by_industry_size_and_region(reps):
    policy = get_policy()
    policy.assignment_mode = "rules"
    policy.save()
    enterprise = AssignmentRule.objects.create(name="大企業", priority=1, min_employees=1000)
    enterprise.reps.set([reps[0]])
    kansai = AssignmentRule.objects.create(
        name="関西 製造", priority=2, industries=["manufacturing"], regions=["大阪府", "京都府"]
    )
    kansai.reps.set([reps[1]])
    big = make_mqls(1, employee_count=5000)[0]
    osaka = make_mqls(1, employee_count=200, industry="manufacturing", region="大阪府")[0]
    tokyo = make_mqls(1, employee_count=200, industry="manufacturing", region="東京都")[0]
    assert big.assignee_id == reps[0].pk
    assert osaka.assignee_id == reps[1].pk
    assert tokyo.assignee_id is not None  # falls back to round-robin over the team


def test_manual_mode_leaves_hand_offs_unassigned(reps):
    policy = get_policy()
    policy.assignment_mode = "manual"
    policy.save()
    assert [h.assignee_id for h in make_mqls(2)] == [None, None]
