"""Segments: saved lead filters built only from an allowlist.

A segment's `conditions` is a list of `{"field", "op", "value"}`; every condition must
hold (AND), and "is one of" gives OR within one field. Fields, operators and value
types come from `FIELDS` below: the query is built from our own lookups, never from a
name the user wrote, so "owner__password" or a raw SQL fragment is simply an unknown
field. Values are checked and normalised (codes of choices, whole numbers, booleans)
before anything reaches the database.

| field | ops | value |
| --- | --- | --- |
| job_level, department, industry, temperature, stage | eq, in | code or label / list |
| region, source, title | eq, in, contains | text / list of texts |
| employee_count, score, attribute_score, behavior_score | gte, lte, between | int / [lo, hi] |
| owner | eq, empty | username / none |
| unsubscribed, consent | is | true / false |
| activity | has, has_not | {"type": event type or "" for any, "days": 1–3650} |

Unsubscribed leads may be in a segment (to count them); enrollment never takes them
(`nurturing.enrollment`), so they are never mailed.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.exceptions import ValidationError
from django.db import OperationalError, connection, transaction
from django.db.models import Count, Exists, OuterRef, Q, QuerySet
from django.utils import timezone, translation
from django.utils.translation import gettext as _
from django.utils.translation import gettext_lazy

from leadops.models import (
    Activity,
    Department,
    EventType,
    Industry,
    JobLevel,
    Lead,
    Stage,
    Temperature,
)

MAX_CONDITIONS = 30
MAX_LIST_ITEMS = 500
MAX_TEXT_LENGTH = 200
MAX_NUMBER = 1_000_000_000
MAX_DAYS = 3650
# Stages a lead may be nurtured in; the other stages belong to IS and sales.
NURTURABLE_STAGES = (Stage.NEW, Stage.NURTURING)

OP_LABELS: dict[str, Any] = {
    "eq": gettext_lazy("is"),
    "in": gettext_lazy("is one of"),
    "contains": gettext_lazy("contains"),
    "gte": gettext_lazy("at least"),
    "lte": gettext_lazy("at most"),
    "between": gettext_lazy("between (inclusive)"),
    "empty": gettext_lazy("is empty"),
    "is": gettext_lazy("is (yes / no)"),
    "has": gettext_lazy("did, within the last N days"),
    "has_not": gettext_lazy("did not, within the last N days"),
}


@dataclass(frozen=True)
class FieldSpec:
    """One allowlisted field: its label, kind, operators and (for choices) codes."""

    label: Any
    kind: str
    ops: tuple[str, ...]
    choices: tuple[tuple[str, Any], ...] = ()


_CHOICE_OPS = ("eq", "in")
_TEXT_OPS = ("eq", "in", "contains")
_NUMBER_OPS = ("gte", "lte", "between")

FIELDS: dict[str, FieldSpec] = {
    "job_level": FieldSpec(
        gettext_lazy("job level"), "choice", _CHOICE_OPS, tuple(JobLevel.choices)
    ),
    "department": FieldSpec(
        gettext_lazy("department"), "choice", _CHOICE_OPS, tuple(Department.choices)
    ),
    "industry": FieldSpec(gettext_lazy("industry"), "choice", _CHOICE_OPS, tuple(Industry.choices)),
    "employee_count": FieldSpec(gettext_lazy("employee count"), "number", _NUMBER_OPS),
    "region": FieldSpec(gettext_lazy("region"), "text", _TEXT_OPS),
    "source": FieldSpec(gettext_lazy("source"), "text", _TEXT_OPS),
    "title": FieldSpec(gettext_lazy("title"), "text", _TEXT_OPS),
    "score": FieldSpec(gettext_lazy("score"), "number", _NUMBER_OPS),
    "attribute_score": FieldSpec(gettext_lazy("attribute score"), "number", _NUMBER_OPS),
    "behavior_score": FieldSpec(gettext_lazy("behavior score"), "number", _NUMBER_OPS),
    "temperature": FieldSpec(
        gettext_lazy("temperature"), "choice", _CHOICE_OPS, tuple(Temperature.choices)
    ),
    "stage": FieldSpec(gettext_lazy("stage"), "choice", _CHOICE_OPS, tuple(Stage.choices)),
    "owner": FieldSpec(gettext_lazy("owner"), "owner", ("eq", "empty")),
    "unsubscribed": FieldSpec(gettext_lazy("unsubscribed"), "bool", ("is",)),
    "consent": FieldSpec(gettext_lazy("consent to contact"), "bool", ("is",)),
    "activity": FieldSpec(
        gettext_lazy("activity"), "activity", ("has", "has_not"), tuple(EventType.choices)
    ),
}


class _Invalid(Exception):
    """One condition's problem, as a sentence for the marketer."""


