"""Rescoring: the one code path that computes and writes the scores of a set of leads.

`rescore_leads` serves a handful of leads after their events (the Celery drain task),
every lead on activation or on demand, and everything in between. Per chunk of leads,
in one transaction:

1. lock the leads (ordered by id, so concurrent rescores wait instead of deadlocking);
   the statements after the lock see every event committed before it, so the last
   rescore of a lead always includes all its events: no lost points;
2. score them set-based into a temp table (engine.py), reading the active model after
   the lock (an activation committed meanwhile is seen);
3. write the leads' columns and the score state where they changed, and the ledger;
   after events, the leads' `last_activity_at` too (ingest leaves it to this write: one
   row write per lead however many events came, in the row write of the scores);
4. hand the leads that crossed into the MQL rule, or whose new events fired a trigger,
   to `handoff.services.mark_leads_mql` ("leads became MQL").
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import TypeVar

from django.conf import settings
from django.db import transaction
from django.db.models import Max, Min
from django.utils import timezone
from django.utils.translation import gettext as _

from leadops.models import Lead
from leadops.sql import map_on_own_connections
from scoring import engine
from scoring.engine import LeadSet, Params
from scoring.models import ChangeReason, ScoringModel
from scoring.spec import ModelSpec, spec_for

logger = logging.getLogger(__name__)
T = TypeVar("T")

# Activities per rescore-all chunk, at most. Each chunk reads the whole activity table
# once (engine._with_sequential_scans), so fewer, larger chunks are cheaper; a sort
# larger than SCORING_WORK_MEM spills to disk, which cost nothing measurable here (2
# chunks of 2M events: 17.2 s with 48 MB, 17.8 s with 256 MB). 20M events: 4 chunks.
ACTIVITIES_PER_CHUNK = 5_000_000
MIN_RANGE_WIDTH = 5_000  # lead ids per rescore-all chunk (one transaction each), at least
ID_BATCH = 2_000  # explicit lead ids per transaction


@dataclass
class RescoreResult:
    leads: int = 0
    changed: int = 0
    temperature_changed: int = 0
    crossed_mql: int = 0  # newly meet the MQL rule (any stage)
    stopped_mql: int = 0  # met it before, no longer do
    would_become_mql: int = 0  # crossed and in a stage that leads to MQL
    marked_mql: list[int] = field(default_factory=list)  # moved to the mql stage

    def add(self, other: RescoreResult) -> None:
        for name in ("leads", "changed", "temperature_changed", "crossed_mql", "stopped_mql"):
            setattr(self, name, getattr(self, name) + getattr(other, name))
        self.would_become_mql += other.would_become_mql
        self.marked_mql.extend(other.marked_mql)

    def summary(self) -> dict[str, int]:
        counts = asdict(self)
        counts["marked_mql"] = len(self.marked_mql)
        return counts


def lead_sets(
    lead_ids: Iterable[int] | None, *, after: int = 0, width: int | None = None
) -> Iterator[LeadSet]:
    """Chunks: id ranges over all leads (after `after`), or batches of the ids given."""
    if lead_ids is not None:
        ids = sorted({int(i) for i in lead_ids})
        for start in range(0, len(ids), ID_BATCH):
            yield LeadSet(ids=tuple(ids[start : start + ID_BATCH]))
        return
    bounds = Lead.objects.filter(id__gt=after).aggregate(low=Min("id"), high=Max("id"))
    if bounds["low"] is None:
        return
    span = bounds["high"] - bounds["low"] + 1
    width = min(width, _per_worker(span)) if width else _range_width(span)
    for low in range(bounds["low"], bounds["high"] + 1, width):
        yield LeadSet(low=low, high=min(low + width - 1, bounds["high"]))


def _range_width(span: int) -> int:
    # Few large chunks beat many small ones (each reads the activity table once), with
    # enough of them to keep every parallel connection busy and the progress moving.
    activities = engine.fetch(
        "SELECT greatest(reltuples, 0)::bigint FROM pg_class "
        "WHERE oid = 'leadops_activity'::regclass"
    )[0][0]
    by_memory = span * ACTIVITIES_PER_CHUNK // activities if activities > 0 else span
    return max(MIN_RANGE_WIDTH, min(by_memory, _per_worker(span)))


def _per_worker(span: int) -> int:
    """The widest chunk that still gives every parallel connection one."""
    return -(-span // max(1, settings.SCORING_PARALLEL_CHUNKS))


def rescore_leads(
    lead_ids: Iterable[int] | None,
    *,
    model: ScoringModel | ModelSpec | None = None,
    now: datetime | None = None,
    reason: str | None = None,
    previous_model: ScoringModel | ModelSpec | None = None,
) -> RescoreResult:
    """Recompute and store the scores of these leads (None: every lead), chunk by chunk.

    `model` defaults to the active one; `reason` to "event" for ids (a ledger row per
    newly scored event, triggers checked) and "recalculation" for all leads (one
    ledger row per changed lead). Idempotent: a second run changes nothing.
    """
    now = now or timezone.now()
    reason = reason or (ChangeReason.EVENT if lead_ids is not None else ChangeReason.RECALCULATION)

    def rescore(leads: LeadSet) -> RescoreResult:
        return rescore_lead_set(
            leads, model=model, previous_model=previous_model, now=now, reason=reason
        )

    result = RescoreResult()
    for _leads, chunk in map_chunks(rescore, lead_sets(lead_ids)):
        result.add(chunk)
    return result


def map_chunks(
    work: Callable[[LeadSet], T], chunks: Iterable[LeadSet]
) -> Iterator[tuple[LeadSet, T]]:
    """Run `work` on each chunk in a transaction of its own; yield (chunk, result) in
    chunk order.

    One chunk's SQL keeps one CPU busy in one PostgreSQL backend, so a pass over every
    lead (rescore-all, decay) runs SCORING_PARALLEL_CHUNKS chunks at once, each on its
    own connection (a thread). The chunks are disjoint id ranges locked in id order, so
    they never wait for each other. Inside a caller's transaction the chunks run one
    after another in it: other connections could not see its uncommitted rows.
    """
    workers = settings.SCORING_PARALLEL_CHUNKS
    if workers <= 1 or transaction.get_connection().in_atomic_block:
        for leads in chunks:
            with transaction.atomic():
                yield leads, work(leads)
        return
    chunks = list(chunks)
    results = map_on_own_connections(work, chunks, workers=workers, name="chunk")
    yield from zip(chunks, results, strict=True)


def rescore_lead_set(
    leads: LeadSet,
    *,
    model: ScoringModel | ModelSpec | None,
    previous_model: ScoringModel | ModelSpec | None,
    now: datetime,
    reason: str,
) -> RescoreResult:
    """One chunk, inside the caller's transaction (see the module docstring)."""
    # When this rescore began, by the clock events are received by (never a `now` in the
    # future): the next rescore takes events received well before it as seen.
    began = min(now, timezone.now())
    if not _lock_leads(leads):
        return RescoreResult()
    per_event = reason == ChangeReason.EVENT
    spec = spec_for(model)
    if spec is None:
        logger.warning("No active scoring model: leads are not scored.")
        if per_event:
            _write_last_activity(leads)
        return RescoreResult()
    old_spec = spec_for(previous_model) if previous_model is not None else spec
    engine.score_into_temp_table(spec, leads, now, old_spec=old_spec, keep_new_events=per_event)
    _write_scores(spec, began=began, last_activity=per_event)
    if per_event:
        _write_event_ledger(spec, now)
    else:
        _write_summary_ledger(spec, now, reason=reason)
    result = chunk_result()
    fired = _record_fired_triggers(spec, now) if per_event and spec.trigger_rules else {}
    result.marked_mql = _hand_off(fired)
    return result


