"""The set-based scoring engine: SQL that scores a set of leads in a few statements.

`score_into_temp_table` fills the temp table `scoring_scored` with one row per lead of the
set: old values (the lead's columns), new attribute/behaviour/total score, temperature,
MQL flags and the breakdown. The services then write leads, states and the ledger from
it. The semantics are those of reference.py (tested equal on random data):

  acts → gaps (lag) → timed (running decay position D, per lead) → matched (event × rule)
  → [daily Nth] → [per-window cap] → [per-lead cap] → awarded → per rule → per lead.

Every value a marketer wrote reaches PostgreSQL as a bound parameter; only names from
code (columns from the allowlist, CTE names) are put into the SQL text.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from django.conf import settings
from django.db import connection

from scoring.spec import US_PER_DAY, AttributeSpec, BehaviorSpec, ModelSpec, TriggerSpec, to_us
from scoring.validators import FIELD_KINDS

UPPER = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
LOWER = "abcdefghijklmnopqrstuvwxyz"
RULE_COLUMNS = (
    "lead_id, activity_id, occurred_at, t_us, d, d_last, last_us, last_at, "
    "rule_id, points, daily_nth, window_days, window_cap, lead_cap"
)
SCORED_COLUMNS = (
    "lead_id, stage, old_attribute, old_behavior, old_score, old_temperature, attribute, "
    "b_last, last_at, behavior, attribute_rules, behavior_rules, score, temperature, "
    "new_mql, old_mql, changed"
)
SCORED_DDL = """
DROP TABLE IF EXISTS scoring_scored;
CREATE TEMP TABLE scoring_scored (
    lead_id bigint PRIMARY KEY, stage text, old_attribute int, old_behavior int,
    old_score int, old_temperature text, attribute int, b_last float8, last_at timestamptz,
    behavior int, attribute_rules bigint[], behavior_rules jsonb, score int,
    temperature text, new_mql bool, old_mql bool, changed bool
) ON COMMIT DROP;
"""
AWARDED_DDL = """
DROP TABLE IF EXISTS scoring_awarded;
CREATE TEMP TABLE scoring_awarded (
    lead_id bigint, activity_id bigint, rule_id bigint, points int, d bigint,
    d_last bigint, last_us bigint, last_at timestamptz
) ON COMMIT DROP;
"""


class Params(dict):
    """Named query parameters: `add` stores a value and returns its placeholder."""

    def add(self, value: Any) -> str:
        name = f"p{len(self)}"
        self[name] = value
        return f"%({name})s"


@dataclass(frozen=True)
class LeadSet:
    """Which leads a statement covers: explicit ids, or an id range (rescore-all chunks)."""

    ids: tuple[int, ...] | None = None
    low: int | None = None
    high: int | None = None

    def where(self, column: str, params: Params) -> str:
        if self.ids is not None:
            return f"{column} = ANY({params.add(list(self.ids))}::bigint[])"
        return f"{column} BETWEEN {params.add(self.low)} AND {params.add(self.high)}"


def execute(sql: str, params: dict | None = None) -> int:
    with connection.cursor() as cursor:
        cursor.execute(sql, params or None)
        return cursor.rowcount


def fetch(sql: str, params: dict | None = None) -> list[tuple]:
    with connection.cursor() as cursor:
        cursor.execute(sql, params or None)
        return cursor.fetchall()


# --- property conditions and attribute rules -----------------------------------------------


def condition_sql(conditions, alias: str, params: Params) -> str:
    """All conditions of a rule, as SQL on `alias`.properties (string values only)."""
    parts = [_one_condition(c, alias, params) for c in conditions]
    return " AND ".join(parts) if parts else "true"


def _one_condition(condition: tuple[str, str, Any], alias: str, params: Params) -> str:
    key, op, value = condition
    k = params.add(key)
    text = f"({alias}.properties ->> {k})"
    is_string = f"jsonb_typeof({alias}.properties -> {k}) = 'string'"
    if op == "equals":
        test = f"{text} = {params.add(value)}"
    elif op == "contains":
        test = f"strpos({text}, {params.add(value)}) > 0"
    elif op == "starts_with":
        test = f"starts_with({text}, {params.add(value)})"
    else:
        test = f"{text} = ANY({params.add(list(value))}::text[])"
    return f"({is_string} AND {test})"


def attribute_condition_sql(rule: AttributeSpec, params: Params) -> str:
    if rule.field not in FIELD_KINDS:  # allowlist: the column name goes into the SQL text
        raise ValueError(f"Unknown lead field {rule.field!r}")
    column, op, value = f"l.{rule.field}", rule.operator, rule.value
    array_type = "bigint[]" if FIELD_KINDS[rule.field] == "number" else "text[]"
    if op == "eq":
        return f"{column} = {params.add(value)}"
    if op == "in":
        return f"{column} = ANY({params.add(list(value))}::{array_type})"
    if op == "gte":
        return f"{column} >= {params.add(value)}"
    if op == "lte":
        return f"{column} <= {params.add(value)}"
    if op == "between":
        return f"{column} BETWEEN {params.add(value[0])} AND {params.add(value[1])}"
    if op == "contains":
        lowered = f"translate({column}, '{UPPER}', '{LOWER}')"
        return f"strpos({lowered}, translate({params.add(value)}, '{UPPER}', '{LOWER}')) > 0"
    return f"split_part(l.email, '@', 2) = ANY({params.add(list(value))}::text[])"


def _attribute_sql(spec: ModelSpec, params: Params) -> tuple[str, str]:
    """(attribute score expression, matched rule ids expression) over lead alias l."""
    if not spec.attribute_rules:
        return "0", "'{}'::bigint[]"
    conditions = [(r, attribute_condition_sql(r, params)) for r in spec.attribute_rules]
    score = " + ".join(f"(CASE WHEN {c} THEN {int(r.points)} ELSE 0 END)" for r, c in conditions)
    ids = ", ".join(f"CASE WHEN {c} THEN {int(r.id)} END" for r, c in conditions)
    return score, f"array_remove(ARRAY[{ids}]::bigint[], NULL)"


# --- behaviour: from activities to awarded events ------------------------------------------


def _rules_values(rules: tuple[BehaviorSpec, ...], params: Params) -> str:
    rows = [
        "("
        + ", ".join(
            [
                f"{int(r.id)}::bigint",
                f"{params.add(r.event_type)}::text",
                f"{int(r.points)}::int",
                f"{params.add(r.daily_nth)}::int",
                f"{params.add(r.window_days)}::int",
                f"{params.add(r.cap_per_window)}::int",
                f"{params.add(r.cap_per_lead)}::int",
            ]
        )
        + ")"
        for r in rules
    ]
    return ", ".join(rows)


def _match_case(rules, alias: str, id_column: str, params: Params) -> str:
    whens = " ".join(
        f"WHEN {int(r.id)} THEN {condition_sql(r.conditions, alias, params)}" for r in rules
    )
    return f"CASE {id_column} {whens} END"


def _timed_ctes(spec: ModelSpec, leads: LeadSet, params: Params, *, with_reset: bool) -> str:
    reset_join = (
        "LEFT JOIN scoring_leadscorestate rs ON rs.lead_id = a.lead_id" if with_reset else ""
    )
    reset_where = (
        "AND (rs.behavior_reset_at IS NULL OR a.occurred_at > rs.behavior_reset_at)"
        if with_reset
        else ""
    )
    grace = params.add(spec.grace_us)
    return f"""
