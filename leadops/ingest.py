"""Behaviour event ingest: every event (API batch, single event, tracking) enters here.

Throughput matters (≥ 20k events/s in batches of 1,000), so the work is set-based:
items are validated in plain Python without queries, then one transaction runs a fixed
number of statements whatever the batch size:

1. resolve leads: read the ids of every email / lead_id named, then (only for emails
   nobody has) create the leads (`INSERT … ON CONFLICT (email) DO NOTHING`);
2. insert the activities from arrays (`INSERT … SELECT FROM unnest(…) ON CONFLICT
   (event_id) DO NOTHING RETURNING event_id`);
3. only when some event_ids were already stored: fetch their fingerprints, to tell a
   resent duplicate (same body) from a reused id (different body: an error);
4. only for unsubscribe events: one UPDATE setting the leads' `unsubscribed` flag, at
   once, so that no mail goes out after it.

Existing leads' `last_activity_at` is not written here (a lead created by a single event
is inserted with it): the rescore that follows every accepted event
(scoring.services.rescoring) writes it with the scores, one row write per lead however
many events arrived. Rewriting a lead row rewrites all its indexes (it has
nine), and doing it here cost half of a batch's time at 1M leads.

Rows are inserted and locked in a stable order (email, event_id, lead id) so that
concurrent batches naming the same leads wait for each other instead of deadlocking.

A single event (the common case of integrations, and the API's latency) takes the same
steps as one statement of data-modifying CTEs run in autocommit: one round trip and one
commit instead of five (see "one event: one statement" below).
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import time
from collections.abc import Callable, Iterable, Sequence
from contextlib import nullcontext
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from functools import cache, lru_cache
from typing import Any, TypeVar

from django.core.exceptions import ValidationError as DjangoValidationError
from django.core.validators import validate_email
from django.db import IntegrityError, OperationalError, connection, transaction
from django.utils import timezone
from django.utils.dateparse import parse_datetime
from django.utils.translation import gettext as _
from psycopg.errors import DeadlockDetected, ForeignKeyViolation

from leadops.models import EventType, Lead
from leadops.sql import model_default_columns, prepared_cursor

logger = logging.getLogger(__name__)
T = TypeVar("T")

MAX_EVENTS_PER_REQUEST = 1000
MAX_EVENT_ID_LENGTH = 200
MAX_EMAIL_LENGTH = 254
MAX_SOURCE_LENGTH = 100
MAX_PROPERTIES_BYTES = 16 * 1024
MAX_PROPERTIES_DEPTH = 5
EARLIEST_OCCURRED_AT = datetime(2000, 1, 1, tzinfo=UTC)
MAX_CLOCK_AHEAD = timedelta(days=1)
NEW_LEAD_SOURCE = "API"

EVENT_FIELDS = ("event_id", "email", "lead_id", "type", "occurred_at", "properties", "source")
_EVENT_FIELD_SET = frozenset(EVENT_FIELDS)
_EVENT_TYPES = frozenset(EventType.values)
# Canonical JSON (sorted keys, compact, UTF-8 as is); built once, it is the hot path.
_canonical_json = json.JSONEncoder(
    ensure_ascii=False, sort_keys=True, separators=(",", ":"), allow_nan=False
)
_json_string = json.encoder.encode_basestring  # a str as a JSON string literal
_MAX_BIGINT = 2**63 - 1


@dataclass(slots=True)
class ValidEvent:
    """One event that passed validation: values cleaned, body fingerprinted."""

    index: int
    event_id: str
    email: str | None
    lead_id: int | None
    type: str
    occurred_at: datetime
    properties_json: str
    source: str
    fingerprint: str


@dataclass
class IngestResult:
    accepted: int = 0
    duplicates: int = 0
    # [{"index": i, "errors": {field: [message, …]}}, …] in index order.
    errors: list[dict[str, Any]] = field(default_factory=list)
    lead_ids: set[int] = field(default_factory=set)

    def add_error(self, index: int, errors: dict[str, list[str]]) -> None:
        self.errors.append({"index": index, "errors": errors})


# Many concurrent events for one lead can still meet in a lock cycle inside PostgreSQL
# (tuple-lock queueing between the activity's foreign-key lock and the lead update);
# PostgreSQL then aborts one transaction, which loses nothing and is simply run again.
DEADLOCK_RETRIES = 4


def _store_retrying_deadlocks(events: list, validated: IngestResult) -> IngestResult:
    """`_store` in its own transaction, run again (from the validated state) if PostgreSQL
    chose it as a deadlock victim; inside a caller's transaction there is no retry."""

    def store() -> IngestResult:
        result = replace(validated, errors=list(validated.errors), lead_ids=set())
        with transaction.atomic():
            _store(events, result)
        return result

    return _run_again_when_harmless(store)


