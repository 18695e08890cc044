"""The set-based scoring engine: SQL that scores a set of leads in a few statements.

`score_into_temp_table` fills the temp table `scoring_scored` with one row per lead of the
set: old values (the lead's columns), new attribute/behaviour/total score, temperature,
MQL flags and the breakdown. The services then write leads, states and the ledger from
it. The semantics are those of reference.py, and the numbers are equal to it bit for bit
(tested on random data):

  activities of the leads (+ time in µs, local day, each rule's match)
  → one sort, newest first → window passes: quiet time after each event (R), daily
  Nth, per-window and per-lead caps → per lead: Σ points × 0.5^(R / half-life) per rule
  → with the attribute rules (CASE per rule over the lead's fields) → per lead row.

Every value a marketer wrote reaches PostgreSQL as a bound parameter; only names from
code (columns from the allowlist, generated column names) are put into the SQL text.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from functools import lru_cache
from typing import Any
from zoneinfo import ZoneInfo

from django.conf import settings
from django.db import connection

from scoring.spec import (
    US_PER_DAY,
    AttributeSpec,
    BehaviorSpec,
    ModelSpec,
    TriggerSpec,
    epoch_us_sql,
    to_us,
)
from scoring.validators import FIELD_KINDS

UPPER = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
LOWER = "abcdefghijklmnopqrstuvwxyz"
SCORED_COLUMNS = (
    "lead_id, stage, old_attribute, old_behavior, old_score, old_temperature, attribute, "
    "b_last, last_at, behavior, attribute_rules, behavior_rules, score, temperature, "
    "new_mql, old_mql, changed"
)
# The scratch tables live as long as the database session and are emptied at every
# commit (and at the start of every use, for several uses in one transaction). Creating
# and dropping them per rescore wrote ~7 KB of catalog rows each time (pg_class,
# pg_attribute…): at 100 rescores/s the catalogs bloated by gigabytes a day and
# autovacuum's passes over them stalled rescores (the event → score latency swings).
SCORED_DDL = """
CREATE TEMP TABLE IF NOT EXISTS scoring_scored (
    lead_id bigint PRIMARY KEY, stage text, old_attribute int, old_behavior int,
    old_score int, old_temperature text, attribute int, b_last float8, last_at timestamptz,
    behavior int, attribute_rules bigint[], behavior_rules jsonb, score int,
    temperature text, new_mql bool, old_mql bool, changed bool
) ON COMMIT DELETE ROWS;
DELETE FROM scoring_scored;
"""
# After events: the leads' new events (see new_event_sql) and those of them awarded points.
NEW_EVENTS_DDL = """
CREATE TEMP TABLE IF NOT EXISTS scoring_new_events (
    lead_id bigint, activity_id bigint
) ON COMMIT DELETE ROWS;
DELETE FROM scoring_new_events;
CREATE TEMP TABLE IF NOT EXISTS scoring_awarded (
    lead_id bigint, activity_id bigint, rule_id bigint, points int
) ON COMMIT DELETE ROWS;
DELETE FROM scoring_awarded;
"""
ANALYZE_MIN_ROWS = 500
# An event received this long before a lead's previous rescore began was seen by it
# (its transaction had committed): far longer than any ingest transaction lasts, and
# than the clocks of web and worker hosts drift apart. See new_awarded_rows_sql.
NEW_EVENT_MARGIN = timedelta(minutes=5)


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
#
# The leads' activities are sorted once, newest first: by (lead, [-window bucket],
# -local day, time DESC, id DESC) — all monotonic in time, so this is reverse time order —
# and every window below reuses that sort (partitions are prefixes of it):
#   L1: each event's gap to the one before it, past the grace period ("excess"), and per
#       daily-Nth rule how many matching events that day up to and including this one;
#   L2: R = D_last − D_i, the excess of the quiet gaps after this event (a running sum of
#       the newer rows), and per capped-window rule the count so far in its window;
#   L3: per lead-capped rule the count so far.
# Per rule k: m_k (type and conditions hold) → e1_k (daily Nth) → e2_k (window cap)
# → a_k (lead cap), the earliest events counting first.
# Local days and windows are whole local calendar days counted from 1970-01-01.


@dataclass(frozen=True)
class _RuleFlags:
    match: str
    daily: str
    window: str
    awarded: str


def _flags(k: int, rule: BehaviorSpec) -> _RuleFlags:
    match = f"m_{k}"
    daily = f"({match} AND dc_{k} = {int(rule.daily_nth)})" if rule.daily_nth else match
    window = f"({daily} AND wc_{k} <= {int(rule.cap_per_window)})" if rule.cap_per_window else daily
    awarded = f"({window} AND lc_{k} <= {int(rule.cap_per_lead)})" if rule.cap_per_lead else window
    return _RuleFlags(match, daily, window, awarded)


def _window_sizes(rules: tuple[BehaviorSpec, ...]) -> list[int]:
    return sorted({int(r.window_days) for r in rules if r.cap_per_window})


def _needs_day(rules: tuple[BehaviorSpec, ...]) -> bool:
    return any(r.daily_nth or r.cap_per_window for r in rules)


@lru_cache(maxsize=8)
def fixed_utc_offset_us(zone: str) -> int | None:
    """The zone's UTC offset in µs if it has been the same since 2000 (Asia/Tokyo: +9 h)."""
    tz = ZoneInfo(zone)
    offsets = {
        datetime(year, month, 1, tzinfo=tz).utcoffset()
        for year in range(2000, 2101)
        for month in (1, 4, 7, 10)
    }
    if len(offsets) != 1:
        return None
    return offsets.pop() // timedelta(microseconds=1)