acts AS (
    SELECT a.id, a.lead_id, a.type, a.occurred_at, a.properties,
           (extract(epoch FROM a.occurred_at) * 1000000)::bigint AS t_us
    FROM leadops_activity a {reset_join}
    WHERE {leads.where("a.lead_id", params)} {reset_where}
),
gaps AS (
    SELECT acts.*, greatest(0, t_us - lag(t_us) OVER (
        PARTITION BY lead_id ORDER BY occurred_at, id) - {grace}::bigint) AS excess
    FROM acts
),
timed AS (
    SELECT gaps.*,
           (sum(excess) OVER (PARTITION BY lead_id ORDER BY occurred_at, id
                              ROWS UNBOUNDED PRECEDING))::bigint AS d,
           (sum(excess) OVER (PARTITION BY lead_id))::bigint AS d_last,
           max(t_us) OVER (PARTITION BY lead_id) AS last_us,
           max(occurred_at) OVER (PARTITION BY lead_id) AS last_at
    FROM gaps
)"""


def _stage(name: str, source: str, applies: str, partition: str, keep: str) -> str:
    # Rules without this feature pass through untouched; the others are ranked.
    return f"""
{name} AS (
    SELECT {RULE_COLUMNS} FROM {source} WHERE NOT ({applies})
    UNION ALL
    SELECT {RULE_COLUMNS} FROM (
        SELECT {source}.*, row_number() OVER (
            PARTITION BY {partition} ORDER BY occurred_at, activity_id) AS rn
        FROM {source} WHERE {applies}
    ) ranked WHERE {keep}
)"""


def _cap_stages(rules: tuple[BehaviorSpec, ...], params: Params) -> tuple[list[str], str]:
    ctes, source = [], "matched"
    if any(r.daily_nth for r in rules):
        day = f"(occurred_at AT TIME ZONE {params.add(settings.TIME_ZONE)})::date"
        partition = f"lead_id, rule_id, {day}"
        ctes.append(_stage("daily", source, "daily_nth IS NOT NULL", partition, "rn = daily_nth"))
        source = "daily"
    if any(r.cap_per_window for r in rules):
        bucket = f"t_us / (window_days::bigint * {US_PER_DAY})"
        partition = f"lead_id, rule_id, {bucket}"
        keep = "rn <= window_cap"
        ctes.append(_stage("windowed", source, "window_cap IS NOT NULL", partition, keep))
        source = "windowed"
    if any(r.cap_per_lead for r in rules):
        keep = "rn <= lead_cap"
        ctes.append(_stage("capped", source, "lead_cap IS NOT NULL", "lead_id, rule_id", keep))
        source = "capped"
    return ctes, source


def awarded_ctes(spec: ModelSpec, leads: LeadSet, params: Params) -> str:
    """CTEs ending in `awarded`: one row per (event, rule) that scores, with its D values."""
    rules = spec.behavior_rules
    if not rules:
        return (
            "awarded AS (SELECT NULL::bigint AS lead_id, NULL::bigint AS activity_id, "
            "NULL::bigint AS rule_id, NULL::int AS points, NULL::bigint AS d, "
            "NULL::bigint AS d_last, NULL::bigint AS last_us, NULL::timestamptz AS last_at "
            "WHERE false)"
        )
    matched = f"""