# --- validation ----------------------------------------------------------------------------


def validate_conditions(conditions: Any) -> list[list[str]]:
    """One list of error sentences per condition, in order (empty when it is valid).

    When `conditions` itself is unusable (not a list, too many), the answer is a single
    list holding that sentence.
    """
    try:
        _check_list(conditions)
    except _Invalid as exc:
        return [[str(exc)]]
    return [_errors_of(condition) for condition in conditions]


def clean_conditions(conditions: Any) -> list[dict[str, Any]]:
    """The conditions normalised (codes, whole numbers, booleans), or ValidationError with
    one sentence per bad condition ("Condition 2: …")."""
    try:
        _check_list(conditions)
    except _Invalid as exc:
        raise ValidationError(str(exc), code="invalid_conditions") from None
    cleaned, messages = [], []
    for number, condition in enumerate(conditions, start=1):
        try:
            cleaned.append(_clean(condition))
        except _Invalid as exc:
            messages.append(_("Condition %(number)s: %(error)s") % {"number": number, "error": exc})
    if messages:
        raise ValidationError(messages, code="invalid_conditions")
    return cleaned


def clean_condition(condition: Any) -> dict[str, Any]:
    """One condition normalised, or ValidationError with a sentence saying what to write."""
    try:
        return _clean(condition)
    except _Invalid as exc:
        raise ValidationError(str(exc), code="invalid_condition") from None


def _errors_of(condition: Any) -> list[str]:
    try:
        _clean(condition)
    except _Invalid as exc:
        return [str(exc)]
    return []


def _check_list(conditions: Any) -> None:
    if not isinstance(conditions, list):
        raise _Invalid(_("Conditions must be a list of {field, op, value} objects."))
    if len(conditions) > MAX_CONDITIONS:
        raise _Invalid(
            _("A segment has at most %(max)s conditions; split it into two segments.")
            % {"max": MAX_CONDITIONS}
        )


def _clean(condition: Any) -> dict[str, Any]:
    if not isinstance(condition, dict):
        raise _Invalid(_("Each condition must be an object with field, op and value."))
    unknown = set(condition) - {"field", "op", "value"}
    if unknown:
        raise _Invalid(
            _("Unknown keys %(keys)s: a condition has only field, op and value.")
            % {"keys": ", ".join(sorted(map(str, unknown)))}
        )
    spec = _field_spec(condition.get("field"))
    op = _op_for(spec, condition.get("op"))
    value = _VALUE_CLEANERS[spec.kind](spec, op, condition.get("value"))
    return {"field": condition["field"], "op": op, "value": value}


def _field_spec(field: Any) -> FieldSpec:
    if isinstance(field, str) and field in FIELDS:
        return FIELDS[field]
    shown = field if isinstance(field, str) else repr(field)
    raise _Invalid(
        _("“%(field)s” is not a field segments can filter on. Use one of: %(fields)s.")
        % {"field": str(shown)[:60], "fields": ", ".join(FIELDS)}
    )