def _local_day_sql(params: Params) -> str:
    """Days since 1970-01-01 in the local calendar, as an integer (events are after 2000)."""
    offset = fixed_utc_offset_us(settings.TIME_ZONE)
    if offset is not None:  # integer arithmetic: much cheaper than a time zone conversion
        return f"((t_us + {int(offset)}) / {US_PER_DAY})"
    zone = params.add(settings.TIME_ZONE)
    return f"((occurred_at AT TIME ZONE {zone})::date - DATE '1970-01-01')"


def _sort_keys(rules: tuple[BehaviorSpec, ...]) -> tuple[list[str], list[str]]:
    """(the shared sort after lead_id, the day partition's keys after lead_id)."""
    sizes = _window_sizes(rules)
    # Days nest in the first window size's buckets, so partitioning days by
    # (bucket, day) keeps those windows on the same sort.
    bucket = [f"nb_{sizes[0]}"] if sizes else []
    day = ["nday"] if _needs_day(rules) else []
    return [*bucket, *day, "occurred_at DESC", "id DESC"], [*bucket, *day]


def _property_columns(rules: tuple[BehaviorSpec, ...], params: Params) -> dict[str, str]:
    """{property key: SQL text column}, each key read from the JSON once per activity."""
    keys: dict[str, set[str]] = {}
    for rule in rules:
        for key, _op, _value in rule.conditions:
            keys.setdefault(key, set()).add(rule.event_type)
    columns = {}
    for j, (key, types) in enumerate(sorted(keys.items())):
        k = params.add(key)
        in_types = ", ".join(params.add(t) for t in sorted(types))
        columns[key] = (
            f"CASE WHEN a.type IN ({in_types}) AND jsonb_typeof(a.properties -> {k}) = 'string' "
            f"THEN a.properties ->> {k} END AS p_{j}"
        )
    return columns


def _text_condition(text: str, op: str, value: Any, params: Params) -> str:
    if op == "equals":
        return f"{text} = {params.add(value)}"
    if op == "contains":
        return f"strpos({text}, {params.add(value)}) > 0"
    if op == "starts_with":
        return f"starts_with({text}, {params.add(value)})"
    return f"{text} = ANY({params.add(list(value))}::text[])"


