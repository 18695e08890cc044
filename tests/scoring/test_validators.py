"""Bad rules and models are refused with a message that says what to write."""

import pytest
from django.core.exceptions import ValidationError

from scoring.models import AttributeRule, BehaviorRule, ScoringModel, TriggerRule
from scoring.validators import validate_attribute_rule, validate_conditions
from tests.scoring.helpers import make_model

pytestmark = pytest.mark.django_db


def messages(exc: ValidationError) -> str:
    return " ".join(str(m) for m in exc.messages)


@pytest.mark.parametrize(
    ("field", "operator", "value", "message"),
    [
        ("salary", "eq", 1, "Unknown lead field"),
        ("industry", "gte", 1, "operator for industry"),
        ("industry", "regex", ".*", "operator for industry"),
        ("email", "in", ["a@b.jp"], "operator for email"),
        ("industry", "eq", "softwares", "is not a valid industry"),
        ("industry", "in", [], "list of 1 to 200"),
        ("industry", "in", "software", "list of 1 to 200"),
        ("employee_count", "gte", "100", "whole numbers"),
        ("employee_count", "gte", 10.5, "whole numbers"),
        ("employee_count", "gte", True, "whole numbers"),
        ("employee_count", "between", [99, 50], "lower bound first"),
        ("employee_count", "between", [50], "two whole numbers"),
        ("title", "contains", "", "compares text"),
        ("title", "eq", 3, "compares text"),
        ("email", "email_domain_in", ["not a domain"], "is not a domain"),
    ],
)
def test_bad_attribute_rules(field, operator, value, message):
    with pytest.raises(ValidationError) as caught:
        validate_attribute_rule(field, operator, value)
    assert message in messages(caught.value)


def test_values_are_normalised():
    assert validate_attribute_rule("email", "email_domain_in", ["@Gmail.COM", "gmail.com"]) == [
        "gmail.com"
    ]
    assert validate_attribute_rule("title", "contains", " Director ") == "director"
    assert validate_attribute_rule("industry", "in", ["software", "software"]) == ["software"]


@pytest.mark.parametrize(
    ("conditions", "message"),
    [
        ([{"key": "url", "op": "contains", "value": 1}], "must be text"),
        ([{"key": "url", "op": "equals", "value": None}], "must be text"),
        ([{"key": "url", "op": "in", "value": ["/a", 2]}], "must be text"),
        ([{"key": "url", "op": "in", "value": "/a"}], "list of texts"),
        ([{"key": "url", "op": "regex", "value": ".*"}], "op must be one of"),
        ([{"key": "url; DROP TABLE", "op": "equals", "value": "x"}], "property name"),
        ([{"key": "url", "value": "x"}], "Condition 1"),
        ({"key": "url"}, "list of at most 10"),
    ],
)
def test_bad_property_conditions(conditions, message):
    with pytest.raises(ValidationError) as caught:
        validate_conditions(conditions)
    assert message in messages(caught.value)


def test_points_outside_plus_minus_1000_are_refused():
    model = make_model()
    rule = BehaviorRule(model=model, label="too much", event_type="email_open", points=1001)
    with pytest.raises(ValidationError, match="-1000 to 1000"):
        rule.full_clean()
    rule.points = -1000
    rule.full_clean()


def test_unknown_event_type_is_refused():
    model = make_model()
    rule = BehaviorRule(model=model, label="x", event_type="tweet", points=5)
    with pytest.raises(ValidationError) as caught:
        rule.full_clean()
    assert "event_type" in caught.value.message_dict


@pytest.mark.parametrize(
    ("fields", "key"),
    [
        ({"cap_per_window": 2}, "window_days"),
        ({"window_days": 7}, "window_days"),
        ({"daily_nth": 0}, "daily_nth"),
    ],
)
def test_bad_caps(fields, key):
    model = make_model()
    rule = BehaviorRule(model=model, label="x", event_type="page_view", points=5, **fields)
    with pytest.raises(ValidationError) as caught:
        rule.full_clean()
    assert key in caught.value.message_dict


def test_trigger_with_a_count_needs_a_window():
    model = make_model()
    trigger = TriggerRule(model=model, label="x", event_type="page_view", min_count=3)
    with pytest.raises(ValidationError, match="within how many days"):
        trigger.full_clean()


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"warm_threshold": 70, "hot_threshold": 70}, "higher than the warm"),
        ({"mql_behavior": None}, "Set both"),
        ({"mql_total": None, "mql_behavior": None, "mql_attribute": None}, "needs a total"),
        ({"decay_half_life_days": 0}, "at least one day"),
    ],
)
def test_bad_model_settings(fields, message):
    model = ScoringModel(name="x", version=99, **fields)
    with pytest.raises(ValidationError) as caught:
        model.full_clean()
    assert message in messages(caught.value)


def test_rules_of_an_archived_model_cannot_be_edited():
    model = make_model(
        attribute=[{"field": "industry", "operator": "eq", "value": "finance", "points": 5}]
    )
    ScoringModel.objects.filter(pk=model.pk).update(status="archived")
    rule = AttributeRule.objects.get(model=model)
    with pytest.raises(ValidationError, match="Clone it into a draft"):
        rule.full_clean()
