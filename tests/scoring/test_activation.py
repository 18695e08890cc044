"""Model life: read-only active model, cloning, activation with rescore-all, preview."""

from datetime import timedelta

import pytest
from django.core.exceptions import ValidationError
from django.db import IntegrityError, transaction

from handoff.models import StageTransition
from leadops.models import Lead
from scoring.exceptions import ActivationInProgress, ActivationRefused
from scoring.models import (
    ActivationJob,
    AttributeRule,
    BehaviorRule,
    JobStatus,
    ModelStatus,
    ScoreChange,
    ScoringModel,
)
from scoring.services import (
    activate_model,
    clone_model,
    lifecycle,
    preview_model,
    rescore_leads,
    run_activation_job,
)
from scoring.tasks import run_activation
from tests.factories import LeadFactory
from tests.scoring.helpers import event, make_model, recompute

pytestmark = pytest.mark.django_db
PRICING = {"url": "https://example.jp/pricing"}


def default_model() -> ScoringModel:
    return ScoringModel.objects.get(version=1)


def populate(t0, count: int = 12) -> list[Lead]:
    """Leads of every kind, with events, scored under the default model at t0."""
    levels = ["executive", "director", "manager", "staff", ""]
    leads = []
    for i in range(count):
        lead = LeadFactory(
            job_level=levels[i % 5],
            industry=["software", "finance", "retail"][i % 3],
            employee_count=[20, 60, 200][i % 3],
            stage=["new", "nurturing", "sql"][i % 3],
        )
        for n in range(i % 4):
            event(lead, "page_view", t0 - timedelta(days=n * 20), **PRICING)
        if i % 5 == 0:
            event(lead, "email_click", t0 - timedelta(days=1))
        leads.append(lead)
    rescore_leads(None, now=t0)
    return leads


def test_an_active_model_is_read_only_and_editing_means_cloning():
    model = default_model()
    rule = model.behavior_rules.first()
    rule.points = 99
    with pytest.raises(ValidationError, match="cannot be edited"):
        rule.full_clean()

    draft = clone_model(model)
    assert (draft.status, draft.version, draft.based_on) == ("draft", 2, model)
    assert draft.attribute_rules.count() == 8 and draft.behavior_rules.count() == 9
    assert draft.trigger_rules.count() == 4
    copy = draft.behavior_rules.get(label=rule.label)
    copy.points = 99
    copy.full_clean()  # a draft is editable
    copy.save()
    assert model.behavior_rules.get(label=rule.label).points != 99


def test_only_one_model_can_be_active():
    draft = clone_model(default_model())
    draft.status = ModelStatus.ACTIVE
    with pytest.raises(IntegrityError), transaction.atomic():
        draft.save()


def test_a_model_without_rules_is_refused():
    empty = make_model()
    with pytest.raises(ActivationRefused, match="no rules"):
        activate_model(empty)
    assert default_model().status == ModelStatus.ACTIVE


def test_activating_the_active_model_is_refused():
    with pytest.raises(ActivationRefused, match="already"):
        activate_model(default_model())


def test_activating_while_another_activation_runs_is_refused(manager):
    first = clone_model(default_model())
    job = activate_model(first, actor=manager)
    assert job.status == JobStatus.RUNNING
    second = clone_model(first)
    with pytest.raises(ActivationInProgress):
        activate_model(second, actor=manager)
    assert ScoringModel.objects.active().get() == first


def test_activation_switches_models_and_rescores_every_lead(t0, marketer):
    leads = populate(t0)
    draft = clone_model(default_model())
    draft.behavior_rules.filter(label="Pricing page view").update(points=45)
    AttributeRule.objects.create(
        model=draft, label="Student", field="title", operator="contains", value="学生", points=-30
    )
    Lead.objects.filter(pk=leads[0].pk).update(title="大学院生・学生")

    job = activate_model(draft, actor=marketer)
    assert default_model().status == ModelStatus.ARCHIVED
    draft.refresh_from_db()
    assert draft.status == ModelStatus.ACTIVE and draft.activated_at is not None

    run_activation_job(job.pk, now=t0)

    job.refresh_from_db()
    assert (job.status, job.done, job.total, job.actor) == ("done", 12, 12, marketer)
    assert job.finished_at is not None and job.progress_percent == 100
    for lead in Lead.objects.filter(pk__in=[x.pk for x in leads]):
        expected = recompute(lead, draft, t0)
        assert (lead.attribute_score, lead.behavior_score, lead.score, lead.temperature) == (
            expected.attribute,
            expected.behavior,
            expected.score,
            expected.temperature,
        )
        assert lead.score_state.model_version == draft.version
        assert sum(lead.score_changes.values_list("points", flat=True)) == lead.score
    rows = ScoreChange.objects.filter(reason="activation", model_version=draft.version)
    assert rows.count() == job.summary["changed"] > 0
    assert rows.first().describe() == f"activation of model v{draft.version}"


