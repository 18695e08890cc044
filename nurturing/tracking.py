"""Mail tracking: signed tokens, opens, clicks and the one-click unsubscribe.

Every sent mail carries three tokens signed with `django.core.signing` (SECRET_KEY,
and SECRET_KEY_FALLBACKS while a key is rotated), each with its own salt so a token
made for one purpose is refused by the others, and a maximum age
(NURTURING_TOKEN_MAX_AGE_DAYS, 180 by default). A token holds only the send's id.

The pixel and the click redirect are hot paths (p95 ≤ 10 ms), so they write little:
the token is checked without a query, a click reads its one recorded URL (an indexed
lookup), and the hit is pushed onto a Redis list (one round trip). A Celery task,
scheduled at most once while hits wait (a SET NX flag, as the rescore queue does), takes
them in batches and does the rest set-based in one transaction: the send's
first_opened_at / first_clicked_at, and the `email_open` / `email_click` activities
through `leadops.ingest.ingest_events`, which schedules rescoring.

What counts for scoring (the default model gives +5 per open, +10 per click):

- the first open of each mail: event_id "open:<send id>". Reloads, image proxies and
  privacy prefetching open a mail many times; counting each would let one mail
  score like a campaign;
- the first click on each link of each mail: event_id "click:<send id>:<link no>".
  Clicking two different links of a mail counts twice, the same link once.

Unsubscribing is not a hot path: it is done at once, in one transaction.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import redis
from django.conf import settings
from django.core import signing
from django.db import connection, transaction
from django.urls import reverse
from django.utils import timezone
from kombu.exceptions import OperationalError as BrokerError

from leadops.engines import bounded_redis
from leadops.ingest import MAX_EVENTS_PER_REQUEST, ingest_events
from leadops.models import Activity, EventType, Lead
from nurturing.capture import with_click_token
from nurturing.enrollment import ExitReason, exit_leads
from nurturing.models import EmailSend

logger = logging.getLogger(__name__)

OPEN, CLICK, UNSUBSCRIBE = "open", "click", "unsubscribe"
_SALTS = {
    OPEN: "nurturing.tracking.open",
    CLICK: "nurturing.tracking.click",
    UNSUBSCRIBE: "nurturing.tracking.unsubscribe",
}
DEFAULT_TOKEN_MAX_AGE_DAYS = 180
MAX_LINK_NUMBER = 32767  # TrackedLink.position is a smallint

HITS_KEY = "nurturing:tracking:hits"
FLAG_KEY = "nurturing:tracking:scheduled"
# A crashed worker leaves the flag set; it expires so the next hit schedules again
# (the beat task flushes every minute anyway).
FLAG_TTL_SECONDS = 60
# Hits per flush: each makes at most one event, and ingest takes 1,000 per call.
HIT_BATCH = MAX_EVENTS_PER_REQUEST
EVENT_SOURCE = "email"


class InvalidToken(Exception):
    """Tampered, expired, made for another purpose, or naming nothing that exists."""


# --- tokens and URLs ---------------------------------------------------------------------


def make_token(send_id: int, purpose: str) -> str:
    """A URL-safe signed token carrying `send_id` for one purpose (open, click, unsubscribe)."""
    return signing.dumps(int(send_id), salt=_SALTS[purpose])


def read_token(token: str, purpose: str) -> int:
    """The send id in a token made for `purpose`; InvalidToken otherwise."""
    try:
        value = signing.loads(token, salt=_SALTS[purpose], max_age=token_max_age())
    except (signing.BadSignature, ValueError, UnicodeError) as exc:
        # SignatureExpired is a BadSignature; garbage may fail to decode at all.
        raise InvalidToken(str(exc)) from exc
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise InvalidToken("The token does not carry a send id.")
    return value


def token_max_age() -> timedelta:
    days = getattr(settings, "NURTURING_TOKEN_MAX_AGE_DAYS", DEFAULT_TOKEN_MAX_AGE_DAYS)
    return timedelta(days=days)


@dataclass(frozen=True)
class TrackingUrls:
    """The absolute URLs of one send: its pixel, its click redirects, its unsubscribe page."""

    pixel: str
    click_prefix: str  # + "<link no>/"
    unsubscribe: str

    def click(self, link_no: int) -> str:
        return f"{self.click_prefix}{link_no}/"


def tracking_urls(send_id: int) -> TrackingUrls:
    """Absolute URLs (settings.SITE_URL) of a send's pixel, clicks and unsubscribe page."""
    site = settings.SITE_URL.rstrip("/")
    click_one = reverse("nurturing_tracking:click", args=[make_token(send_id, CLICK), 1])
    return TrackingUrls(
        pixel=site + reverse("nurturing_tracking:open", args=[make_token(send_id, OPEN)]),
        click_prefix=site + click_one.removesuffix("1/"),
        unsubscribe=site
        + reverse("nurturing_tracking:unsubscribe", args=[make_token(send_id, UNSUBSCRIBE)]),
    )


