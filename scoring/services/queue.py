"""Coalesced rescoring after events and lead edits: a Redis set of dirty lead ids.

`schedule_rescore` adds ids to the set "scoring:dirty" and enqueues the drain task only
when the flag "scoring:scheduled" was not set (SET NX, short TTL). So under load many
events for one lead make one rescore and many leads share one task: never a task per
event. The drain takes up to DRAIN_BATCH ids, rescores them in one go and re-enqueues
itself while ids remain; the last one clears the flag, then looks again, because ids
added between its last pop and the clear saw the flag still set and enqueued nothing.

What survives which failure (docs/operations.md, "Failure modes"):

- A worker killed between taking ids and committing their scores. The ids are not
  popped into thin air: one Lua script moves them into an in-flight set named after the
  task id ("scoring:inflight:<task id>") and notes the time in "scoring:inflight". Only
  after the scores commit is that set deleted. The task comes back with the same id
  (acks_late + reject_on_worker_lost when a prefork child dies) and first puts its old
  batch back; a task that never comes back (the whole node killed: Redis redelivers
  only after its visibility timeout) is covered by `recover_dirty_leads`, which the
  beat runs every minute and which puts back batches older than the lease. Rescoring
  is idempotent, so a batch rescored twice costs time, never correctness.
- Redis down or hanging. The client fails within REDIS_TIMEOUT_SECONDS and the leads
  are rescored inline, in the request that stored the events.
- Redis restarted empty (no persistence). The dirty and in-flight sets are gone. A
  marker key, "scoring:epoch", is set once per Redis lifetime; when the sweep finds it
  missing, Redis lost its data, and every lead with an activity received within
  RECOVERY_WINDOW is marked dirty again. PostgreSQL holds the events: nothing to replay.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Iterable
from datetime import timedelta

import redis
from django.conf import settings
from django.db import connection, transaction
from django.utils import timezone
from kombu.exceptions import OperationalError as BrokerError

from leadops.engines import bounded_redis
from scoring.services.rescoring import rescore_leads

logger = logging.getLogger(__name__)

DIRTY_KEY = "scoring:dirty"
FLAG_KEY = "scoring:scheduled"
# {task id: time claimed} of the batches being rescored, and each batch's ids.
INFLIGHT_KEY = "scoring:inflight"
INFLIGHT_BATCH_KEY = "scoring:inflight:{token}"
# Set once per Redis lifetime: missing means Redis lost its data (see the docstring).
EPOCH_KEY = "scoring:epoch"
# A crashed worker leaves the flag set; it expires so that the next event enqueues again.
FLAG_TTL_SECONDS = 60
DRAIN_BATCH = 1000
# Leads with events received this long before a Redis data loss are rescored after it:
# far longer than the dirty set ever waits unless the workers are down for that long.
RECOVERY_WINDOW = timedelta(hours=1)

# Moves up to ARGV[2] ids from the dirty set into this task's in-flight set, after
# putting back what an earlier run of the same task (killed mid-batch) left there.
# One script, so no id is ever outside both sets.
_CLAIM = """
local batch = KEYS[3]
if redis.call('EXISTS', batch) == 1 then
    redis.call('SUNIONSTORE', KEYS[1], KEYS[1], batch)
    redis.call('DEL', batch)
end
local ids = redis.call('SPOP', KEYS[1], tonumber(ARGV[2]))
if #ids > 0 then
    redis.call('SADD', batch, unpack(ids))
    redis.call('ZADD', KEYS[2], redis.call('TIME')[1], ARGV[1])
else
    redis.call('ZREM', KEYS[2], ARGV[1])
end
return ids
"""

# Puts back into the dirty set every batch claimed more than ARGV[1] seconds ago (its
# worker is gone or hopelessly stuck); returns how many ids went back.
_RECLAIM = """
local cutoff = tonumber(redis.call('TIME')[1]) - tonumber(ARGV[1])
local tokens = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', cutoff)
local count = 0
for _, token in ipairs(tokens) do
    local batch = KEYS[3] .. token
    count = count + redis.call('SCARD', batch)
    redis.call('SUNIONSTORE', KEYS[1], KEYS[1], batch)
    redis.call('DEL', batch)
    redis.call('ZREM', KEYS[2], token)
