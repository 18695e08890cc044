"""Fixtures of the fault suite: the rescore queue's Redis keys empty before and after."""

from __future__ import annotations

import pytest

from scoring.services import queue


def _clear_rescore_queue() -> None:
    client = queue.redis_client()
    keys = [queue.DIRTY_KEY, queue.FLAG_KEY, queue.INFLIGHT_KEY, "celery"]
    keys += client.keys(queue.INFLIGHT_BATCH_KEY.format(token="*"))
    client.delete(*keys)


@pytest.fixture
def empty_rescore_queue():
    _clear_rescore_queue()
    yield queue.redis_client()
    _clear_rescore_queue()
