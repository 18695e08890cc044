"""The hand-off services: MQL → IS queue → SQL → sales answer, and the ways back."""

from __future__ import annotations

import pytest
from django.core.exceptions import PermissionDenied

from handoff.models import (
    ContactAttempt,
    Handoff,
    HandoffOutcome,
    Notification,
    SlaState,
    StageTransition,
)
from handoff.services import (
    IllegalTransition,
    InvalidInput,
    accept_sql,
    add_lead_note,
    claim_handoff,
    close_opportunity,
    disqualify_lead,
    log_contact_attempt,
    mark_lead_mql,
    open_opportunity,
    qualify_lead,
    reject_sql,
    return_to_nurturing,
    save_bant,
)
from leadops.models import Lead
from scoring.services import rescore_leads
from tests.factories import ActivityFactory, LeadFactory

pytestmark = pytest.mark.django_db

BANT = {"budget": "300万円", "authority": "部長決裁", "need": "MA刷新", "timeline": "来期"}


def open_mql(**lead_fields) -> Handoff:
    lead = LeadFactory(stage="nurturing", **lead_fields)
    mark_lead_mql(lead.pk, reason="MQL rule met")
    return Handoff.objects.get(lead=lead, kind="inside_sales")


def test_becoming_mql_opens_one_assigned_handoff_with_an_sla(is_rep):
    handoff = open_mql(source="展示会")
    assert (handoff.status, handoff.assignee, handoff.sla_state) == ("open", is_rep, "on_track")
    assert handoff.lead_source == "展示会"  # the dashboard filters hand-offs by it
    assert handoff.opened_at < handoff.warn_at < handoff.due_at
    assert handoff.opened_reason == "MQL rule met"
    assert Notification.objects.filter(
        recipient=is_rep, kind="mql_assigned", handoff=handoff
    ).exists()


def test_claim_is_first_come_first_served(is_rep, django_user_model):
    from leadops.roles import assign_role

    colleague = django_user_model.objects.create_user("is2", password="x")
    assign_role(colleague, role="inside_sales")
    handoff = open_mql()
    holder = handoff.assignee
    other = colleague if holder == is_rep else is_rep
    claimed = claim_handoff(handoff.pk, actor=holder)
    assert (claimed.status, claimed.assignee, claimed.claimed_at is not None) == (
        "claimed",
        holder,
        True,
    )
    with pytest.raises(IllegalTransition):
        claim_handoff(handoff.pk, actor=other)


def test_marketers_and_sales_cannot_work_the_queue(marketer, sales_rep, is_rep):
    handoff = open_mql()
    for outsider in (marketer, sales_rep):
        with pytest.raises(PermissionDenied):
            claim_handoff(handoff.pk, actor=outsider)


def test_first_contact_meets_the_sla_and_claims(is_rep):
    handoff = open_mql()
    attempt = log_contact_attempt(
        handoff.pk, actor=is_rep, channel="call", outcome="no_answer", note="<b>留守</b>"
    )
    handoff.refresh_from_db()
    assert (handoff.status, handoff.sla_state) == ("claimed", SlaState.MET)
    assert handoff.responded_at == attempt.created_at or handoff.responded_at is not None
    first_response = handoff.responded_at
    log_contact_attempt(handoff.pk, actor=is_rep, channel="email", outcome="reached")
    handoff.refresh_from_db()
    assert handoff.responded_at == first_response
    assert ContactAttempt.objects.filter(handoff=handoff).count() == 2


def test_contact_with_unknown_channel_names_the_fields(is_rep):
    handoff = open_mql()
    with pytest.raises(InvalidInput) as refused:
        log_contact_attempt(handoff.pk, actor=is_rep, channel="fax", outcome="maybe")
    assert set(refused.value.errors) == {"channel", "outcome"}
    assert not ContactAttempt.objects.exists()


def test_bant_is_validated_and_merged(is_rep):
    handoff = open_mql()
    save_bant(handoff.pk, actor=is_rep, bant={"budget": "100万円"})
    saved = save_bant(handoff.pk, actor=is_rep, bant={"need": "名寄せ"})
    assert saved.bant == {"budget": "100万円", "need": "名寄せ"}
    with pytest.raises(InvalidInput) as refused:
        save_bant(handoff.pk, actor=is_rep, bant={"budget": 5, "colour": "red"})
    assert {"bant", "bant.budget"} <= set(refused.value.errors)


