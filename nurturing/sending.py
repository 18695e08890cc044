"""Sending nurture mails: the send log, claiming, rendering, tracking, and track KPIs.

The send log (EmailSend, unique per lead and step) is written before any mail goes out:

1. `queue_due_sends` turns due enrollments into queued sends in ONE statement
   (INSERT … SELECT … ON CONFLICT (lead, step) DO NOTHING) and moves each enrollment to
   its next step (or completes it). Enrollments are locked FOR UPDATE SKIP LOCKED, so
   two schedulers split the work instead of doubling it, and the unique send log
   refuses a second row for a step anyway. Leads that unsubscribed or moved on to the
   sales pipeline are not queued: their enrollment is exited.
2. `send_queued` claims queued sends by a conditional UPDATE (… WHERE status = 'queued'
   … FOR UPDATE SKIP LOCKED) and commits the claim before talking to the mail server:
   of two workers, each gets different rows. A claimed send is rendered, its links are
   recorded and rewritten to click-tracking URLs, the open pixel and the unsubscribe
   link (and List-Unsubscribe headers) are added, it goes through Django's email
   backend and is marked sent. A sent row is never claimed again. A send left in
   `sending` past SENDING_LEASE (its worker died) becomes claimable again; while a send
   is `sending`, `sent_at` holds when the attempt began (the lease), and once it is
   `sent`, when it went out.

How fast: NURTURING_SEND_RATE_PER_MINUTE mails a minute over every worker together,
counted in Redis per calendar minute (`take_send_budget`); the beat task sends that
many a minute at most.
"""

from __future__ import annotations

import logging
import re
import smtplib
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

import redis
from django.conf import settings
from django.core.mail import BadHeaderError, EmailMultiAlternatives, get_connection
from django.db import connection, transaction
from django.utils import timezone, translation
from django.utils.html import escape, linebreaks
from django.utils.translation import gettext as _

from leadops.engines import bounded_redis
from leadops.models import Stage
from nurturing.enrollment import (
    EXCLUDED_STAGES,
    ExitReason,
    TemplateRenderError,
    enroll_due_tracks,
    render_step,
)
from nurturing.models import (
    EmailSend,
    Enrollment,
    EnrollmentStatus,
    SendStatus,
    Step,
    Track,
    TrackedLink,
)
from nurturing.tracking import TrackingUrls, tracking_urls

logger = logging.getLogger(__name__)

DEFAULT_RATE_PER_MINUTE = 600
# Sends claimed at once: the claim's lease must outlast sending them all.
CLAIM_CHUNK = 50
# A send claimed but not finished within this time (worker killed) may be claimed again.
# Far above the time one chunk takes (50 mails at the SMTP timeout would be 25 min only
# if every one timed out; a healthy server takes well under a second each).
SENDING_LEASE = timedelta(minutes=15)
# Claims per send before it is marked failed (mail server down, worker killed).
MAX_ATTEMPTS = 5
EMAIL_TIMEOUT_SECONDS = 30
# Links per mail that get a click-tracking URL; more are left as they are.
MAX_TRACKED_LINKS = 100
MAX_URL_LENGTH = 2000  # TrackedLink.url
ERROR_MAX_LENGTH = 2000
BUDGET_KEY = "nurturing:send-budget:{minute}"


# --- 1. queue ----------------------------------------------------------------------------

