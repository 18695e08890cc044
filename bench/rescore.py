"""Scoring figures measured in-process: rescore-all and the daily decay pass."""

from __future__ import annotations

import time
from datetime import timedelta


def rescore_all() -> tuple[float, int]:
    """Seconds to rescore every lead with the active model, and how many leads changed."""
    from scoring.services import rescore_leads

    started = time.perf_counter()
    result = rescore_leads(None)
    return time.perf_counter() - started, result.changed


def decay_pass() -> tuple[float, int]:
    """Seconds of tomorrow's decay pass (today's is a no-op right after a rescore-all)."""
    from django.utils import timezone

    from scoring.services import apply_decay

    started = time.perf_counter()
    changed = apply_decay(now=timezone.now() + timedelta(days=1))
    return time.perf_counter() - started, changed