def _op_for(spec: FieldSpec, op: Any) -> str:
    if isinstance(op, str) and op in spec.ops:
        return op
    return _raise(
        _("“%(op)s” cannot be used with %(field)s; use one of: %(ops)s.")
        % {
            "op": str(op)[:30],
            "field": spec.label,
            "ops": ", ".join(f"{name} ({OP_LABELS[name]})" for name in spec.ops),
        }
    )


def _raise(message: str) -> Any:
    raise _Invalid(message)


def _clean_choice(spec: FieldSpec, op: str, value: Any) -> Any:
    if op == "in":
        return _dedupe(_choice_code(spec, item) for item in _nonempty_list(spec, value))
    return _choice_code(spec, value)


def _choice_code(spec: FieldSpec, value: Any) -> str:
    """The code of a choice, given its code or its label (English or Japanese)."""
    text = value.strip() if isinstance(value, str) else None
    codes = [code for code, _label in spec.choices]
    if text in codes:
        return text
    if text:
        for code, label in spec.choices:
            if text.casefold() in _label_forms(label):
                return code
    return _raise(
        _("%(value)s is not a valid %(field)s; choose from: %(choices)s.")
        % {"value": _shown(value), "field": spec.label, "choices": ", ".join(codes)}
    )


def _label_forms(label: Any) -> set[str]:
    forms = set()
    for language in ("en", "ja"):
        with translation.override(language):
            forms.add(str(label).casefold())
    return forms


def _clean_text(spec: FieldSpec, op: str, value: Any) -> Any:
    if op == "in":
        return _dedupe(_one_text(spec, item) for item in _nonempty_list(spec, value))
    return _one_text(spec, value)


def _one_text(spec: FieldSpec, value: Any) -> str:
    if isinstance(value, str) and 0 < len(value.strip()) <= MAX_TEXT_LENGTH:
        return value.strip()
    return _raise(
        _("Write the %(field)s as text of 1 to %(max)s characters.")
        % {"field": spec.label, "max": MAX_TEXT_LENGTH}
    )


def _nonempty_list(spec: FieldSpec, value: Any) -> list[Any]:
    if isinstance(value, list) and 0 < len(value) <= MAX_LIST_ITEMS:
        return value
    return _raise(
        _("“is one of” needs a list of 1 to %(max)s values for %(field)s.")
        % {"max": MAX_LIST_ITEMS, "field": spec.label}
    )


def _dedupe(values: Any) -> list[Any]:
    return list(dict.fromkeys(values))


def _clean_number(spec: FieldSpec, op: str, value: Any) -> Any:
    if op != "between":
        return _whole_number(spec, value)
    if not isinstance(value, list) or len(value) != 2:
        _raise(_("“between” needs two numbers, the lowest and the highest."))
    low, high = (_whole_number(spec, item) for item in value)
    if low > high:
        _raise(_("The first number of “between” must not be above the second."))
    return [low, high]


def _whole_number(spec: FieldSpec, value: Any) -> int:
    if isinstance(value, str) and value.strip().lstrip("-").isdigit():
        value = int(value.strip())
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) <= MAX_NUMBER:
        return value
    return _raise(
        _("%(value)s is not a whole number; %(field)s needs one (e.g. 50).")
        % {"value": _shown(value), "field": spec.label}
    )


def _clean_bool(spec: FieldSpec, op: str, value: Any) -> bool:
    if isinstance(value, bool):
        return value
    return _raise(_("%(field)s is either true or false.") % {"field": spec.label})


def _clean_owner(spec: FieldSpec, op: str, value: Any) -> str | None:
    if op == "empty":
        if value not in (None, "", True):
            _raise(_("“is empty” takes no value."))
        return None
    if not isinstance(value, str) or not value.strip():
        _raise(_("Write the owner's user name."))
    username = value.strip()
    if not get_user_model().objects.filter(username=username).exists():
        _raise(_("Nobody has the user name “%(name)s”.") % {"name": username[:150]})
    return username