# `due` locks the due enrollments of active tracks (id order, skipping rows another
# scheduler holds; a row it has just moved is re-checked against its new next_send_at).
# `plan` finds each one's step (the first at or after next_position, so a deleted step is
# stepped over) and the step after it. The INSERT writes the send log; the UPDATE moves
# the enrollment on, completes it after its last step, or exits it.
_QUEUE_SQL = """
WITH due AS MATERIALIZED (
    SELECT e.id, e.track_id, e.lead_id, e.next_position
    FROM nurturing_enrollment e
    JOIN nurturing_track t ON t.id = e.track_id AND t.status = 'active'
    WHERE e.status = 'active' AND e.next_send_at <= %(now)s
    ORDER BY e.id
    FOR UPDATE OF e SKIP LOCKED
),
plan AS MATERIALIZED (
    SELECT d.id, d.track_id, d.lead_id, d.next_position, cur.step_id, cur.position,
           nxt.position AS next_step_position, nxt.delay_hours AS next_delay,
           CASE WHEN l.unsubscribed THEN %(exit_unsubscribed)s
                WHEN l.stage = %(disqualified)s THEN %(exit_disqualified)s
                WHEN l.stage = ANY(%(excluded)s) THEN %(exit_mql)s END AS exit_reason
    FROM due d
    JOIN leadops_lead l ON l.id = d.lead_id
    LEFT JOIN LATERAL (
        SELECT s.id AS step_id, s.position FROM nurturing_step s
        WHERE s.track_id = d.track_id AND s.position >= d.next_position
        ORDER BY s.position LIMIT 1
    ) cur ON true
    LEFT JOIN LATERAL (
        SELECT s.position, s.delay_hours FROM nurturing_step s
        WHERE s.track_id = d.track_id AND s.position > cur.position
        ORDER BY s.position LIMIT 1
    ) nxt ON true
),
queued AS (
    INSERT INTO nurturing_emailsend (lead_id, step_id, track_id, status, queued_at, attempts,
                                     error)
    SELECT lead_id, step_id, track_id, 'queued', %(now)s, 0, ''
    FROM plan
    WHERE step_id IS NOT NULL AND exit_reason IS NULL
    ORDER BY lead_id, step_id
    ON CONFLICT (lead_id, step_id) DO NOTHING
    RETURNING 1
),
moved AS (
    UPDATE nurturing_enrollment e SET
        status = CASE WHEN p.exit_reason IS NOT NULL THEN 'exited'
                      WHEN p.next_step_position IS NULL THEN 'completed'
                      ELSE 'active' END,
        next_position = COALESCE(p.next_step_position, COALESCE(p.position, p.next_position) + 1),
        next_send_at = CASE WHEN p.exit_reason IS NULL AND p.next_step_position IS NOT NULL
                            THEN %(now)s + p.next_delay * interval '1 hour' END,
        exited_at = CASE WHEN p.exit_reason IS NOT NULL THEN %(now)s ELSE e.exited_at END,
        exit_reason = COALESCE(p.exit_reason, e.exit_reason)
    FROM plan p
    WHERE e.id = p.id
    RETURNING 1
)
SELECT (SELECT count(*) FROM queued), (SELECT count(*) FROM moved)
"""


def queue_due_sends(now: datetime | None = None) -> int:
    """Queue the due step of every due enrollment of an active track; return how many.

    One statement, safe to run twice or from two schedulers at once: each enrollment is
    taken by one caller, moved on in the same statement, and the send log is unique per
    (lead, step). A newsletter to 100k leads is one statement of a few seconds.
    """
    now = now or timezone.now()
    params = {
        "now": now,
        "excluded": list(EXCLUDED_STAGES),
        "disqualified": Stage.DISQUALIFIED.value,
        "exit_unsubscribed": ExitReason.UNSUBSCRIBED,
        "exit_disqualified": ExitReason.DISQUALIFIED,
        "exit_mql": ExitReason.MQL,
    }
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute(_QUEUE_SQL, params)
        queued, moved = cursor.fetchone()
    if moved:
        logger.info("Queued %s sends for %s due enrollments", queued, moved)
    return int(queued)


# --- 2. claim and send -------------------------------------------------------------------

_CLAIM_SQL = """
UPDATE nurturing_emailsend s
SET status = 'sending', attempts = s.attempts + 1, sent_at = %(now)s
FROM (
    SELECT c.id FROM nurturing_emailsend c
    JOIN nurturing_track t ON t.id = c.track_id AND t.status <> 'paused'
    WHERE c.status IN ('queued', 'sending')
      AND (c.status = 'queued' OR c.sent_at < %(stale)s)
    ORDER BY c.queued_at
    LIMIT %(limit)s
    FOR UPDATE OF c SKIP LOCKED
) picked
WHERE s.id = picked.id AND (s.status = 'queued' OR (s.status = 'sending' AND s.sent_at < %(stale)s))
RETURNING s.id
"""