def _lock_leads(leads: LeadSet) -> int:
    # FOR NO KEY UPDATE, not FOR UPDATE: an ingest inserting an activity holds FOR KEY
    # SHARE on its lead (the foreign key) and then updates it; FOR UPDATE would queue
    # behind that share lock and ahead of the update, a deadlock (found by the
    # real-worker test). NO KEY UPDATE still serialises every writer of the lead row.
    params = Params()
    rows = engine.fetch(
        "SELECT count(*) FROM (SELECT 1 FROM leadops_lead l "
        f"WHERE {leads.where('l.id', params)} ORDER BY l.id FOR NO KEY UPDATE OF l) locked",
        params,
    )
    return rows[0][0]


_SCORE_COLUMNS = """attribute_score = s.attribute, behavior_score = s.behavior,
    score = s.score, temperature = s.temperature"""
# Each lead's newest event (one index probe on activity_lead_timeline), never backwards.
_NEWEST_EVENT = """CROSS JOIN LATERAL (
    SELECT max(a.occurred_at) AS at FROM leadops_activity a WHERE a.lead_id = s.lead_id
) newest"""
_LAST_ACTIVITY_MOVES = "l.last_activity_at IS DISTINCT FROM greatest(l.last_activity_at, newest.at)"


def _write_scores(spec: ModelSpec, *, began: datetime, last_activity: bool) -> None:
    if last_activity:
        engine.execute(
            f"""UPDATE leadops_lead l
            SET {_SCORE_COLUMNS}, last_activity_at = greatest(l.last_activity_at, newest.at)
            FROM scoring_scored s {_NEWEST_EVENT}
            WHERE s.lead_id = l.id AND (s.changed OR {_LAST_ACTIVITY_MOVES})"""
        )
    else:
        engine.execute(
            f"""UPDATE leadops_lead l SET {_SCORE_COLUMNS}
            FROM scoring_scored s WHERE s.lead_id = l.id AND s.changed"""
        )
    engine.execute(
        """INSERT INTO scoring_leadscorestate AS st (lead_id, model_version,
            behavior_at_last_activity, last_activity_at, breakdown, computed_at)
        SELECT lead_id, %(version)s, b_last, last_at,
               jsonb_build_object('a', to_jsonb(attribute_rules), 'b', behavior_rules), %(began)s
        FROM scoring_scored
        ON CONFLICT (lead_id) DO UPDATE SET
            model_version = EXCLUDED.model_version,
            behavior_at_last_activity = EXCLUDED.behavior_at_last_activity,
            last_activity_at = EXCLUDED.last_activity_at,
            breakdown = EXCLUDED.breakdown, computed_at = EXCLUDED.computed_at
        WHERE (st.model_version, st.behavior_at_last_activity, st.last_activity_at, st.breakdown)
            IS DISTINCT FROM (EXCLUDED.model_version, EXCLUDED.behavior_at_last_activity,
                              EXCLUDED.last_activity_at, EXCLUDED.breakdown)""",
        {"version": spec.version, "began": began},
    )