def _run_again_when_harmless(run: Callable[[], T], *, lead_race: bool = False) -> T:
    """`run()`, run again (up to DEADLOCK_RETRIES times) when PostgreSQL aborted it for a
    reason that loses nothing: a deadlock (outside a caller's transaction, which the
    abort spoils), or with `lead_race` a foreign-key violation from a lead created or
    deleted after the statement's snapshot."""
    for attempt in range(DEADLOCK_RETRIES):
        last = attempt == DEADLOCK_RETRIES - 1
        try:
            return run()
        except IntegrityError as exc:
            if not lead_race or not isinstance(exc.__cause__, ForeignKeyViolation) or last:
                raise
            message = "ingest: lead changed concurrently, running again (attempt %d)"
            logger.info(message, attempt + 2)
        except OperationalError as exc:
            retry = isinstance(exc.__cause__, DeadlockDetected)
            if not retry or connection.in_atomic_block or last:
                raise
            logger.info("ingest: deadlock victim, running again (attempt %d)", attempt + 2)
            time.sleep(0.005 * 2**attempt)
    raise AssertionError("unreachable")


class _Invalid(Exception):
    """A field's value is wrong; the message says what to send instead."""


def ingest_events(items: Sequence[object], *, actor: Any = None) -> IngestResult:
    """Store behaviour events; return how many were accepted, duplicates, and per-item errors.

    `items` are decoded JSON values (normally dicts). Invalid items are reported by index
    and skipped; valid ones are stored even when others fail. An event_id already stored
    with the same body counts as a duplicate; with a different body it is an error.
    An email nobody has yet creates the lead (source "API"). `actor` is the user sending.
    """
    if len(items) > MAX_EVENTS_PER_REQUEST:
        raise ValueError(f"At most {MAX_EVENTS_PER_REQUEST} events per call, got {len(items)}")
    result = IngestResult()
    events = _validate_all(items, result)
    if len(events) == 1:
        result = _store_one(events[0], result)
    elif events:
        result = _store_retrying_deadlocks(events, result)
    touched = frozenset(result.lead_ids)
    if touched:
        transaction.on_commit(lambda: _after_events_committed(touched))
    result.errors.sort(key=lambda error: error["index"])
    logger.debug("ingest by %s: %s accepted", getattr(actor, "pk", None), result.accepted)
    return result


def _after_events_committed(lead_ids: frozenset[int]) -> None:
    """Runs once per ingest call after its events are committed, with the leads touched.

    Scoring rescores these leads (behaviour score, MQL rule and the hand-off triggers),
    coalesced per lead and batched across leads by the rescore queue.
    """
    from scoring.services import schedule_rescore

    schedule_rescore(lead_ids)


# --- validation: plain Python, no queries ----------------------------------------------


def _validate_all(items: Sequence[object], result: IngestResult) -> list[ValidEvent]:
    """Valid events, first occurrence of each event_id; errors and in-batch repeats noted."""
    now = timezone.now()
    events: list[ValidEvent] = []
    seen: dict[str, str] = {}
    for index, raw in enumerate(items):
        event, errors = validate_event(raw, index=index, now=now)
        if event is None:
            result.add_error(index, errors)
        elif event.event_id not in seen:
            seen[event.event_id] = event.fingerprint
            events.append(event)
        elif seen[event.event_id] == event.fingerprint:
            result.duplicates += 1
        else:
            result.add_error(index, {"event_id": [_reused_id_message()]})
    return events