def send_queued(limit: int, *, now: datetime | None = None) -> dict[str, int]:
    """Claim up to `limit` queued sends and send them; counts by outcome.

    Outcomes: sent, failed (render error, refused by the server, or out of attempts),
    skipped (since it was queued, the lead unsubscribed, left the track, or moved on to
    inside sales or sales), retry (queued again for the next run: the mail server was
    unreachable or asked to try later; an unreachable server also ends the run). Safe
    to run concurrently: each send is claimed by one caller, and a sent one never
    again. Call it outside a transaction so that each claim is committed before its
    mails go out.
    """
    counts: Counter[str] = Counter()
    remaining = max(0, int(limit))
    while remaining:
        ids = _claim(min(remaining, CLAIM_CHUNK), now or timezone.now())
        if not ids:
            break
        remaining -= len(ids)
        counts["claimed"] += len(ids)
        outcomes, server_down = _send_claimed(ids)
        counts.update(outcomes)
        if server_down:
            break
    return dict(counts)


def _claim(limit: int, now: datetime) -> list[int]:
    params = {"now": now, "stale": now - SENDING_LEASE, "limit": limit}
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute(_CLAIM_SQL, params)
        return sorted(row[0] for row in cursor.fetchall())


class MailServerDown(Exception):
    """The mail server cannot take mail now (unreachable, refuses us): stop the run."""


def _send_claimed(ids: list[int]) -> tuple[Counter[str], bool]:
    """Send the claimed sends; (outcomes, whether the mail server was down)."""
    sends = list(
        EmailSend.objects.filter(pk__in=ids)
        .select_related("lead__account", "lead__owner", "step", "track")
        .order_by("pk")
    )
    exited = _exited(sends)
    outcomes: Counter[str] = Counter()
    mail = get_connection(timeout=settings.EMAIL_TIMEOUT or EMAIL_TIMEOUT_SECONDS)
    try:
        for index, send in enumerate(sends):
            left = (send.track_id, send.lead_id) in exited
            try:
                outcomes[_deliver(send, mail, left_track=left)] += 1
            except MailServerDown as exc:
                # This send used an attempt; the others were not tried and go back as they were.
                outcomes[_retry_later(send, str(exc))] += 1
                outcomes["retry"] += _release(sends[index + 1 :], str(exc))
                return outcomes, True
    finally:
        _close_quietly(mail)
    return outcomes, False


def _exited(sends: Sequence[EmailSend]) -> set[tuple[int, int]]:
    """(track id, lead id) of the claimed sends whose lead has left the track since."""
    if not sends:
        return set()
    rows = Enrollment.objects.filter(
        track_id__in={s.track_id for s in sends},
        lead_id__in={s.lead_id for s in sends},
        status=EnrollmentStatus.EXITED,
    ).values_list("track_id", "lead_id")
    return set(rows)


def _deliver(send: EmailSend, mail, *, left_track: bool) -> str:
    """Send one claimed send; returns its outcome. Raises only MailServerDown."""
    try:
        if send.lead.unsubscribed or left_track or send.lead.stage in EXCLUDED_STAGES:
            return _finish(send, SendStatus.SKIPPED, _skip_reason(send))
        if send.attempts > MAX_ATTEMPTS:
            return _finish(
                send,
                SendStatus.FAILED,
                _("Gave up after %(attempts)s attempts.") % {"attempts": MAX_ATTEMPTS},
            )
        try:
            subject, body = _render(send)
        except RenderError as exc:
            return _fail_render(send, str(exc))
        message = compose_message(send, subject, body, connection=mail)
        return _transmit(send, message, mail)
    except MailServerDown:
        raise
    except Exception as exc:  # a bug must not stop the other sends of the run
        logger.exception("Send %s failed unexpectedly", send.pk)
        return _retry_later(send, repr(exc))


def _skip_reason(send: EmailSend) -> str:
    if send.lead.unsubscribed:
        return _("The lead unsubscribed before the mail went out.")
    if send.lead.stage in EXCLUDED_STAGES:
        # A newsletter's enrollment completes when it is queued, so exit_leads does not
        # reach it: the lead's stage is checked here too.
        return _("The lead moved on to inside sales or sales before the mail went out.")
    return _("The lead left the track before the mail went out.")


