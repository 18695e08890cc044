"""Website capture: the snippet's page views, visitor identification and public forms.

How a browser is recognised (LeadOps runs on its own domain, so it cannot set a cookie
on the customer's site; the snippet does, in JavaScript, on the site's own domain):

- `leadops_vid`: a random visitor id (uuid) the snippet creates on the first visit and
  sends with every page view and form post. Alone it proves nothing about who it is.
- `leadops_lid`: the signed identity token LeadOps issues once the visitor identifies —
  by submitting a form (the post carries `leadops_vid`) or by arriving from an email
  click (the click redirect appends `_lo`, a short-lived signed lead token, which the
  snippet sends once, strips from the address bar, and swaps for an identity token).
  The token binds (lead, visitor id); a tampered, expired or foreign token is ignored.

Page views of a visitor LeadOps cannot name yet are kept as AnonymousPageView rows and
become `page_view` activities (deterministic event ids, through `ingest_events`, so
they feed scoring) when the visitor identifies. Views of identified visitors become
activities directly, without an anonymous row.

The page-view endpoint is a hot path (p95 ≤ 10 ms), so it touches no database: it
checks the tokens (an HMAC, in memory), pushes the view onto a Redis list and answers
(the origin allowlist is cached in the process). A Celery task drains the list in
batches of up to 1,000: one `ingest_events` call for the views of known leads and one
statement for the rest (visitors created, anonymous views inserted); rescoring follows
through the rescore queue. The view's time is its arrival, not its storage. Only an
email click's first page view identifies the visitor synchronously (once per click).
"""

from __future__ import annotations

import json
import logging
import math
import re
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import redis
from django.conf import settings
from django.core import signing
from django.core.cache import cache
from django.core.exceptions import ValidationError
from django.db import DatabaseError, connection, transaction
from django.utils import timezone
from django.utils.translation import gettext as _
from kombu.exceptions import OperationalError as BrokerError

from leadops.engines import bounded_redis
from leadops.ingest import ingest_events
from leadops.models import EventType, Lead
from leadops.services import upsert_lead
from nurturing.models import AnonymousPageView, WebForm, WebVisitor

logger = logging.getLogger(__name__)

CLICK_PARAM = "_lo"
IDENTITY_SALT = "nurturing.capture.identity"
CLICK_SALT = "nurturing.capture.click"
# The identity cookie lives as long as browsers keep a cookie (Chrome caps at 400 days).
IDENTITY_MAX_AGE = timedelta(days=400)
# `_lo` is read on the page the click lands on, seconds later; a bookmarked or forwarded
# link must not identify its next reader for long.
CLICK_MAX_AGE = timedelta(days=1)

MAX_URL_LENGTH = 2000
MAX_TITLE_LENGTH = 300
MERGE_BATCH = 1000
# The page-view queue: a Redis list drained by one Celery task at a time (the flag says
# a drain is scheduled; it expires so a crashed worker does not stop the queue).
QUEUE_KEY = "capture:page-views"
FLAG_KEY = "capture:page-views:scheduled"
FLAG_TTL_SECONDS = 60
DRAIN_BATCH = 1000
QUEUE_TIMEOUT_SECONDS = 1.0
PAGE_VIEW_SOURCE = "website"
FORM_SOURCE = "web_form"

# Settings (read with getattr; see the report for the environment variables).
DEFAULT_FORM_RATE_PER_IP = 10
DEFAULT_FORM_RATE_PER_FORM = 300
DEFAULT_FORM_RATE_WINDOW_SECONDS = 60
DEFAULT_ORIGINS_CACHE_SECONDS = 30

_DEFAULT_PORTS = {"http": 80, "https": 443}
_HOST_LABEL = re.compile(r"^(?!-)[a-z0-9-]{1,63}(?<!-)$")


# --- origins --------------------------------------------------------------------------


def origin_of(url: str) -> str | None:
    """The origin (`scheme://host[:port]`, lower-case, default port dropped) of an http(s)
    URL, or None when `url` is not one (also for the literal Origin value "null")."""
    try:
        parts = urlsplit(url.strip())
        port = parts.port
    except ValueError:
        return None
    host = _ascii_host(parts.hostname or "")
    if parts.scheme not in _DEFAULT_PORTS or host is None or parts.username or parts.password:
        return None
    if port is None or port == _DEFAULT_PORTS[parts.scheme]:
        return f"{parts.scheme}://{host}"
    return f"{parts.scheme}://{host}:{port}"