def validate_event(
    raw: object, *, index: int, now: datetime
) -> tuple[ValidEvent | None, dict[str, list[str]]]:
    """(the cleaned event, {}) or (None, {field: [message]}) for one decoded JSON item."""
    if not isinstance(raw, dict):
        return None, {"non_field_errors": [_("Each event must be a JSON object.")]}
    errors = {} if _EVENT_FIELD_SET.issuperset(raw) else _unknown_field_errors(raw)
    values: dict[str, Any] = {}
    for name, check in _FIELD_CHECKS:
        try:
            values[name] = check(raw.get(name), now)
        except _Invalid as exc:
            errors[name] = [str(exc)]
    _check_target(raw, errors)
    if errors:
        return None, errors
    return _valid_event(index, values, now), {}


def _unknown_field_errors(raw: dict) -> dict[str, list[str]]:
    message = _("Unknown field. Event fields are: %s.") % ", ".join(EVENT_FIELDS)
    return {str(name): [message] for name in raw.keys() - _EVENT_FIELD_SET}


def _valid_event(index: int, values: dict[str, Any], now: datetime) -> ValidEvent:
    occurred_at = values["occurred_at"] or now
    return ValidEvent(
        index=index,
        event_id=values["event_id"],
        email=values["email"],
        lead_id=values["lead_id"],
        type=values["type"],
        occurred_at=occurred_at,
        properties_json=values["properties"],
        source=values["source"],
        fingerprint=_fingerprint(values),
    )


def _fingerprint(values: dict[str, Any]) -> str:
    """sha256 of the canonical JSON (sorted keys, compact) of the event's body.

    The body is what the sender sent: occurred_at normalized to UTC, or null when left
    out (so a resent event without occurred_at is still a duplicate). The string is
    assembled by hand because the properties are serialized already, canonically.
    """
    email, occurred_at = values["email"], values["occurred_at"]
    lead = _json_string(email) if email is not None else str(values["lead_id"])
    occurred = _json_string(occurred_at.astimezone(UTC).isoformat()) if occurred_at else "null"
    canonical = (
        f'{{"lead":{lead},"occurred_at":{occurred},'
        f'"properties":{values["properties"]},"type":{_json_string(values["type"])}}}'
    )
    return hashlib.sha256(canonical.encode()).hexdigest()


def _check_target(raw: dict, errors: dict[str, list[str]]) -> None:
    # Exactly one of email / lead_id names the lead.
    if raw.get("email") is None and raw.get("lead_id") is None:
        if "email" not in errors and "lead_id" not in errors:
            errors["email"] = [_("Send the lead's email (or its lead_id).")]
    elif raw.get("email") is not None and raw.get("lead_id") is not None:
        errors["lead_id"] = [_("Send either email or lead_id, not both.")]


def _clean_event_id(value: object, now: datetime) -> str:
    if value is None or value == "":
        raise _Invalid(_("This field is required: a unique id for this event, from the sender."))
    text = _text(value, max_length=MAX_EVENT_ID_LENGTH)
    if not text.strip():
        raise _Invalid(_("The event_id must not be blank."))
    return text


def _clean_email(value: object, now: datetime) -> str | None:
    if value is None:
        return None
    email = _text(value, max_length=MAX_EMAIL_LENGTH).strip().lower()
    if not is_valid_email(email):
        raise _Invalid(_("Enter a valid email address."))
    return email


# Nearly every address is a plain ASCII dot-atom at a hostname: this pattern accepts those,
# a subset of what Django's EmailValidator accepts (tested), at a tenth of its cost (the
# validator was a quarter of a batch's Python). Anything else is the validator's to judge.
_PLAIN_EMAIL = re.compile(
    r"[a-z0-9!#$%&'*+/=?^_`{|}~-]+(?:\.[a-z0-9!#$%&'*+/=?^_`{|}~-]+)*"
    r"@(?:[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?\.)+[a-z]{2,63}"
)