class RenderError(Exception):
    """A step's template failed to render for a lead: the message says why."""


def mail_language() -> str:
    """The language of nurture mails: the workspace's (leads carry no language)."""
    return "en" if settings.LANGUAGE_CODE.lower().startswith("en") else "ja"


def _render(send: EmailSend) -> tuple[str, str]:
    try:
        subject, body = render_step(send.step, send.lead, mail_language())
    except TemplateRenderError as exc:  # says which step and part, and why
        raise RenderError(str(exc)) from exc
    except Exception as exc:  # any other failure of the marketer's template, too
        raise RenderError(
            _("Step %(position)s could not be rendered: %(error)s")
            % {"position": send.step.position, "error": str(exc) or exc.__class__.__name__}
        ) from exc
    # A subject is one header line: line breaks from lead data must not become headers.
    subject = " ".join(str(subject).split())
    if not subject:
        raise RenderError(_("The subject is empty once rendered."))
    return subject, str(body)


def _fail_render(send: EmailSend, error: str) -> str:
    """Not sent: the send is failed with the error, and the track shows it."""
    message = error[:ERROR_MAX_LENGTH]
    Track.objects.filter(pk=send.track_id).exclude(last_error=message).update(
        last_error=message, updated_at=timezone.now()
    )
    return _finish(send, SendStatus.FAILED, message)


def _transmit(send: EmailSend, message: EmailMultiAlternatives, mail) -> str:
    """Hand the message to the backend. This message's own problems fail or retry it;
    the server's (unreachable, disconnects, refuses our login or sender) raise
    MailServerDown."""
    try:
        message.send()
    except (smtplib.SMTPRecipientsRefused, BadHeaderError, ValueError) as exc:
        return _finish(send, SendStatus.FAILED, _refused(exc))
    except smtplib.SMTPDataError as exc:
        if exc.smtp_code >= 500:  # the content is refused: retrying will not help
            return _finish(send, SendStatus.FAILED, _refused(exc))
        return _retry_later(send, _refused(exc))  # 4xx: try again later
    except (smtplib.SMTPException, OSError) as exc:
        _close_quietly(mail)
        raise MailServerDown(_unreachable(exc)) from exc
    return _finish(send, SendStatus.SENT, "")


def _refused(exc: Exception) -> str:
    return _("The mail server refused the message: %(error)s") % {"error": exc}


def _unreachable(exc: Exception) -> str:
    return _("The mail server could not be reached: %(error)s") % {"error": exc}


def _close_quietly(mail) -> None:
    try:
        mail.close()
    except Exception:  # closing a broken connection may fail again; it is gone anyway
        logger.debug("Closing the mail connection failed", exc_info=True)


def _finish(send: EmailSend, status: str, error: str) -> str:
    """Record the outcome of this worker's claim (the attempt number identifies it: a
    send reclaimed by another worker after the lease is not overwritten)."""
    sent_at = timezone.now() if status == SendStatus.SENT else None
    EmailSend.objects.filter(pk=send.pk, status=SendStatus.SENDING, attempts=send.attempts).update(
        status=status, error=error[:ERROR_MAX_LENGTH], sent_at=sent_at
    )
    return str(status)


def _retry_later(send: EmailSend, error: str) -> str:
    """Back to the queue for the next run; failed once MAX_ATTEMPTS are used."""
    if send.attempts >= MAX_ATTEMPTS:
        return _finish(send, SendStatus.FAILED, error)
    _finish(send, SendStatus.QUEUED, error)
    return "retry"


def _release(sends: Sequence[EmailSend], error: str) -> int:
    """Claimed sends not tried: back to the queue, their attempt not counted."""
    released = 0
    for send in sends:
        released += EmailSend.objects.filter(
            pk=send.pk, status=SendStatus.SENDING, attempts=send.attempts
        ).update(
            status=SendStatus.QUEUED,
            attempts=send.attempts - 1,
            sent_at=None,
            error=error[:ERROR_MAX_LENGTH],
        )
    return released


# --- the message -------------------------------------------------------------------------