def _ascii_host(host: str) -> str | None:
    """The host as browsers send it in Origin (IDN as punycode), None if not a host name."""
    if host.startswith("[") or ":" in host:  # urlsplit gives IPv6 hosts without brackets
        return f"[{host.strip('[]')}]" if re.fullmatch(r"[0-9a-f:.]+", host.strip("[]")) else None
    try:
        host = host.encode("idna").decode("ascii")
    except UnicodeError:
        return None
    labels = host.rstrip(".").split(".")
    return host if host and all(_HOST_LABEL.match(label) for label in labels) else None


def clean_origin(value: str) -> str:
    """`value` as a normalized origin; ValidationError unless it is http(s)://host[:port]
    (a trailing slash is tolerated, a path, query, fragment or user name is not)."""
    text = str(value).strip()
    origin = origin_of(text)
    if origin is None or urlsplit(text).path not in ("", "/") or "?" in text or "#" in text:
        raise ValidationError(
            _(
                "%(value)s is not a site origin. Write it as https://www.example.co.jp (scheme, "
                "host and an optional port, no path)."
            )
            % {"value": text[:200]},
            code="invalid_origin",
        )
    return origin


def setting_origins() -> frozenset[str]:
    """LEADOPS_CAPTURE_ORIGINS: sites allowed for the snippet and every form."""
    configured = getattr(settings, "LEADOPS_CAPTURE_ORIGINS", ())
    if isinstance(configured, str):
        configured = configured.split(",")
    return frozenset(filter(None, (origin_of(item) for item in configured if item.strip())))


def form_origins(form: WebForm) -> frozenset[str]:
    """Origins a form accepts posts from: its own list and the site-wide setting."""
    own = (origin_of(item) for item in form.allowed_origins if isinstance(item, str))
    return frozenset(filter(None, own)) | setting_origins()


_origins_cache: tuple[float, frozenset[str]] | None = None


def capture_origins() -> frozenset[str]:
    """Origins the snippet may report page views from: the setting and every active form's.

    Read on every page view, so kept in the process for a few seconds (an admin change
    applies within LEADOPS_CAPTURE_ORIGINS_CACHE_SECONDS, default 30).
    """
    global _origins_cache
    now = time.monotonic()
    if _origins_cache is not None and _origins_cache[0] > now:
        return _origins_cache[1]
    origins = setting_origins()
    for allowed in WebForm.objects.filter(active=True).values_list("allowed_origins", flat=True):
        origins |= {o for o in map(origin_of, _strings(allowed)) if o}
    seconds = getattr(settings, "LEADOPS_CAPTURE_ORIGINS_CACHE_SECONDS", None)
    seconds = DEFAULT_ORIGINS_CACHE_SECONDS if seconds is None else seconds
    _origins_cache = (now + seconds, origins)
    return origins


def forget_capture_origins() -> None:
    """Drop this process's cached allowlist (after a form is saved; in tests)."""
    global _origins_cache
    _origins_cache = None


def _strings(value: Any) -> list[str]:
    return [item for item in value if isinstance(item, str)] if isinstance(value, list) else []


def request_origin(meta: Mapping[str, str]) -> str | None:
    """The origin a browser request came from: the Origin header, else the Referer's."""
    origin = meta.get("HTTP_ORIGIN", "")
    if origin:
        return origin_of(origin)
    return origin_of(meta.get("HTTP_REFERER", ""))


# --- signed tokens ----------------------------------------------------------------------


def issue_identity_token(lead_id: int, visitor_id: uuid.UUID) -> str:
    """The value of the snippet's `leadops_lid` cookie: this visitor is this lead."""
    return signing.dumps({"l": lead_id, "v": visitor_id.hex}, salt=IDENTITY_SALT)


def read_identity_token(token: str, visitor_id: uuid.UUID) -> int | None:
    """The lead id of a valid identity token issued to this visitor, else None."""
    data = _unsign(token, salt=IDENTITY_SALT, max_age=IDENTITY_MAX_AGE)
    if data is None or data.get("v") != visitor_id.hex:
        return None
    return _lead_id(data)


def issue_click_token(lead_id: int) -> str:
    """The `_lo` value an email click appends to a landing page's URL."""
    return signing.dumps({"l": lead_id}, salt=CLICK_SALT)


