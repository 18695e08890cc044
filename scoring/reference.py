"""The scoring semantics in plain Python, one lead at a time.

This is the reference the set-based SQL engine (engine.py) is tested against: both must
give the same numbers for any lead, events, model and clock. Keep them in step.

Behaviour score with decay that resets on activity: order the lead's events by
(occurred_at, id); each quiet gap longer than the grace period adds its excess to a
running "decay position" D. An awarded event's points count ×0.5^((D_last − D_i) /
half-life), their sum is the score as it stood at the last activity, and the score now
is that × 0.5^(max(0, now − last activity − grace) / half-life), rounded half up.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime
from typing import Any, Protocol
from zoneinfo import ZoneInfo

from django.conf import settings

from scoring.engine import fixed_utc_offset_us
from scoring.spec import US_PER_DAY, AttributeSpec, BehaviorSpec, ModelSpec, spec_for, to_us
from scoring.validators import ascii_lower

# Per-window caps use fixed windows of N local calendar days, counted from 1970-01-01.
EPOCH_DAY = date(1970, 1, 1)


class EventLike(Protocol):
    id: int
    type: str
    occurred_at: datetime
    properties: Any


@dataclass
class LeadScore:
    attribute: int
    behavior: int
    score: int
    temperature: str
    is_mql: bool
    behavior_at_last_activity: float = 0.0
    last_activity_at: datetime | None = None
    attribute_rule_ids: list[int] = field(default_factory=list)
    # [(behaviour rule id, times awarded, undecayed points)], by rule id.
    behavior_rules: list[tuple[int, int, int]] = field(default_factory=list)


def compute_lead_score(
    lead: Any,
    events: Iterable[EventLike],
    model: Any,
    now: datetime,
    *,
    behavior_reset_at: datetime | None = None,
) -> LeadScore:
    """The lead's scores under `model` at `now`, from its fields and all its events."""
    spec = spec_for(model)
    attribute_ids = [r.id for r in spec.attribute_rules if attribute_matches(r, lead)]
    attribute = sum(r.points for r in spec.attribute_rules if r.id in attribute_ids)
    ordered = sorted(
        (e for e in events if behavior_reset_at is None or e.occurred_at > behavior_reset_at),
        key=lambda e: (e.occurred_at, e.id),
    )
    b_last, rules = _behavior_at_last_activity(ordered, spec)
    behavior = _decayed_now(b_last, ordered[-1].occurred_at, spec, now) if rules else 0
    score = attribute + behavior
    return LeadScore(
        attribute=attribute,
        behavior=behavior,
        score=score,
        temperature=spec.temperature_for(score),
        is_mql=spec.is_mql(score=score, behavior=behavior, attribute=attribute),
        behavior_at_last_activity=b_last,
        last_activity_at=ordered[-1].occurred_at if rules else None,
        attribute_rule_ids=attribute_ids,
        behavior_rules=rules,
    )


def half_up(value: float) -> int:
    """Round half up, as the SQL does (floor(x + 0.5))."""
    return math.floor(value + 0.5)


def decay_factor(quiet_us: int, spec: ModelSpec) -> float:
    return math.pow(0.5, max(0, quiet_us - spec.grace_us) / spec.half_life_us)


def _decayed_now(b_last: float, last_at: datetime, spec: ModelSpec, now: datetime) -> int:
    return half_up(b_last * decay_factor(to_us(now) - to_us(last_at), spec))


def _behavior_at_last_activity(
    ordered: Sequence[EventLike], spec: ModelSpec
) -> tuple[float, list[tuple[int, int, int]]]:
    positions = decay_positions([to_us(e.occurred_at) for e in ordered], spec.grace_us)
    total, rules = 0.0, []
    for rule in spec.behavior_rules:
        awarded = awarded_indexes(rule, ordered)
        if not awarded:
            continue
        # Points × the sum of the weights: the SQL does the same float operations in the
        # same order, so both give the same number bit for bit.
        weights = 0.0
        for i in reversed(awarded):  # newest first, as the SQL sums them
            weights += math.pow(0.5, (positions[-1] - positions[i]) / spec.half_life_us)
        total += rule.points * weights
        rules.append((rule.id, len(awarded), rule.points * len(awarded)))
    return total, rules


def decay_positions(times_us: Sequence[int], grace_us: int) -> list[int]:
    """D_i: the running sum of each quiet gap's excess over the grace period (µs)."""
    positions, position = [], 0
    for i, moment in enumerate(times_us):
        if i:
            position += max(0, moment - times_us[i - 1] - grace_us)
        positions.append(position)
    return positions


# --- which events a behaviour rule awards ----------------------------------------------


def awarded_indexes(rule: BehaviorSpec, ordered: Sequence[EventLike]) -> list[int]:
    """Indexes into `ordered` of the events the rule awards, after its day rule and caps."""
    chosen = [i for i, e in enumerate(ordered) if event_matches(rule, e)]
    if rule.daily_nth:
        chosen = _keep_ranked(chosen, ordered, _local_day, lambda rank: rank == rule.daily_nth)
    if rule.cap_per_window:
        chosen = _keep_ranked(
            chosen,
            ordered,
            lambda e: _local_day(e) // rule.window_days,
            lambda rank: rank <= rule.cap_per_window,
        )
    if rule.cap_per_lead:
        chosen = chosen[: rule.cap_per_lead]
    return chosen


def _keep_ranked(chosen: list[int], ordered: Sequence[EventLike], key, keep) -> list[int]:
    # Rank each event within its partition (day or window), earliest first.
    seen: Counter = Counter()
    kept = []
    for i in chosen:
        part = key(ordered[i])
        seen[part] += 1
        if keep(seen[part]):
            kept.append(i)
    return kept


def _local_day(event: EventLike) -> int:
    """Days since 1970-01-01 in the local calendar, computed as the SQL does."""
    offset = fixed_utc_offset_us(settings.TIME_ZONE)
    if offset is not None:
        return (to_us(event.occurred_at) + offset) // US_PER_DAY
    return (event.occurred_at.astimezone(ZoneInfo(settings.TIME_ZONE)).date() - EPOCH_DAY).days


def event_matches(rule: Any, event: EventLike) -> bool:
    return event.type == rule.event_type and all(
        condition_holds(c, event.properties) for c in rule.conditions
    )


def condition_holds(condition: tuple[str, str, Any], properties: Any) -> bool:
    key, op, value = condition
    text = properties.get(key) if isinstance(properties, dict) else None
    if not isinstance(text, str):
        return False
    if op == "equals":
        return text == value
    if op == "contains":
        return value in text
    if op == "starts_with":
        return text.startswith(value)
    return text in value  # "in"


# --- attribute rules ---------------------------------------------------------------------


def attribute_matches(rule: AttributeSpec, lead: Any) -> bool:
    raw = getattr(lead, rule.field)
    if raw is None:
        return False
    op, value = rule.operator, rule.value
    if op == "eq":
        return raw == value
    if op == "in":
        return raw in value
    if op == "gte":
        return raw >= value
    if op == "lte":
        return raw <= value
    if op == "between":
        return value[0] <= raw <= value[1]
    if op == "contains":
        return ascii_lower(value) in ascii_lower(raw)
    return email_domain(raw) in value  # "email_domain_in"


def email_domain(email: str) -> str:
    parts = email.split("@")
    return parts[1] if len(parts) > 1 else ""
