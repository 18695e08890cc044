"""What-if: what activating a model would do, computed set-based without writing anything.

The same engine as the rescore scores every lead into the temp table (chunk by chunk,
inside one transaction that writes nothing else); the counts are those the activation
then reports, given the same data and clock.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from django.db import transaction
from django.utils import timezone

from leadops.models import Lead
from scoring import engine
from scoring.models import LeadScoreState, ScoringModel
from scoring.services.explain import breakdown_items, rule_catalog
from scoring.services.rescoring import RescoreResult, chunk_result, lead_sets
from scoring.spec import ModelSpec, active_spec, spec_for

SAMPLE_SIZE = 20
BUCKET_WIDTH = 10
TOP_BUCKET = 10  # 100 and more
BUCKET_SQL = "least(greatest(floor({col} / 10.0)::int, -1), 10)"


@dataclass
class _Totals:
    result: RescoreResult = field(default_factory=RescoreResult)
    old_histogram: Counter = field(default_factory=Counter)
    new_histogram: Counter = field(default_factory=Counter)
    moves: Counter = field(default_factory=Counter)
    samples: list[tuple] = field(default_factory=list)


def preview_model(
    model: ScoringModel, *, now: datetime | None = None, sample_size: int = SAMPLE_SIZE
) -> dict[str, Any]:
    """Old vs new score distribution, temperature and MQL changes, and sample leads."""
    now = now or timezone.now()
    spec, current = spec_for(model), active_spec()
    totals = _Totals()
    with transaction.atomic():
        for leads in lead_sets(None):
            engine.score_into_temp_table(spec, leads, now, old_spec=current or spec)
            _collect(totals, sample_size)
    totals.samples.sort(key=lambda row: (-abs(row[2] - row[1]), row[0]))
    return _report(spec, current, totals, totals.samples[:sample_size])


def _collect(totals: _Totals, sample_size: int) -> None:
    totals.result.add(chunk_result())
    buckets = engine.fetch(
        f"SELECT {BUCKET_SQL.format(col='old_score')}, {BUCKET_SQL.format(col='score')}, "
        "count(*) FROM scoring_scored GROUP BY 1, 2"
    )
    for old, new, count in buckets:
        totals.old_histogram[old] += count
        totals.new_histogram[new] += count
    moves = engine.fetch(
        "SELECT old_temperature, temperature, count(*) FROM scoring_scored "
        "WHERE old_temperature <> temperature GROUP BY 1, 2"
    )
    for old, new, count in moves:
        totals.moves[(old, new)] += count
    totals.samples += engine.fetch(
        "SELECT lead_id, old_score, score, old_temperature, temperature, attribute_rules, "
        "behavior_rules FROM scoring_scored WHERE score <> old_score "
        "ORDER BY abs(score - old_score) DESC, lead_id LIMIT %(n)s",
        {"n": sample_size},
    )


def _bucket_label(bucket: int) -> str:
    if bucket < 0:
        return "< 0"
    if bucket >= TOP_BUCKET:
        return f"{TOP_BUCKET * BUCKET_WIDTH}+"
    return f"{bucket * BUCKET_WIDTH}–{bucket * BUCKET_WIDTH + BUCKET_WIDTH - 1}"


def _report(
    spec: ModelSpec, current: ModelSpec | None, totals: _Totals, samples: list[tuple]
) -> dict[str, Any]:
    result = totals.result
    return {
        "model_version": spec.version,
        "compared_with_version": current.version if current else None,
        "leads": result.leads,
        "changed": result.changed,
        "histogram": [
            {
                "bucket": _bucket_label(b),
                "old": totals.old_histogram[b],
                "new": totals.new_histogram[b],
            }
            for b in range(-1, TOP_BUCKET + 1)
        ],
        "temperature_changed": result.temperature_changed,
        "temperature_moves": [
            {"from": old, "to": new, "count": count}
            for (old, new), count in sorted(totals.moves.items())
        ],
        "become_mql": result.would_become_mql,
        "meet_mql_rule": result.crossed_mql,
        "stop_meeting_mql_rule": result.stopped_mql,
        "samples": _sample_details(samples),
    }


def _sample_details(samples: list[tuple]) -> list[dict[str, Any]]:
    ids = [row[0] for row in samples]
    emails = dict(Lead.objects.filter(pk__in=ids).values_list("pk", "email"))
    old = dict(LeadScoreState.objects.filter(lead_id__in=ids).values_list("lead_id", "breakdown"))
    new = {row[0]: {"a": list(row[5] or []), "b": _json(row[6])} for row in samples}
    catalog = rule_catalog(*_rule_ids([*old.values(), *new.values()]))
    return [
        {
            "lead_id": lead_id,
            "email": emails.get(lead_id, ""),
            "old_score": old_score,
            "new_score": new_score,
            "old_temperature": old_temperature,
            "new_temperature": new_temperature,
            "rules": _moved_rules(old.get(lead_id, {}), new[lead_id], catalog),
        }
        for lead_id, old_score, new_score, old_temperature, new_temperature, *_rest in samples
    ]


def _json(value: Any) -> Any:
    # Django's connection returns jsonb from raw SQL as text.
    return json.loads(value) if isinstance(value, str) else value


def _rule_ids(breakdowns: list[dict]) -> tuple[set[int], set[int]]:
    attributes = {pk for b in breakdowns for pk in b.get("a", [])}
    behaviors = {row[0] for b in breakdowns for row in b.get("b", [])}
    return attributes, behaviors


def _moved_rules(old: dict, new: dict, catalog) -> list[dict[str, Any]]:
    """The rules whose points differ between the old and the new breakdown, by label."""
    before = Counter()
    after = Counter()
    for item in breakdown_items(old, catalog):
        before[item["rule"]] += item["points"]
    for item in breakdown_items(new, catalog):
        after[item["rule"]] += item["points"]
    labels = sorted(set(before) | set(after))
    return [
        {"rule": label, "old": before[label], "new": after[label]}
        for label in labels
        if before[label] != after[label]
    ]
