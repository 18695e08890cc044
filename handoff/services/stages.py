"""Stage changes of a lead. Every stage change goes through `transition_lead`
(or, for leads becoming MQLs, `mark_leads_mql`).

The legal edges (PRODUCT.md "Stages and hand-off"):

    new → nurturing → mql → sql → sal → opportunity → won | lost
    new → mql                      (a new lead can qualify at once)
    mql → nurturing, sql → nurturing   (recycle: a reason is required)
    any non-terminal stage → disqualified (a reason is required)

won, lost and disqualified are terminal: nothing leaves them (a lead that comes back
is handled by a person, not by an automatic edge). A sales rejection of an SQL is the
sql → nurturing edge.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from django.db import connection, transaction
from django.utils import timezone
from django.utils.translation import gettext as _

from handoff.models import StageTransition
from leadops.models import Lead, Stage

TERMINAL_STAGES = frozenset({Stage.WON, Stage.LOST, Stage.DISQUALIFIED})
_FORWARD: dict[str, frozenset[str]] = {
    Stage.NEW: frozenset({Stage.NURTURING, Stage.MQL}),
    Stage.NURTURING: frozenset({Stage.MQL}),
    Stage.MQL: frozenset({Stage.SQL, Stage.NURTURING}),
    Stage.SQL: frozenset({Stage.SAL, Stage.NURTURING}),
    Stage.SAL: frozenset({Stage.OPPORTUNITY}),
    Stage.OPPORTUNITY: frozenset({Stage.WON, Stage.LOST}),
}
LEGAL_TRANSITIONS: dict[str, frozenset[str]] = {
    stage: frozenset() if stage in TERMINAL_STAGES else _FORWARD[stage] | {Stage.DISQUALIFIED}
    for stage in Stage.values
}
# Going backwards or out must say why: the reason is shown on the lead's timeline.
REASON_REQUIRED = frozenset(
    {(Stage.MQL, Stage.NURTURING), (Stage.SQL, Stage.NURTURING)}
    | {(stage, Stage.DISQUALIFIED) for stage in Stage.values}
)
# Stages from which a lead becomes an MQL when the MQL rule or a trigger fires.
MQL_ENTRY_STAGES = frozenset(s for s, targets in LEGAL_TRANSITIONS.items() if Stage.MQL in targets)
# The dashboard's funnel, in order: a step's time is counted from the lead's entry into
# the stage before it (an MQL's from the lead's creation).
FUNNEL_STAGES = (Stage.MQL, Stage.SQL, Stage.SAL, Stage.OPPORTUNITY, Stage.WON)
PREVIOUS_FUNNEL_STAGE = dict(zip(FUNNEL_STAGES[1:], FUNNEL_STAGES, strict=False))


class IllegalTransition(Exception):
    """The lead's stage does not allow this move (the API answers 409)."""

    def __init__(self, message: str, *, from_stage: str = "", to_stage: str = "") -> None:
        super().__init__(message)
        self.from_stage = from_stage
        self.to_stage = to_stage


def is_legal(from_stage: str, to_stage: str) -> bool:
    return to_stage in LEGAL_TRANSITIONS.get(from_stage, frozenset())


def check_transition(from_stage: str, to_stage: str, *, reason: str) -> None:
    """Raise IllegalTransition unless the edge exists and, where needed, has a reason."""
    if not is_legal(from_stage, to_stage):
        raise IllegalTransition(
            _("A lead in stage %(from)s cannot move to %(to)s.")
            % {"from": Stage(from_stage).label, "to": Stage(to_stage).label},
            from_stage=from_stage,
            to_stage=to_stage,
        )
    if (from_stage, to_stage) in REASON_REQUIRED and not reason.strip():
        raise IllegalTransition(
            _("Give a reason for moving this lead to %(to)s.") % {"to": Stage(to_stage).label},
            from_stage=from_stage,
            to_stage=to_stage,
        )


@transaction.atomic
def transition_lead(
    lead_id: int, *, to_stage: str, actor: Any = None, reason: str = ""
) -> StageTransition:
    """Move the lead to `to_stage` and record the transition; IllegalTransition otherwise.

    The move is a conditional UPDATE on the stage read just before: of two concurrent
    actions on one lead only one changes the row, the other gets IllegalTransition.
    """
    from_stage = Lead.objects.values_list("stage", flat=True).get(pk=lead_id)
    check_transition(from_stage, to_stage, reason=reason)
    if not _move(lead_id, from_stage=from_stage, to_stage=to_stage):
        raise IllegalTransition(
            _("The lead changed stage meanwhile; reload it and try again."),
            from_stage=from_stage,
            to_stage=to_stage,
        )
    score, *funnel_facts = _fetch_one(
        _TRANSITION_FACTS_SQL,
        {
            "lead": lead_id,
            "to": to_stage,
            "previous": PREVIOUS_FUNNEL_STAGE.get(to_stage),
            "from_creation": to_stage == Stage.MQL,
        },
    )
    return StageTransition.objects.create(
        lead_id=lead_id,
        from_stage=from_stage,
        to_stage=to_stage,
        actor=actor,
        reason=reason,
        score_snapshot=score,
        **dict(zip(FUNNEL_FACTS, funnel_facts, strict=True)),
    )


# The lead's score for the snapshot and the funnel's facts (StageTransition's fields)
# as of this moment: every earlier transition of the lead is already written.
FUNNEL_FACTS = ("lead_source", "previous_step_at", "previous_entry_at")
_TRANSITION_FACTS_SQL = """
SELECT l.score, l.source,
       CASE WHEN %(from_creation)s THEN l.created_at
            ELSE (SELECT max(p.created_at) FROM handoff_stagetransition p
                  WHERE p.lead_id = l.id AND p.to_stage = %(previous)s) END,
       (SELECT max(p.created_at) FROM handoff_stagetransition p
        WHERE p.lead_id = l.id AND p.to_stage = %(to)s)
FROM leadops_lead l WHERE l.id = %(lead)s
"""


