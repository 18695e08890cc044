"""The floor for event POSTs: a bare WSGI app that stores the events with the same
statements as LeadOps, on the same gunicorn, with no framework at all.

A single event (a JSON object): it runs `leadops.ingest`'s single-event statement in
autocommit on its own psycopg connection (one per thread) and answers 202: what any
server must do to store one event durably on this machine (HTTP, one round trip, one
commit). A batch (`{"events": [...]}`): one transaction of the batch path's two
statements, the leads resolved by email and the activities inserted (with their
foreign-key checks at commit). Neither does validation, authentication, throttling,
duplicate sorting, lead creation or the rescore queue. LeadOps' rates are printed beside
this app's.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
from datetime import UTC, datetime

import django
import psycopg

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "leadops.settings")
django.setup()

from leadops.engines import database_url  # noqa: E402
from leadops.ingest import (  # noqa: E402
    INSERT_ACTIVITIES_SQL,
    RESOLVE_LEADS_SQL,
    _one_event_sql,
    int_array,
    text_array,
)

SQL, DEFAULTS = _one_event_sql(by_email=True)
ACCEPTED = b'{"accepted":1,"duplicates":0,"errors":[]}'
HEADERS = [("Content-Type", "application/json"), ("Content-Length", str(len(ACCEPTED)))]
_local = threading.local()


def _connection() -> psycopg.Connection:
    if getattr(_local, "connection", None) is None:
        _local.connection = psycopg.connect(database_url(), autocommit=True)
    return _local.connection


def application(environ, start_response):
    body = environ["wsgi.input"].read(int(environ.get("CONTENT_LENGTH") or 0))
    event = json.loads(body)
    if "events" in event:
        accepted = _store_batch(event["events"])
        answer = json.dumps({"accepted": accepted, "duplicates": 0, "errors": []}).encode()
        start_response("202 Accepted", [HEADERS[0], ("Content-Length", str(len(answer)))])
        return [answer]
    now = datetime.now(UTC)
    params = {
        **DEFAULTS,
        "email": event["email"],
        "lead_id": None,
        "type": event["type"],
        "occurred_at": event.get("occurred_at") or now,
        "properties": json.dumps(event.get("properties") or {}, sort_keys=True),
        "event_id": event["event_id"],
        "fingerprint": hashlib.sha256(body).hexdigest(),
        "source": "api",
        "received_at": now,
        "unsubscribe": event["type"] == "unsubscribe",
    }
    with _connection().cursor() as cursor:
        cursor.execute(SQL, params)
        cursor.fetchone()
    start_response("202 Accepted", HEADERS)
    return [ACCEPTED]


def _store_batch(events: list[dict]) -> int:
    now = datetime.now(UTC)
    emails = sorted({event["email"] for event in events})
    connection = _connection()
    with connection.transaction(), connection.cursor() as cursor:
        cursor.execute(RESOLVE_LEADS_SQL, [text_array(emails), "{}"])
        by_email = {email: lead_id for lead_id, email in cursor.fetchall()}
        rows = [(event, by_email[event["email"]]) for event in events]
        properties = [json.dumps(event.get("properties") or {}, sort_keys=True) for event in events]
        cursor.execute(
            INSERT_ACTIVITIES_SQL,
            [
                now,
                int_array(lead_id for _event, lead_id in rows),
                text_array(event["type"] for event, _lead in rows),
                text_array(event.get("occurred_at") or now.isoformat() for event, _lead in rows),
                text_array(properties),
                text_array(event["event_id"] for event, _lead in rows),
                text_array(hashlib.sha256(text.encode()).hexdigest() for text in properties),
                text_array("api" for _row in rows),
            ],
        )
        return len(cursor.fetchall())
