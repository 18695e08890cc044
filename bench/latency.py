"""Event → score visible: single-event or batch POSTs, a real Celery worker, a poller on
the leads.

Each event goes to a distinct lead, so each one changes that lead's behaviour score. A
thread polls `leadops_lead` every ~20 ms for the leads sent and not yet changed; latency
is the poll that first saw the change minus the moment the request went out, and minus
the moment it was due at the offered rate (a server that falls behind makes the client
queue: only the second shows it). Events whose change never shows within the timeout
are counted as missing, not dropped.

`make bench` measures these rows in its run. Alone, on a bench database that exists
(after `make bench`, or `bench.event_rescore --build`), with gunicorn and a Celery worker
started as `make bench` starts them:

    uv run python -m bench.latency --database leadops_bench --first 100000

`--first` picks where in the sequence of leads to start: each lead gets one event per
run, so a later run should start past the leads an earlier one used.
"""

from __future__ import annotations

import json
import os
import threading
import time
from dataclasses import dataclass
from datetime import UTC, datetime

import psycopg

from bench.http import open_loop, percentile

POLL_SECONDS = 0.02
STRIDE = 104_729  # a prime: index → lead number is one-to-one unless it divides the lead count


@dataclass
class LatencyResult:
    sent: int
    seen: int
    p50_ms: float  # from the due time
    p95_ms: float
    p95_sent_ms: float  # from the moment the request went out
    send_rate: float  # requests/s the client actually got out
    statuses: dict

    @property
    def missing(self) -> int:
        return self.sent - self.seen


class ScorePoller(threading.Thread):
    """Watches the leads sent so far; records when each one's behaviour score changed."""

    def __init__(self, before: dict[int, int]) -> None:
        super().__init__(daemon=True)
        self.before = before
        self.sent: dict[int, float] = {}
        self.due: dict[int, float] = {}
        self.seen: dict[int, float] = {}
        self.deadline: float | None = None

    def run(self) -> None:
        with psycopg.connect(os.environ["DATABASE_URL"], autocommit=True) as conn:
            while not self._done():
                self._poll(conn)
                time.sleep(POLL_SECONDS)

    def _done(self) -> bool:
        if self.deadline is None:
            return False
        return time.perf_counter() > self.deadline or len(self.seen) == len(self.sent)

    def _poll(self, conn: psycopg.Connection) -> None:
        pending = [lead for lead in list(self.sent) if lead not in self.seen]
        if not pending:
            return
        rows = conn.execute(
            "SELECT id, behavior_score FROM leadops_lead WHERE id = ANY(%s)", [pending]
        ).fetchall()
        now = time.perf_counter()
        for lead, behavior in rows:
            if behavior != self.before[lead]:
                self.seen[lead] = now


def lead_numbers(start: int, count: int, leads: int) -> list[int]:
    """Distinct lead numbers (as in bench.data's e-mails) for indexes start … start+count."""
    return [1 + ((start + i) * STRIDE + 17) % leads for i in range(count)]


def _email(number: int, leads: int) -> str:
    return f"lead{number}@bench{number % max(1, leads // 20)}.example.jp"


def _leads_before(emails: list[str]) -> dict[str, tuple[int, int]]:
    with psycopg.connect(os.environ["DATABASE_URL"]) as conn:
        rows = conn.execute(
            "SELECT email, id, behavior_score FROM leadops_lead WHERE email = ANY(%s)", [emails]
        ).fetchall()
    return {email: (lead, behavior) for email, lead, behavior in rows}


def _body(email: str, event_id: str) -> bytes:
    # A case-study page view: +20 in the default model, so the score always moves.
    event = {
        "event_id": event_id,
        "email": email,
        "type": "page_view",
        "occurred_at": datetime.now(UTC).isoformat(),
        "properties": {"url": "https://example.jp/case/saas", "title": "導入事例"},
    }
    return json.dumps(event).encode()


def measure(
    url: str, token: str, emails: list[str], *, rate: float, run_id: str, timeout: float = 10.0
) -> LatencyResult:
    """POST one event per e-mail at `rate`/s; wait up to `timeout` s after the last send."""
    known = _leads_before(emails)
    poller = ScorePoller({lead: behavior for lead, behavior in known.values()})
    ids = [known[email][0] for email in emails]
    bodies = [_body(email, f"latency-{run_id}-{rate:g}-{i}") for i, email in enumerate(emails)]

    def on_sent(index: int, due: float, sent: float) -> None:
        poller.due[ids[index]] = due
        poller.sent[ids[index]] = sent

    poller.start()
    load = open_loop(url, token, bodies, rate=rate, on_sent=on_sent)
    poller.deadline = time.perf_counter() + timeout
    poller.join()
    return _result(poller, load)