def is_valid_email(email: str) -> bool:
    """Django's EmailValidator's verdict on a lowercased address, the common case fast."""
    if len(email) <= MAX_EMAIL_LENGTH and _PLAIN_EMAIL.fullmatch(email):
        return True
    return _django_accepts_email(email)


@lru_cache(maxsize=4096)
def _django_accepts_email(email: str) -> bool:
    try:
        validate_email(email)
    except DjangoValidationError:
        return False
    return True


def _clean_lead_id(value: object, now: datetime) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not 0 < value <= _MAX_BIGINT:
        raise _Invalid(_("The lead_id must be a positive whole number."))
    return value


def _clean_type(value: object, now: datetime) -> str:
    if value is None:
        raise _Invalid(_("This field is required: one of %s.") % ", ".join(EventType.values))
    if not isinstance(value, str) or value not in _EVENT_TYPES:
        raise _Invalid(_("Unknown event type. Use one of: %s.") % ", ".join(EventType.values))
    return value


def _clean_occurred_at(value: object, now: datetime) -> datetime | None:
    if value is None:
        return None
    moment = _parse_moment(value)
    if moment < EARLIEST_OCCURRED_AT:
        raise _Invalid(_("The time is before 2000-01-01: send when the event really happened."))
    if moment > now + MAX_CLOCK_AHEAD:
        raise _Invalid(
            _("The time is more than a day in the future: check the sender's clock and time zone.")
        )
    return moment


def _parse_moment(value: object) -> datetime:
    try:
        moment = parse_datetime(value) if isinstance(value, str) else None
    except ValueError:
        moment = None
    if moment is None:
        raise _Invalid(_("Send an ISO 8601 date and time, e.g. 2026-04-01T09:30:00+09:00."))
    if timezone.is_naive(moment):
        # No offset given: the workspace's time zone, as everywhere else in LeadOps.
        moment = timezone.make_aware(moment)
    return moment


def _clean_properties(value: object, now: datetime) -> str:
    """The properties as canonical JSON text (sorted keys, compact)."""
    if value is None:
        return "{}"
    if not isinstance(value, dict):
        raise _Invalid(_('The properties must be a JSON object, e.g. {"url": "/pricing"}.'))
    _check_depth(value)
    try:
        text = _canonical_json.encode(value)
    except (TypeError, ValueError) as exc:  # only from Python callers: NaN, objects
        raise _Invalid(_("The properties must hold only JSON values.")) from exc
    if len(_utf8(text)) > MAX_PROPERTIES_BYTES:
        raise _Invalid(
            _("The properties are larger than 16 KB as JSON: send only what scoring needs.")
        )
    # PostgreSQL cannot store NUL in jsonb; the cheap test on the text finds candidates
    # (a NUL, or a literal backslash-u0000), the walk decides.
    if "\\u0000" in text and _contains_nul(value):
        raise _Invalid(_("The properties contain a NUL character: remove it."))
    return text


def _check_depth(node: dict | list, depth: int = 1) -> None:
    # Raises before descending past the limit, so the recursion is at most 6 deep.
    if depth > MAX_PROPERTIES_DEPTH:
        raise _Invalid(
            _("The properties are nested deeper than %d levels: flatten them.")
            % MAX_PROPERTIES_DEPTH
        )
    for child in node.values() if isinstance(node, dict) else node:
        if isinstance(child, dict | list):
            _check_depth(child, depth + 1)


def _contains_nul(value: Any) -> bool:
    if isinstance(value, str):
        return "\x00" in value
    if isinstance(value, dict):
        return any(_contains_nul(k) or _contains_nul(v) for k, v in value.items())
    if isinstance(value, list):
        return any(_contains_nul(item) for item in value)
    return False


def _clean_source(value: object, now: datetime) -> str:
    if value is None:
        return ""
    return _text(value, max_length=MAX_SOURCE_LENGTH)


