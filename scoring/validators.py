"""Validation of scoring models and rules, in one place for the admin, the API and services.

Rules never hold code, SQL or regular expressions: a field from an allowlist, an operator
from a fixed set and a JSON value checked against both. Each validator returns the value
normalised (e.g. domains lower-cased) or raises ValidationError with a sentence that
says what to write instead.
"""

from __future__ import annotations

import re
from typing import Any

from django.core.exceptions import ValidationError
from django.utils.translation import gettext as _
from django.utils.translation import gettext_lazy

from leadops.models import Department, Industry, JobLevel

MAX_POINTS = 1000
MAX_LIST_ITEMS = 200
MAX_TEXT_LENGTH = 200

# Lead fields a rule may read, with the kind of value each holds.
FIELD_KINDS: dict[str, str] = {
    "job_level": "choice",
    "department": "choice",
    "industry": "choice",
    "employee_count": "number",
    "title": "text",
    "source": "text",
    "email": "email",
}
FIELD_CHOICES = [
    ("job_level", gettext_lazy("job level")),
    ("department", gettext_lazy("department")),
    ("industry", gettext_lazy("industry")),
    ("employee_count", gettext_lazy("employee count")),
    ("title", gettext_lazy("title")),
    ("source", gettext_lazy("source")),
    ("email", gettext_lazy("email")),
]
CHOICE_VALUES: dict[str, list[str]] = {
    "job_level": list(JobLevel.values),
    "department": list(Department.values),
    "industry": list(Industry.values),
}
OPERATOR_CHOICES = [
    ("eq", gettext_lazy("is")),
    ("in", gettext_lazy("is one of")),
    ("gte", gettext_lazy("at least")),
    ("lte", gettext_lazy("at most")),
    ("between", gettext_lazy("between (inclusive)")),
    ("contains", gettext_lazy("contains")),
    ("email_domain_in", gettext_lazy("email domain is one of")),
]
OPERATORS_BY_KIND: dict[str, tuple[str, ...]] = {
    "choice": ("eq", "in"),
    "text": ("eq", "in", "contains"),
    "email": ("eq", "contains", "email_domain_in"),
    "number": ("eq", "in", "gte", "lte", "between"),
}
CONDITION_OPERATORS = ("equals", "contains", "starts_with", "in")
PROPERTY_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_\-]{0,49}$")
DOMAIN = re.compile(r"^[a-z0-9]([a-z0-9\-]*[a-z0-9])?(\.[a-z0-9]([a-z0-9\-]*[a-z0-9])?)+$")
_ASCII_LOWER = str.maketrans("ABCDEFGHIJKLMNOPQRSTUVWXYZ", "abcdefghijklmnopqrstuvwxyz")


def ascii_lower(text: str) -> str:
    """Lower-case A–Z only: the same in Python and in SQL (translate), whatever the locale."""
    return text.translate(_ASCII_LOWER)


def read_only_message(model: Any) -> str:
    return _(
        "Model v%(version)s is %(status)s and cannot be edited. "
        "Clone it into a draft, change the draft, then activate it."
    ) % {"version": model.version, "status": model.get_status_display()}


# --- numbers -------------------------------------------------------------------------------


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def validate_points(points: Any) -> int:
    if not _is_int(points) or abs(points) > MAX_POINTS:
        raise ValidationError(
            {"points": _("Points must be a whole number from -1000 to 1000.")}, code="points"
        )
    return points


def validate_thresholds(
    *,
    warm: int,
    hot: int,
    mql_total: int | None,
    mql_behavior: int | None,
    mql_attribute: int | None,
) -> None:
    if warm >= hot:
        raise ValidationError(
            {"hot_threshold": _("The hot threshold must be higher than the warm threshold.")}
        )
    if (mql_behavior is None) != (mql_attribute is None):
        raise ValidationError(
            {
                "mql_attribute": _(
                    "Set both the behaviour and the attribute minimum of the MQL rule, "
                    "or leave both empty."
                )
            }
        )
    if mql_total is None and mql_behavior is None:
        raise ValidationError(
            {"mql_total": _("The MQL rule needs a total minimum or a behaviour/attribute pair.")}
        )


def validate_decay(*, grace_days: int, half_life_days: int) -> None:
    if not _is_int(half_life_days) or half_life_days < 1:
        raise ValidationError(
            {"decay_half_life_days": _("The half-life must be at least one day.")}
        )
    if not _is_int(grace_days) or grace_days < 0:
        raise ValidationError({"decay_grace_days": _("The grace period cannot be negative.")})


def validate_caps(
    *,
    cap_per_lead: int | None,
    cap_per_window: int | None,
    window_days: int | None,
    daily_nth: int | None,
) -> None:
    for name, value in (
        ("cap_per_lead", cap_per_lead),
        ("cap_per_window", cap_per_window),
        ("window_days", window_days),
        ("daily_nth", daily_nth),
    ):
        if value is not None and (not _is_int(value) or value < 1):
            raise ValidationError({name: _("Use a whole number of 1 or more, or leave it empty.")})
    if (cap_per_window is None) != (window_days is None):
        raise ValidationError(
            {
                "window_days": _(
                    "A per-window cap needs both the number of times and the window in days."
                )
            }
        )


def validate_trigger_count(*, min_count: int, within_days: int | None) -> None:
    if not _is_int(min_count) or min_count < 1:
        raise ValidationError({"min_count": _("Use a whole number of 1 or more.")})
    if within_days is not None and (not _is_int(within_days) or within_days < 1):
        raise ValidationError({"within_days": _("Use a whole number of days of 1 or more.")})
    if min_count > 1 and within_days is None:
        raise ValidationError(
            {"within_days": _("Say within how many days the events must happen.")}
        )


# --- attribute rules ---------------------------------------------------------------------


