"""Scoring services: every write of the scoring app goes through one of these.

| you want to … | call |
| --- | --- |
| rescore leads (after events, on edits, all of them) | `rescore_leads` |
| rescore soon, coalesced, after commit (ingest, lead edits) | `schedule_rescore` |
| apply decay to inactive leads (daily) | `apply_decay` |
| change a model | `clone_model` → edit the draft → `preview_model` → `activate_model` |
| explain a lead's score | `score_breakdown_for` |
"""

from scoring.services.decay import apply_decay
from scoring.services.explain import reset_behavior_score, score_breakdown_for
from scoring.services.lifecycle import (
    activate_model,
    archive_model,
    clone_model,
    create_draft_model,
    ensure_editable,
    fail_activation_job,
    next_version,
    retry_activation_job,
    run_activation_job,
)
from scoring.services.preview import preview_model
from scoring.services.queue import drain_dirty_leads, schedule_rescore
from scoring.services.rescoring import RescoreResult, rescore_leads

__all__ = [
    "RescoreResult",
    "activate_model",
    "apply_decay",
    "archive_model",
    "clone_model",
    "create_draft_model",
    "drain_dirty_leads",
    "ensure_editable",
    "fail_activation_job",
    "next_version",
    "preview_model",
    "reset_behavior_score",
    "rescore_leads",
    "retry_activation_job",
    "run_activation_job",
    "schedule_rescore",
    "score_breakdown_for",
]
