"""Nurturing figures (issue 5): a newsletter queued, mails sent at the configured rate,
and the tracking endpoints through gunicorn. `make bench` calls `measure`.

Newsletter: a segment (industry = software: a ninth of the bench leads, ~111k at 1M),
a newsletter track of one step (a personalised subject, two links: one on the capture
site, one elsewhere), activated as the admin does: `activate_track`, then the beat's
`enroll_due_tracks` (an audience above NURTURING_ENROLL_NOW_MAX enrolls off the web
request) and `queue_due_sends`. Timed from activation to every send queued, without
the wait for the beat's next minute. Engine limit: the same rows written by hand-written
INSERT … SELECTs (enrollments, sends) and the UPDATE that completes the enrollments,
into scratch copies of the two tables with their indexes.

Sending: `run_send_cycle` (the beat task's minute) for a few consecutive minutes whose
`now` is one minute apart (the budget is counted per calendar minute in Redis), with
Django's SMTP backend talking to a local SMTP sink (aiosmtpd, in its own process). Each
minute must send exactly the configured rate, and in less than the minute. Engine
limit: smtplib sending the bytes of one such mail over one connection to the same sink.

Tracking: gunicorn (production settings, like the other HTTP figures) answers the open
pixel, a click redirect, a snippet page view (anonymous, and identified by its signed
cookie) and snippet.js, for sends just sent and tokens signed with the server's key.
Each figure is the p95 of requests sent one after another on one keep-alive connection,
with gunicorn's own request time beside it. Engine limit: a bare WSGI app on the same
gunicorn (bench/floor_wsgi.py). Then the deferred part, timed in-process: the queued
opens, clicks and page views recorded by the functions the Celery tasks call.
"""

from __future__ import annotations

import json
import smtplib
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta

from django.db import connection, transaction

CAPTURE_ORIGIN = "https://www.bench.example.jp"
SEGMENT_CONDITIONS = [{"field": "industry", "op": "eq", "value": "software"}]
SUBJECT = "{{ lead.last_name }}様 LeadOps ニュースレター 11月号"
BODY = """{{ lead.last_name }} {{ lead.first_name }}様

いつもお世話になっております。今月は SaaS 企業の導入事例をご紹介します。
https://www.bench.example.jp/case/saas

料金プランはこちらをご覧ください: https://example.jp/pricing
"""
QUEUE_GOAL_S, TRACKING_GOAL_MS = 60, 10
BURST_RATE = 300  # pixel requests a second in the open-loop figure
WARM_UP = 20


# --- the newsletter ---------------------------------------------------------------------


@dataclass(frozen=True)
class Newsletter:
    track_id: int
    enrolled: int
    queued: int
    seconds: float
    limit_seconds: float
    limit_rows: int


def create_newsletter():
    from nurturing.models import EnrollmentRule, Segment, Step, Track, TrackKind

    segment = Segment.objects.create(name="Bench: software", conditions=SEGMENT_CONDITIONS)
    track = Track.objects.create(
        name="Bench newsletter",
        kind=TrackKind.NEWSLETTER,
        enrollment_rule=EnrollmentRule.SEGMENT,
        segment=segment,
    )
    step = Step.objects.create(
        track=track, position=1, delay_hours=0, subject_ja=SUBJECT, body_ja=BODY
    )
    return track, step


def queue_newsletter(log=print) -> Newsletter:
    """Activate a newsletter to the segment and queue every send; timed."""
    from nurturing.enrollment import activate_track, enroll_due_tracks
    from nurturing.sending import queue_due_sends

    track, step = create_newsletter()
    returned = _return_audience_to_nurturing()
    log(f"newsletter: {returned:,} segment leads put back in nurturing first")
    _audience_count(track.pk)  # read once, untimed: both runs below find it cached
    limit_seconds, limit_rows = hand_written_queue_seconds(track.pk, step.pk)
    started = time.perf_counter()
    enrolled = activate_track(track.pk)
    if enrolled is None:  # a big audience: the beat's next run enrolls it
        enrolled = enroll_due_tracks()
    queued = queue_due_sends()
    seconds = time.perf_counter() - started
    log(
        f"newsletter: {enrolled:,} enrolled, {queued:,} queued in {seconds:.2f} s; "
        f"hand-written SQL {limit_seconds:.2f} s for {limit_rows:,} rows"
    )
    return Newsletter(track.pk, enrolled, queued, seconds, limit_seconds, limit_rows)


