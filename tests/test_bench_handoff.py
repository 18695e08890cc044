"""The hand-off bench's data generator and monitor timing at a tiny size (not timed)."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from django.db import connection
from django.test import Client

from bench import handoff as bench
from handoff.models import Handoff, HandoffKind, HandoffStatus, Notification, SlaState
from handoff.services import mark_lead_mql, sla_state_at
from handoff.views import QUEUE_PAGE_SIZE
from leadops.models import Account, Lead
from tests.factories import LeadFactory

NOW = datetime(2026, 11, 18, 3, 0, tzinfo=UTC)  # a Wednesday, 12:00 in Tokyo


def _leads(count: int) -> None:
    account = Account.objects.create(name="ベンチ株式会社", domain="bench.example.jp")
    Lead.objects.bulk_create(
        Lead(email=f"lead{n}@bench.example.jp", last_name=f"山田{n}", account=account)
        for n in range(count)
    )


def _generate(open_handoffs: int) -> bench.HandoffData:
    return bench.generate(open_handoffs=open_handoffs, now=NOW, log=lambda *_: None)


def _open(kind: str):
    return Handoff.objects.not_done().filter(kind=kind)


@pytest.mark.django_db
def test_generate_writes_the_open_queue_sales_answers_and_history() -> None:
    _leads(300)
    data = _generate(60)

    assert (data.open_inside_sales, data.open_sales, data.done) == (60, 6, 132)
    assert _open(HandoffKind.INSIDE_SALES).count() == 60
    assert _open(HandoffKind.SALES).count() == 6
    assert Handoff.objects.filter(status=HandoffStatus.DONE).count() == 132
    queue = list(_open(HandoffKind.INSIDE_SALES).select_related("lead"))
    unassigned = [h for h in queue if h.assignee_id is None]
    assert 0 < len(unassigned) < 20
    assert {h.assignee_id for h in queue} - {None} <= set(data.is_reps)
    assert all(h.assignee_id for h in queue if h.status == HandoffStatus.CLAIMED)
    assert {h.lead.stage for h in queue} == {"mql"}
    for sales in _open(HandoffKind.SALES).select_related("lead"):
        assert sales.lead.stage == "sql" and sales.lead.owner_id == sales.assignee_id
    assert len(data.managers) == bench.MANAGERS


@pytest.mark.django_db
def test_generated_sla_states_are_what_the_monitor_would_have_written() -> None:
    _leads(300)
    _generate(60)

    running = list(Handoff.objects.not_done())
    assert [h.sla_state for h in running] == [sla_state_at(h, NOW) for h in running]
    states = {h.sla_state for h in running}
    assert {SlaState.ON_TRACK, SlaState.WARNING, SlaState.BREACHED, SlaState.MET} <= states
    assert all(h.opened_at < NOW and h.warn_at < h.due_at for h in running)


@pytest.mark.django_db
def test_generate_closes_hand_offs_left_open_and_notifies_assignees() -> None:
    lead = LeadFactory(stage="nurturing")
    mark_lead_mql(lead.pk, reason="earlier figure")
    _leads(100)

    data = _generate(20)

    assert data.closed_before == 1
    earlier = Handoff.objects.filter(lead=lead, opened_reason="earlier figure").get()
    assert (earlier.status, earlier.outcome) == (HandoffStatus.DONE, "closed")
    assigned = Handoff.objects.filter(
        kind=HandoffKind.INSIDE_SALES, assignee__isnull=False, opened_at__lt=NOW
    )
    notes = Notification.objects.filter(kind="mql_assigned")
    assert notes.count() == assigned.count() > 20
    assert notes.filter(read_at__isnull=True).exists()


@pytest.mark.django_db
def test_monitor_timing_moves_exactly_the_rows_the_hand_written_update_does(
    django_capture_on_commit_callbacks,
) -> None:
    from handoff.services.sla import announce_sla_change

    _leads(800)
    data = _generate(200)
    at = data.now + bench.MONITOR_LAG
    due = bench.monitor_due(at)
    assert due["warned"] > 0 and due["breached"] > 0

    seconds, rows = bench.hand_written_update_seconds(at)
    assert rows == due["warned"] + due["breached"] and seconds > 0
    assert bench.monitor_due(at) == due  # rolled back: the monitor finds the same work

    announced_before = set(Notification.objects.values_list("event_key", flat=True))
    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        seconds, moved = bench.time_monitor(at)
    assert (moved["warned"], moved["breached"]) == (due["warned"], due["breached"])
    assert bench.monitor_due(at) == {"warned": 0, "breached": 0}
    for callback in callbacks:  # the announcement tasks, as a worker would run them
        if getattr(callback, "func", None) is not None:
            announce_sla_change(*callback.args)
    breached = Notification.objects.filter(kind="sla_breached").exclude(
        event_key__in=announced_before
    )
    # Every breach tells the managers (and the assignee, or the IS team when unassigned).
    assert breached.values("event_key").distinct().count() == due["breached"]
    assert breached.filter(recipient_id__in=data.managers).count() == 3 * due["breached"]
    assert bench.time_monitor(at)[1]["warned"] == 0


@pytest.mark.django_db
def test_session_cookie_signs_in_and_queries_are_captured_for_explain(settings) -> None:
    _leads(200)
    data = _generate(50)
    rep = data.is_reps[0]
    settings.ALLOWED_HOSTS = ["127.0.0.1"]

    cookie = bench.session_cookie(rep, settings.SECRET_KEY)
    response = Client(HTTP_HOST="127.0.0.1", HTTP_COOKIE=cookie).get("/queue/?view=team")

    assert response.status_code == 200
    shown = response.content.decode().count('class="queue-row')
    assert shown == min(QUEUE_PAGE_SIZE, 50)  # the whole team's 50: a full first page
    queries = bench.handoff_queries("/api/v1/handoffs/?assignee=me", rep)
    keyset = [sql for sql in queries if "ORDER BY" in sql and "LIMIT" in sql]
    assert len(keyset) == 1
    assert bench.explain_ms(keyset[0], runs=1) > 0
    with connection.cursor() as cursor:
        cursor.execute(keyset[0])  # as captured: runnable as is, the rep's first page
        mine = _open(HandoffKind.INSIDE_SALES).filter(assignee_id=rep).count()
        assert len(cursor.fetchall()) == mine > 0


def test_open_hand_offs_scale_with_leads_up_to_fifty_thousand() -> None:
    assert bench.open_handoffs_for(20_000) == 5_000
    assert bench.open_handoffs_for(1_000_000) == 50_000
    assert bench.open_handoffs_for(10_000_000) == 50_000