# --- the hot paths -----------------------------------------------------------------------


def record_open(token: str) -> None:
    """Note an open of the mail the token names (no query); InvalidToken if it is bad."""
    send_id = read_token(token, OPEN)
    _push_hit(f"o:{send_id}:0:{_now_stamp()}")


_LINK_SQL = """
    SELECT k.url, s.lead_id FROM nurturing_trackedlink k
    JOIN nurturing_emailsend s ON s.id = k.send_id
    WHERE k.send_id = %s AND k.position = %s
"""


def record_click(token: str, link_no: int) -> str:
    """Note a click and return where to send the browser: the URL recorded for that link
    when the mail was sent (with the capture snippet's `_lo` identity parameter when the
    URL is on one of our own sites, see `nurturing.capture.with_click_token`).

    InvalidToken for a bad token or a link number the mail did not have: only recorded
    URLs are ever redirected to. One query.
    """
    send_id = read_token(token, CLICK)
    if not 0 < link_no <= MAX_LINK_NUMBER:
        raise InvalidToken("No such link.")
    with connection.cursor() as cursor:
        # Plain SQL: on this hot path the ORM's query building costs more than the query.
        cursor.execute(_LINK_SQL, [send_id, link_no])
        row = cursor.fetchone()
    if row is None:
        raise InvalidToken("No such link.")
    _push_hit(f"c:{send_id}:{link_no}:{_now_stamp()}")
    url, lead_id = row
    return with_click_token(url, lead_id)


def _now_stamp() -> str:
    return f"{timezone.now().timestamp():.3f}"


def _redis() -> redis.Redis:
    # Bounded: a pixel or click must not hang on a Redis that is down or stopped.
    return bounded_redis(settings.REDIS_TIMEOUT_SECONDS)


def _push_hit(hit: str) -> None:
    try:
        pipe = _redis().pipeline(transaction=False)
        pipe.rpush(HITS_KEY, hit)
        pipe.set(FLAG_KEY, 1, nx=True, ex=FLAG_TTL_SECONDS)
        _length, first = pipe.execute()
        if first:
            _schedule_flush()
    except (redis.RedisError, BrokerError):
        # Without Redis there is no queue: record it now rather than lose it.
        logger.exception("Tracking queue unavailable; recording a hit inline")
        apply_hits([hit])


def _schedule_flush() -> None:
    from nurturing.tasks import flush_tracking

    try:
        flush_tracking.delay()
    except BrokerError:
        _redis().delete(FLAG_KEY)
        raise


# --- the deferred part -------------------------------------------------------------------


def flush_tracking_hits(*, batch_size: int = HIT_BATCH) -> int:
    """Record up to `batch_size` waiting hits; re-schedule while some remain. Returns count.

    Safe to run twice at once: each hit is taken by one caller (LRANGE + LTRIM in one
    MULTI), and the events are idempotent by event_id anyway.
    """
    client = _redis()
    pipe = client.pipeline(transaction=True)
    pipe.lrange(HITS_KEY, 0, batch_size - 1)
    pipe.ltrim(HITS_KEY, batch_size, -1)
    raw, _trimmed = pipe.execute()
    hits = [item.decode() if isinstance(item, bytes) else item for item in raw]
    if hits:
        try:
            apply_hits(hits)
        except Exception:
            client.rpush(HITS_KEY, *hits)  # back in the list: a retry or the next flush
            raise
    _continue_or_stop(client)
    return len(hits)


