"""Coalesced rescoring after events and lead edits: a Redis set of dirty lead ids.

`schedule_rescore` adds ids to the set "scoring:dirty" and enqueues the drain task only
when the flag "scoring:scheduled" was not set (SET NX, short TTL). So under load many
events for one lead make one rescore and many leads share one task: never a task per
event. The drain pops up to DRAIN_BATCH ids, rescores them in one go and re-enqueues
itself while ids remain; the last one clears the flag, then looks again, because ids
added between its last pop and the clear saw the flag still set and enqueued nothing.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from functools import lru_cache

import redis
from django.db import transaction
from kombu.exceptions import OperationalError as BrokerError

from leadops.engines import redis_url
from scoring.services.rescoring import rescore_leads

logger = logging.getLogger(__name__)

DIRTY_KEY = "scoring:dirty"
FLAG_KEY = "scoring:scheduled"
# A crashed worker leaves the flag set; it expires so that the next event enqueues again.
FLAG_TTL_SECONDS = 60
DRAIN_BATCH = 1000


@lru_cache(maxsize=1)
def redis_client() -> redis.Redis:
    return redis.Redis.from_url(redis_url())


def schedule_rescore(lead_ids: Iterable[int]) -> None:
    """Rescore these leads soon, in a Celery task, after the current transaction commits."""
    ids = sorted({int(i) for i in lead_ids})
    if ids:
        transaction.on_commit(lambda: _mark_dirty(ids))


def _mark_dirty(ids: list[int]) -> None:
    try:
        pipe = redis_client().pipeline()
        pipe.sadd(DIRTY_KEY, *ids)
        pipe.set(FLAG_KEY, 1, nx=True, ex=FLAG_TTL_SECONDS)
        _added, first = pipe.execute()
        if first:
            _enqueue_drain()
    except (redis.RedisError, BrokerError):
        # Without Redis there is no queue: score now rather than lose the change.
        logger.exception("Rescore queue unavailable; rescoring %s leads inline", len(ids))
        rescore_leads(ids)


def _enqueue_drain() -> None:
    from scoring.tasks import rescore_dirty_leads

    try:
        rescore_dirty_leads.delay()
    except BrokerError:
        redis_client().delete(FLAG_KEY)
        raise


def drain_dirty_leads(*, batch_size: int = DRAIN_BATCH) -> int:
    """Rescore up to `batch_size` dirty leads; re-enqueue while some remain. Returns count."""
    client = redis_client()
    ids = [int(i) for i in client.spop(DIRTY_KEY, batch_size) or []]
    if ids:
        try:
            rescore_leads(ids)
        except Exception:
            client.sadd(DIRTY_KEY, *ids)  # back in the set: a retry or the next drain takes them
            raise
    _continue_or_stop(client)
    return len(ids)


def _continue_or_stop(client: redis.Redis) -> None:
    if client.scard(DIRTY_KEY):
        client.set(FLAG_KEY, 1, ex=FLAG_TTL_SECONDS)
        _enqueue_drain()
        return
    client.delete(FLAG_KEY)
    if client.scard(DIRTY_KEY) and client.set(FLAG_KEY, 1, nx=True, ex=FLAG_TTL_SECONDS):
        _enqueue_drain()


def dirty_lead_ids() -> set[int]:
    """The leads waiting to be rescored (for tests and the admin)."""
    return {int(i) for i in redis_client().smembers(DIRTY_KEY)}
