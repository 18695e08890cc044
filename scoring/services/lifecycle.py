"""A scoring model's life: clone into a draft, activate (rescoring every lead), archive.

Activation switches the active model at once (events scored from then on use it) and
rescores every lead in a Celery task, chunk by chunk, with its progress on the
ActivationJob row. A lead rescored by an event while the job runs is locked like any
other rescore, so nothing is lost; at the end the job rescores any lead whose state is
still from another model version (an event rescore that read the old model just before
the switch), so that every lead equals a recompute under the new model.
"""

from __future__ import annotations

import logging
from datetime import datetime
from functools import partial
from typing import Any

from django.core.exceptions import ValidationError
from django.db import IntegrityError, connection, transaction
from django.db.models import F, Max
from django.db.models.functions import Coalesce
from django.utils import timezone
from django.utils.translation import gettext as _

from leadops.models import Lead
from scoring.exceptions import (
    ActivationInProgress,
    ActivationRefused,
    InvalidModelData,
    ModelReadOnly,
)
from scoring.models import (
    ActivationJob,
    AttributeRule,
    BehaviorRule,
    JobStatus,
    ModelStatus,
    ScoringModel,
    TriggerRule,
)
from scoring.services.rescoring import (
    RescoreResult,
    lead_sets,
    map_chunks,
    rescore_lead_set,
    rescore_leads,
)

logger = logging.getLogger(__name__)

MODEL_COPY_FIELDS = (
    "name",
    "description",
    "warm_threshold",
    "hot_threshold",
    "mql_total",
    "mql_behavior",
    "mql_attribute",
    "decay_grace_days",
    "decay_half_life_days",
)
RULE_COPY_FIELDS = {
    AttributeRule: ("label", "position", "field", "operator", "value", "points"),
    BehaviorRule: (
        "label",
        "position",
        "event_type",
        "conditions",
        "points",
        "cap_per_lead",
        "cap_per_window",
        "window_days",
        "daily_nth",
    ),
    TriggerRule: ("label", "position", "event_type", "conditions", "min_count", "within_days"),
}
CATCH_UP_ROUNDS = 3


def next_version() -> int:
    """The next model version; call inside a transaction (serialised by an advisory lock)."""
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_advisory_xact_lock(hashtext('scoring.model_version'))")
    return (ScoringModel.objects.aggregate(v=Max("version"))["v"] or 0) + 1


@transaction.atomic
def clone_model(model: ScoringModel, *, actor=None, name: str | None = None) -> ScoringModel:
    """A new draft with the model's settings and rules: the way to change a model."""
    values = {f: getattr(model, f) for f in MODEL_COPY_FIELDS}
    if name:
        values["name"] = name
    draft = ScoringModel.objects.create(
        **values, version=next_version(), based_on=model, created_by=actor
    )
    for rule_class, fields in RULE_COPY_FIELDS.items():
        rules = rule_class.objects.filter(model=model).order_by("position", "id")
        rule_class.objects.bulk_create(
            rule_class(model=draft, **{f: getattr(rule, f) for f in fields}) for rule in rules
        )
    return draft


def ensure_editable(model: ScoringModel) -> None:
    if not model.is_editable:
        from scoring.validators import read_only_message

        raise ModelReadOnly(read_only_message(model))


@transaction.atomic
def archive_model(model: ScoringModel) -> ScoringModel:
    """Archive a draft (or an old model); the active one is replaced by activating another."""
    model = ScoringModel.objects.select_for_update().get(pk=model.pk)
    if model.status == ModelStatus.ACTIVE:
        raise ActivationRefused(
            _("The active model cannot be archived: activate another model instead.")
        )
    model.status = ModelStatus.ARCHIVED
    model.save(update_fields=["status"])
    return model


@transaction.atomic
def activate_model(model: ScoringModel, *, actor=None) -> ActivationJob:
    """Make the model the active one and start rescoring every lead (a Celery task).

    Raises ActivationRefused for a model without rules or already active, and
    ActivationInProgress while another activation is still rescoring.
    """
    model = ScoringModel.objects.select_for_update().get(pk=model.pk)
    _check_can_activate(model)
    previous = ScoringModel.objects.active().select_for_update().first()
    job = _create_job(model, previous=previous, actor=actor)
    if previous is not None:
        previous.status = ModelStatus.ARCHIVED
        previous.save(update_fields=["status"])
    model.status = ModelStatus.ACTIVE
    model.activated_at = timezone.now()
    model.save(update_fields=["status", "activated_at"])
    transaction.on_commit(lambda: _enqueue_activation(job.pk))
    return job


def _check_can_activate(model: ScoringModel) -> None:
    if model.status == ModelStatus.ACTIVE:
        raise ActivationRefused(_("This model is already the active one."))
    if not model.rule_count():
        raise ActivationRefused(
            _("This model has no rules. Add attribute or behaviour rules, then activate it.")
        )
    if ActivationJob.objects.unfinished().exists():
        raise ActivationInProgress(_running_message())


def _running_message() -> str:
    return _("Another model is being activated. Wait until its rescoring ends, then try again.")


def _create_job(model: ScoringModel, *, previous: ScoringModel | None, actor) -> ActivationJob:
    try:
        with transaction.atomic():
            return ActivationJob.objects.create(
                model=model, previous_model=previous, actor=actor, total=Lead.objects.count()
            )
    except IntegrityError:  # the partial unique index: one unfinished job at a time
        raise ActivationInProgress(_running_message()) from None