def _return_audience_to_nurturing() -> int:
    """Rescore-all made most bench leads MQLs (10 to 20 events each), and leads with IS
    or sales get no nurture mail: the segment's leads go back to nurturing first (as
    if IS had returned them), so the newsletter reaches the whole segment."""
    from nurturing.enrollment import EXCLUDED_STAGES

    with connection.cursor() as cursor:
        cursor.execute(
            "UPDATE leadops_lead SET stage = 'nurturing' "
            "WHERE industry = 'software' AND stage = ANY(%s)",
            [list(EXCLUDED_STAGES)],
        )
        returned = cursor.rowcount
        cursor.execute("ANALYZE leadops_lead")
    return returned


def _audience_count(track_id: int) -> int:
    from nurturing.enrollment import nurturable, track_audience
    from nurturing.models import Track

    return nurturable(track_audience(Track.objects.get(pk=track_id))).count()


_SCRATCH = """
DROP TABLE IF EXISTS bench_enrollment, bench_send;
CREATE TABLE bench_enrollment (LIKE nurturing_enrollment INCLUDING ALL);
CREATE TABLE bench_send (LIKE nurturing_emailsend INCLUDING ALL);
"""

# The audience as the segment reads it (industry, nurturable), written as enrollments,
# then as queued sends, then the enrollments completed: the rows LeadOps writes.
_HAND_WRITTEN_QUEUE = [
    """INSERT INTO bench_enrollment (track_id, lead_id, status, enrolled_at, next_position,
                                     next_send_at, exit_reason)
    SELECT %(track)s, id, 'active', now(), 1, now(), '' FROM leadops_lead
    WHERE industry = 'software' AND NOT unsubscribed AND stage <> ALL(%(excluded)s)
    ORDER BY id""",
    """INSERT INTO bench_send (lead_id, step_id, track_id, status, queued_at, attempts, error)
    SELECT lead_id, %(step)s, track_id, 'queued', now(), 0, '' FROM bench_enrollment
    ORDER BY lead_id""",
    """UPDATE bench_enrollment SET status = 'completed', next_position = 2,
                                   next_send_at = NULL""",
]


def hand_written_queue_seconds(track_id: int, step_id: int) -> tuple[float, int]:
    """Seconds of the hand-written statements (one transaction) and the sends written."""
    from nurturing.enrollment import EXCLUDED_STAGES

    params = {"track": track_id, "step": step_id, "excluded": list(EXCLUDED_STAGES)}
    with connection.cursor() as cursor:
        cursor.execute(_SCRATCH)
    started = time.perf_counter()
    with transaction.atomic(), connection.cursor() as cursor:
        rows = []
        for sql in _HAND_WRITTEN_QUEUE:
            cursor.execute(sql, params)
            rows.append(cursor.rowcount)
    seconds = time.perf_counter() - started
    with connection.cursor() as cursor:
        cursor.execute("DROP TABLE bench_enrollment, bench_send")
    return seconds, rows[1]


# --- sending at the configured rate -----------------------------------------------------


@contextmanager
def smtp_sink() -> Iterator[int]:
    """A local SMTP server that accepts and discards every mail; yields its port."""
    from bench.http import free_port, stop_process

    port = free_port()
    command = [sys.executable, "-m", "aiosmtpd", "-n", "-l", f"127.0.0.1:{port}"]
    process = subprocess.Popen([*command, "-c", "aiosmtpd.handlers.Sink"], start_new_session=True)
    try:
        _wait_for_port(port, process)
        yield port
    finally:
        stop_process(process)