def _continue_or_stop(client: redis.Redis) -> None:
    if client.llen(HITS_KEY):
        client.set(FLAG_KEY, 1, ex=FLAG_TTL_SECONDS)
        _schedule_flush()
        return
    client.delete(FLAG_KEY)
    # A hit pushed between the length check and the delete saw the flag still set and
    # scheduled nothing: look once more.
    if client.llen(HITS_KEY) and client.set(FLAG_KEY, 1, nx=True, ex=FLAG_TTL_SECONDS):
        _schedule_flush()


def pending_hits() -> int:
    """How many hits wait to be recorded (for tests and the admin)."""
    return int(_redis().llen(HITS_KEY))


def apply_hits(hits: Sequence[str]) -> int:
    """Record open/click hits ("o:<send>:0:<epoch>", "c:<send>:<link>:<epoch>").

    In one transaction: first_opened_at / first_clicked_at of the sends, and one
    activity per first open of a send and per first click of a link. Returns how many
    activities were created. Malformed hits are dropped (they never came from us).
    """
    opens, clicks = _parse_hits(hits)
    if not opens and not clicks:
        return 0
    with transaction.atomic():
        events = _first_opens(opens)
        _mark_first_clicks(clicks)
        events += _new_clicks(clicks)
        result = ingest_events(events) if events else None
    if result is None:
        return 0
    if result.errors:  # e.g. a concurrent flush stored the same click first
        logger.info("Tracking events not stored: %s", result.errors[:5])
    return result.accepted


def _parse_hits(hits: Iterable[str]) -> tuple[dict[int, float], dict[tuple[int, int], float]]:
    """({send id: first open}, {(send id, link no): first click}), times as epoch seconds."""
    opens: dict[int, float] = {}
    clicks: dict[tuple[int, int], float] = {}
    for hit in hits:
        try:
            kind, send, link, stamp = hit.split(":")
            send_id, link_no, moment = int(send), int(link), float(stamp)
        except ValueError:
            logger.warning("Dropping a malformed tracking hit %r", hit[:100])
            continue
        if kind == "o":
            opens[send_id] = min(opens.get(send_id, moment), moment)
        elif kind == "c":
            key = (send_id, link_no)
            clicks[key] = min(clicks.get(key, moment), moment)
    return opens, clicks


@dataclass(frozen=True)
class _Sent:
    """What an event says about the mail it came from."""

    send_id: int
    lead_id: int
    track_id: int
    track_name: str
    step: int

    def event(self, event_id: str, kind: str, at: datetime, *, url: str | None = None) -> dict:
        properties = {
            "campaign": self.track_name,
            "track_id": self.track_id,
            "step": self.step,
            "send_id": self.send_id,
        }
        if url is not None:
            properties["url"] = url
        return {
            "event_id": event_id,
            "lead_id": self.lead_id,
            "type": str(kind),
            "occurred_at": at.isoformat(),
            "properties": properties,
            "source": EVENT_SOURCE,
        }


_FIRST_OPENS_SQL = """
    UPDATE nurturing_emailsend s
    SET first_opened_at = h.at
    FROM unnest(%s::bigint[], %s::timestamptz[]) AS h(id, at), nurturing_track t,
         nurturing_step st
    WHERE s.id = h.id AND s.first_opened_at IS NULL AND t.id = s.track_id AND st.id = s.step_id
    RETURNING s.id, s.lead_id, s.track_id, t.name, st.position, h.at
"""


def _first_opens(opens: dict[int, float]) -> list[dict]:
    """Set first_opened_at where it was empty; an email_open event for each such send.

    The conditional UPDATE makes the first open count once even across concurrent
    flushes (the second waits for the row and then finds it set).
    """
    if not opens:
        return []
    ids = sorted(opens)
    with connection.cursor() as cursor:
        cursor.execute(_FIRST_OPENS_SQL, [ids, [_moment(opens[i]) for i in ids]])
        rows = cursor.fetchall()
    return [_Sent(*row[:5]).event(f"open:{row[0]}", EventType.EMAIL_OPEN, row[5]) for row in rows]


