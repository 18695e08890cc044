"""Scoring figures measured in-process: the first scoring, rescore-all on activation and
the daily decay pass."""

from __future__ import annotations

import time
from datetime import timedelta


def rescore_all() -> tuple[float, int]:
    """Seconds to rescore every lead with the active model, and how many leads changed."""
    from scoring.services import rescore_leads

    started = time.perf_counter()
    result = rescore_leads(None)
    return time.perf_counter() - started, result.changed


def first_scoring() -> tuple[float, int, int]:
    """Seconds to score the freshly generated leads (every lead changes, and those that
    meet the MQL rule become MQLs: hand-offs, assignments, notifications), the leads
    changed and the leads handed off."""
    from scoring.services import rescore_leads

    started = time.perf_counter()
    result = rescore_leads(None)
    return time.perf_counter() - started, result.changed, len(result.marked_mql)


def activation_rescore_all() -> tuple[float, int, int]:
    """Seconds of a real activation's rescore-all: the active model cloned with every
    positive behaviour rule worth one point more, activated, and its job run in-process
    (the task's function: chunks, progress, catch-up). Returns seconds, leads changed and
    leads handed off."""
    from django.db.models import F

    from scoring.models import ActivationJob, ScoringModel
    from scoring.services.lifecycle import activate_model, clone_model, run_activation_job

    draft = clone_model(ScoringModel.objects.get(status="active"), name="bench: +1 per rule")
    draft.behavior_rules.filter(points__gt=0).update(points=F("points") + 1)
    job = activate_model(draft)
    started = time.perf_counter()
    run_activation_job(job.pk)
    seconds = time.perf_counter() - started
    summary = ActivationJob.objects.get(pk=job.pk).summary
    return seconds, summary.get("changed", 0), summary.get("marked_mql", 0)


def decay_pass() -> tuple[float, int]:
    """Seconds of tomorrow's decay pass (today's is a no-op right after a rescore-all)."""
    from django.utils import timezone

    from scoring.services import apply_decay

    started = time.perf_counter()
    changed = apply_decay(now=timezone.now() + timedelta(days=1))
    return time.perf_counter() - started, changed