def test_qualify_needs_an_active_sales_rep(is_rep, marketer):
    handoff = open_mql()
    for wrong in (None, marketer, is_rep):
        with pytest.raises(InvalidInput) as refused:
            qualify_lead(handoff.pk, actor=is_rep, sales_rep=wrong)
        assert list(refused.value.errors) == ["sales_rep"]
    assert Lead.objects.get(pk=handoff.lead_id).stage == "mql"


def test_qualify_hands_the_lead_to_sales_with_the_acceptance_sla(is_rep, sales_rep):
    handoff = open_mql(source="ウェビナー")
    sales = qualify_lead(handoff.pk, actor=is_rep, sales_rep=sales_rep, bant=BANT)
    sales.refresh_from_db()
    assert sales.lead_source == "ウェビナー"
    lead = Lead.objects.get(pk=handoff.lead_id)
    handoff.refresh_from_db()
    assert (lead.stage, lead.owner) == ("sql", sales_rep)
    assert (handoff.status, handoff.outcome, handoff.bant) == ("done", "qualified", BANT)
    assert (sales.kind, sales.assignee, sales.status, sales.bant) == (
        "sales",
        sales_rep,
        "claimed",
        BANT,
    )
    assert Notification.objects.filter(recipient=sales_rep, kind="sql_assigned").exists()
    with pytest.raises(IllegalTransition):
        qualify_lead(handoff.pk, actor=is_rep, sales_rep=sales_rep)


def qualified(is_rep, sales_rep) -> Lead:
    handoff = open_mql()
    qualify_lead(handoff.pk, actor=is_rep, sales_rep=sales_rep, bant=BANT)
    return Lead.objects.get(pk=handoff.lead_id)


def test_only_the_chosen_rep_answers_and_only_once(is_rep, sales_rep, other_sales_rep):
    lead = qualified(is_rep, sales_rep)
    with pytest.raises(PermissionDenied):
        accept_sql(lead.pk, actor=other_sales_rep)
    accepted = accept_sql(lead.pk, actor=sales_rep)
    assert (accepted.outcome, Lead.objects.get(pk=lead.pk).stage) == ("accepted", "sal")
    with pytest.raises(IllegalTransition):
        accept_sql(lead.pk, actor=sales_rep)
    with pytest.raises(IllegalTransition):
        reject_sql(lead.pk, actor=sales_rep, reason="timing", comment="late")


def test_reject_needs_a_known_reason_and_a_comment(is_rep, sales_rep):
    lead = qualified(is_rep, sales_rep)
    for reason, comment, fields in [
        ("", "x", {"reason"}),
        ("bored", "x", {"reason"}),
        ("timing", "  ", {"comment"}),
        ("", "", {"reason", "comment"}),
    ]:
        with pytest.raises(InvalidInput) as refused:
            reject_sql(lead.pk, actor=sales_rep, reason=reason, comment=comment)
        assert set(refused.value.errors) == fields
    assert Lead.objects.get(pk=lead.pk).stage == "sql"


def test_accept_after_reject_is_refused(is_rep, sales_rep):
    lead = qualified(is_rep, sales_rep)
    reject_sql(lead.pk, actor=sales_rep, reason="no_budget", comment="予算なし")
    with pytest.raises(IllegalTransition):
        accept_sql(lead.pk, actor=sales_rep)


def test_the_full_path_back_to_nurturing_and_to_mql_again(is_rep, sales_rep, marketer):
    lead = LeadFactory(stage="nurturing")
    ActivityFactory(lead=lead, type="page_view", properties={"url": "/pricing"})
    rescore_leads([lead.pk])
    lead.refresh_from_db()
    assert (lead.stage, lead.behavior_score) == ("mql", 30)
    first = Handoff.objects.get(lead=lead, kind="inside_sales")
    claim_handoff(first.pk, actor=is_rep)
    log_contact_attempt(first.pk, actor=is_rep, channel="call", outcome="reached")
    qualify_lead(first.pk, actor=is_rep, sales_rep=sales_rep, bant=BANT)
    rejected = reject_sql(lead.pk, actor=sales_rep, reason="timing", comment="来年度に再検討")
    lead.refresh_from_db()
    assert (lead.stage, lead.owner, lead.behavior_score) == ("nurturing", None, 0)
    assert (rejected.outcome, rejected.reason, rejected.comment) == (
        "rejected",
        "timing",
        "来年度に再検討",
    )
    told = set(Notification.objects.filter(kind="sql_rejected").values_list("recipient", flat=True))
    assert told == {is_rep.pk, marketer.pk}
    # The old events no longer count; a new pricing view earns the way back.
    ActivityFactory(lead=lead, type="page_view", properties={"url": "/pricing"})
    rescore_leads([lead.pk])
    lead.refresh_from_db()
    assert (lead.stage, lead.behavior_score) == ("mql", 30)
    second = Handoff.objects.get(lead=lead, kind="inside_sales", status="open")
    assert second.pk != first.pk
    path = list(
        StageTransition.objects.filter(lead=lead)
        .order_by("created_at", "id")
        .values_list("from_stage", "to_stage")
    )
    assert path == [
        ("nurturing", "mql"),
        ("mql", "sql"),
        ("sql", "nurturing"),
        ("nurturing", "mql"),
    ]