def _write_last_activity(leads: LeadSet) -> None:
    """The leads' last activity alone (no model to score them with)."""
    params = Params()
    engine.execute(
        f"""UPDATE leadops_lead l SET last_activity_at = greatest(l.last_activity_at, newest.at)
        FROM (SELECT id AS lead_id FROM leadops_lead WHERE {leads.where("id", params)}) s
        {_NEWEST_EVENT}
        WHERE s.lead_id = l.id AND {_LAST_ACTIVITY_MOVES}""",
        params,
    )


LEDGER_COLUMNS = (
    "lead_id, rule_id, rule_label, activity_id, points, model_version, reason, created_at"
)


def _write_summary_ledger(spec: ModelSpec, now: datetime, *, reason: str) -> None:
    engine.execute(
        f"""INSERT INTO scoring_scorechange ({LEDGER_COLUMNS})
        SELECT lead_id, NULL, '', NULL, score - old_score, %(version)s, %(reason)s, %(now)s
        FROM scoring_scored WHERE changed AND score <> old_score""",
        {"version": spec.version, "reason": str(reason), "now": now},
    )


def _write_event_ledger(spec: ModelSpec, now: datetime) -> None:
    """One row per newly scored event, one for an attribute change, and one for the rest
    (decay since the last rescore, caps re-ranked by a late event): a lead's rows always
    add up to its score. `scoring_awarded` holds the new events only (see
    engine.new_awarded_rows_sql): events scored before the model's activation are in its
    activation row, not here."""
    engine.execute(
        f"""WITH ev AS (
            INSERT INTO scoring_scorechange ({LEDGER_COLUMNS})
            SELECT aw.lead_id, aw.rule_id, r.label, aw.activity_id, aw.points, %(version)s,
                   'event', %(now)s
            FROM scoring_awarded aw
            JOIN scoring_behaviorrule r ON r.id = aw.rule_id
            -- "not yet in the ledger", as a LATERAL lookup by index: written as NOT
            -- EXISTS the planner may hash the whole ledger (scoring_awarded is not
            -- analysed, so it cannot tell one row from thousands).
            LEFT JOIN LATERAL (
                SELECT true AS found FROM scoring_scorechange sc
                WHERE sc.activity_id = aw.activity_id AND sc.reason = 'event' LIMIT 1
            ) ledgered ON true
            WHERE ledgered.found IS NULL
            RETURNING lead_id, points
        ), ev_sum AS (SELECT lead_id, sum(points) AS points FROM ev GROUP BY lead_id)
        INSERT INTO scoring_scorechange ({LEDGER_COLUMNS})
        SELECT s.lead_id, NULL, '', NULL, x.points, %(version)s, x.reason, %(now)s
        FROM scoring_scored s
        LEFT JOIN ev_sum e ON e.lead_id = s.lead_id
        CROSS JOIN LATERAL (VALUES
            ('attributes', s.attribute - s.old_attribute),
            (CASE WHEN s.behavior - s.old_behavior - coalesce(e.points, 0) < 0
                  THEN 'decay' ELSE 'recalculation' END,
             s.behavior - s.old_behavior - coalesce(e.points, 0))
        ) AS x(reason, points)
        WHERE x.points <> 0""",
        {"version": spec.version, "now": now},
    )