def _wait_for_port(port: int, process: subprocess.Popen, seconds: float = 30) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError("the SMTP sink exited during start-up")
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise RuntimeError("the SMTP sink did not start listening")


@dataclass(frozen=True)
class Sending:
    rate: int  # configured mails a minute
    minutes: list[tuple[int, float]]  # (sent, seconds the minute's cycle took)
    limit_rate: float  # mails/s of bare smtplib to the same sink

    @property
    def capacity(self) -> float:
        """Mails/s the send cycle managed while it worked."""
        sent = sum(n for n, _s in self.minutes)
        busy = sum(s for _n, s in self.minutes)
        return sent / busy if busy else 0.0

    @property
    def held(self) -> bool:
        return all(n == self.rate and s < 60 for n, s in self.minutes)


def _smtp_settings(port: int, rate: int) -> dict:
    return {
        "EMAIL_BACKEND": "django.core.mail.backends.smtp.EmailBackend",
        "EMAIL_HOST": "127.0.0.1",
        "EMAIL_PORT": port,
        "EMAIL_HOST_USER": "",
        "EMAIL_HOST_PASSWORD": "",
        "EMAIL_USE_TLS": False,
        "EMAIL_USE_SSL": False,
        "NURTURING_SEND_RATE_PER_MINUTE": rate,
    }


def measure_sending(*, minutes: int, rate: int, log=print) -> Sending:
    """`minutes` beat cycles one minute apart with the rate set to `rate` a minute."""
    from django.test.utils import override_settings
    from django.utils import timezone

    from nurturing.sending import _budget_key, _redis, run_send_cycle

    with smtp_sink() as port, override_settings(**_smtp_settings(port, rate)):
        first = (timezone.now() + timedelta(minutes=1)).replace(second=0, microsecond=0)
        done = []
        for minute in range(minutes):
            now = first + timedelta(minutes=minute)
            _redis().delete(_budget_key(now))  # a whole minute's budget, whatever ran before
            started = time.perf_counter()
            counts = run_send_cycle(now=now)
            done.append((counts.get("sent", 0), time.perf_counter() - started))
            log(f"  send cycle {minute + 1}: {counts} in {done[-1][1]:.1f} s")
        limit = smtp_limit(port, count=min(rate, 500))
    return Sending(rate, done, limit)


def smtp_limit(port: int, *, count: int) -> float:
    """Mails/s of smtplib sending one real nurture mail's bytes `count` times over one
    connection: the SMTP conversation alone, without LeadOps' claim, render or log."""
    message = _one_sent_message()
    # As Django's SMTP backend serialises it: CRLF line ends.
    data = message.as_bytes(linesep="\r\n")
    with smtplib.SMTP("127.0.0.1", port, timeout=30) as smtp:
        started = time.perf_counter()
        for _ in range(count):
            smtp.sendmail(message["From"], [message["To"]], data)
        return count / (time.perf_counter() - started)


def _one_sent_message():
    from nurturing.models import EmailSend, SendStatus
    from nurturing.sending import _render, compose_message

    send = (
        EmailSend.objects.filter(status=SendStatus.SENT)
        .select_related("lead__account", "lead__owner", "step", "track")
        .first()
    )
    if send is None:
        raise RuntimeError("no mail was sent: nothing to time the SMTP limit with")
    subject, body = _render(send)
    return compose_message(send, subject, body).message()


# --- the tracking endpoints -------------------------------------------------------------


def sent_sends(count: int) -> list[tuple[int, int]]:
    """(send id, lead id) of up to `count` sent mails."""
    from nurturing.models import EmailSend, SendStatus

    return list(
        EmailSend.objects.filter(status=SendStatus.SENT)
        .order_by("pk")
        .values_list("pk", "lead_id")[:count]
    )