def measure_batched(
    url: str,
    token: str,
    emails: list[str],
    *,
    rate: float,
    batch: int,
    run_id: str,
    timeout: float = 10.0,
) -> LatencyResult:
    """The same events at `rate`/s, sent `batch` to a request (rate / batch requests a
    second): the scoring pipeline's latency without the single-event API's intake limit.
    Every event of a request is due when its request is."""
    known = _leads_before(emails)
    poller = ScorePoller({lead: behavior for lead, behavior in known.values()})
    ids = [known[email][0] for email in emails]
    events = [
        json.loads(_body(email, f"latency-{run_id}-{rate:g}x{batch}-{i}"))
        for i, email in enumerate(emails)
    ]
    bodies = [
        json.dumps({"events": events[start : start + batch]}).encode()
        for start in range(0, len(events), batch)
    ]

    def on_sent(index: int, due: float, sent: float) -> None:
        for lead in ids[index * batch : (index + 1) * batch]:
            poller.due[lead] = due
            poller.sent[lead] = sent

    poller.start()
    load = open_loop(url, token, bodies, rate=rate / batch, on_sent=on_sent)
    poller.deadline = time.perf_counter() + timeout
    poller.join()
    return _result(poller, load)


def _result(poller: ScorePoller, load) -> LatencyResult:
    from_due = [(seen - poller.due[lead]) * 1000 for lead, seen in poller.seen.items()]
    from_sent = [(seen - poller.sent[lead]) * 1000 for lead, seen in poller.seen.items()]
    sending = max(poller.sent.values()) - min(poller.sent.values())
    # Events per second the client got out (in batches, the last request's events count
    # from when it went out: len - 1 gaps between single events).
    per_request = len(poller.sent) / max(1, sum(load.statuses.values()))
    return LatencyResult(
        sent=len(poller.sent),
        seen=len(from_due),
        p50_ms=percentile(from_due, 0.5),
        p95_ms=percentile(from_due, 0.95),
        p95_sent_ms=percentile(from_sent, 0.95),
        send_rate=(len(poller.sent) - per_request) / sending if sending else 0.0,
        statuses=load.statuses,
    )


def emails_for(start: int, count: int, leads: int) -> list[str]:
    return [_email(number, leads) for number in lead_numbers(start, count, leads)]


def wait_for_empty_queue(timeout: float = 600) -> float:
    """Wait until the worker has drained the rescore queue; return the seconds waited."""
    from scoring.services.queue import DIRTY_KEY, FLAG_KEY, redis_client

    client = redis_client()
    started = time.perf_counter()
    while client.scard(DIRTY_KEY) or client.exists(FLAG_KEY):
        if time.perf_counter() - started > timeout:
            raise RuntimeError("the Celery worker did not drain the rescore queue")
        time.sleep(0.1)
    return time.perf_counter() - started


def main() -> None:
    import argparse
    import uuid

    parser = argparse.ArgumentParser(description="event → score visible, alone")
    parser.add_argument("--database", default="leadops_bench")
    parser.add_argument("--redis-db", type=int, default=15, help="emptied first")
    parser.add_argument("--seconds", type=float, default=15, help="of each offered rate")
    parser.add_argument("--first", type=int, default=100_000, help="first lead of the sequence")
    args = parser.parse_args()

    from bench.__main__ import _bench_redis_url, _bench_token, _production_env, measure_latency
    from bench.http import free_port, start_gunicorn, stop_process
    from bench.pages import _point_django_at

    os.environ["REDIS_URL"] = _bench_redis_url(args.redis_db)
    _point_django_at(args.database)
    from leadops.models import Lead

    size = {"seconds": args.seconds, "leads": Lead.objects.count(), "noop_tasks": 5_000}
    token = _bench_token()
    port = free_port()
    server = start_gunicorn(_production_env(), port)
    try:
        base = f"http://127.0.0.1:{port}/api/v1"
        rows = measure_latency(base, token, size, uuid.uuid4().hex[:8], first_lead=args.first)
    finally:
        stop_process(server)
    for row in rows:
        engine = f" (engine: {row['limit']})" if row["limit"] != "—" else ""
        print(f"{row['figure']}: {row['value']}{engine}")


if __name__ == "__main__":
    main()