def read_click_token(token: str) -> int | None:
    """The lead id of a valid, recent click token, else None."""
    data = _unsign(token, salt=CLICK_SALT, max_age=CLICK_MAX_AGE)
    return _lead_id(data) if data is not None else None


def with_click_token(url: str, lead_id: int) -> str:
    """`url` with `_lo=<click token>` when it points at a site on the capture allowlist;
    unchanged otherwise, so a lead's identity never leaks to a third-party site.

    For the email click redirect (nurturing.tracking): the landing page's snippet reads
    the parameter and identifies the visitor.
    """
    if origin_of(url) not in capture_origins():
        return url
    return add_query_param(url, CLICK_PARAM, issue_click_token(lead_id))


def add_query_param(url: str, name: str, value: str) -> str:
    """`url` with `name=value` set in its query (replacing any earlier value), fragment kept."""
    parts = urlsplit(url)
    query = [(k, v) for k, v in parse_qsl(parts.query, keep_blank_values=True) if k != name]
    return urlunsplit(parts._replace(query=urlencode([*query, (name, value)])))


def strip_query_param(url: str, name: str) -> str:
    parts = urlsplit(url)
    if name not in parts.query:
        return url
    query = [(k, v) for k, v in parse_qsl(parts.query, keep_blank_values=True) if k != name]
    return urlunsplit(parts._replace(query=urlencode(query)))