def tracking_requests(sends: list[tuple[int, int]], secret_key: str, total: int) -> dict:
    """{figure: `total` requests} for these sends (reused in turn), with tokens signed
    by `secret_key` (the server's)."""
    from django.test.utils import override_settings
    from django.urls import reverse

    from bench.http import Request
    from nurturing.capture import issue_identity_token
    from nurturing.tracking import CLICK, OPEN, make_token

    picked = [sends[i % len(sends)] for i in range(total)]
    view_headers = {"Origin": CAPTURE_ORIGIN, "Content-Type": "text/plain;charset=UTF-8"}
    with override_settings(SECRET_KEY=secret_key):
        pixel = [
            Request("GET", reverse("nurturing_tracking:open", args=[make_token(s, OPEN)]), {})
            for s, _lead in picked
        ]
        click = [
            Request(
                "GET",
                reverse("nurturing_tracking:click", args=[make_token(s, CLICK), 1 + i % 2]),
                {},
            )
            for i, (s, _lead) in enumerate(picked)
        ]
        anonymous = [Request("POST", "/capture/pv/", view_headers, _view()) for _ in picked]
        identified = []
        for _send, lead in picked:
            visitor = uuid.uuid4()
            identity = issue_identity_token(lead, visitor)
            body = _view(visitor, identity)
            identified.append(Request("POST", "/capture/pv/", view_headers, body))
    snippet = [Request("GET", "/capture/snippet.js", {}) for _ in picked]
    return {
        "open pixel GET /t/o/…gif": pixel,
        "click redirect GET /t/c/…/n/": click,
        "snippet page view POST /capture/pv/ (anonymous)": anonymous,
        "snippet page view POST /capture/pv/ (identified visitor)": identified,
        "snippet GET /capture/snippet.js": snippet,
    }


def _view(visitor: uuid.UUID | None = None, identity: str | None = None) -> bytes:
    view = {
        "visitor": str(visitor or uuid.uuid4()),
        "view": str(uuid.uuid4()),
        "url": f"{CAPTURE_ORIGIN}/case/saas",
        "title": "導入事例 | ベンチ株式会社",
        "referrer": "https://www.google.com/",
    }
    if identity:
        view["identity"] = identity
    return json.dumps(view, ensure_ascii=False).encode()


class _AccessLog:
    """gunicorn's access log reduced to "status microseconds" per request."""

    def __init__(self) -> None:
        from bench.handoff import AccessLog

        self.log = AccessLog()

    def gunicorn_args(self) -> str:
        return self.log.gunicorn_args()

    def skip(self) -> None:
        self.log.skip()

    def read_ms(self) -> list[float]:
        """Request times (ms) of the answered (< 400) requests since the last skip."""
        time.sleep(0.3)  # the workers' last lines
        with self.log.path.open() as lines:
            lines.seek(self.log.offset)
            text = lines.read()
            self.log.offset = lines.tell()
        fields = [line.split() for line in text.splitlines() if line.strip()]
        return [int(us) / 1000 for status, us in fields if int(status) < 400]

    def close(self) -> None:
        self.log.path.unlink(missing_ok=True)


@dataclass(frozen=True)
class Probe:
    figure: str
    result: object  # bench.http.LoadResult
    server_p50_ms: float
    server_p95_ms: float
    open_loop: bool = False  # latencies from each request's due time, at an offered rate


@dataclass(frozen=True)
class Burst:
    """An open-loop run against one path: `count` GETs offered at `rate` per second."""

    figure: str
    paths: list[str]  # one per request, reused in turn
    rate: int
    count: int