def _level0(spec: ModelSpec, leads: LeadSet, params: Params) -> str:
    """Activities of the leads with time in µs, local day and each rule's match (m_k)."""
    rules = spec.behavior_rules
    properties = _property_columns(rules, params)
    names = {key: f"p_{j}" for j, key in enumerate(sorted(properties))}
    matches = [
        " AND ".join(
            [f"type = {params.add(r.event_type)}"]
            + [
                f"coalesce({_text_condition(names[key], op, value, params)}, false)"
                for key, op, value in r.conditions
            ]
        )
        + f" AS m_{k}"
        for k, r in enumerate(rules)
    ]
    day = _local_day_sql(params)
    local = [f"-{day} AS nday"] if _needs_day(rules) else []
    local += [f"-({day} / {w}) AS nb_{w}" for w in _window_sizes(rules)]
    # Events up to a lead's behaviour reset no longer count (see LeadScoreState). Few
    # leads have one: for id ranges the partial index finds them. Ids are looked up by
    # key, the set given here rather than the join's: joined, the planner hashed the
    # whole table (a scan of every lead's state for a thousand leads' rescore).
    if leads.ids is None:
        resets = "(SELECT * FROM scoring_leadscorestate WHERE behavior_reset_at IS NOT NULL)"
    else:
        resets = f"(SELECT * FROM scoring_leadscorestate WHERE {leads.where('lead_id', params)})"
    reset_join = f"LEFT JOIN {resets} rs ON rs.lead_id = a.lead_id"
    reset_where = "AND (rs.behavior_reset_at IS NULL OR a.occurred_at > rs.behavior_reset_at)"
    return f"""
      SELECT lead_id, id, occurred_at, received_at, scored_at, t_us{_columns(local)}
             {_columns(matches)} FROM (
        SELECT a.lead_id, a.id, a.occurred_at, a.type, a.received_at,
               rs.computed_at AS scored_at, {epoch_us_sql("a.occurred_at")} AS t_us
               {_columns(list(properties.values()))}
        FROM leadops_activity a {reset_join}
        WHERE {leads.where("a.lead_id", params)} {reset_where}
      OFFSET 0) raw"""


def behavior_rows_sql(spec: ModelSpec, leads: LeadSet, params: Params) -> str:
    """SELECT per activity of the leads: lead_id, id, occurred_at, received_at, scored_at
    (when the lead's previous rescore began, if it had one), the lead's last activity
    (last_us, last_at), r (µs of quiet time past the grace after it), a_k (rule k awards
    it)."""
    rules = spec.behavior_rules
    flags = [_flags(k, r) for k, r in enumerate(rules)]
    order, day_partition = _sort_keys(rules)
    newest_first = f"PARTITION BY lead_id ORDER BY {', '.join(order)}"
    up_to_here = "ROWS BETWEEN CURRENT ROW AND UNBOUNDED FOLLOWING"  # this and older events
    day_window = (
        f"PARTITION BY {', '.join(['lead_id', *day_partition])} "
        f"ORDER BY occurred_at DESC, id DESC {up_to_here}"
    )
    level1 = [
        f"count(*) FILTER (WHERE {f.match}) OVER ({day_window}) AS dc_{k}"
        for k, (f, r) in enumerate(zip(flags, rules, strict=True))
        if r.daily_nth
    ]
    level2 = [
        f"count(*) FILTER (WHERE {f.daily}) OVER (PARTITION BY lead_id, nb_{int(r.window_days)} "
        f"ORDER BY {', '.join(o for o in order if not o.startswith('nb_'))} {up_to_here}) "
        f"AS wc_{k}"
        for k, (f, r) in enumerate(zip(flags, rules, strict=True))
        if r.cap_per_window
    ]
    level3 = [
        f"count(*) FILTER (WHERE {f.window}) OVER ({newest_first} {up_to_here}) AS lc_{k}"
        for k, (f, r) in enumerate(zip(flags, rules, strict=True))
        if r.cap_per_lead
    ]
    awarded = ", ".join(f"{f.awarded} AS a_{k}" for k, f in enumerate(flags)) or "false AS a_none"
    grace = f"{int(spec.grace_us)}::bigint"
    newer = "ROWS BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING"
    return f"""
    SELECT lead_id, id, occurred_at, received_at, scored_at, last_us, last_at, r, {awarded}
    FROM (
      SELECT l2.*{_columns(level3)} FROM (
        SELECT l1.*, coalesce(sum(excess) OVER ({newest_first} {newer}), 0)::bigint AS r
               {_columns(level2)}
        FROM (
          SELECT l0.*,
                 greatest(0, t_us - lead(t_us) OVER ({newest_first}) - {grace}) AS excess,
                 first_value(t_us) OVER ({newest_first}) AS last_us,
                 first_value(occurred_at) OVER ({newest_first}) AS last_at
                 {_columns(level1)}
          FROM ({_level0(spec, leads, params)} OFFSET 0) l0
        OFFSET 0) l1
      OFFSET 0) l2
    OFFSET 0) l3"""


