"""The SLA monitor: warning at 75%, breach escalated, each announced exactly once."""

from __future__ import annotations

import threading
from datetime import timedelta

import pytest
from django.db import connection

from handoff.models import Handoff, Notification
from handoff.services import check_slas, get_policy, log_contact_attempt, mark_lead_mql
from handoff.services.sla import (
    ANNOUNCE_BATCH,
    announce_missed_sla_changes,
    announce_sla_change,
)
from leadops.roles import assign_role
from tests.factories import LeadFactory


def open_handoff() -> Handoff:
    lead = LeadFactory(stage="nurturing")
    mark_lead_mql(lead.pk, reason="test")
    return Handoff.objects.get(lead=lead)


def monitor(now, capture):
    """One monitor run as the workers see it: commit, then each enqueued announcement
    (a partial of the Celery task's delay) runs, here in-process."""
    with capture(execute=False) as callbacks:
        counts = check_slas(now=now)
    for callback in callbacks:
        assert callback.func.__name__ == "delay"
        announce_sla_change(*callback.args)
    return counts


@pytest.mark.django_db
def test_warning_then_breach_each_announced_once(
    is_rep, manager, django_capture_on_commit_callbacks
):
    run = django_capture_on_commit_callbacks
    handoff = open_handoff()
    assert monitor(handoff.warn_at - timedelta(seconds=1), run)["warned"] == 0
    assert monitor(handoff.warn_at, run) == {"warned": 1, "breached": 0, "reassigned": 0}
    assert monitor(handoff.warn_at, run)["warned"] == 0
    handoff.refresh_from_db()
    assert handoff.sla_state == "warning"
    assert Notification.objects.filter(kind="sla_warning", recipient=is_rep).count() == 1
    assert monitor(handoff.due_at, run)["breached"] == 1
    assert monitor(handoff.due_at + timedelta(hours=1), run)["breached"] == 0
    breach = set(
        Notification.objects.filter(kind="sla_breached").values_list("recipient", flat=True)
    )
    assert breach == {manager.pk, is_rep.pk}


@pytest.mark.django_db
def test_a_contacted_lead_is_left_alone(is_rep, manager):
    handoff = open_handoff()
    log_contact_attempt(handoff.pk, actor=is_rep, channel="call", outcome="reached")
    assert check_slas(now=handoff.due_at + timedelta(days=3)) == {
        "warned": 0,
        "breached": 0,
        "reassigned": 0,
    }
    handoff.refresh_from_db()
    assert handoff.sla_state == "met"


@pytest.mark.django_db
def test_a_skipped_warning_goes_straight_to_breach(
    is_rep, manager, django_capture_on_commit_callbacks
):
    handoff = open_handoff()
    run = django_capture_on_commit_callbacks
    assert monitor(handoff.due_at + timedelta(minutes=5), run)["breached"] == 1
    assert Notification.objects.filter(kind="sla_breached", handoff=handoff).exists()
    assert not Notification.objects.filter(kind="sla_warning").exists()


@pytest.mark.django_db
def test_breach_reassigns_when_the_team_asks_for_it(is_rep, manager, django_user_model):
    colleague = django_user_model.objects.create_user("is-backup", password="x")
    assign_role(colleague, role="inside_sales")
    policy = get_policy()
    policy.reassign_on_breach = True
    policy.save()
    handoff = open_handoff()
    first = handoff.assignee_id
    assert check_slas(now=handoff.due_at)["reassigned"] == 1  # told inline: rare, small
    handoff.refresh_from_db()
    assert handoff.assignee_id not in (None, first)
    assert Notification.objects.filter(
        kind="mql_assigned", recipient_id=handoff.assignee_id, handoff=handoff
    ).exists()


@pytest.mark.django_db
def test_a_lost_announcement_is_made_by_a_later_run(is_rep, manager):
    # The run commits but its tasks never reach the broker (no on-commit here).
    handoff = open_handoff()
    check_slas(now=handoff.due_at)
    assert not Notification.objects.filter(kind="sla_breached").exists()
    # Within the grace period the tasks may still be on their way: nothing yet.
    assert announce_missed_sla_changes(now=handoff.due_at + timedelta(minutes=1)) == 0
    later = handoff.due_at + timedelta(minutes=6)
    assert check_slas(now=later)["breached"] == 0
    told = set(Notification.objects.filter(kind="sla_breached").values_list("recipient", flat=True))
    assert told == {manager.pk, is_rep.pk}
    assert announce_missed_sla_changes(now=later) == 0  # announced once


@pytest.mark.django_db
def test_many_moved_clocks_are_announced_in_batches(
    is_rep, manager, django_capture_on_commit_callbacks
):
    handoffs = [open_handoff() for _ in range(3)]
    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        check_slas(now=max(h.due_at for h in handoffs))
    assert [c.args for c in callbacks] == [("sla_breached", sorted(h.pk for h in handoffs))]
    assert ANNOUNCE_BATCH >= 100


@pytest.mark.django_db(transaction=True)
def test_two_schedulers_at_once_move_each_clock_once(is_rep, manager):
    handoffs = [open_handoff() for _ in range(20)]
    moment = max(h.due_at for h in handoffs)
    results: list[dict] = []
    barrier = threading.Barrier(2)

    def run() -> None:
        try:
            barrier.wait()
            results.append(check_slas(now=moment))
        finally:
            connection.close()

    threads = [threading.Thread(target=run) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sum(r["breached"] for r in results) == 20
    announce_missed_sla_changes(now=moment + timedelta(minutes=10))
    announce_missed_sla_changes(now=moment + timedelta(minutes=10))
    assert Notification.objects.filter(kind="sla_breached", recipient=manager).count() == 20
