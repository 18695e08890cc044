"""The floor for single-event POSTs: a bare WSGI app that stores each event with the
same one statement as LeadOps, on the same gunicorn, with no framework at all.

Per request it parses the JSON body, runs `leadops.ingest`'s single-event statement in
autocommit on its own psycopg connection (one per thread) and answers 202: what any
server must do to store one event durably on this machine (HTTP, one round trip, one
commit), without validation, authentication, throttling or the rescore queue. LeadOps'
single-event rate is printed beside this app's.
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
from leadops.ingest import _one_event_sql  # noqa: E402

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