def _run_probes(
    env: dict, app: str, requests: dict, log=print, burst: Burst | None = None
) -> list[Probe]:
    from bench.http import (
        free_port,
        open_loop,
        percentile,
        sequential,
        start_gunicorn,
        stop_process,
    )

    access = _AccessLog()
    port = free_port()
    server = start_gunicorn({**env, "GUNICORN_CMD_ARGS": access.gunicorn_args()}, port, app=app)
    probes = []
    try:
        for figure, batch in requests.items():
            result = sequential(f"http://127.0.0.1:{port}", batch, on_start=access.skip)
            server_ms = access.read_ms()
            probe = Probe(figure, result, percentile(server_ms, 0.5), percentile(server_ms, 0.95))
            probes.append(probe)
            log(
                f"{figure}: p50 {result.p50_ms:.2f} ms, p95 {result.p95_ms:.2f} ms "
                f"(gunicorn p95 {probe.server_p95_ms:.2f} ms) {result.statuses}"
            )
        if burst:
            access.skip()
            base = f"http://127.0.0.1:{port}"
            urls = [base + burst.paths[i % len(burst.paths)] for i in range(burst.count)]
            # No token: open_loop's Authorization header is empty, as a mail client's.
            result = open_loop(urls, "", [None] * burst.count, rate=burst.rate, method="GET")
            server_ms = access.read_ms()
            p50, p95 = percentile(server_ms, 0.5), percentile(server_ms, 0.95)
            probe = Probe(burst.figure, result, p50, p95, open_loop=True)
            probes.append(probe)
            log(f"{burst.figure}: p95 {result.p95_ms:.2f} ms from due time {result.statuses}")
    finally:
        stop_process(server)
        access.close()
    return probes


@dataclass(frozen=True)
class Deferred:
    hits: int  # opens and clicks taken from the queue (repeats included)
    events: int  # email_open / email_click activities they made (first ones only)
    hit_seconds: float
    views: int  # page views taken from the queue
    view_seconds: float


def _email_events() -> int:
    from leadops.models import Activity
    from nurturing.tracking import EVENT_SOURCE

    return Activity.objects.filter(source=EVENT_SOURCE).count()


def record_deferred(log=print) -> Deferred:
    """Record the queued opens, clicks and page views as the Celery tasks would."""
    from nurturing.capture import drain_page_views, queued_page_views
    from nurturing.tracking import flush_tracking_hits, pending_hits

    events_before = _email_events()
    started, hits = time.perf_counter(), 0
    for _ in range(10_000):  # bounded: a flush that keeps failing must not hang the bench
        if not pending_hits():
            break
        hits += flush_tracking_hits()
    hit_seconds = time.perf_counter() - started
    events = _email_events() - events_before
    started, views = time.perf_counter(), 0
    for _ in range(10_000):
        if not queued_page_views():
            break
        views += drain_page_views()
    view_seconds = time.perf_counter() - started
    log(
        f"deferred: {hits:,} hits ({events:,} events) in {hit_seconds:.2f} s, "
        f"{views:,} views in {view_seconds:.2f} s"
    )
    return Deferred(hits, events, hit_seconds, views, view_seconds)


def measure_tracking(
    env: dict, count: int, seconds: float, log=print
) -> tuple[list[Probe], Probe, Deferred]:
    """(each endpoint's probe and the pixel's burst, the bare WSGI floor's probe, the
    deferred recording)."""
    env = {**env, "LEADOPS_CAPTURE_ORIGINS": CAPTURE_ORIGIN}
    burst_count = int(BURST_RATE * seconds)
    sends = sent_sends(WARM_UP + count + burst_count)
    if not sends:
        raise RuntimeError("no sent mail to track: the sending figure sent nothing")
    requests = tracking_requests(sends[: WARM_UP + count], env["SECRET_KEY"], WARM_UP + count)
    # The burst opens the other mails (as a newsletter's first opens), reused in turn
    # when fewer were sent.
    others = sends[WARM_UP + count :] or sends
    fresh = tracking_requests(others, env["SECRET_KEY"], len(others))
    burst = Burst(
        f"open pixel, offered {BURST_RATE}/s (a newsletter's opens arriving together)",
        [request.path for request in fresh["open pixel GET /t/o/…gif"]],
        BURST_RATE,
        burst_count,
    )
    probes = _run_probes(env, "leadops.wsgi:application", requests, log, burst)
    floor_requests = {"bare WSGI app": requests["open pixel GET /t/o/…gif"]}
    floor = _run_probes(env, "bench.floor_wsgi:application", floor_requests, log)[0]
    return probes, floor, record_deferred(log)


# --- the figures --------------------------------------------------------------------------