def _fetch_one(sql: str, params: dict[str, Any]) -> tuple:
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        return cursor.fetchone()


# The same facts recomputed from the transitions themselves, set-based (the migration
# that added them runs this over every row). For rows written with chosen times (tests,
# bench data): per lead, in time order, ties counting as before (as `<=` above).
_REFRESH_FUNNEL_FACTS_SQL = """
UPDATE handoff_stagetransition t
SET lead_source = w.source, previous_step_at = w.previous_step_at,
    previous_entry_at = w.previous_entry_at
FROM (
    SELECT t.id, l.source,
           CASE t.to_stage
               WHEN 'mql' THEN l.created_at
               WHEN 'sql' THEN max(t.created_at) FILTER (WHERE t.to_stage = 'mql') OVER lead
               WHEN 'sal' THEN max(t.created_at) FILTER (WHERE t.to_stage = 'sql') OVER lead
               WHEN 'opportunity'
                   THEN max(t.created_at) FILTER (WHERE t.to_stage = 'sal') OVER lead
               WHEN 'won'
                   THEN max(t.created_at) FILTER (WHERE t.to_stage = 'opportunity') OVER lead
           END AS previous_step_at,
           lag(t.created_at) OVER (PARTITION BY t.lead_id, t.to_stage
                                   ORDER BY t.created_at, t.id) AS previous_entry_at
    FROM handoff_stagetransition t
    JOIN leadops_lead l ON l.id = t.lead_id
    WHERE %(all)s OR t.lead_id = ANY(%(leads)s::bigint[])
    WINDOW lead AS (PARTITION BY t.lead_id ORDER BY t.created_at)
) w
WHERE w.id = t.id
"""


def refresh_funnel_facts(lead_ids: list[int] | None = None) -> int:
    """Recompute the funnel's facts of these leads' transitions (None: every lead's)
    from the transitions as they are; returns the rows updated."""
    with connection.cursor() as cursor:
        cursor.execute(
            _REFRESH_FUNNEL_FACTS_SQL, {"all": lead_ids is None, "leads": lead_ids or []}
        )
        return cursor.rowcount


def _move(lead_id: int, *, from_stage: str, to_stage: str) -> bool:
    moved = Lead.objects.filter(pk=lead_id, stage=from_stage).update(
        stage=to_stage, updated_at=timezone.now()
    )
    return moved == 1


def mark_lead_mql(lead_id: int, *, reason: str, actor: Any = None) -> StageTransition:
    """A lead became an MQL: `mark_leads_mql` for one lead; IllegalTransition if its stage
    does not lead to MQL."""
    from_stage = Lead.objects.values_list("stage", flat=True).get(pk=lead_id)
    check_transition(from_stage, Stage.MQL, reason=reason)
    moved = mark_leads_mql({lead_id: reason}, actor=actor)
    if not moved:
        raise IllegalTransition(
            _("The lead changed stage meanwhile; reload it and try again."),
            from_stage=from_stage,
            to_stage=Stage.MQL,
        )
    return moved[0]


@transaction.atomic
def mark_leads_mql(reasons: Mapping[int, str], *, actor: Any = None) -> list[StageTransition]:
    """What happens when leads become MQLs (the MQL rule met, or a hand-off trigger).

    `reasons` maps lead ids to why. Each lead in a stage that leads to MQL (new,
    nurturing) moves to mql with its transition recorded; the others stay as they are.
    Set-based, so an activation that qualifies thousands of leads stays fast. Returns the
    transitions made.
    """
    if not reasons:
        return []
    from handoff.services.handoffs import open_is_handoffs
    from nurturing.enrollment import ExitReason, exit_leads

    now = timezone.now()
    with connection.cursor() as cursor:
        cursor.execute(
            """UPDATE leadops_lead l SET stage = %(mql)s, updated_at = %(now)s
            FROM (SELECT id, stage FROM leadops_lead
                  WHERE id = ANY(%(ids)s::bigint[]) AND stage = ANY(%(from)s)
                  ORDER BY id FOR NO KEY UPDATE) before
            WHERE l.id = before.id
            RETURNING l.id, before.stage, l.score, l.source, l.created_at,
                      (SELECT max(p.created_at) FROM handoff_stagetransition p
                       WHERE p.lead_id = l.id AND p.to_stage = %(mql)s)""",
            {
                "mql": Stage.MQL,
                "now": now,
                "ids": sorted(reasons),
                "from": sorted(MQL_ENTRY_STAGES),
            },
        )
        moved = sorted(cursor.fetchall())
    transitions = StageTransition.objects.bulk_create(
        StageTransition(
            lead_id=lead_id,
            from_stage=from_stage,
            to_stage=Stage.MQL,
            actor=actor,
            reason=reasons[lead_id],
            score_snapshot=score,
            lead_source=source,
            previous_step_at=created_at,  # an MQL's step is timed from the lead's creation
            previous_entry_at=previous_entry_at,
        )
        for lead_id, from_stage, score, source, created_at, previous_entry_at in moved
    )
    # Same transaction: an MQL without its hand-off (assignee, SLA, notification) is
    # exactly the dropped lead this product exists to prevent.
    if not transitions:
        return []
    open_is_handoffs({t.lead_id: t.reason for t in transitions}, actor=actor, now=now)
    # An MQL is IS's now: nurture mails stop.
    exit_leads([t.lead_id for t in transitions], reason=ExitReason.MQL)
    return transitions