def _text(value: object, *, max_length: int) -> str:
    if not isinstance(value, str):
        raise _Invalid(_("Send a string."))
    if len(value) > max_length:
        raise _Invalid(_("Ensure this field has no more than %d characters.") % max_length)
    if "\x00" in value:
        raise _Invalid(_("Remove the NUL character from this field."))
    if not value.isascii():
        _utf8(value)
    return value


def _utf8(text: str) -> bytes:
    try:
        return text.encode()
    except UnicodeEncodeError as exc:
        # A lone surrogate (e.g. "\ud800" in the JSON) is not text PostgreSQL can store.
        raise _Invalid(_("The text contains an invalid character (a lone surrogate).")) from exc


def _reused_id_message() -> str:
    return _(
        "This event_id was already received with a different body. "
        "Give every distinct event its own event_id."
    )


_FIELD_CHECKS = (
    ("event_id", _clean_event_id),
    ("email", _clean_email),
    ("lead_id", _clean_lead_id),
    ("type", _clean_type),
    ("occurred_at", _clean_occurred_at),
    ("properties", _clean_properties),
    ("source", _clean_source),
)


# --- writing: a fixed number of statements per call ----------------------------------


def _store(events: list[ValidEvent], result: IngestResult) -> None:
    by_email, known_ids, created = _resolve_leads(events)
    rows: list[tuple[ValidEvent, int]] = []
    for event in events:
        lead_id = by_email.get(event.email) if event.email else event.lead_id
        if lead_id is None or (event.email is None and lead_id not in known_ids):
            result.add_error(event.index, {"lead_id": [_unknown_lead_message()]})
        else:
            rows.append((event, lead_id))
    inserted = _insert_activities(rows)
    accepted = [(event, lead_id) for event, lead_id in rows if event.event_id in inserted]
    _sort_out_conflicts([event for event, _lead in rows if event.event_id not in inserted], result)
    result.accepted += len(accepted)
    result.lead_ids.update(lead_id for _event, lead_id in accepted)
    _drop_unused_new_leads(created - result.lead_ids)
    _mark_unsubscribed(accepted)


def _unknown_lead_message() -> str:
    return _("No lead has this id. Send the lead's email instead to create the lead.")


# The leads named by email (with their email) and by id (email NULL); the bare app of
# bench/floor_ingest.py runs these statements too.
RESOLVE_LEADS_SQL = """
    SELECT id, email FROM leadops_lead WHERE email = ANY(%s::text[])
    UNION ALL
    SELECT id, NULL FROM leadops_lead WHERE id = ANY(%s::bigint[])
"""


def _resolve_leads(events: Sequence[ValidEvent]) -> tuple[dict[str, int], set[int], set[int]]:
    """({email: lead id}, the lead_ids that exist, the ids of leads created now).

    Known leads are read first; only emails nobody has yet are inserted, in a second
    statement that most batches never need (one index probe per email instead of two).
    """
    emails = sorted({event.email for event in events if event.email})
    ids = sorted({event.lead_id for event in events if event.lead_id is not None})
    with connection.cursor() as cursor:
        cursor.execute(RESOLVE_LEADS_SQL, [text_array(emails), int_array(ids)])
        rows = cursor.fetchall()
    by_email = {email: lead_id for lead_id, email in rows if email is not None}
    known_ids = {lead_id for lead_id, email in rows if email is None}
    created = _create_leads([email for email in emails if email not in by_email])
    by_email.update(created)
    _add_raced_emails(by_email, [email for email in emails if email not in by_email])
    return by_email, known_ids, set(created.values())


def _create_leads(emails: list[str]) -> dict[str, int]:
    """{email: id} of the leads inserted for these emails (sorted: a stable order)."""
    if not emails:
        return {}
    columns, expressions, defaults = _new_lead_columns()
    sql = f"""
        INSERT INTO leadops_lead (email, {", ".join(columns)})
        SELECT w.email, {", ".join(expressions)} FROM unnest(%s::text[]) AS w(email)
        ORDER BY w.email
        ON CONFLICT (email) DO NOTHING
        RETURNING id, email
    """
    with connection.cursor() as cursor:
        # In the order of the placeholders: the defaults come before the array.
        cursor.execute(sql, [*defaults, text_array(emails)])
        return {email: lead_id for lead_id, email in cursor.fetchall()}


