"""Admin pages of scoring: read-only active model, clone, edit a draft, preview, activate."""

import json

import pytest
from django.urls import reverse

from leadops.models import Lead
from scoring.models import ActivationJob, BehaviorRule, ModelStatus, ScoringModel
from scoring.services import clone_model
from tests.scoring.helpers import blank_lead

pytestmark = pytest.mark.django_db


def change_url(model) -> str:
    return reverse("admin:scoring_scoringmodel_change", args=[model.pk])


def default_model() -> ScoringModel:
    return ScoringModel.objects.get(version=1)


def test_the_active_model_is_shown_read_only_with_a_clone_button(admin_client):
    page = admin_client.get(change_url(default_model()))
    assert page.status_code == 200
    html = page.content.decode()
    assert "read-only" in html and "Clone into a draft" in html
    assert 'name="_save"' not in html
    assert "Pricing page view" in html


def test_clone_then_edit_the_draft_inline(admin_client):
    response = admin_client.post(
        reverse("admin:scoring_scoringmodel_clone", args=[default_model().pk])
    )
    draft = ScoringModel.objects.get(status=ModelStatus.DRAFT)
    assert response.status_code == 302 and response["Location"] == change_url(draft)
    page = admin_client.get(change_url(draft))
    assert 'name="_save"' in page.content.decode()


def _form_data(model: ScoringModel, **changes) -> dict:
    data = {
        "name": model.name,
        "description": "",
        "warm_threshold": model.warm_threshold,
        "hot_threshold": model.hot_threshold,
        "mql_total": model.mql_total,
        "mql_behavior": model.mql_behavior,
        "mql_attribute": model.mql_attribute,
        "decay_grace_days": model.decay_grace_days,
        "decay_half_life_days": model.decay_half_life_days,
    }
    for prefix, rules, fields in (
        ("attribute_rules", model.attribute_rules.all(), ("field", "operator", "value", "points")),
        (
            "behavior_rules",
            model.behavior_rules.all(),
            ("event_type", "conditions", "points", "daily_nth"),
        ),
        (
            "trigger_rules",
            model.trigger_rules.all(),
            ("event_type", "conditions", "min_count", "within_days"),
        ),
    ):
        rules = list(rules)
        data.update({f"{prefix}-TOTAL_FORMS": len(rules), f"{prefix}-INITIAL_FORMS": len(rules)})
        for i, rule in enumerate(rules):
            data[f"{prefix}-{i}-id"] = rule.pk
            data[f"{prefix}-{i}-model"] = model.pk
            data[f"{prefix}-{i}-label"] = rule.label
            data[f"{prefix}-{i}-position"] = rule.position
            for field in fields:
                value = getattr(rule, field)
                if field in ("value", "conditions"):
                    value = json.dumps(value)
                data[f"{prefix}-{i}-{field}"] = "" if value is None else value
    data.update(changes)
    return data


def test_a_bad_rule_is_refused_in_the_admin_with_its_message(admin_client):
    draft = clone_model(default_model())
    data = _form_data(draft, **{"behavior_rules-0-points": 5000})
    page = admin_client.post(change_url(draft), data)
    assert page.status_code == 200
    assert "-1000 to 1000" in page.content.decode()
    assert BehaviorRule.objects.get(pk=data["behavior_rules-0-id"]).points == 50


def test_a_good_change_is_saved(admin_client):
    draft = clone_model(default_model())
    data = _form_data(draft, **{"behavior_rules-0-points": 60, "hot_threshold": 75})
    response = admin_client.post(change_url(draft), data)
    assert response.status_code == 302
    draft.refresh_from_db()
    assert draft.hot_threshold == 75
    assert BehaviorRule.objects.get(pk=data["behavior_rules-0-id"]).points == 60


def test_preview_page_shows_the_counts(admin_client):
    blank_lead(industry="software")
    draft = clone_model(default_model())
    page = admin_client.get(reverse("admin:scoring_scoringmodel_preview", args=[draft.pk]))
    assert page.status_code == 200
    assert "Score distribution" in page.content.decode()
    assert Lead.objects.get().score == 0  # nothing written


def test_activate_goes_to_the_job_page_that_refreshes_while_running(admin_client):
    draft = clone_model(default_model())
    response = admin_client.post(reverse("admin:scoring_scoringmodel_activate", args=[draft.pk]))
    job = ActivationJob.objects.get()
    assert response["Location"] == reverse("admin:scoring_activationjob_change", args=[job.pk])
    page = admin_client.get(response["Location"])
    assert page.status_code == 200
    assert 'http-equiv="refresh"' in page.content.decode()
    assert "<progress" in page.content.decode()


def test_activating_a_model_without_rules_shows_the_reason(admin_client):
    draft = clone_model(default_model())
    for rules in (draft.attribute_rules, draft.behavior_rules, draft.trigger_rules):
        rules.all().delete()
    response = admin_client.post(
        reverse("admin:scoring_scoringmodel_activate", args=[draft.pk]), follow=True
    )
    assert "no rules" in response.content.decode()
    assert default_model().status == ModelStatus.ACTIVE


def test_ledger_list_page(admin_client):
    assert admin_client.get(reverse("admin:scoring_scorechange_changelist")).status_code == 200