end
return count
"""

# Done (or failed and retrying later): the batch leaves the in-flight set; on failure its
# ids go back into the dirty set first.
_RELEASE = """
if ARGV[2] == '1' then
    redis.call('SUNIONSTORE', KEYS[1], KEYS[1], KEYS[3])
end
redis.call('DEL', KEYS[3])
redis.call('ZREM', KEYS[2], ARGV[1])
"""


def redis_client() -> redis.Redis:
    # Bounded: an ingest request must not hang on a Redis that is down or stopped; on
    # an error it rescores inline.
    return bounded_redis(settings.REDIS_TIMEOUT_SECONDS)


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


def _batch_key(token: str) -> str:
    return INFLIGHT_BATCH_KEY.format(token=token)


def _run(script: str, token: str, *args: object) -> object:
    keys = [DIRTY_KEY, INFLIGHT_KEY, _batch_key(token)]
    return redis_client().eval(script, len(keys), *keys, token, *args)


def drain_dirty_leads(*, batch_size: int = DRAIN_BATCH, task_id: str | None = None) -> int:
    """Rescore up to `batch_size` dirty leads; re-enqueue while some remain. Returns count.

    `task_id` names the in-flight batch: the same task run again (redelivered after
    its worker died) takes back the batch its first run claimed.
    """
    token = task_id or uuid.uuid4().hex
    ids = [int(i) for i in _run(_CLAIM, token, batch_size)]
    if ids:
        try:
            rescore_leads(ids)
        except Exception:
            _run(_RELEASE, token, "1")  # back in the set: a retry or the next drain
            raise
        _run(_RELEASE, token, "0")
    _continue_or_stop(redis_client())
    return len(ids)


def _continue_or_stop(client: redis.Redis) -> None:
    if client.scard(DIRTY_KEY):
        client.set(FLAG_KEY, 1, ex=FLAG_TTL_SECONDS)
        _enqueue_drain()
        return
    client.delete(FLAG_KEY)
    if client.scard(DIRTY_KEY) and client.set(FLAG_KEY, 1, nx=True, ex=FLAG_TTL_SECONDS):
        _enqueue_drain()


def recover_dirty_leads() -> int:
    """The sweep (beat, every minute): put back batches whose worker died, and after a
    Redis data loss mark recently active leads dirty again; then make sure a drain
    runs. Returns how many lead ids were put back or marked."""
    client = redis_client()
    keys = [DIRTY_KEY, INFLIGHT_KEY, _batch_key("")]  # the third: the batches' prefix
    count = int(client.eval(_RECLAIM, len(keys), *keys, settings.SCORING_DRAIN_LEASE_SECONDS))
    if client.set(EPOCH_KEY, timezone.now().isoformat(), nx=True):
        recent = _recently_active_lead_ids(timezone.now() - RECOVERY_WINDOW)
        logger.warning("Rescore queue found empty of its marker; re-marking %s leads", len(recent))
        if recent:
            client.sadd(DIRTY_KEY, *recent)
        count += len(recent)
    if client.scard(DIRTY_KEY):
        # Unconditionally: a flag left by a dead worker must not hold the leads back.
        client.set(FLAG_KEY, 1, ex=FLAG_TTL_SECONDS)
        _enqueue_drain()
    return count


def _recently_active_lead_ids(since) -> list[int]:
    # A sequential scan of the activity table (received_at has no index, to keep ingest
    # fast); it runs once per Redis data loss, not on the hot path.
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT DISTINCT lead_id FROM leadops_activity WHERE received_at >= %s", [since]
        )
        return [lead_id for (lead_id,) in cursor.fetchall()]


def dirty_lead_ids() -> set[int]:
    """The leads waiting to be rescored (for tests and the admin)."""
    return {int(i) for i in redis_client().smembers(DIRTY_KEY)}