def _clean_activity(spec: FieldSpec, op: str, value: Any) -> dict[str, Any]:
    if not isinstance(value, dict) or set(value) - {"type", "days"}:
        _raise(_('An activity condition is {"type": an event type or "" for any, "days": N}.'))
    event_type = value.get("type") or ""
    if event_type not in ("", *EventType.values):
        _raise(
            _("%(value)s is not an event type; choose from: %(types)s.")
            % {"value": _shown(event_type), "types": ", ".join(EventType.values)}
        )
    days = value.get("days")
    if isinstance(days, str) and days.strip().isdigit():
        days = int(days)
    if not isinstance(days, int) or isinstance(days, bool) or not 1 <= days <= MAX_DAYS:
        _raise(
            _("The number of days must be a whole number from 1 to %(max)s.") % {"max": MAX_DAYS}
        )
    return {"type": event_type, "days": days}


def _shown(value: Any) -> str:
    text = value if isinstance(value, str) else repr(value)
    return f"“{text[:60]}”"


_VALUE_CLEANERS: dict[str, Callable[[FieldSpec, str, Any], Any]] = {
    "choice": _clean_choice,
    "text": _clean_text,
    "number": _clean_number,
    "bool": _clean_bool,
    "owner": _clean_owner,
    "activity": _clean_activity,
}


# --- the query -----------------------------------------------------------------------------

# Our lookups, by operator: the only ORM lookups a condition can produce.
_LOOKUPS = {"eq": "exact", "in": "in", "contains": "icontains", "gte": "gte", "lte": "lte"}


def segment_queryset(conditions: Any, *, base: QuerySet | None = None) -> QuerySet:
    """The leads matching every condition (ValidationError when one is not allowlisted)."""
    queryset = Lead.objects.all() if base is None else base
    for condition in clean_conditions(conditions):
        queryset = queryset.filter(condition_q(condition))
    return queryset


def condition_q(condition: dict[str, Any]) -> Q:
    """The filter of one condition already cleaned by `clean_condition`."""
    field, op, value = condition["field"], condition["op"], condition["value"]
    kind = FIELDS[field].kind
    if kind == "activity":
        return _activity_q(op, value)
    if kind == "owner":
        return Q(owner__isnull=True) if op == "empty" else Q(owner__username=value)
    if op == "between":
        return Q(**{f"{field}__range": tuple(value)})
    if op == "is":
        return Q(**{field: value})
    return Q(**{f"{field}__{_LOOKUPS[op]}": value})


def _activity_q(op: str, value: dict[str, Any]) -> Q:
    since = timezone.now() - timedelta(days=value["days"])
    events = Activity.objects.filter(lead=OuterRef("pk"), occurred_at__gte=since)
    if value["type"]:
        events = events.filter(type=value["type"])
    # EXISTS over the (lead, -occurred_at) index: one probe per lead, no join fan-out.
    found = Exists(events)
    return Q(found) if op == "has" else ~Q(found)


# --- count and sample ----------------------------------------------------------------------


# A sample of a big segment is the first leads found (the scan stops after `limit`
# rows); below this many matches it is the highest scores, as sorting few matches costs
# the one scan that finding them costs anyway.
SAMPLE_BY_SCORE_BELOW = 50_000


@dataclass(frozen=True)
class SegmentPreview:
    """What the admin shows beside a segment: how many leads, how many may be mailed
    (not unsubscribed, stage new or nurturing), and a few of them.

    `exact` is False when counting took longer than the time limit: `count` is then the
    planner's estimate and `mailable` is None. `by_score`: the sample is the highest
    scores (otherwise simply the first leads found).
    """

    count: int
    mailable: int | None
    exact: bool
    sample: list[Lead]
    by_score: bool = True