def _enqueue_activation(job_id: int) -> None:
    from scoring.tasks import run_activation

    run_activation.delay(job_id)


def run_activation_job(job_id: int, *, now: datetime | None = None) -> ActivationJob | None:
    """Rescore every lead for the job's model (resuming after the last chunk done).

    Safe to run twice: a finished job is left alone; a running one continues.
    """
    if not _claim(job_id):
        return None
    job = ActivationJob.objects.select_related("model", "previous_model").get(pk=job_id)
    now = now or timezone.now()
    chunks = lead_sets(None, after=job.cursor)
    # In chunk order, so the cursor only passes chunks that are done (a resumed job may
    # redo one: rescoring is idempotent).
    for leads, result in map_chunks(partial(_rescore_chunk, job, now=now), chunks):
        _record_progress(job, result, cursor=leads.high)
    _catch_up(job, now)
    return _finish(job)


def _claim(job_id: int) -> bool:
    started = ActivationJob.objects.filter(pk=job_id, status=JobStatus.RUNNING).update(
        started_at=Coalesce(F("started_at"), timezone.now())
    )
    return started == 1


def _rescore_chunk(job: ActivationJob, leads, *, now: datetime) -> RescoreResult:
    return rescore_lead_set(
        leads,
        model=job.model,
        previous_model=job.previous_model,
        now=now,
        reason="activation",
    )


def _record_progress(
    job: ActivationJob, result: RescoreResult, *, cursor: int, count_done: bool = True
) -> None:
    summary = dict(job.summary)
    for key, value in result.summary().items():
        summary[key] = summary.get(key, 0) + value
    job.summary, job.cursor = summary, cursor
    job.done += result.leads if count_done else 0
    job.save(update_fields=["summary", "cursor", "done"])


def _catch_up(job: ActivationJob, now: datetime) -> None:
    """Rescore leads not yet under the job's model (scored by an event with the old one)."""
    for _round in range(CATCH_UP_ROUNDS):
        stale = list(
            Lead.objects.exclude(score_state__model_version=job.model.version).values_list(
                "id", flat=True
            )
        )
        if not stale:
            return
        result = rescore_leads(
            stale,
            model=job.model,
            previous_model=job.previous_model,
            now=now,
            reason="activation",
        )
        _record_progress(job, result, cursor=job.cursor, count_done=False)


def _finish(job: ActivationJob) -> ActivationJob:
    job.status, job.finished_at = JobStatus.DONE, timezone.now()
    job.save(update_fields=["status", "finished_at"])
    return job


def fail_activation_job(job_id: int, *, error: str) -> None:
    """Mark the job failed; the model stays active and `retry_activation_job` resumes it."""
    ActivationJob.objects.filter(pk=job_id, status=JobStatus.RUNNING).update(
        status=JobStatus.FAILED, error=error[:2000], finished_at=timezone.now()
    )


@transaction.atomic
def retry_activation_job(job: ActivationJob) -> ActivationJob:
    """Resume a failed activation from its last chunk (its model is still the active one)."""
    job = ActivationJob.objects.select_for_update().select_related("model").get(pk=job.pk)
    if job.status != JobStatus.FAILED or job.model.status != ModelStatus.ACTIVE:
        raise ActivationRefused(_("Only a failed activation of the active model can be resumed."))
    try:
        with transaction.atomic():
            job.status, job.error, job.finished_at = JobStatus.RUNNING, "", None
            job.save(update_fields=["status", "error", "finished_at"])
    except IntegrityError:
        raise ActivationInProgress(_running_message()) from None
    transaction.on_commit(lambda: _enqueue_activation(job.pk))
    return job


RULE_KINDS = {
    "attribute_rules": AttributeRule,
    "behavior_rules": BehaviorRule,
    "trigger_rules": TriggerRule,
}
MAX_RULES_PER_KIND = 100


@transaction.atomic
def create_draft_model(
    *, fields: dict[str, Any], rules: dict[str, list[dict[str, Any]]], actor=None
) -> ScoringModel:
    """A new draft from plain data (the API's JSON), validated like the admin.

    `rules` maps "attribute_rules" / "behavior_rules" / "trigger_rules" to lists of rule
    fields. Raises InvalidModelData with messages per field and per rule (by index).
    """
    model = ScoringModel(**fields, created_by=actor, version=0)
    errors = _errors_of(model, exclude=["version"])
    candidates = {kind: [RULE_KINDS[kind](**row) for row in rows] for kind, rows in rules.items()}
    for kind, objects in candidates.items():
        rule_errors = [_errors_of(rule, exclude=["model"]) for rule in objects]
        if len(objects) > MAX_RULES_PER_KIND:
            errors[kind] = [_("At most %s rules of a kind.") % MAX_RULES_PER_KIND]
        elif any(rule_errors):
            errors[kind] = rule_errors
    if errors:
        raise InvalidModelData(errors)
    model.version = next_version()
    model.save()
    for objects in candidates.values():
        for rule in objects:
            rule.model = model
        if objects:
            type(objects[0]).objects.bulk_create(objects)
    return model


def _errors_of(instance, *, exclude: list[str]) -> dict[str, list[str]]:
    try:
        instance.full_clean(exclude=exclude)
    except ValidationError as exc:
        return exc.message_dict
    return {}