def test_preview_counts_equal_what_activation_then_does(t0):
    leads = populate(t0, count=20)
    draft = clone_model(default_model())
    draft.hot_threshold, draft.warm_threshold, draft.mql_total = 60, 40, 65
    draft.save()
    draft.behavior_rules.filter(label="Email click").update(points=40)
    Lead.objects.filter(pk=leads[3].pk).update(stage="new")

    preview = preview_model(draft, now=t0)
    transitions_before = StageTransition.objects.count()
    job = activate_model(draft)
    run_activation_job(job.pk, now=t0)
    job.refresh_from_db()

    assert preview["leads"] == job.summary["leads"] == 20
    assert preview["changed"] == job.summary["changed"]
    assert preview["temperature_changed"] == job.summary["temperature_changed"] > 0
    assert preview["become_mql"] == job.summary["marked_mql"] > 0
    assert preview["become_mql"] == StageTransition.objects.count() - transitions_before
    assert preview["stop_meeting_mql_rule"] == job.summary["stopped_mql"]
    assert sum(row["old"] for row in preview["histogram"]) == 20
    assert sum(row["new"] for row in preview["histogram"]) == 20
    assert sum(m["count"] for m in preview["temperature_moves"]) == preview["temperature_changed"]
    sample = preview["samples"][0]
    assert sample["new_score"] != sample["old_score"] and sample["rules"]
    assert len(preview["samples"]) <= 20


def test_preview_writes_nothing(t0):
    leads = populate(t0, count=5)
    before = list(Lead.objects.order_by("pk").values_list("score", "temperature", "stage"))
    ledger = ScoreChange.objects.count()
    draft = clone_model(default_model())
    draft.behavior_rules.update(points=100)
    preview = preview_model(draft, now=t0)
    assert preview["changed"] > 0
    assert list(Lead.objects.order_by("pk").values_list("score", "temperature", "stage")) == before
    assert ScoreChange.objects.count() == ledger
    assert len(leads) == 5


def test_an_event_scored_with_the_old_model_during_activation_is_caught_up(t0, monkeypatch):
    leads = populate(t0, count=4)
    old = default_model()
    draft = clone_model(old)
    draft.behavior_rules.filter(label="Pricing page view").update(points=1)
    job = activate_model(draft)
    real_chunk = lifecycle._rescore_chunk

    def chunk_then_race(job, leads_set, *, now):
        result = real_chunk(job, leads_set, now=now)
        # An event rescore that read the old model just before the switch commits now.
        event(leads[1], "page_view", now, **PRICING)
        rescore_leads([leads[1].pk], model=old, now=now)
        return result

    monkeypatch.setattr(lifecycle, "_rescore_chunk", chunk_then_race)
    run_activation_job(job.pk, now=t0)
    for lead in Lead.objects.filter(pk__in=[x.pk for x in leads]):
        assert lead.score == recompute(lead, draft, t0).score
        assert lead.score_state.model_version == draft.version


def test_activation_task_runs_the_job_and_is_safe_to_run_twice(t0):
    populate(t0, count=3)
    job = activate_model(clone_model(default_model()))
    run_activation(job.pk)  # the Celery task, called directly
    job.refresh_from_db()
    assert job.status == JobStatus.DONE
    finished = job.finished_at
    run_activation(job.pk)
    job.refresh_from_db()
    assert job.finished_at == finished


def test_a_failed_job_is_recorded_and_the_next_activation_is_allowed(monkeypatch):
    job = activate_model(clone_model(default_model()))

    def broken(*args, **kwargs):
        raise RuntimeError("boom")

    monkeypatch.setattr(lifecycle, "_rescore_chunk", broken)
    LeadFactory()
    with pytest.raises(RuntimeError):
        run_activation(job.pk)
    job.refresh_from_db()
    assert job.status == JobStatus.FAILED and "boom" in job.error
    assert ActivationJob.objects.unfinished().count() == 0
    assert BehaviorRule.objects.filter(model=job.model).exists()