def _add_raced_emails(by_email: dict[str, int], missing: list[str]) -> None:
    # Committed by a concurrent transaction after our insert's snapshot: the insert
    # skipped them as conflicts and could not see them yet; a new read can.
    if missing:
        by_email.update(Lead.objects.filter(email__in=missing).values_list("email", "id"))


@cache
def _new_lead_columns() -> tuple[list[str], list[str], tuple[Any, ...]]:
    """(columns, SQL expressions, their parameters) of a new lead besides its email:
    the model's defaults, and the source that says it came from an event."""
    columns, expressions, values = model_default_columns(Lead, given=("email", "source"))
    source = connection.ops.quote_name("source")
    return [*columns, source], [*expressions, "%s::text"], (*values, NEW_LEAD_SOURCE)


# received_at, then one array per column: lead_id, type, occurred_at, properties (JSON
# text), event_id, fingerprint, source.
INSERT_ACTIVITIES_SQL = """
    INSERT INTO leadops_activity
        (lead_id, type, occurred_at, properties, event_id, fingerprint, source, received_at)
    SELECT a.lead_id, a.type, a.occurred_at, a.properties::jsonb, a.event_id,
           a.fingerprint, a.source, %s
    FROM unnest(%s::bigint[], %s::text[], %s::timestamptz[], %s::text[], %s::text[],
                %s::text[], %s::text[])
         AS a(lead_id, type, occurred_at, properties, event_id, fingerprint, source)
    ORDER BY a.event_id
    ON CONFLICT (event_id) DO NOTHING
    RETURNING event_id
"""


def _insert_activities(rows: list[tuple[ValidEvent, int]]) -> set[str]:
    """Insert the rows whose event_id is new; return those event_ids."""
    if not rows:
        return set()
    arrays = [
        int_array(lead_id for _event, lead_id in rows),
        text_array(event.type for event, _lead in rows),
        text_array(event.occurred_at.isoformat() for event, _lead in rows),
        text_array(event.properties_json for event, _lead in rows),
        text_array(event.event_id for event, _lead in rows),
        text_array(event.fingerprint for event, _lead in rows),
        text_array(event.source for event, _lead in rows),
    ]
    with connection.cursor() as cursor:
        cursor.execute(INSERT_ACTIVITIES_SQL, [timezone.now(), *arrays])
        return {event_id for (event_id,) in cursor.fetchall()}


def _sort_out_conflicts(conflicting: list[ValidEvent], result: IngestResult) -> None:
    """Stored already: same fingerprint is a duplicate, another one an error."""
    if not conflicting:
        return
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT event_id, fingerprint FROM leadops_activity WHERE event_id = ANY(%s::text[])",
            [text_array(event.event_id for event in conflicting)],
        )
        stored = dict(cursor.fetchall())
    for event in conflicting:
        if stored.get(event.event_id) == event.fingerprint:
            result.duplicates += 1
        else:
            result.add_error(event.index, {"event_id": [_reused_id_message()]})


def _drop_unused_new_leads(lead_ids: set[int]) -> None:
    # Leads created by this call for events that then failed (a reused event_id): nothing
    # half-written. Created in this transaction, so no other row can reference them yet.
    if lead_ids:
        with connection.cursor() as cursor:
            cursor.execute(
                "DELETE FROM leadops_lead WHERE id = ANY(%s::bigint[])", [int_array(lead_ids)]
            )


