"""The decay pass: fade the behaviour score of leads without recent activity, set-based.

It needs no events: the state row holds the behaviour score as it stood at the last
activity, so the score now is that × 0.5^(quiet time past the grace / half-life), the
same formula the rescore uses. One UPDATE per id range (ranges in parallel, like
rescore-all), one ledger row per changed lead.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from functools import partial

from django.utils import timezone

from scoring import engine
from scoring.engine import LeadSet, Params
from scoring.services.rescoring import LEDGER_COLUMNS, lead_sets, map_chunks
from scoring.spec import ModelSpec, active_spec, epoch_us_sql

DECAY_RANGE_WIDTH = 200_000


def apply_decay(*, now: datetime | None = None) -> int:
    """Apply the active model's decay to every inactive lead; return how many changed."""
    now = now or timezone.now()
    spec = active_spec()
    if spec is None:
        return 0
    chunks = lead_sets(None, width=DECAY_RANGE_WIDTH)
    return sum(changed for _leads, changed in map_chunks(partial(_decay, spec, now=now), chunks))


def _decay(spec: ModelSpec, leads: LeadSet, *, now: datetime) -> int:
    params = Params(
        version=spec.version,
        now=now,
        cutoff=now - timedelta(microseconds=spec.grace_us),
    )
    last_us = epoch_us_sql("st.last_activity_at")
    behavior = engine.decay_sql("st.behavior_at_last_activity", last_us, spec, now, params)
    new_score = "(l.attribute_score + c.behavior)"
    rows = engine.fetch(
        f"""WITH calc AS (
            SELECT l.id, l.score AS old_score, l.behavior_score AS old_behavior,
                   {behavior} AS behavior
            FROM scoring_leadscorestate st JOIN leadops_lead l ON l.id = st.lead_id
            WHERE {leads.where("st.lead_id", params)}
              AND st.behavior_at_last_activity <> 0 AND st.last_activity_at < %(cutoff)s
        ), upd AS (
            -- Re-checked on the row as it is when updated: a rescore that changed the
            -- lead meanwhile computed from its events and wins.
            UPDATE leadops_lead l SET behavior_score = c.behavior, score = {new_score},
                   temperature = {engine.temperature_sql(spec, new_score)}
            FROM calc c
            WHERE l.id = c.id AND c.behavior <> c.old_behavior
              AND l.behavior_score = c.old_behavior AND l.score = c.old_score
            RETURNING l.id, l.score, c.old_score
        ), ledger AS (
            INSERT INTO scoring_scorechange ({LEDGER_COLUMNS})
            SELECT id, NULL, '', NULL, score - old_score, %(version)s, 'decay', %(now)s
            FROM upd WHERE score <> old_score
            RETURNING 1
        )
        SELECT (SELECT count(*) FROM upd), (SELECT count(*) FROM ledger)""",
        params,
    )
    return rows[0][0]