# http(s) URLs in plain text: the characters a URL may hold, unencoded Japanese ends one
# ("https://example.jp/caseをご覧ください").
_URL_RE = re.compile(r"https?://[A-Za-z0-9\-._~:/?#\[\]@!$&'()*+,;=%]+", re.IGNORECASE)
_TRAILING = ".,;:!?'\")]"


@dataclass(frozen=True)
class _Piece:
    text: str
    url: str | None = None  # set when the piece is a link


def split_links(body: str) -> list[_Piece]:
    """The body as text pieces and link pieces, in order."""
    pieces: list[_Piece] = []
    last = 0
    for match in _URL_RE.finditer(body):
        url = _trim_url(match.group())
        start, end = match.start(), match.start() + len(url)
        if start > last:
            pieces.append(_Piece(body[last:start]))
        pieces.append(_Piece(url, url))
        last = end
    if last < len(body):
        pieces.append(_Piece(body[last:]))
    return pieces


def _trim_url(url: str) -> str:
    # Sentence punctuation after a URL is not part of it; a ")" is, when "(" is too.
    while url and url[-1] in _TRAILING:
        if url[-1] == ")" and url.count("(") >= url.count(")"):
            break
        url = url[:-1]
    return url


def record_links(send_id: int, pieces: Iterable[_Piece]) -> dict[str, int]:
    """Record the mail's distinct links (numbered from 1) before it goes out.

    A retried send records the same numbers again (its URL updated if the template
    changed meanwhile). Returns {url: link number}.
    """
    numbers: dict[str, int] = {}
    for piece in pieces:
        url = piece.url
        if url and url not in numbers and len(url) <= MAX_URL_LENGTH:
            if len(numbers) >= MAX_TRACKED_LINKS:
                break
            numbers[url] = len(numbers) + 1
    TrackedLink.objects.bulk_create(
        [TrackedLink(send_id=send_id, position=n, url=url) for url, n in numbers.items()],
        update_conflicts=True,
        unique_fields=["send", "position"],
        update_fields=["url"],
    )
    return numbers


def compose_message(
    send: EmailSend, subject: str, body: str, *, connection=None
) -> EmailMultiAlternatives:
    """The mail for a send: tracked links, unsubscribe link, open pixel (HTML part) and
    the List-Unsubscribe headers (RFC 2369, one-click per RFC 8058)."""
    pieces = split_links(body)
    numbers = record_links(send.pk, pieces)
    urls = tracking_urls(send.pk)
    with translation.override(mail_language()):
        text = _text_part(pieces, numbers, urls)
        html = _html_part(pieces, numbers, urls)
    message = EmailMultiAlternatives(
        subject=subject,
        body=text,
        from_email=getattr(settings, "NURTURING_FROM_EMAIL", "") or settings.DEFAULT_FROM_EMAIL,
        to=[send.lead.email],
        headers=_list_unsubscribe_headers(urls),
        connection=connection,
    )
    message.attach_alternative(html, "text/html")
    return message


def _text_part(pieces: list[_Piece], numbers: dict[str, int], urls: TrackingUrls) -> str:
    text = "".join(
        urls.click(numbers[p.url]) if p.url in numbers else p.text for p in pieces
    ).rstrip()
    footer = _("To stop receiving these emails, open this link: %(url)s") % {
        "url": urls.unsubscribe
    }
    return f"{text}\n\n-- \n{footer}\n"


def _html_part(pieces: list[_Piece], numbers: dict[str, int], urls: TrackingUrls) -> str:
    parts = []
    for piece in pieces:
        if piece.url in numbers:
            href = escape(urls.click(numbers[piece.url]))
            parts.append(f'<a href="{href}">{escape(piece.text)}</a>')
        else:
            parts.append(escape(piece.text))
    content = linebreaks("".join(parts).strip())
    # Outside the f-string: message extraction does not look inside one.
    lead_in, label = _("To stop receiving these emails:"), _("Unsubscribe")
    unsubscribe = (
        f'<p style="font-size:12px;color:#666666">{escape(lead_in)} '
        f'<a href="{escape(urls.unsubscribe)}">{escape(label)}</a></p>'
    )
    pixel = (
        f'<img src="{escape(urls.pixel)}" width="1" height="1" alt="" '
        'style="display:block;width:1px;height:1px;border:0">'
    )
    return f"<!doctype html>\n<html><body>\n{content}\n{unsubscribe}\n{pixel}\n</body></html>\n"