def _mark_unsubscribed(accepted: list[tuple[ValidEvent, int]]) -> None:
    """Unsubscribe events set their leads' flag in the same transaction as the events."""
    ids = sorted({lead_id for event, lead_id in accepted if event.type == EventType.UNSUBSCRIBE})
    if not ids:
        return
    # The rows are locked in id order first (FOR NO KEY UPDATE, which does not block the
    # activity inserts' foreign-key checks): concurrent batches cannot deadlock. Rows
    # already unsubscribed are neither locked nor rewritten.
    sql = """
        WITH locked AS MATERIALIZED (
            SELECT id FROM leadops_lead
            WHERE id = ANY(%s::bigint[]) AND NOT unsubscribed
            ORDER BY id FOR NO KEY UPDATE
        )
        UPDATE leadops_lead l SET unsubscribed = true FROM locked k WHERE l.id = k.id
    """
    with connection.cursor() as cursor:
        cursor.execute(sql, [int_array(ids)])


# Arrays go to PostgreSQL as ONE array-literal string each, cast in SQL (`%s::text[]`):
# psycopg adapts a Python list element by element (~20 ms per 1,000 JSON strings in
# text mode), while one string is quoted in microseconds.


def text_array(values: Iterable[str]) -> str:
    """A PostgreSQL array literal of strings: every element quoted, `\\` and `"` escaped.

    Escaping is per character, so the elements are joined first (by NUL, which
    PostgreSQL text cannot hold and validation refuses) and escaped in one pass: a few C
    calls instead of two per element.
    """
    values = list(values)
    if not values:
        return "{}"
    joined = "\x00".join(values)
    if joined.count("\x00") != len(values) - 1:
        raise ValueError("PostgreSQL text cannot hold a NUL character")
    escaped = joined.replace("\\", "\\\\").replace('"', '\\"')
    return '{"' + escaped.replace("\x00", '","') + '"}'


def int_array(values: Iterable[int]) -> str:
    return "{" + ",".join(str(int(value)) for value in values) + "}"


# --- one event: one statement ----------------------------------------------------------
#
# Most integrations send events one by one, so this path is the latency and the rate of
# the API: one statement in autocommit is one round trip (and one commit) instead of
# BEGIN, three statements and COMMIT, and it is prepared (planning it cost more than
# running it). It keeps the batch path's semantics and takes the
# same row locks: FOR NO KEY UPDATE on the lead only for an unsubscribe that changes it,
# and the activity's foreign-key share lock, which do not conflict with each other.
#
# An unknown email gets its lead id from the sequence first and the lead row is inserted
# only when the activity was: a reused event_id never leaves a lead behind, without a
# transaction to roll back. When another call created the same email after this
# statement's snapshot, the lead insert skips it as a conflict and the activity would
# point at no lead: PostgreSQL refuses the whole statement (foreign-key violation) and it
# runs again, with a snapshot that sees the other call's lead.


@dataclass(frozen=True, slots=True)
class _OneOutcome:
    lead_id: int | None  # None: lead_id names no lead
    inserted: bool
    stored_fingerprint: str | None  # of the event_id stored before, as far as seen


def _store_one(event: ValidEvent, validated: IngestResult) -> IngestResult:
    result = replace(validated, errors=list(validated.errors), lead_ids=set())
    outcome = _run_one_retrying(event)
    if outcome.lead_id is None:
        result.add_error(event.index, {"lead_id": [_unknown_lead_message()]})
    elif outcome.inserted:
        result.accepted += 1
        result.lead_ids.add(outcome.lead_id)
    elif outcome.stored_fingerprint is None:
        # Committed by another call after our snapshot (we waited for it): read it now.
        _sort_out_conflicts([event], result)
    elif outcome.stored_fingerprint == event.fingerprint:
        result.duplicates += 1
    else:
        result.add_error(event.index, {"event_id": [_reused_id_message()]})
    return result


def _run_one_retrying(event: ValidEvent) -> _OneOutcome:
    """The statement, run again when a concurrent call made it fail harmlessly: a lead
    created or deleted after its snapshot, or a deadlock (outside a caller's transaction)."""

    def run() -> _OneOutcome:
        # Inside a caller's transaction a failed statement would abort it: a savepoint
        # keeps it usable. In autocommit the statement is its own transaction.
        with transaction.atomic() if connection.in_atomic_block else nullcontext():
            return _one_statement(event)

    return _run_again_when_harmless(run, lead_race=True)


