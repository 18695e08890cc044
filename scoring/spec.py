"""A scoring model as plain immutable data: what both engines (SQL and Python) read.

Rules of an active or archived model never change, so a compiled spec is cached per
process, keyed by the model and its activation time; drafts are compiled every time.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from scoring.models import ModelStatus, ScoringModel, meets_mql_rule, temperature_for_score

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
US_PER_DAY = 86_400_000_000


def to_us(moment: datetime) -> int:
    """Microseconds since the epoch as the SQL computes them: `epoch_us_sql`.

    date_part('epoch') is a float8 of seconds (far cheaper than the numeric extract);
    × 1e6 rounded (half even, like ::bigint) gives back the exact microseconds until
    2041 and at most 1 µs off after. Python repeats the same float operations.
    """
    exact = (moment - EPOCH) // timedelta(microseconds=1)
    return round(exact / 1_000_000 * 1_000_000)


def epoch_us_sql(column: str) -> str:
    return f"(date_part('epoch', {column}) * 1000000)::bigint"


@dataclass(frozen=True)
class AttributeSpec:
    id: int
    label: str
    field: str
    operator: str
    value: Any
    points: int


@dataclass(frozen=True)
class BehaviorSpec:
    id: int
    label: str
    event_type: str
    conditions: tuple[tuple[str, str, Any], ...]
    points: int
    cap_per_lead: int | None = None
    cap_per_window: int | None = None
    window_days: int | None = None
    daily_nth: int | None = None


@dataclass(frozen=True)
class TriggerSpec:
    id: int
    label: str
    event_type: str
    conditions: tuple[tuple[str, str, Any], ...]
    min_count: int = 1
    within_days: int | None = None


@dataclass(frozen=True)
class ModelSpec:
    id: int
    version: int
    activated_at: datetime | None
    warm: int
    hot: int
    mql_total: int | None
    mql_behavior: int | None
    mql_attribute: int | None
    grace_us: int
    half_life_us: int
    attribute_rules: tuple[AttributeSpec, ...]
    behavior_rules: tuple[BehaviorSpec, ...]
    trigger_rules: tuple[TriggerSpec, ...]

    def temperature_for(self, score: int) -> str:
        return temperature_for_score(score, warm=self.warm, hot=self.hot)

    def is_mql(self, *, score: int, behavior: int, attribute: int) -> bool:
        return meets_mql_rule(self, score=score, behavior=behavior, attribute=attribute)


def _conditions(raw: list[dict[str, Any]]) -> tuple[tuple[str, str, Any], ...]:
    return tuple(
        (c["key"], c["op"], tuple(c["value"]) if c["op"] == "in" else c["value"]) for c in raw
    )


def compile_model(model: ScoringModel) -> ModelSpec:
    """The model and its rules as a ModelSpec (cached for models that can no longer change)."""
    if model.status == ModelStatus.DRAFT:
        return _compile(model)
    key = (model.pk, model.activated_at)
    if key not in _CACHE:
        _CACHE[key] = _compile(model)
    return _CACHE[key]


_CACHE: dict[tuple[int, datetime | None], ModelSpec] = {}


def _compile(model: ScoringModel) -> ModelSpec:
    return ModelSpec(
        id=model.pk,
        version=model.version,
        activated_at=model.activated_at,
        warm=model.warm_threshold,
        hot=model.hot_threshold,
        mql_total=model.mql_total,
        mql_behavior=model.mql_behavior,
        mql_attribute=model.mql_attribute,
        grace_us=model.decay_grace_days * US_PER_DAY,
        half_life_us=model.decay_half_life_days * US_PER_DAY,
        attribute_rules=tuple(_attribute_specs(model)),
        behavior_rules=tuple(_behavior_specs(model)),
        trigger_rules=tuple(_trigger_specs(model)),
    )


def _attribute_specs(model: ScoringModel) -> list[AttributeSpec]:
    return [
        AttributeSpec(r.pk, r.label, r.field, r.operator, r.value, r.points)
        for r in model.attribute_rules.order_by("id")
    ]


def _behavior_specs(model: ScoringModel) -> list[BehaviorSpec]:
    return [
        BehaviorSpec(
            id=r.pk,
            label=r.label,
            event_type=r.event_type,
            conditions=_conditions(r.conditions),
            points=r.points,
            cap_per_lead=r.cap_per_lead,
            cap_per_window=r.cap_per_window,
            window_days=r.window_days,
            daily_nth=r.daily_nth,
        )
        for r in model.behavior_rules.order_by("id")
    ]


def _trigger_specs(model: ScoringModel) -> list[TriggerSpec]:
    return [
        TriggerSpec(
            id=r.pk,
            label=r.label,
            event_type=r.event_type,
            conditions=_conditions(r.conditions),
            min_count=r.min_count,
            within_days=r.within_days,
        )
        for r in model.trigger_rules.order_by("id")
    ]


def active_spec() -> ModelSpec | None:
    """The active model's spec, or None when no model is active."""
    model = ScoringModel.objects.active().first()
    return compile_model(model) if model else None


def spec_for(model: ScoringModel | ModelSpec | None) -> ModelSpec | None:
    if model is None:
        return active_spec()
    if isinstance(model, ModelSpec):
        return model
    return compile_model(model)
