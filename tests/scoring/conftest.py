"""Fixtures of the scoring tests: a clean Redis queue and a clock in Tokyo."""

from __future__ import annotations

from datetime import datetime
from zoneinfo import ZoneInfo

import pytest

from scoring.services.queue import DIRTY_KEY, FLAG_KEY, redis_client

TOKYO = ZoneInfo("Asia/Tokyo")
CELERY_QUEUE = "celery"


@pytest.fixture
def t0() -> datetime:
    """A fixed clock: 1 April 2025, 10:00 in Tokyo."""
    return datetime(2025, 4, 1, 10, 0, tzinfo=TOKYO)


@pytest.fixture
def clean_queue():
    """The dirty set, the scheduling flag and the Celery queue, empty before and after."""
    client = redis_client()
    client.delete(DIRTY_KEY, FLAG_KEY, CELERY_QUEUE)
    yield client
    client.delete(DIRTY_KEY, FLAG_KEY, CELERY_QUEUE)