def _columns(items: list[str]) -> str:
    return "".join(f", {item}" for item in items)


def behavior_per_lead_sql(spec: ModelSpec, rows: str) -> str:
    """SELECT lead_id, b_last, last_us, last_at, rules (breakdown JSON) for leads with points,
    from `rows`: behavior_rows_sql's rows (a subquery in parentheses, or a CTE's name)."""
    rules = spec.behavior_rules
    if not rules:
        return (
            "SELECT NULL::bigint AS lead_id, NULL::float8 AS b_last, NULL::bigint AS last_us, "
            "NULL::timestamptz AS last_at, NULL::jsonb AS rules WHERE false"
        )
    hl = f"{int(spec.half_life_us)}::float8"
    per_rule = ", ".join(
        f"count(*) FILTER (WHERE a_{k}) AS n_{k}, sum(weight) FILTER (WHERE a_{k}) AS w_{k}"
        for k in range(len(rules))
    )
    any_awarded = " OR ".join(f"a_{k}" for k in range(len(rules)))
    # p × Σ weights per rule (summed newest first, the input order), then the rules in
    # order: the same float operations as reference.py, so the same result bit for bit.
    b_last = " + ".join(
        ["0::float8", *(f"coalesce({int(r.points)} * w_{k}, 0)" for k, r in enumerate(rules))]
    )
    items = ", ".join(
        f"CASE WHEN n_{k} > 0 "
        f"THEN jsonb_build_array({int(r.id)}, n_{k}, n_{k} * {int(r.points)}) END"
        for k, r in enumerate(rules)
    )
    any_rule = " OR ".join(f"n_{k} > 0" for k in range(len(rules)))
    return f"""
    SELECT lead_id, {b_last} AS b_last, last_us, last_at,
           to_jsonb(array_remove(ARRAY[{items}]::jsonb[], NULL)) AS rules
    FROM (
        SELECT lead_id, max(last_us) AS last_us, max(last_at) AS last_at, {per_rule}
        FROM (
            SELECT rows.*, power(0.5::float8, r::float8 / {hl}) AS weight
            FROM {rows} rows
            WHERE {any_awarded}
        ) awarded
        GROUP BY lead_id
    ) per_lead
    WHERE {any_rule}"""


def new_awarded_rows_sql(spec: ModelSpec, rows: str, params: Params) -> str:
    """SELECT (lead_id, activity_id, rule_id, points) of the new events (new_event_sql)
    awarded points, from behavior_rows_sql's `rows`."""
    rules = spec.behavior_rules
    if not rules:
        return (
            "SELECT NULL::bigint AS lead_id, NULL::bigint AS activity_id, "
            "NULL::bigint AS rule_id, NULL::int AS points WHERE false"
        )
    values = ", ".join(
        f"({int(r.id)}::bigint, a_{k}, {int(r.points)}::int)" for k, r in enumerate(rules)
    )
    return f"""
    SELECT r.lead_id, r.id AS activity_id, v.rule_id, v.points
    FROM {rows} r
    CROSS JOIN LATERAL (VALUES {values}) AS v(rule_id, hit, points)
    WHERE v.hit AND {new_event_sql("r", spec, params)}"""