matched AS (
    SELECT t.lead_id, t.id AS activity_id, t.occurred_at, t.t_us, t.d, t.d_last, t.last_us,
           t.last_at, r.rule_id, r.points, r.daily_nth, r.window_days, r.window_cap, r.lead_cap
    FROM timed t
    JOIN (VALUES {_rules_values(rules, params)})
        AS r(rule_id, event_type, points, daily_nth, window_days, window_cap, lead_cap)
      ON r.event_type = t.type AND {_match_case(rules, "t", "r.rule_id", params)}
)"""
    stages, source = _cap_stages(rules, params)
    ctes = [_timed_ctes(spec, leads, params, with_reset=_any_reset()), matched, *stages]
    ctes.append(f"awarded AS (SELECT {RULE_COLUMNS} FROM {source})")
    return ",".join(ctes)


def _any_reset() -> bool:
    from scoring.models import LeadScoreState

    return LeadScoreState.objects.filter(behavior_reset_at__isnull=False).exists()


# --- per lead -------------------------------------------------------------------------------


def _mql_sql(spec: ModelSpec, score: str, behavior: str, attribute: str) -> str:
    parts = []
    if spec.mql_total is not None:
        parts.append(f"{score} >= {int(spec.mql_total)}")
    if spec.mql_behavior is not None and spec.mql_attribute is not None:
        parts.append(
            f"({behavior} >= {int(spec.mql_behavior)} AND {attribute} >= {int(spec.mql_attribute)})"
        )
    return "(" + " OR ".join(parts or ["false"]) + ")"


def temperature_sql(spec: ModelSpec, score: str) -> str:
    return (
        f"CASE WHEN {score} >= {int(spec.hot)} THEN 'hot' "
        f"WHEN {score} >= {int(spec.warm)} THEN 'warm' ELSE 'cold' END"
    )


def decay_sql(b_last: str, last_us: str, spec: ModelSpec, now: datetime, params: Params) -> str:
    """round-half-up(b_last × 0.5^(max(0, now − last − grace) / half-life)) as SQL."""
    quiet = f"greatest(0, {params.add(to_us(now))}::bigint - {last_us} - {int(spec.grace_us)})"
    factor = f"power(0.5::float8, {quiet}::float8 / {int(spec.half_life_us)}::float8)"
    return f"floor({b_last} * {factor} + 0.5)::int"


def scored_select(
    spec: ModelSpec,
    old_spec: ModelSpec,
    leads: LeadSet,
    now: datetime,
    params: Params,
    *,
    awarded: str = "awarded",
) -> str:
    """CTEs per_rule/behavior and the SELECT of SCORED_COLUMNS, reading `awarded`."""
    attribute, attribute_ids = _attribute_sql(spec, params)
    behavior = decay_sql("b.b_last", "b.last_us", spec, now, params)
    inner = f"""
    SELECT l.id AS lead_id, l.stage, l.attribute_score AS old_attribute,
           l.behavior_score AS old_behavior, l.score AS old_score,
           l.temperature AS old_temperature, {attribute} AS attribute,
           coalesce(b.b_last, 0)::float8 AS b_last, b.last_at,
           coalesce({behavior}, 0) AS behavior, {attribute_ids} AS attribute_rules,
           coalesce(b.rules, '[]'::jsonb) AS behavior_rules
    FROM leadops_lead l LEFT JOIN behavior b ON b.lead_id = l.id
    WHERE {leads.where("l.id", params)}"""
    total = "(s.attribute + s.behavior)"
    new_mql = _mql_sql(spec, total, "s.behavior", "s.attribute")
    old_mql = _mql_sql(old_spec, "s.old_score", "s.old_behavior", "s.old_attribute")
    hl = f"{int(spec.half_life_us)}::float8"
    return f"""