def _list_unsubscribe_headers(urls: TrackingUrls) -> dict[str, str]:
    targets = [f"<{urls.unsubscribe}>"]
    mailto = getattr(settings, "NURTURING_UNSUBSCRIBE_MAILTO", "")
    if mailto:
        targets.append(f"<mailto:{mailto}?subject=unsubscribe>")
    return {
        "List-Unsubscribe": ", ".join(targets),
        "List-Unsubscribe-Post": "List-Unsubscribe=One-Click",
    }


# --- the rate ----------------------------------------------------------------------------


def send_rate_per_minute() -> int:
    return max(0, int(getattr(settings, "NURTURING_SEND_RATE_PER_MINUTE", DEFAULT_RATE_PER_MINUTE)))


def _redis() -> redis.Redis:
    # Bounded: a hung Redis must not hold the send cycle; on an error the budget falls
    # back to the rate.
    return bounded_redis(settings.REDIS_TIMEOUT_SECONDS)


def take_send_budget(wanted: int, *, now: datetime | None = None) -> int:
    """Reserve up to `wanted` sends from this minute's budget (shared by every worker
    and scheduler through Redis); returns how many may go. Give back what was not
    used with `return_send_budget`."""
    rate = send_rate_per_minute()
    if wanted <= 0 or rate <= 0:
        return 0
    key = _budget_key(now)
    try:
        pipe = _redis().pipeline()
        pipe.incrby(key, wanted)
        pipe.expire(key, 120)
        total, _ok = pipe.execute()
    except redis.RedisError:
        logger.exception("Send budget unavailable; sending at most one minute's rate")
        return min(wanted, rate)
    granted = max(0, min(wanted, rate - (int(total) - wanted)))
    if granted < wanted:
        _give_back(key, wanted - granted)
    return granted


def return_send_budget(unused: int, *, now: datetime | None = None) -> None:
    """Give back reserved sends that were not used (fewer were queued)."""
    if unused > 0:
        _give_back(_budget_key(now), unused)


def _give_back(key: str, count: int) -> None:
    try:
        _redis().decrby(key, count)
    except redis.RedisError:
        logger.warning("Could not give back %s sends of the budget", count)