def _mark_first_clicks(clicks: dict[tuple[int, int], float]) -> None:
    """first_clicked_at of each send (for the click rate), where it was empty."""
    first: dict[int, float] = {}
    for (send_id, _link), moment in clicks.items():
        first[send_id] = min(first.get(send_id, moment), moment)
    if first:
        ids = sorted(first)
        with connection.cursor() as cursor:
            cursor.execute(
                "UPDATE nurturing_emailsend s SET first_clicked_at = h.at "
                "FROM unnest(%s::bigint[], %s::timestamptz[]) AS h(id, at) "
                "WHERE s.id = h.id AND s.first_clicked_at IS NULL",
                [ids, [_moment(first[i]) for i in ids]],
            )


_CLICKED_LINKS_SQL = """
    SELECT s.id, s.lead_id, s.track_id, t.name, st.position, k.position, k.url
    FROM unnest(%s::bigint[], %s::int[]) AS h(send_id, link_no)
    JOIN nurturing_trackedlink k ON k.send_id = h.send_id AND k.position = h.link_no
    JOIN nurturing_emailsend s ON s.id = k.send_id
    JOIN nurturing_track t ON t.id = s.track_id
    JOIN nurturing_step st ON st.id = s.step_id
"""


def _new_clicks(clicks: dict[tuple[int, int], float]) -> list[dict]:
    """An email_click event for each clicked link not clicked before."""
    if not clicks:
        return []
    keys = sorted(clicks)
    with connection.cursor() as cursor:
        cursor.execute(_CLICKED_LINKS_SQL, [[k[0] for k in keys], [k[1] for k in keys]])
        rows = cursor.fetchall()
    by_event_id = {f"click:{row[0]}:{row[5]}": row for row in rows}
    # An earlier click of the same link is stored already: resending its event_id with
    # another time would be a "reused id" error, so it is left out here.
    seen = set(
        Activity.objects.filter(event_id__in=list(by_event_id)).values_list("event_id", flat=True)
    )
    events = []
    for event_id, row in by_event_id.items():
        if event_id not in seen:
            at = _moment(clicks[(row[0], row[5])])
            events.append(_Sent(*row[:5]).event(event_id, EventType.EMAIL_CLICK, at, url=row[6]))
    return events


def _moment(epoch: float) -> datetime:
    return datetime.fromtimestamp(epoch, tz=UTC)


# --- unsubscribe -------------------------------------------------------------------------


@dataclass(frozen=True)
class UnsubscribeTarget:
    send_id: int
    lead_id: int
    email: str
    unsubscribed: bool


def unsubscribe_target(token: str) -> UnsubscribeTarget:
    """Who an unsubscribe token is for (the confirmation page); InvalidToken if bad."""
    send_id = read_token(token, UNSUBSCRIBE)
    row = (
        EmailSend.objects.filter(pk=send_id)
        .values_list("lead_id", "lead__email", "lead__unsubscribed")
        .first()
    )
    if row is None:
        raise InvalidToken("The mail no longer exists.")
    lead_id, email, unsubscribed = row
    return UnsubscribeTarget(send_id, lead_id, email, unsubscribed)


def unsubscribe(token: str) -> bool:
    """Unsubscribe the lead the token's mail went to: at once, idempotent.

    The first time, the lead is marked unsubscribed, the send records when (for the
    track's unsubscribe rate) and an `unsubscribe` activity is recorded (event_id
    "unsubscribe:<send id>"; the default model gives −20); every time, the lead leaves
    every track it is still in. Returns True when the lead was subscribed until now.
    InvalidToken for a bad token or a mail that no longer exists.
    """
    target = unsubscribe_target(token)
    now = timezone.now()
    with transaction.atomic():
        newly = Lead.objects.filter(pk=target.lead_id, unsubscribed=False).update(
            unsubscribed=True, updated_at=now
        )
        if newly:
            # This mail is the one that lost the lead (its track's unsubscribe rate).
            EmailSend.objects.filter(pk=target.send_id).update(unsubscribed_at=now)
            ingest_events([_unsubscribe_event(target, now)])
        exit_leads([target.lead_id], reason=ExitReason.UNSUBSCRIBED)
    return bool(newly)


def _unsubscribe_event(target: UnsubscribeTarget, now: datetime) -> dict:
    send = EmailSend.objects.select_related("track", "step").get(pk=target.send_id)
    sent = _Sent(send.pk, send.lead_id, send.track_id, send.track.name, send.step.position)
    return sent.event(f"unsubscribe:{send.pk}", EventType.UNSUBSCRIBE, now)