def validate_attribute_rule(field: str, operator: str, value: Any) -> Any:
    """The rule's value, normalised; ValidationError if field, operator or value is wrong."""
    kind = FIELD_KINDS.get(field)
    if kind is None:
        raise ValidationError(
            {"field": _("Unknown lead field. Use one of: %s.") % ", ".join(FIELD_KINDS)}
        )
    allowed = OPERATORS_BY_KIND[kind]
    if operator not in allowed:
        raise ValidationError(
            {
                "operator": _("The operator for %(field)s must be one of: %(ops)s.")
                % {"field": field, "ops": ", ".join(allowed)}
            }
        )
    try:
        return _VALUE_CHECKS[operator](field, kind, value)
    except _BadValue as exc:
        raise ValidationError({"value": str(exc)}) from None


class _BadValue(Exception):
    pass


def _scalar(field: str, kind: str, value: Any) -> Any:
    if kind == "number":
        if not _is_int(value):
            raise _BadValue(_("%s compares whole numbers: write e.g. 100.") % field)
        return value
    if not isinstance(value, str) or not value.strip():
        raise _BadValue(_('%s compares text: write it in quotes, e.g. "software".') % field)
    value = value.strip()
    if len(value) > MAX_TEXT_LENGTH:
        raise _BadValue(_("The text is too long (at most 200 characters)."))
    if kind == "choice" and value not in CHOICE_VALUES[field]:
        raise _BadValue(
            _("%(value)s is not a valid %(field)s. Use one of: %(choices)s.")
            % {"value": value, "field": field, "choices": ", ".join(CHOICE_VALUES[field])}
        )
    return value.lower() if kind == "email" else value


def _text_list(value: Any, example: str) -> list:
    if not isinstance(value, list) or not value or len(value) > MAX_LIST_ITEMS:
        raise _BadValue(_("Write a list of 1 to 200 values, e.g. %s.") % example)
    return value


def _check_eq(field: str, kind: str, value: Any) -> Any:
    return _scalar(field, kind, value)


def _check_in(field: str, kind: str, value: Any) -> list:
    example = "[50, 100]" if kind == "number" else '["software", "it_services"]'
    items = [_scalar(field, kind, item) for item in _text_list(value, example)]
    return list(dict.fromkeys(items))


def _check_bound(field: str, kind: str, value: Any) -> int:
    return _scalar(field, kind, value)


def _check_between(field: str, kind: str, value: Any) -> list[int]:
    if not (isinstance(value, list) and len(value) == 2 and all(_is_int(v) for v in value)):
        raise _BadValue(_("between takes two whole numbers, lowest first: e.g. [50, 99]."))
    if value[0] > value[1]:
        raise _BadValue(_("Write the lower bound first: e.g. [50, 99]."))
    return value


def _check_contains(field: str, kind: str, value: Any) -> str:
    # Matching ignores A–Z case, so the value is stored lower-cased.
    return ascii_lower(_scalar(field, "text", value))


def _check_domains(field: str, kind: str, value: Any) -> list[str]:
    domains = []
    for item in _text_list(value, '["gmail.com", "yahoo.co.jp"]'):
        domain = item.strip().lstrip("@").lower() if isinstance(item, str) else ""
        if not DOMAIN.match(domain):
            raise _BadValue(_("%r is not a domain: write e.g. gmail.com.") % (item,))
        domains.append(domain)
    return list(dict.fromkeys(domains))


_VALUE_CHECKS = {
    "eq": _check_eq,
    "in": _check_in,
    "gte": _check_bound,
    "lte": _check_bound,
    "between": _check_between,
    "contains": _check_contains,
    "email_domain_in": _check_domains,
}


# --- property conditions (behaviour rules and triggers) ----------------------------------


def validate_conditions(conditions: Any) -> list[dict[str, Any]]:
    """[{key, op, value}, …] normalised; conditions compare text properties only."""
    if conditions in (None, ""):
        return []
    if not isinstance(conditions, list) or len(conditions) > 10:
        raise ValidationError(
            {"conditions": _("Write a list of at most 10 conditions, or leave it empty.")}
        )
    return [_condition(number, c) for number, c in enumerate(conditions, start=1)]


def _condition(number: int, condition: Any) -> dict[str, Any]:
    try:
        return _checked_condition(condition)
    except _BadValue as exc:
        raise ValidationError(
            {"conditions": _("Condition %(n)s: %(error)s") % {"n": number, "error": exc}}
        ) from None


def _checked_condition(condition: Any) -> dict[str, Any]:
    if not isinstance(condition, dict) or set(condition) != {"key", "op", "value"}:
        raise _BadValue(_('write {"key": "url", "op": "contains", "value": "/pricing"}.'))
    key, op, value = condition["key"], condition["op"], condition["value"]
    if not isinstance(key, str) or not PROPERTY_KEY.match(key):
        raise _BadValue(_("the key must be a property name such as url or campaign."))
    if op not in CONDITION_OPERATORS:
        raise _BadValue(_("op must be one of: %s.") % ", ".join(CONDITION_OPERATORS))
    if op == "in":
        items = value if isinstance(value, list) and value else None
        if items is None or len(items) > MAX_LIST_ITEMS:
            raise _BadValue(_('"in" takes a list of texts, e.g. ["spring", "summer"].'))
        return {"key": key, "op": op, "value": [_condition_text(item) for item in items]}
    return {"key": key, "op": op, "value": _condition_text(value)}


def _condition_text(value: Any) -> str:
    if not isinstance(value, str) or value == "":
        raise _BadValue(
            _('the value must be text in quotes (properties are compared as text): "/pricing".')
        )
    if len(value) > MAX_TEXT_LENGTH:
        raise _BadValue(_("the text is too long (at most 200 characters)."))
    return value
