"""Stage transitions: only the legal edges, recorded with actor, reason and score."""

import pytest

from handoff.models import StageTransition
from handoff.services import (
    LEGAL_TRANSITIONS,
    IllegalTransition,
    is_legal,
    mark_lead_mql,
    transition_lead,
)
from handoff.services import stages as services
from leadops.models import Lead, Stage
from tests.factories import LeadFactory

pytestmark = pytest.mark.django_db

EXPECTED_EDGES = {
    ("new", "nurturing"),
    ("new", "mql"),
    ("nurturing", "mql"),
    ("mql", "sql"),
    ("mql", "nurturing"),
    ("sql", "sal"),
    ("sql", "nurturing"),
    ("sal", "opportunity"),
    ("opportunity", "won"),
    ("opportunity", "lost"),
} | {(stage, "disqualified") for stage in ("new", "nurturing", "mql", "sql", "sal", "opportunity")}


@pytest.mark.parametrize("from_stage", Stage.values)
@pytest.mark.parametrize("to_stage", Stage.values)
def test_only_the_product_edges_are_legal(from_stage, to_stage):
    assert is_legal(from_stage, to_stage) == ((from_stage, to_stage) in EXPECTED_EDGES)


def test_terminal_stages_have_no_way_out():
    assert LEGAL_TRANSITIONS["won"] == LEGAL_TRANSITIONS["lost"] == frozenset()
    assert LEGAL_TRANSITIONS["disqualified"] == frozenset()


def test_a_legal_transition_moves_the_lead_and_is_recorded(manager):
    lead = LeadFactory(stage="mql", score=85)
    transition = transition_lead(lead.pk, to_stage="sql", actor=manager, reason="BANT ok")
    lead.refresh_from_db()
    assert lead.stage == "sql"
    assert (transition.from_stage, transition.to_stage) == ("mql", "sql")
    assert (transition.actor, transition.reason, transition.score_snapshot) == (
        manager,
        "BANT ok",
        85,
    )
    assert transition.created_at is not None


@pytest.mark.parametrize(
    ("from_stage", "to_stage"),
    [("new", "sql"), ("won", "nurturing"), ("disqualified", "mql"), ("sal", "mql")],
)
def test_an_illegal_transition_is_refused_and_changes_nothing(from_stage, to_stage):
    lead = LeadFactory(stage=from_stage)
    with pytest.raises(IllegalTransition, match="cannot move") as caught:
        transition_lead(lead.pk, to_stage=to_stage, reason="x")
    assert (caught.value.from_stage, caught.value.to_stage) == (from_stage, to_stage)
    lead.refresh_from_db()
    assert lead.stage == from_stage
    assert not StageTransition.objects.exists()


@pytest.mark.parametrize(
    ("from_stage", "to_stage"),
    [("mql", "nurturing"), ("sql", "nurturing"), ("new", "disqualified")],
)
def test_going_back_or_out_needs_a_reason(from_stage, to_stage):
    lead = LeadFactory(stage=from_stage)
    with pytest.raises(IllegalTransition, match="Give a reason"):
        transition_lead(lead.pk, to_stage=to_stage, reason="  ")
    transition_lead(lead.pk, to_stage=to_stage, reason="timing")
    lead.refresh_from_db()
    assert lead.stage == to_stage


def test_of_two_concurrent_actions_only_one_wins(monkeypatch):
    lead = LeadFactory(stage="new")
    real_move = services._move

    def someone_else_moves_first(lead_id, *, from_stage, to_stage):
        # Between our read of the stage and our update, another action commits.
        Lead.objects.filter(pk=lead_id).update(stage="nurturing")
        return real_move(lead_id, from_stage=from_stage, to_stage=to_stage)

    monkeypatch.setattr(services, "_move", someone_else_moves_first)
    with pytest.raises(IllegalTransition, match="changed stage meanwhile"):
        transition_lead(lead.pk, to_stage="mql", reason="")
    lead.refresh_from_db()
    assert lead.stage != "mql"  # (the simulated other action rolls back with ours here)
    assert not StageTransition.objects.exists()


def test_mark_lead_mql_is_the_one_way_to_become_an_mql():
    lead = LeadFactory(stage="nurturing", score=90)
    transition = mark_lead_mql(lead.pk, reason="MQL rule met with a score of 90")
    lead.refresh_from_db()
    assert lead.stage == "mql"
    assert (transition.from_stage, transition.score_snapshot) == ("nurturing", 90)
    with pytest.raises(IllegalTransition):
        mark_lead_mql(lead.pk, reason="again")


def test_mark_leads_mql_moves_only_leads_that_may_become_mql():
    new, nurturing, sql = (LeadFactory(stage=s, score=90) for s in ("new", "nurturing", "sql"))
    transitions = services.mark_leads_mql(
        {new.pk: "MQL rule", nurturing.pk: "Hand-off trigger: Form submit", sql.pk: "x"}
    )
    assert sorted((t.lead_id, t.from_stage, t.reason) for t in transitions) == [
        (new.pk, "new", "MQL rule"),
        (nurturing.pk, "nurturing", "Hand-off trigger: Form submit"),
    ]
    assert set(Lead.objects.values_list("stage", flat=True)) == {"mql", "sql"}
    assert services.mark_leads_mql({}) == []