def new_event_sql(alias: str, spec: ModelSpec, params: Params) -> str:
    """`alias` (a behaviour row: received_at, scored_at) is an event that the ledger may not
    have yet: the only events whose ledger rows and triggers a rescore after events
    writes or checks.

    New: received since the model's activation (earlier ones are in its activation row)
    and not long before the lead's previous rescore began (NEW_EVENT_MARGIN): that
    rescore saw every event committed before it, so only an event whose transaction was
    still open then can be older. A lead's older events are not looked up in the ledger
    at all, which was most of the cost of rescoring after an event (~20 lookups a lead
    where one event is new); the writers still check the ledger for these few.
    """
    since = params.add(spec.activated_at)
    margin = params.add(NEW_EVENT_MARGIN)
    return (
        f"{alias}.received_at >= coalesce({since}::timestamptz, '-infinity') AND "
        f"({alias}.scored_at IS NULL OR {alias}.received_at > {alias}.scored_at - {margin})"
    )


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
    rows: str | None = None,
) -> str:
    """SELECT of SCORED_COLUMNS: per lead, old values, new scores and the breakdown.

    `rows`: where behavior_rows_sql's rows are (a CTE's name); None computes them inline.
    """
    attribute, attribute_ids = _attribute_sql(spec, params)
    if rows is None and spec.behavior_rules:
        rows = f"({behavior_rows_sql(spec, leads, params)})"
    behavior = decay_sql("b.b_last", "b.last_us", spec, now, params)
    inner = f"""
    SELECT l.id AS lead_id, l.stage, l.attribute_score AS old_attribute,
           l.behavior_score AS old_behavior, l.score AS old_score,
           l.temperature AS old_temperature, {attribute} AS attribute,
           coalesce(b.b_last, 0)::float8 AS b_last, b.last_at,
           coalesce({behavior}, 0) AS behavior, {attribute_ids} AS attribute_rules,
           coalesce(b.rules, '[]'::jsonb) AS behavior_rules
    FROM leadops_lead l
    LEFT JOIN ({behavior_per_lead_sql(spec, rows)}) b ON b.lead_id = l.id
    WHERE {leads.where("l.id", params)}"""
    total = "(s.attribute + s.behavior)"
    temperature = temperature_sql(spec, total)
    new_mql = _mql_sql(spec, total, "s.behavior", "s.attribute")
    old_mql = _mql_sql(old_spec, "s.old_score", "s.old_behavior", "s.old_attribute")
    return f"""
SELECT s.*, {total} AS score, {temperature} AS temperature,
       {new_mql} AS new_mql, {old_mql} AS old_mql,
       (s.old_attribute, s.old_behavior, s.old_score, s.old_temperature)
         IS DISTINCT FROM (s.attribute, s.behavior, {total}, {temperature}) AS changed
FROM ({inner}) s"""


def tune_session() -> None:
    """For this transaction: no JIT (compiling these wide queries costs seconds) and room
    to sort a chunk's activities in memory."""
    execute(
        "SELECT set_config('jit', 'off', true), set_config('work_mem', %(mem)s, true)",
        {"mem": getattr(settings, "SCORING_WORK_MEM", "256MB")},
    )


def _with_sequential_scans(sql: str, params: Params) -> int:
    """Run a range chunk's statement reading the activities straight through the table.

    A lead's events are spread over the whole table (they arrive mixed with everyone
    else's), so a chunk of leads has rows on nearly every page, and the planner's bitmap
    scan visits every page in random order: ~20% slower for the whole rescore than
    reading the table in order (measured at 200k leads, 4M events).
    """
    scans = ("enable_bitmapscan", "enable_indexscan")
    before = fetch("SELECT " + ", ".join(f"current_setting('{name}')" for name in scans))[0]
    execute("SELECT " + ", ".join(f"set_config('{name}', 'off', true)" for name in scans))
    try:
        return execute(sql, params)
    finally:
        restore = ", ".join(f"set_config('{name}', %(v{k})s, true)" for k, name in enumerate(scans))
        execute(f"SELECT {restore}", {f"v{k}": value for k, value in enumerate(before)})


