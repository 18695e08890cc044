"""Rate limits of the API's ingest endpoints (POST /api/v1/leads/ and /api/v1/events/).

One fixed-window counter per user (so per API token) in Redis: one INCR + EXPIRE round
trip per request, whatever the rate. DRF's SimpleRateThrottle keeps a list of every
request time in the cache and rewrites it on each request, which at the thousands of
events a second an integration may send costs more than the ingest itself.

The limit is `settings.LEADOPS_API_INGEST_RATE` ((requests, seconds), or None for no
limit; env `LEADOPS_API_INGEST_RATE`, e.g. "120000/min"). Beyond it the API answers 429
with Retry-After and a JSON `detail`. When Redis does not answer, requests pass: the
limit protects the service, and refusing every event while Redis restarts would turn a
blip into an outage (ingest itself keeps working without Redis).
"""

from __future__ import annotations

import logging
import math
import time
from typing import Any

import redis
from django.conf import settings
from django.utils.translation import gettext as _
from rest_framework.exceptions import Throttled
from rest_framework.request import Request
from rest_framework.throttling import BaseThrottle

from leadops.engines import bounded_redis

logger = logging.getLogger(__name__)

# A slow Redis must not slow every ingest request down: give up fast and let it pass.
REDIS_TIMEOUT_SECONDS = 0.25
KEY_PREFIX = "leadops:throttle"


def _client() -> redis.Redis:
    return bounded_redis(REDIS_TIMEOUT_SECONDS, retries=0)


def count_in_window(scope: str, ident: str, *, window: int, now: float) -> int:
    """Count one more request of `ident` in the current `window`-second slot; the total."""
    slot = int(now // window)
    key = f"{KEY_PREFIX}:{scope}:{ident}:{slot}"
    pipe = _client().pipeline(transaction=False)
    pipe.incr(key)
    pipe.expire(key, window + 1)
    count, _expiry_set = pipe.execute()
    return int(count)


def seconds_to_next_window(window: int, now: float) -> int:
    return max(1, math.ceil((int(now // window) + 1) * window - now))


class IngestRateThrottle(BaseThrottle):
    """POSTs of leads and events per user (token) and window; reads are not counted."""

    scope = "ingest"

    def allow_request(self, request: Request, view: Any) -> bool:
        rate = settings.LEADOPS_API_INGEST_RATE
        if request.method != "POST" or rate is None or not request.user.is_authenticated:
            return True
        limit, window = rate
        now = time.time()
        try:
            count = count_in_window(self.scope, str(request.user.pk), window=window, now=now)
        except redis.RedisError as exc:
            logger.warning("Ingest rate limit skipped, Redis did not answer: %s", exc)
            return True
        if count <= limit:
            return True
        # Raised here rather than through wait(): the message says what to do about it.
        raise Throttled(
            wait=seconds_to_next_window(window, now),
            detail=_(
                "Too many requests with this API token: at most %(limit)d per %(seconds)d "
                "seconds. Send events in batches (up to 1,000 per request)."
            )
            % {"limit": limit, "seconds": window},
        )