def test_return_to_nurturing_resets_behavior(is_rep):
    lead = LeadFactory(stage="nurturing")
    ActivityFactory(lead=lead, type="page_view", properties={"url": "/pricing"})
    rescore_leads([lead.pk])
    handoff = Handoff.objects.get(lead=lead, kind="inside_sales")
    with pytest.raises(InvalidInput):
        return_to_nurturing(handoff.pk, actor=is_rep, reason="")
    returned = return_to_nurturing(handoff.pk, actor=is_rep, reason="unreachable", comment="3回")
    lead.refresh_from_db()
    assert (lead.stage, lead.behavior_score, returned.outcome) == ("nurturing", 0, "returned")
    transition = StageTransition.objects.filter(lead=lead).latest("id")
    assert "3回" in transition.reason


def test_disqualify_needs_a_reason(is_rep):
    handoff = open_mql()
    with pytest.raises(InvalidInput):
        disqualify_lead(handoff.pk, actor=is_rep, reason=" ")
    done = disqualify_lead(handoff.pk, actor=is_rep, reason="競合他社")
    assert (done.outcome, Lead.objects.get(pk=handoff.lead_id).stage) == (
        HandoffOutcome.DISQUALIFIED,
        "disqualified",
    )


def test_opportunity_won_and_lost_belong_to_the_owner(is_rep, sales_rep, other_sales_rep):
    lead = qualified(is_rep, sales_rep)
    accept_sql(lead.pk, actor=sales_rep)
    with pytest.raises(PermissionDenied):
        open_opportunity(lead.pk, actor=other_sales_rep)
    open_opportunity(lead.pk, actor=sales_rep)
    close_opportunity(lead.pk, actor=sales_rep, won=True)
    assert Lead.objects.get(pk=lead.pk).stage == "won"
    with pytest.raises(IllegalTransition):
        close_opportunity(lead.pk, actor=sales_rep, won=False)


def test_notes_are_kept_as_written(is_rep, marketer):
    lead = LeadFactory()
    note = add_lead_note(lead.pk, author=is_rep, body="<script>alert(1)</script>")
    assert note.body == "<script>alert(1)</script>"
    with pytest.raises(InvalidInput):
        add_lead_note(lead.pk, author=is_rep, body="   ")
    with pytest.raises(PermissionDenied):
        add_lead_note(lead.pk, author=marketer, body="hi")


def test_becoming_mql_stops_nurture_mails_and_a_rejection_restarts_them(is_rep, sales_rep):
    from nurturing.models import Enrollment, Track

    returned = Track.objects.create(
        name="戻りリード", kind="step", status="active", enrollment_rule="returned"
    )
    returned.steps.create(position=1, delay_hours=24, subject_ja="件名", body_ja="本文")
    lead = LeadFactory(stage="nurturing")
    nurture = Track.objects.create(
        name="育成", kind="step", status="active", enrollment_rule="manual"
    )
    Enrollment.objects.create(track=nurture, lead=lead, enrolled_at=lead.created_at)
    mark_lead_mql(lead.pk, reason="MQL rule met")
    assert Enrollment.objects.get(track=nurture, lead=lead).status == "exited"
    handoff = Handoff.objects.get(lead=lead, kind="inside_sales")
    qualify_lead(handoff.pk, actor=is_rep, sales_rep=sales_rep, bant=BANT)
    reject_sql(lead.pk, actor=sales_rep, reason="timing", comment="来期")
    assert Enrollment.objects.get(track=returned, lead=lead).status == "active"