def count_and_sample(
    conditions: Any, limit: int = 10, *, base: QuerySet | None = None
) -> SegmentPreview:
    """Count a segment and show `limit` of its leads, within a time limit.

    Counting is one scan of the leads (with EXISTS probes for activity conditions):
    on 1M leads about a second on a busy 2-core machine (figures in the N1 report). The
    count is exact when it finishes within NURTURING_SEGMENT_COUNT_TIMEOUT_MS (default
    2000 ms); past that it is cancelled and PostgreSQL's row estimate is shown, marked
    as such. The sample costs one more scan only for small segments.
    """
    queryset = segment_queryset(conditions, base=base)
    with _statement_timeout(_count_timeout_ms()):
        counts = _guarded(lambda: _exact_counts(queryset))
        by_score = counts is not None and counts["count"] < SAMPLE_BY_SCORE_BELOW
        sample = _guarded(lambda: _sample(queryset, limit, by_score=by_score)) or []
    if counts is None:
        return SegmentPreview(_estimate(queryset), None, False, sample, by_score)
    return SegmentPreview(counts["count"], counts["mailable"], True, sample, by_score)


def _count_timeout_ms() -> int:
    return int(getattr(settings, "NURTURING_SEGMENT_COUNT_TIMEOUT_MS", 2000))


def _exact_counts(queryset: QuerySet) -> dict[str, int]:
    mailable = Q(unsubscribed=False, stage__in=NURTURABLE_STAGES)
    return queryset.aggregate(count=Count("pk"), mailable=Count("pk", filter=mailable))


def _sample(queryset: QuerySet, limit: int, *, by_score: bool) -> list[Lead]:
    leads = queryset.select_related("account", "owner")
    return list((leads.order_by("-score", "-id") if by_score else leads.order_by())[:limit])


def _estimate(queryset: QuerySet) -> int:
    from leadops.sql import planner_row_estimate

    return planner_row_estimate(queryset.order_by())


def _guarded(query: Callable[[], Any]) -> Any:
    """The query's result, or None when the statement timeout cancelled it."""
    try:
        with transaction.atomic():  # a savepoint: a cancelled query must not poison the rest
            return query()
    except OperationalError:
        return None


@contextlib.contextmanager
def _statement_timeout(milliseconds: int) -> Iterator[None]:
    """Limit each statement inside to `milliseconds`, restoring the caller's setting."""
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute("SELECT current_setting('statement_timeout')")
        previous = cursor.fetchone()[0]
        cursor.execute("SELECT set_config('statement_timeout', %s, true)", [str(milliseconds)])
        try:
            yield
        finally:
            cursor.execute("SELECT set_config('statement_timeout', %s, true)", [previous])


# --- words -----------------------------------------------------------------------------------


def describe_conditions(conditions: Any) -> str:
    """The conditions as one readable line ("job level is one of director, executive and …")."""
    try:
        cleaned = clean_conditions(conditions)
    except ValidationError:
        return _("(invalid conditions)")
    if not cleaned:
        return _("every lead")
    return _(" and ").join(describe_condition(condition) for condition in cleaned)


def describe_condition(condition: dict[str, Any]) -> str:
    spec = FIELDS[condition["field"]]
    value = condition["value"]
    if spec.kind == "activity":
        kind = dict(EventType.choices).get(value["type"]) or _("any activity")
        if condition["op"] == "has":
            words = _("did %(type)s in the last %(days)s days")
        else:
            words = _("did not do %(type)s in the last %(days)s days")
        return words % {"type": kind, "days": value["days"]}
    return f"{spec.label} {OP_LABELS[condition['op']]} {_value_words(spec, value)}".strip()


def _value_words(spec: FieldSpec, value: Any) -> str:
    labels = dict(spec.choices)
    if isinstance(value, bool):
        return _("yes") if value else _("no")
    if value is None:
        return ""
    items = value if isinstance(value, list) else [value]
    if spec.kind == "number" and isinstance(value, list):
        return _("%(low)s and %(high)s") % {"low": value[0], "high": value[1]}
    return ", ".join(str(labels.get(item, item)) for item in items)