def _unsign(token: str, *, salt: str, max_age: timedelta) -> dict[str, Any] | None:
    if not isinstance(token, str) or not token or len(token) > 500:
        return None
    try:
        data = signing.loads(token, salt=salt, max_age=max_age)
    except (signing.BadSignature, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _lead_id(data: dict[str, Any]) -> int | None:
    lead_id = data.get("l")
    return lead_id if isinstance(lead_id, int) and not isinstance(lead_id, bool) else None


# --- page views: the hot path ---------------------------------------------------------


@dataclass(frozen=True, slots=True)
class PageView:
    """One page load reported by the snippet; `view_id` makes a resend idempotent.
    Queued with the lead a valid token named (if any) and the time it arrived."""

    visitor_id: uuid.UUID
    view_id: uuid.UUID
    url: str
    title: str = ""
    referrer: str = ""
    lead_id: int | None = None
    occurred_at: datetime | None = None


@dataclass(slots=True)
class PageViewOutcome:
    lead_id: int | None = None
    # A new identity token for the snippet to store, or an instruction to drop its own.
    identity: str | None = None
    forget_identity: bool = False


def parse_page_view(data: object) -> tuple[PageView | None, dict[str, list[str]]]:
    """(the page view, {}) or (None, {field: [message]}) for the snippet's JSON body."""
    if not isinstance(data, dict):
        return None, {"non_field_errors": [_("Send a JSON object.")]}
    errors: dict[str, list[str]] = {}
    visitor_id = parse_uuid(data.get("visitor"))
    if visitor_id is None:
        errors["visitor"] = [_("Send the visitor id (a UUID) from the leadops_vid cookie.")]
    url = _page_url(data.get("url"))
    if url is None:
        errors["url"] = [_("Send the page's address: an http(s) URL of at most 2,000 characters.")]
    if errors:
        return None, errors
    view = PageView(
        visitor_id=visitor_id,
        view_id=parse_uuid(data.get("view")) or uuid.uuid4(),
        url=url,
        title=_text(data.get("title"))[:MAX_TITLE_LENGTH],
        referrer=_page_url(data.get("referrer")) or "",
    )
    return view, {}


def parse_uuid(value: object) -> uuid.UUID | None:
    if not isinstance(value, str) or len(value) > 36:
        return None
    try:
        return uuid.UUID(value)
    except ValueError:
        return None


def _page_url(value: object) -> str | None:
    if not isinstance(value, str) or len(value) > MAX_URL_LENGTH or origin_of(value) is None:
        return None
    if any(ch in value for ch in "\x00\r\n\t"):
        return None
    # A click token must not end up in the activity (the snippet strips it already).
    return strip_query_param(value.strip(), CLICK_PARAM)


def _text(value: object) -> str:
    return value.replace("\x00", "").strip() if isinstance(value, str) else ""


def record_page_view(
    view: PageView, *, identity: str = "", click: str = "", now: datetime | None = None
) -> PageViewOutcome:
    """Accept one page view from the snippet: no database work unless it carries an
    email click's token (then the visitor is identified here, once).

    `identity` is the `leadops_lid` cookie, `click` an email click's `_lo` token. An
    invalid token is ignored (the view stays the visitor's, anonymous or not) and the
    snippet is told to forget a bad identity cookie.
    """
    now = now or timezone.now()
    outcome = PageViewOutcome()
    if identity:
        outcome.lead_id = read_identity_token(identity, view.visitor_id)
        outcome.forget_identity = outcome.lead_id is None
    if click:
        _identify_by_click(view.visitor_id, click, outcome, now=now)
    queue_page_view(replace(view, lead_id=outcome.lead_id, occurred_at=now))
    return outcome


def _identify_by_click(
    visitor_id: uuid.UUID, click: str, outcome: PageViewOutcome, *, now: datetime
) -> None:
    lead_id = read_click_token(click)
    if lead_id is None or lead_id == outcome.lead_id:
        return
    if not Lead.objects.filter(pk=lead_id).exists():
        return
    identify_visitor(visitor_id, lead_id, now=now)
    outcome.lead_id = lead_id
    outcome.identity = issue_identity_token(lead_id, visitor_id)


def queue_client() -> redis.Redis:
    # Fail fast: a visitor's page load must not wait for Redis retries with backoff.
    return bounded_redis(QUEUE_TIMEOUT_SECONDS)


def queue_page_view(view: PageView) -> None:
    """Hand the view to the drain: one Redis round trip (push, and claim the "drain
    scheduled" flag); the first view after a drain also enqueues the drain task. Without
    Redis the view is stored at once rather than lost."""
    try:
        pipe = queue_client().pipeline()
        pipe.rpush(QUEUE_KEY, _dump(view))
        pipe.set(FLAG_KEY, 1, nx=True, ex=FLAG_TTL_SECONDS)
        _length, first = pipe.execute()
    except redis.RedisError:
        logger.exception("Page-view queue unavailable; storing the view now")
        store_page_views([view])
        return
    if first:
        _enqueue_drain()


def _enqueue_drain() -> None:
    try:
        from nurturing.tasks import drain_page_views_task

        drain_page_views_task.delay()
    except BrokerError:
        # The views wait in Redis; the next view (or the beat safety net) tries again.
        queue_client().delete(FLAG_KEY)
        logger.exception("Could not enqueue the page-view drain")


def _dump(view: PageView) -> str:
    return json.dumps(
        [
            view.visitor_id.hex,
            view.view_id.hex,
            view.url,
            view.title,
            view.referrer,
            view.lead_id,
            (view.occurred_at or timezone.now()).isoformat(),
        ],
        ensure_ascii=False,
        separators=(",", ":"),
    )


def _load(raw: bytes) -> PageView | None:
    try:
        visitor, view, url, title, referrer, lead_id, at = json.loads(raw)
        return PageView(
            uuid.UUID(visitor), uuid.UUID(view), url, title, referrer, lead_id,
            datetime.fromisoformat(at),
        )  # fmt: skip
    except (ValueError, TypeError):
        logger.error("Dropping an unreadable queued page view: %r", raw[:200])
        return None


# --- page views: the drain ------------------------------------------------------------


class PageViewsNotStored(Exception):
    """The database refused (part of) a batch; `views` are those to queue again. None of
    them is half-stored: views of known leads may be stored already, and storing them
    again adds nothing (their event ids)."""

    def __init__(self, views: list[PageView]) -> None:
        super().__init__(f"{len(views)} page views not stored")
        self.views = views


def drain_page_views(*, batch_size: int = DRAIN_BATCH) -> int:
    """Store up to `batch_size` queued page views, then go on (another task) or stop.
    Views that could not be stored go back to the queue. Returns how many were taken."""
    client = queue_client()
    raw = client.lpop(QUEUE_KEY, batch_size) or []
    if raw:
        try:
            store_page_views([view for view in map(_load, raw) if view is not None])
        except PageViewsNotStored as exc:
            if exc.views:
                client.rpush(QUEUE_KEY, *map(_dump, exc.views))
            raise
    _continue_or_stop(client)
    return len(raw)


def _continue_or_stop(client: redis.Redis) -> None:
    # As the rescore queue: views pushed between our last pop and clearing the flag saw
    # the flag still set and enqueued nothing, so look once more after clearing it.
    if client.llen(QUEUE_KEY):
        client.set(FLAG_KEY, 1, ex=FLAG_TTL_SECONDS)
        _enqueue_drain()
        return
    client.delete(FLAG_KEY)
    if client.llen(QUEUE_KEY) and client.set(FLAG_KEY, 1, nx=True, ex=FLAG_TTL_SECONDS):
        _enqueue_drain()


def queued_page_views() -> int:
    """How many page views wait in the queue (monitoring, tests)."""
    return queue_client().llen(QUEUE_KEY)


def store_page_views(views: list[PageView]) -> None:
    """Store page views: those of a known lead as page_view activities (event ids from
    the visitor and view ids: storing twice adds nothing); the others as their visitor's
    anonymous views, or as activities when the visitor has been identified meanwhile.

    The anonymous insert is one statement and runs in no transaction of ours, so it
    never holds visitor rows while waiting for a lead row (form posts lock the lead,
    then the visitor): no deadlock. Raises PageViewsNotStored naming what to retry.
    """
    try:
        anonymous = [view for view in views if view.lead_id is None]
        anonymous += _ingest_views([view for view in views if view.lead_id is not None])
        of_known_visitors = _store_views_of_visitors(anonymous)
    except DatabaseError as exc:
        raise PageViewsNotStored(views) from exc
    try:
        lost = _ingest_views(of_known_visitors)
    except DatabaseError as exc:
        raise PageViewsNotStored(of_known_visitors) from exc
    if lost:
        logger.warning("Dropped %s page views of visitors whose lead is gone", len(lost))


def _ingest_views(views: list[PageView]) -> list[PageView]:
    """Ingest views of known leads; return those whose lead does not exist (any more),
    with the lead cleared."""
    missing: list[PageView] = []
    for start in range(0, len(views), DRAIN_BATCH):
        chunk = views[start : start + DRAIN_BATCH]
        result = ingest_events([_view_event(view) for view in chunk])
        missing += [
            replace(chunk[error["index"]], lead_id=None)
            for error in result.errors
            if "lead_id" in error["errors"]
        ]
    return missing


def _view_event(view: PageView) -> dict[str, Any]:
    return {
        "event_id": f"capture:pv:{view.visitor_id.hex}:{view.view_id.hex}",
        "lead_id": view.lead_id,
        "type": EventType.PAGE_VIEW,
        "occurred_at": view.occurred_at.isoformat(),
        "properties": _view_properties(view.url, view.title, view.referrer),
        "source": PAGE_VIEW_SOURCE,
    }


def _view_properties(url: str, title: str, referrer: str) -> dict[str, str]:
    properties = {"url": url}
    if title:
        properties["title"] = title
    if referrer:
        properties["referrer"] = referrer
    return properties


# One statement for a batch: create the visitors seen for the first time; store the views
# of visitors nobody has identified as anonymous; return, per view, its visitor's lead.
# FOR KEY SHARE on known visitors waits for an identification in progress (which holds
# FOR UPDATE: see `identify_visitor`) and then reads its lead, so no view is left
# anonymous behind a finished merge. Visitors are inserted and locked in one order.
_STORE_VIEWS_SQL = """
    WITH incoming AS (
        SELECT * FROM unnest(%(visitors)s::uuid[], %(urls)s::text[], %(titles)s::text[],
                             %(referrers)s::text[], %(times)s::timestamptz[])
            WITH ORDINALITY AS i(visitor, url, title, referrer, occurred_at, n)
    ),
    new_visitor AS (
        INSERT INTO nurturing_webvisitor (visitor_id, first_seen_at)
        SELECT visitor, min(occurred_at) FROM incoming GROUP BY visitor ORDER BY visitor
        ON CONFLICT (visitor_id) DO NOTHING
        RETURNING id, visitor_id, lead_id
    ),
    known_visitor AS (
        SELECT id, visitor_id, lead_id FROM nurturing_webvisitor
        WHERE visitor_id = ANY(%(visitors)s::uuid[])
        ORDER BY visitor_id
        FOR KEY SHARE
    ),
    visitor AS (
        SELECT id, visitor_id, lead_id FROM new_visitor
        UNION ALL
        SELECT id, visitor_id, lead_id FROM known_visitor
    ),
    stored AS (
        INSERT INTO nurturing_anonymouspageview (visitor_id, url, title, referrer, occurred_at)
        SELECT v.id, i.url, i.title, i.referrer, i.occurred_at
        FROM incoming i JOIN visitor v ON v.visitor_id = i.visitor
        WHERE v.lead_id IS NULL
        ORDER BY i.n
        RETURNING 1
    )
    SELECT i.n, v.id, v.lead_id FROM incoming i LEFT JOIN visitor v ON v.visitor_id = i.visitor
"""


def _store_views_of_visitors(views: list[PageView]) -> list[PageView]:
    """Store the views of unidentified visitors as anonymous; return the others, each
    with its visitor's lead, for ingest."""
    known: list[PageView] = []
    for _attempt in range(3):
        if not views:
            return known
        rows = _run_store_views(views)
        # No visitor row: created by a concurrent transaction after our snapshot; again.
        retry = [views[n - 1] for n, visitor_pk, _lead in rows if visitor_pk is None]
        known += [replace(views[n - 1], lead_id=lead) for n, _pk, lead in rows if lead]
        views = retry
    raise DatabaseError(f"Could not store page views of {len(views)} visitors")


def _run_store_views(views: list[PageView]) -> list[tuple[int, int | None, int | None]]:
    params = {
        "visitors": [view.visitor_id for view in views],
        "urls": [view.url for view in views],
        "titles": [view.title for view in views],
        "referrers": [view.referrer for view in views],
        "times": [view.occurred_at for view in views],
    }
    with connection.cursor() as cursor:
        cursor.execute(_STORE_VIEWS_SQL, params)
        return cursor.fetchall()


# --- identification -------------------------------------------------------------------


def identify_visitor(visitor_id: uuid.UUID, lead_id: int, *, now: datetime | None = None) -> int:
    """Link the visitor to the lead and merge its anonymous views into page_view
    activities (event ids from the view rows: merging twice adds nothing). Returns the
    number of views merged. The latest identification wins: a shared browser that
    identifies as someone else carries on as that lead."""
    now = now or timezone.now()
    with transaction.atomic():
        visitor_pk = _lock_visitor(visitor_id, now=now)
        WebVisitor.objects.filter(pk=visitor_pk).exclude(lead_id=lead_id).update(
            lead_id=lead_id, identified_at=now
        )
        return _merge_views(visitor_pk, lead_id, now=now)


def _lock_visitor(visitor_id: uuid.UUID, *, now: datetime) -> int:
    # FOR UPDATE (not NO KEY UPDATE): it conflicts with the page-view statement's
    # FOR KEY SHARE, so a view being stored now is either committed before our merge
    # reads the views, or sees the lead once we commit.
    WebVisitor.objects.bulk_create(
        [WebVisitor(visitor_id=visitor_id, first_seen_at=now)], ignore_conflicts=True
    )
    return (
        WebVisitor.objects.select_for_update()
        .values_list("pk", flat=True)
        .get(visitor_id=visitor_id)
    )


def _merge_views(visitor_pk: int, lead_id: int, *, now: datetime) -> int:
    merged = 0
    while True:
        views = list(
            AnonymousPageView.objects.filter(visitor_id=visitor_pk, merged_at__isnull=True)
            .order_by("id")
            .values_list("id", "url", "title", "referrer", "occurred_at")[:MERGE_BATCH]
        )
        if not views:
            return merged
        ingest_events([_merged_view_event(view, lead_id) for view in views])
        AnonymousPageView.objects.filter(id__in=[view[0] for view in views]).update(merged_at=now)
        merged += len(views)


def _merged_view_event(view: tuple, lead_id: int) -> dict[str, Any]:
    view_pk, url, title, referrer, occurred_at = view
    return {
        "event_id": f"capture:apv:{view_pk}",
        "lead_id": lead_id,
        "type": EventType.PAGE_VIEW,
        "occurred_at": occurred_at.isoformat(),
        "properties": _view_properties(url, title, referrer),
        "source": PAGE_VIEW_SOURCE,
    }


def merge_identified_views(*, now: datetime | None = None, limit: int = 10_000) -> int:
    """Merge anonymous views left behind by visitors who are identified (a safety net:
    normally none; e.g. a lead deleted and re-created). Returns the views merged."""
    now = now or timezone.now()
    pending = (
        AnonymousPageView.objects.filter(merged_at__isnull=True, visitor__lead__isnull=False)
        .values_list("visitor__visitor_id", "visitor__lead_id")
        .distinct()[:limit]
    )
    return sum(identify_visitor(visitor_id, lead_id, now=now) for visitor_id, lead_id in pending)


# --- public forms -----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class FormSubmission:
    """What a valid form post says about its sender (cleaned by the view's form)."""

    email: str
    fields: dict[str, Any]
    company: str | None
    properties: dict[str, Any]
    visitor_id: uuid.UUID | None = None
    submission_id: uuid.UUID | None = None


@dataclass(frozen=True, slots=True)
class SubmissionResult:
    lead: Lead
    created: bool
    # For the snippet's `leadops_lid` cookie (None when the post carried no visitor id).
    identity: str | None
    merged_views: int


def submit_web_form(form: WebForm, submission: FormSubmission) -> SubmissionResult:
    """Record a website form post: upsert the lead (source: the form's, for new leads),
    add a `form_submit` activity, identify the posting visitor and merge its views.

    All or nothing. The event id comes from the snippet's per-page submission id when
    there is one, so a double-clicked submit records one event.
    """
    with transaction.atomic():
        lead, created = upsert_lead(
            submission.email,
            fields=submission.fields,
            company=submission.company,
            create_defaults={"source": form.source},
        )
        result = ingest_events([_form_event(form, submission, lead.pk)])
        if result.errors:
            raise ValueError(f"form_submit event refused: {result.errors}")
        merged = 0
        if submission.visitor_id is not None:
            merged = identify_visitor(submission.visitor_id, lead.pk)
    identity = (
        issue_identity_token(lead.pk, submission.visitor_id) if submission.visitor_id else None
    )
    return SubmissionResult(lead=lead, created=created, identity=identity, merged_views=merged)


def _form_event(form: WebForm, submission: FormSubmission, lead_id: int) -> dict[str, Any]:
    submission_id = (submission.submission_id or uuid.uuid4()).hex
    return {
        "event_id": f"capture:form:{form.pk}:{submission_id}",
        "lead_id": lead_id,
        "type": EventType.FORM_SUBMIT,
        "properties": {"form": form.slug, "form_name": form.name, **submission.properties},
        "source": FORM_SOURCE,
    }


# --- rate limits ------------------------------------------------------------------------


def form_rate_wait(form: WebForm, ip: str, *, now: float | None = None) -> int | None:
    """Count this post against the per-IP and per-form limits (Redis counters in fixed
    windows); None when it may proceed, else the seconds until the window ends."""
    window = int(getattr(settings, "LEADOPS_FORM_RATE_WINDOW_SECONDS", 0) or 0)
    window = window or DEFAULT_FORM_RATE_WINDOW_SECONDS
    now = time.time() if now is None else now
    slot = int(now // window)
    wait = max(1, math.ceil((slot + 1) * window - now))
    per_ip = _limit("LEADOPS_FORM_RATE_PER_IP", DEFAULT_FORM_RATE_PER_IP)
    per_form = _limit("LEADOPS_FORM_RATE_PER_FORM", DEFAULT_FORM_RATE_PER_FORM)
    limits = (
        (f"capture:rate:ip:{ip}:{slot}", per_ip),
        (f"capture:rate:form:{form.pk}:{slot}", per_form),
    )
    # The IP is counted first and stops early: one noisy client does not use up the
    # form's budget for everybody else.
    for key, limit in limits:
        if _count(key, timeout=window + 1) > limit:
            return wait
    return None


def _limit(name: str, default: int) -> int:
    value = getattr(settings, name, None)
    return default if value is None else int(value)


def _count(key: str, *, timeout: int) -> int:
    cache.add(key, 0, timeout=timeout)
    try:
        return cache.incr(key)
    except ValueError:  # expired between add and incr
        cache.set(key, 1, timeout=timeout)
        return 1


# --- retention --------------------------------------------------------------------------


def purge_anonymous_views(*, older_than_days: int = 180, batch: int = 10_000) -> int:
    """Delete anonymous views older than this that never merged (and merged ones, whose
    activity holds the view now), batch by batch. Returns the rows deleted."""
    cutoff = timezone.now() - timedelta(days=older_than_days)
    deleted = 0
    while True:
        ids = list(
            AnonymousPageView.objects.filter(occurred_at__lt=cutoff).values_list("id", flat=True)[
                :batch
            ]
        )
        if not ids:
            return deleted
        deleted += AnonymousPageView.objects.filter(id__in=ids).delete()[0]