def _one_statement(event: ValidEvent) -> _OneOutcome:
    params = {
        "email": event.email,
        "lead_id": event.lead_id,
        "type": event.type,
        "occurred_at": event.occurred_at,
        "properties": event.properties_json,
        "event_id": event.event_id,
        "fingerprint": event.fingerprint,
        "source": event.source,
        "received_at": timezone.now(),
        "unsubscribe": event.type == EventType.UNSUBSCRIBE,
    }
    sql, defaults = _one_event_sql(by_email=event.email is not None)
    with prepared_cursor() as cursor:
        cursor.execute(sql, {**defaults, **params})
        lead_id, inserted, stored_fingerprint = cursor.fetchone()
    return _OneOutcome(lead_id, inserted, stored_fingerprint)


@cache
def _one_event_sql(*, by_email: bool) -> tuple[str, dict[str, Any]]:
    """(the statement, its default-value parameters) for an event naming its lead by
    email (unknown: created) or by lead_id (unknown: nothing written)."""
    if not by_email:
        target = "SELECT id, false AS new FROM leadops_lead WHERE id = %(lead_id)s"
        return _ONE_EVENT_SQL.format(target=target, create=""), {}
    columns, expressions, values = model_default_columns(Lead, given=_ONE_EVENT_LEAD_COLUMNS)
    names = iter(f"new_lead_{i}" for i in range(len(values)))
    # Timestamps are now() and take no parameter: name the placeholders in order.
    expressions = [
        expr.replace("%s", f"%({next(names)})s") if "%s" in expr else expr for expr in expressions
    ]
    quoted = ", ".join(connection.ops.quote_name(c) for c in _ONE_EVENT_LEAD_COLUMNS)
    create = f"""
        created AS (
            INSERT INTO leadops_lead (id, {quoted}, {", ".join(columns)})
            SELECT t.id, %(email)s, %(new_source)s, %(occurred_at)s, %(unsubscribe)s,
                   {", ".join(expressions)}
            FROM target t JOIN inserted i ON i.lead_id = t.id
            WHERE t.new
            ON CONFLICT (email) DO NOTHING
        ),"""
    target = """
        SELECT id, false AS new FROM leadops_lead WHERE email = %(email)s
        UNION ALL
        SELECT nextval(pg_get_serial_sequence('leadops_lead', 'id')), true
        WHERE NOT EXISTS (SELECT 1 FROM leadops_lead WHERE email = %(email)s)"""
    defaults = {f"new_lead_{i}": value for i, value in enumerate(values)}
    defaults["new_source"] = NEW_LEAD_SOURCE
    return _ONE_EVENT_SQL.format(target=target, create=create), defaults


_ONE_EVENT_LEAD_COLUMNS = ("email", "source", "last_activity_at", "unsubscribed")

# An existing lead is updated only by an unsubscribe (as in the batch path; the rescore
# that follows writes its last activity), a new lead is inserted with the event's values.
# The last SELECT reads the statement's snapshot: the fingerprint of an event_id stored
# before it began.
_ONE_EVENT_SQL = """
    WITH target AS MATERIALIZED ({target}),
    inserted AS (
        INSERT INTO leadops_activity
            (lead_id, type, occurred_at, properties, event_id, fingerprint, source, received_at)
        SELECT t.id, %(type)s, %(occurred_at)s, %(properties)s::jsonb, %(event_id)s,
               %(fingerprint)s, %(source)s, %(received_at)s
        FROM target t
        ON CONFLICT (event_id) DO NOTHING
        RETURNING lead_id
    ),{create}
    unsubscribed AS (
        UPDATE leadops_lead l SET unsubscribed = true
        FROM target t JOIN inserted i ON i.lead_id = t.id
        WHERE l.id = t.id AND NOT t.new AND %(unsubscribe)s AND NOT l.unsubscribed
    )
    SELECT (SELECT id FROM target),
           EXISTS (SELECT 1 FROM inserted),
           (SELECT fingerprint FROM leadops_activity WHERE event_id = %(event_id)s)
"""