def score_into_temp_table(
    spec: ModelSpec,
    leads: LeadSet,
    now: datetime,
    *,
    old_spec: ModelSpec | None = None,
    keep_new_events: bool = False,
) -> None:
    """Fill `scoring_scored` (and, if asked, `scoring_new_events` and `scoring_awarded`:
    the leads' new events, and those of them awarded points); no other writes.

    With new events, all three come from one pass of the window functions over the
    leads' activities, kept (a materialised CTE) for the three readers.
    """
    tune_session()
    execute(SCORED_DDL)
    params = Params()
    if keep_new_events:
        execute(NEW_EVENTS_DDL)
        rows = behavior_rows_sql(spec, leads, params)
        select = scored_select(spec, old_spec or spec, leads, now, params, rows="behavior_rows")
        # Not analysed: their readers look each row up by index (LATERAL joins).
        sql = f"""WITH behavior_rows AS MATERIALIZED ({rows}),
            new_events AS (
                INSERT INTO scoring_new_events (lead_id, activity_id)
                SELECT r.lead_id, r.id FROM behavior_rows r WHERE {new_event_sql("r", spec, params)}
            ),
            awarded AS (
                INSERT INTO scoring_awarded (lead_id, activity_id, rule_id, points)
                {new_awarded_rows_sql(spec, "behavior_rows", params)}
            )
            INSERT INTO scoring_scored ({SCORED_COLUMNS}) {select}"""
    else:
        select = scored_select(spec, old_spec or spec, leads, now, params)
        sql = f"INSERT INTO scoring_scored ({SCORED_COLUMNS}) {select}"
    run = _with_sequential_scans if leads.ids is None else execute
    scored = run(sql, params)
    # Temp tables have no statistics until analysed. A rescore-all chunk's joins need
    # them; a few leads' do not (the planner's guess from the table's size will do), and
    # analysing on every event's rescore would churn pg_statistic.
    if scored >= ANALYZE_MIN_ROWS:
        execute("ANALYZE scoring_scored")


# --- triggers -----------------------------------------------------------------------------


def _match_case(rules, alias: str, id_column: str, params: Params) -> str:
    whens = " ".join(
        f"WHEN {int(r.id)} THEN {condition_sql(r.conditions, alias, params)}" for r in rules
    )
    return f"CASE {id_column} {whens} END"


def _trigger_values(rules: tuple[TriggerSpec, ...], params: Params) -> str:
    return ", ".join(
        f"({int(r.id)}::bigint, {params.add(r.event_type)}::text, {params.add(r.label)}::text, "
        f"{int(r.min_count)}::int, {params.add(r.within_days)}::int)"
        for r in rules
    )


def fired_triggers_sql(spec: ModelSpec, params: Params) -> str:
    """SELECT (lead_id, activity_id, label) of the leads' new events that fire a hand-off
    trigger: `scoring_new_events` (score_into_temp_table with keep_new_events) received in
    the last day and not yet in the ledger as a trigger. A trigger with min_count N fires
    on an event when the lead has at least N matching events in the `within_days` up to
    and including it.
    """
    rules = spec.trigger_rules
    return f"""
SELECT DISTINCT ON (c.activity_id) c.lead_id, c.activity_id, c.label FROM (
    SELECT a.lead_id, a.id AS activity_id, a.occurred_at, tr.*
    FROM scoring_new_events n
    JOIN leadops_activity a ON a.id = n.activity_id
    JOIN (VALUES {_trigger_values(rules, params)})
        AS tr(trigger_id, event_type, label, min_count, within_days)
      ON tr.event_type = a.type AND {_match_case(rules, "a", "tr.trigger_id", params)}
    WHERE a.received_at > statement_timestamp() - interval '1 day'
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