per_rule AS (
    SELECT lead_id, rule_id, count(*) AS n, sum(points) AS pts,
           sum(points * power(0.5::float8, (d_last - d)::float8 / {hl})) AS decayed,
           max(last_us) AS last_us, max(last_at) AS last_at
    FROM {awarded} GROUP BY lead_id, rule_id
),
behavior AS (
    SELECT lead_id, sum(decayed) AS b_last, max(last_us) AS last_us, max(last_at) AS last_at,
           jsonb_agg(jsonb_build_array(rule_id, n, pts) ORDER BY rule_id) AS rules
    FROM per_rule GROUP BY lead_id
)
SELECT s.*, {total} AS score, {temperature_sql(spec, total)} AS temperature,
       {new_mql} AS new_mql, {old_mql} AS old_mql,
       (s.old_attribute, s.old_behavior, s.old_score, s.old_temperature)
         IS DISTINCT FROM (s.attribute, s.behavior, {total}, {temperature_sql(spec, total)})
         AS changed
FROM ({inner}) s"""


def score_into_temp_table(
    spec: ModelSpec,
    leads: LeadSet,
    now: datetime,
    *,
    old_spec: ModelSpec | None = None,
    keep_awarded: bool = False,
) -> None:
    """Fill `scoring_scored` (and `scoring_awarded` if asked) for the leads; no other writes."""
    execute(SCORED_DDL)
    old_spec = old_spec or spec
    params = Params()
    if keep_awarded:
        execute(AWARDED_DDL)
        columns = "lead_id, activity_id, rule_id, points, d, d_last, last_us, last_at"
        awarded = f"WITH {awarded_ctes(spec, leads, params)} SELECT {columns} FROM awarded"
        execute(f"INSERT INTO scoring_awarded ({columns}) {awarded}", params)
        params = Params()
        select = scored_select(spec, old_spec, leads, now, params, awarded="scoring_awarded")
        sql = f"WITH {select}"
    else:
        select = scored_select(spec, old_spec, leads, now, params)
        sql = f"WITH {awarded_ctes(spec, leads, params)}, {select}"
    execute(f"INSERT INTO scoring_scored ({SCORED_COLUMNS}) {sql}", params)


# --- triggers -----------------------------------------------------------------------------


def _trigger_values(rules: tuple[TriggerSpec, ...], params: Params) -> str:
    return ", ".join(
        f"({int(r.id)}::bigint, {params.add(r.event_type)}::text, {params.add(r.label)}::text, "
        f"{int(r.min_count)}::int, {params.add(r.within_days)}::int)"
        for r in rules
    )


def fired_triggers_sql(spec: ModelSpec, leads: LeadSet, params: Params) -> str:
    """SELECT (lead_id, activity_id, label) of new events that fire a hand-off trigger.

    New: received since the model was activated and in the last day, and not yet in the
    ledger as a trigger. A trigger with min_count N fires on an event when the lead has
    at least N matching events in the `within_days` up to and including it.
    """
    rules = spec.trigger_rules
    since = params.add(spec.activated_at)
    return f"""
SELECT DISTINCT ON (c.activity_id) c.lead_id, c.activity_id, c.label FROM (
    SELECT a.lead_id, a.id AS activity_id, a.occurred_at, tr.*
    FROM leadops_activity a
    JOIN (VALUES {_trigger_values(rules, params)})
        AS tr(trigger_id, event_type, label, min_count, within_days)
      ON tr.event_type = a.type AND {_match_case(rules, "a", "tr.trigger_id", params)}
    WHERE {leads.where("a.lead_id", params)}
      AND a.received_at >= coalesce({since}::timestamptz, '-infinity')
      AND a.received_at > statement_timestamp() - interval '1 day'
      AND NOT EXISTS (SELECT 1 FROM scoring_scorechange sc
                      WHERE sc.activity_id = a.id AND sc.reason = 'trigger')
) c
WHERE c.min_count <= 1 OR (
    SELECT count(*) FROM leadops_activity p
    WHERE p.lead_id = c.lead_id AND p.type = c.event_type
      AND p.occurred_at <= c.occurred_at
      AND p.occurred_at > c.occurred_at - make_interval(days => c.within_days)
      AND {_match_case(rules, "p", "c.trigger_id", params)}
) >= c.min_count
ORDER BY c.activity_id, c.trigger_id"""