def newsletter_row(newsletter: Newsletter) -> dict:
    return {
        "figure": f"newsletter to {newsletter.enrolled:,} leads queued (activate → enroll → queue)",
        "value": f"{newsletter.seconds:.1f} s ({newsletter.queued:,} sends queued)",
        "limit": f"{newsletter.limit_seconds:.1f} s hand-written INSERT … SELECT ×2 + UPDATE "
        f"({newsletter.limit_rows:,} rows)",
        "ratio": newsletter.seconds / newsletter.limit_seconds
        if newsletter.limit_seconds
        else None,
        "goal": f"≤ {QUEUE_GOAL_S} s for 100,000 leads",
        "met": newsletter.seconds <= QUEUE_GOAL_S and newsletter.queued == newsletter.enrolled,
        "statuses": {},
    }


def sending_row(sending: Sending) -> dict:
    sent = ", ".join(f"{n:,}" for n, _s in sending.minutes)
    slowest = max(s for _n, s in sending.minutes)
    return {
        "figure": f"newsletter sending at the configured {sending.rate:,}/min "
        "(SMTP to a local sink)",
        "value": f"sent {sent} in {len(sending.minutes)} consecutive minutes; slowest "
        f"minute's work {slowest:.1f} s (capacity {sending.capacity:,.0f} mails/s)",
        "limit": f"{sending.limit_rate:,.0f} mails/s smtplib, same mail, one connection",
        "ratio": sending.capacity / sending.limit_rate if sending.limit_rate else None,
        "goal": "the configured rate every minute",
        "met": sending.held,
        "statuses": {},
    }


def tracking_rows(probes: list[Probe], floor: Probe, deferred: Deferred) -> list[dict]:
    rows = []
    for probe in probes:
        result = probe.result
        rows.append(
            {
                "figure": probe.figure,
                "value": (
                    f"p95 {result.p95_ms:.1f} ms from due time, served {result.rate:,.0f}/s"
                    if probe.open_loop
                    else f"p95 {result.p95_ms:.1f} ms on loopback, p50 {result.p50_ms:.1f} ms"
                )
                + f" (gunicorn's own: p95 {probe.server_p95_ms:.1f} ms)",
                "limit": f"p95 {floor.result.p95_ms:.1f} ms bare WSGI app, same gunicorn "
                f"(its own {floor.server_p95_ms:.2f} ms)",
                "ratio": result.p95_ms / floor.result.p95_ms if floor.result.p95_ms else None,
                "goal": f"p95 ≤ {TRACKING_GOAL_MS} ms",
                "met": result.ok == result.requests and result.p95_ms <= TRACKING_GOAL_MS,
                "statuses": result.statuses,
            }
        )
    hit_rate = deferred.hits / deferred.hit_seconds if deferred.hit_seconds else 0.0
    view_rate = deferred.views / deferred.view_seconds if deferred.view_seconds else 0.0
    rows.append(
        {
            "figure": "tracking, the deferred part (the Celery tasks' functions, in-process)",
            "value": f"{deferred.hits:,} queued opens/clicks taken in "
            f"{deferred.hit_seconds:.2f} s ({hit_rate:,.0f}/s), {deferred.events:,} of them "
            f"firsts stored as events; {deferred.views:,} page views stored in "
            f"{deferred.view_seconds:.2f} s ({view_rate:,.0f}/s)",
            "limit": "—",
            "ratio": None,
            "goal": "—",
            "met": None,
            "statuses": {},
        }
    )
    return rows


def measure(size: dict, env: dict, log=print) -> list[dict]:
    """The nurturing figures for `make bench`."""
    from django.conf import settings

    newsletter = queue_newsletter(log)
    rate = size.get("send_rate") or settings.NURTURING_SEND_RATE_PER_MINUTE
    sending = measure_sending(minutes=size["send_minutes"], rate=rate, log=log)
    probes, floor, deferred = measure_tracking(env, size["requests"], size["seconds"], log)
    return [
        newsletter_row(newsletter),
        sending_row(sending),
        *tracking_rows(probes, floor, deferred),
    ]