def _budget_key(now: datetime | None) -> str:
    moment = now or timezone.now()
    return BUDGET_KEY.format(minute=int(moment.timestamp()) // 60)


def run_send_cycle(*, now: datetime | None = None) -> dict[str, int]:
    """The beat task's minute: enroll new matches of active tracks, queue due steps,
    then send as many queued mails as this minute's budget allows."""
    enrolled = enroll_due_tracks()
    queued = queue_due_sends(now)
    moment = now or timezone.now()
    budget = take_send_budget(send_rate_per_minute(), now=moment)
    counts = send_queued(budget)
    return_send_budget(budget - counts.get("claimed", 0), now=moment)
    return {"enrolled": int(enrolled or 0), "queued": queued, **counts}


# --- operations --------------------------------------------------------------------------


def requeue_failed_sends(send_ids: Iterable[int]) -> int:
    """Queue failed sends again (after the template or the address was fixed).

    Only failed ones: a sent mail is never sent again. Returns how many.
    """
    return EmailSend.objects.filter(
        pk__in=[int(pk) for pk in send_ids], status=SendStatus.FAILED
    ).update(status=SendStatus.QUEUED, queued_at=timezone.now(), attempts=0, error="")


# --- KPIs --------------------------------------------------------------------------------

_KPI_SQL = """
SELECT s.step_id,
       count(*) FILTER (WHERE s.status IN ('sent', 'failed')) AS sent,
       count(*) FILTER (WHERE s.status = 'sent') AS delivered,
       count(*) FILTER (WHERE s.status = 'sent'
                        AND (s.first_opened_at IS NOT NULL OR s.first_clicked_at IS NOT NULL))
           AS opened,
       count(*) FILTER (WHERE s.status = 'sent' AND s.first_clicked_at IS NOT NULL) AS clicked,
       count(*) FILTER (WHERE s.status = 'sent' AND s.unsubscribed_at IS NOT NULL)
           AS unsubscribed,
       count(*) FILTER (WHERE s.status = 'sent' AND EXISTS (
           SELECT 1 FROM handoff_stagetransition m
           WHERE m.lead_id = s.lead_id AND m.to_stage = 'mql' AND m.created_at >= s.sent_at
       )) AS mql,
       count(*) FILTER (WHERE s.status = 'sent' AND EXISTS (
           SELECT 1 FROM handoff_stagetransition o
           WHERE o.lead_id = s.lead_id AND o.to_stage = 'opportunity'
             AND o.created_at >= s.sent_at
       )) AS opportunity
FROM nurturing_emailsend s
WHERE s.track_id = %s
GROUP BY s.step_id
"""
# Per track, leads count once: a lead converts if it reached the stage after the first
# mail of the track it received.
_TRACK_LEADS_SQL = """
WITH r AS (
    SELECT lead_id, min(sent_at) AS first_sent FROM nurturing_emailsend
    WHERE track_id = %s AND status = 'sent' GROUP BY lead_id
)
SELECT count(*),
       count(*) FILTER (WHERE EXISTS (
           SELECT 1 FROM handoff_stagetransition m
           WHERE m.lead_id = r.lead_id AND m.to_stage = 'mql' AND m.created_at >= r.first_sent
       )),
       count(*) FILTER (WHERE EXISTS (
           SELECT 1 FROM handoff_stagetransition o
           WHERE o.lead_id = r.lead_id AND o.to_stage = 'opportunity'
             AND o.created_at >= r.first_sent
       ))
FROM r
"""
_COUNTS = ("sent", "delivered", "opened", "clicked", "unsubscribed", "mql", "opportunity")


def track_kpis(track_id: int) -> dict:
    """KPIs of a track and of each of its steps (two queries).

    Counts: `sent` (handed to sending: delivered or failed), `delivered` (accepted by
    the mail server), `opened` (pixel loaded or a link clicked), `clicked`,
    `unsubscribed` (through this mail's link), `mql` / `opportunity` (the lead reached
    that stage after the mail). Rates are shares of `delivered` (None when nothing was
    delivered): open_rate, click_rate, unsubscribe_rate, mql_rate, opportunity_rate
    (商談化率). For the whole track, conversions count leads once:
    {"track": {…, "leads": n}, "steps": [{"step_id", "position", "subject", …}, …]}.
    """
    with connection.cursor() as cursor:
        cursor.execute(_KPI_SQL, [track_id])
        by_step = {row[0]: dict(zip(_COUNTS, row[1:], strict=True)) for row in cursor.fetchall()}
        cursor.execute(_TRACK_LEADS_SQL, [track_id])
        leads, mql_leads, opportunity_leads = cursor.fetchone()
    steps = []
    for step in Step.objects.filter(track_id=track_id).order_by("position"):
        counts = by_step.get(step.pk, dict.fromkeys(_COUNTS, 0))
        steps.append(
            {"step_id": step.pk, "position": step.position, "subject": step.subject_ja}
            | _with_rates(counts, delivered=counts["delivered"])
        )
    totals = {name: sum(s.get(name, 0) for s in by_step.values()) for name in _COUNTS}
    totals.update(leads=leads, mql=mql_leads, opportunity=opportunity_leads)
    track = _with_rates(totals, delivered=totals["delivered"])
    # Per lead for the track: conversions over the leads that received a mail.
    track["mql_rate"] = _rate(mql_leads, leads)
    track["opportunity_rate"] = _rate(opportunity_leads, leads)
    return {"track": track, "steps": steps}


def _with_rates(counts: dict, *, delivered: int) -> dict:
    return counts | {
        "open_rate": _rate(counts["opened"], delivered),
        "click_rate": _rate(counts["clicked"], delivered),
        "unsubscribe_rate": _rate(counts["unsubscribed"], delivered),
        "mql_rate": _rate(counts["mql"], delivered),
        "opportunity_rate": _rate(counts["opportunity"], delivered),
    }


def _rate(part: int, whole: int) -> float | None:
    return round(part / whole, 4) if whole else None