def chunk_result() -> RescoreResult:
    from handoff.services import MQL_ENTRY_STAGES

    row = engine.fetch(
        """SELECT count(*), count(*) FILTER (WHERE changed),
            count(*) FILTER (WHERE temperature <> old_temperature),
            count(*) FILTER (WHERE new_mql AND NOT old_mql),
            count(*) FILTER (WHERE old_mql AND NOT new_mql),
            count(*) FILTER (WHERE new_mql AND NOT old_mql AND stage = ANY(%(stages)s))
        FROM scoring_scored""",
        {"stages": sorted(MQL_ENTRY_STAGES)},
    )[0]
    return RescoreResult(*row)


def _record_fired_triggers(spec: ModelSpec, now: datetime) -> dict[int, str]:
    """Ledger rows (0 points) for the new events that fire a trigger; {lead id: label}."""
    params = Params(version=spec.version, now=now)
    rows = engine.fetch(
        f"""WITH fired AS ({engine.fired_triggers_sql(spec, params)})
        INSERT INTO scoring_scorechange ({LEDGER_COLUMNS})
        SELECT lead_id, NULL, label, activity_id, 0, %(version)s, 'trigger', %(now)s FROM fired
        RETURNING lead_id, rule_label""",
        params,
    )
    return {lead_id: label for lead_id, label in sorted(rows, reverse=True)}


def _hand_off(fired: dict[int, str]) -> list[int]:
    """Leads that crossed into the MQL rule or fired a trigger become MQLs (one call)."""
    from handoff.services import MQL_ENTRY_STAGES, mark_leads_mql

    candidates = engine.fetch(
        """SELECT lead_id, score FROM scoring_scored
        WHERE stage = ANY(%(stages)s) AND ((new_mql AND NOT old_mql) OR lead_id = ANY(%(fired)s))
        ORDER BY lead_id""",
        {"stages": sorted(MQL_ENTRY_STAGES), "fired": list(fired)},
    )
    reasons = {
        lead_id: _("Hand-off trigger: %s") % fired[lead_id]
        if lead_id in fired
        else _("MQL rule met with a score of %s") % score
        for lead_id, score in candidates
    }
    return [t.lead_id for t in mark_leads_mql(reasons)]
