"""Notifications: in-app (the bell), email and Slack-compatible webhooks.

`notify` is called by the hand-off services inside their transactions. It writes, in
one statement whatever the number of hand-offs and recipients:

- one Notification per (event, recipient), event_key "<kind>:<handoff id>", inserted
  with ON CONFLICT DO NOTHING, so a retried caller notifies nobody twice;
- one email Delivery per new notification whose recipient has an address;
- one webhook Delivery per (event, active endpoint posting this kind);

and after commit enqueues `handoff.tasks.deliver_pending` for the new deliveries.

A Delivery is sent by `deliver`, which first claims it with a conditional UPDATE
(pending and due, or stuck in sending past its lease → sending): of two workers given
the same id only one sends, and a sent delivery is never claimed again. A failed send
is retried with exponential backoff (a 429's Retry-After is honoured) by the beat task
`retry_due_deliveries`, then marked failed; the admin can retry a failed one.
"""

from __future__ import annotations

import json
import logging
import smtplib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.mail import BadHeaderError, EmailMessage, get_connection
from django.db import connection, transaction
from django.db.models import F, Q
from django.utils import timezone, translation
from django.utils.translation import gettext as _

from handoff.models import (
    Delivery,
    DeliveryChannel,
    DeliveryStatus,
    Handoff,
    HandoffKind,
    Notification,
    NotificationKind,
    RejectReason,
    WebhookEndpoint,
)
from handoff.webhooks import DeliveryError, post_webhook
from leadops.models import Temperature

logger = logging.getLogger(__name__)

# Ids per deliver_pending task: enough to amortise a task, few enough to spread a
# burst (an activation announcing thousands of MQLs) over every worker.
DELIVERY_BATCH = 100
# Ids the beat task enqueues per run; the rest wait a minute for the next run.
RETRY_SCAN_LIMIT = 5000
# A claimed delivery not finished within this time (worker killed) may be claimed
# again. Far above the longest send: the webhook timeout or SMTP timeout.
SENDING_LEASE = timedelta(minutes=5)
# No retry waits longer than this, whatever the backoff or Retry-After says.
MAX_RETRY_DELAY = timedelta(hours=6)
EMAIL_TIMEOUT_SECONDS = 30
TITLE_MAX_LENGTH = 200


# --- notify --------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Event:
    """One announced event, rendered once for all its recipients and channels."""

    handoff_id: int
    lead_id: int
    event_key: str
    title: str
    body: str
    email: dict[str, str]
    webhook: dict[str, str]


def event_key(kind: str, handoff_id: int) -> str:
    return f"{kind}:{handoff_id}"


def notify(
    kind: str,
    recipients_by_handoff: Mapping[int, Sequence[int]],
    *,
    extra: Mapping[str, str] | None = None,
) -> None:
    """Announce `kind` (a NotificationKind) for each hand-off id to the given user ids.

    Called inside the caller's transaction; set-based (three queries whatever the
    count). Re-announcing an event adds only recipients not told yet and posts no
    webhook twice. Inactive or unknown users and unknown hand-offs are skipped.
    `extra` carries {"reason": …, "comment": …} (sql_rejected); texts are written in
    the site's default language (settings.LANGUAGE_CODE).
    """
    kind = NotificationKind(kind).value  # an unknown kind is a caller's bug: ValueError
    handoffs = _handoffs_with_leads(recipients_by_handoff)
    if not handoffs:
        return
    with translation.override(settings.LANGUAGE_CODE):
        events = [_render(kind, handoff, extra or {}) for handoff in handoffs]
    recipients = {
        int(handoff_id): sorted({int(user_id) for user_id in users if user_id is not None})
        for handoff_id, users in recipients_by_handoff.items()
    }
    delivery_ids = _insert(kind, events, recipients, endpoint_ids=_endpoints_posting(kind))
    if delivery_ids:
        transaction.on_commit(lambda: enqueue_deliveries(delivery_ids))


def _handoffs_with_leads(recipients_by_handoff: Mapping[int, Sequence[int]]) -> list[Handoff]:
    ids = sorted({int(pk) for pk in recipients_by_handoff})
    if not ids:
        return []
    return list(
        Handoff.objects.filter(pk__in=ids)
        .select_related("lead__account", "assignee")
        .order_by("pk")
    )


def _endpoints_posting(kind: str) -> list[int]:
    endpoints = WebhookEndpoint.objects.filter(active=True).only("pk", "kinds")
    return sorted(e.pk for e in endpoints if not e.kinds or kind in e.kinds)


# One statement: the events and recipients arrive as arrays; the notifications inserted
# (not those that existed) get an email delivery each; every event gets one webhook
# delivery per endpoint. Rows go in a fixed order so concurrent callers do not deadlock.
_INSERT_SQL = """
WITH ev AS (
    SELECT * FROM unnest(
        %(handoff_ids)s::bigint[], %(lead_ids)s::bigint[], %(event_keys)s::text[],
        %(titles)s::text[], %(bodies)s::text[], %(emails)s::text[], %(webhooks)s::text[]
    ) AS e(handoff_id, lead_id, event_key, title, body, email, webhook)
),
rc AS (
    SELECT * FROM unnest(%(rc_handoffs)s::bigint[], %(rc_users)s::bigint[])
        AS r(handoff_id, user_id)
),
new AS (
    INSERT INTO {notification} (
        recipient_id, kind, event_key, lead_id, handoff_id, title, body, created_at
    )
    SELECT rc.user_id, %(kind)s, ev.event_key, ev.lead_id, ev.handoff_id, ev.title,
           ev.body, %(now)s
    FROM rc
    JOIN ev ON ev.handoff_id = rc.handoff_id
    JOIN {user} u ON u.id = rc.user_id AND u.is_active
    ORDER BY ev.event_key, rc.user_id
    ON CONFLICT (event_key, recipient_id) DO NOTHING
    RETURNING id, recipient_id, event_key
),
rows AS (
    SELECT new.event_key, 'email' AS channel, new.id AS notification_id,
           NULL::bigint AS endpoint_id, u.email AS target, ev.email AS payload
    FROM new
    JOIN {user} u ON u.id = new.recipient_id
    JOIN ev ON ev.event_key = new.event_key
    WHERE u.email <> ''
    UNION ALL
    SELECT ev.event_key, 'webhook', NULL, w.id, 'webhook:' || w.id, ev.webhook
    FROM ev CROSS JOIN unnest(%(endpoint_ids)s::bigint[]) AS w(id)
)
INSERT INTO {delivery} (
    event_key, channel, notification_id, endpoint_id, target, payload, status, attempts,
    next_attempt_at, last_error, created_at
)
SELECT event_key, channel, notification_id, endpoint_id, target, payload::jsonb,
       'pending', 0, %(now)s, '', %(now)s
FROM rows
ORDER BY event_key, channel, target
ON CONFLICT (event_key, channel, target) DO NOTHING
RETURNING id
"""


def _insert(
    kind: str,
    events: list[_Event],
    recipients: Mapping[int, list[int]],
    *,
    endpoint_ids: list[int],
) -> list[int]:
    """Insert notifications and deliveries; the ids of the deliveries created."""
    sql = _INSERT_SQL.format(
        notification=Notification._meta.db_table,
        delivery=Delivery._meta.db_table,
        user=get_user_model()._meta.db_table,
    )
    pairs = [(e.handoff_id, user) for e in events for user in recipients.get(e.handoff_id, [])]
    params = {
        "kind": kind,
        "now": timezone.now(),
        "handoff_ids": [e.handoff_id for e in events],
        "lead_ids": [e.lead_id for e in events],
        "event_keys": [e.event_key for e in events],
        "titles": [e.title for e in events],
        "bodies": [e.body for e in events],
        "emails": [json.dumps(e.email, ensure_ascii=False) for e in events],
        "webhooks": [json.dumps(e.webhook, ensure_ascii=False) for e in events],
        "rc_handoffs": [handoff_id for handoff_id, _user in pairs],
        "rc_users": [user for _handoff_id, user in pairs],
        "endpoint_ids": endpoint_ids,
    }
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        return sorted(row[0] for row in cursor.fetchall())


# --- the words --------------------------------------------------------------------------


def lead_url(lead_id: int) -> str:
    return f"{settings.SITE_URL.rstrip('/')}/leads/{lead_id}/"


def _format_time(moment: datetime) -> str:
    return timezone.localtime(moment).strftime("%Y-%m-%d %H:%M %Z")


def _lead_label(handoff: Handoff) -> str:
    lead = handoff.lead
    name = f"{lead.last_name} {lead.first_name}".strip() or lead.email
    return f"{name} ({lead.company})" if lead.company else name


def _title(kind: str, handoff: Handoff) -> str:
    titles = {
        NotificationKind.MQL_ASSIGNED: _("New MQL: %(lead)s"),
        NotificationKind.SLA_WARNING: _("SLA warning: %(lead)s"),
        NotificationKind.SLA_BREACHED: _("SLA breached: %(lead)s"),
        NotificationKind.SQL_ASSIGNED: _("New SQL for you: %(lead)s"),
        NotificationKind.SQL_REJECTED: _("SQL rejected: %(lead)s"),
    }
    title = titles[kind] % {"lead": _lead_label(handoff)}
    # A mail subject is one line: names imported from CSV may hold line breaks.
    return " ".join(title.split())[:TITLE_MAX_LENGTH]


def _due_line(kind: str, handoff: Handoff) -> str:
    due = {"due": _format_time(handoff.due_at)}
    if kind == NotificationKind.SLA_BREACHED:
        return _("The deadline was %(due)s.") % due
    if handoff.kind == HandoffKind.SALES:
        return _("Accept or reject by %(due)s.") % due
    return _("First contact due by %(due)s.") % due


def _assignee_line(handoff: Handoff) -> str:
    if handoff.assignee is None:
        return _("Nobody is assigned yet.")
    assignee = handoff.assignee
    name = assignee.get_full_name() or assignee.get_username()
    return _("Assigned to %(name)s.") % {"name": name}


def _extra_lines(extra: Mapping[str, str]) -> list[str]:
    lines = []
    reason = str(extra.get("reason") or "").strip()
    if reason:
        # A reason code (e.g. "no_budget") reads as its label.
        label = RejectReason(reason).label if reason in RejectReason.values else reason
        lines.append(_("Reason: %(reason)s") % {"reason": label})
    comment = str(extra.get("comment") or "").strip()
    if comment:
        lines.append(_("Comment: %(comment)s") % {"comment": comment})
    return lines


def _body(kind: str, handoff: Handoff, extra: Mapping[str, str]) -> str:
    lead = handoff.lead
    temperature = (
        Temperature(lead.temperature).label
        if lead.temperature in Temperature.values
        else lead.temperature
    )
    lines = [
        _("Score %(score)s (%(temperature)s).") % {"score": lead.score, "temperature": temperature}
    ]
    if kind != NotificationKind.SQL_REJECTED:
        lines.append(_due_line(kind, handoff))
    if kind in (NotificationKind.SLA_WARNING, NotificationKind.SLA_BREACHED):
        lines.append(_assignee_line(handoff))
    return "\n".join(lines + _extra_lines(extra))


def slack_escape(text: str) -> str:
    """Slack's mrkdwn control characters: &, < and > as entities, so text stays text."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _render(kind: str, handoff: Handoff, extra: Mapping[str, str]) -> _Event:
    title, body, url = _title(kind, handoff), _body(kind, handoff, extra), lead_url(handoff.lead_id)
    email_body = f"{body}\n\n" + _("Open the lead: %(url)s") % {"url": url}
    link = f"<{url}|{slack_escape(_('Open the lead'))}>"
    return _Event(
        handoff_id=handoff.pk,
        lead_id=handoff.lead_id,
        event_key=event_key(kind, handoff.pk),
        title=title,
        body=body,
        email={"subject": title, "body": email_body},
        webhook={"text": f"*{slack_escape(title)}*\n{slack_escape(body)}\n{link}"},
    )


# --- the bell ----------------------------------------------------------------------------


def unread_count(user) -> int:
    """The number on the bell: the user's unread notifications."""
    if not user.is_authenticated:
        return 0
    return Notification.objects.filter(recipient=user, read_at__isnull=True).count()


def recent_notifications(user, *, limit: int = 20) -> list[Notification]:
    """The user's newest notifications, read or not, newest first."""
    if not user.is_authenticated:
        return []
    return list(Notification.objects.filter(recipient=user).order_by("-created_at", "-id")[:limit])


def mark_notifications_read(user, *, ids: Sequence[int] | None = None) -> int:
    """Mark the user's unread notifications read (all of them when `ids` is None).

    Ids of other people's notifications are ignored. Returns how many were marked.
    """
    if not user.is_authenticated:
        return 0
    unread = Notification.objects.filter(recipient=user, read_at__isnull=True)
    if ids is not None:
        unread = unread.filter(pk__in=[int(pk) for pk in ids])
    return unread.update(read_at=timezone.now())


# --- delivery --------------------------------------------------------------------------


def enqueue_deliveries(delivery_ids: Iterable[int]) -> None:
    """Hand ids to the workers in batches. Runs after commit; a broker that is down is
    logged, not raised: the beat task `retry_due_deliveries` finds the rows later."""
    from handoff.tasks import deliver_pending

    ids = sorted({int(pk) for pk in delivery_ids})
    for start in range(0, len(ids), DELIVERY_BATCH):
        batch = ids[start : start + DELIVERY_BATCH]
        try:
            deliver_pending.delay(batch)
        except Exception:  # the broker's errors vary with the transport
            logger.exception("Could not enqueue %s deliveries; the retry scan will", len(batch))
            return


def _claimable(now: datetime) -> Q:
    due = Q(next_attempt_at__isnull=True) | Q(next_attempt_at__lte=now)
    stuck = Q(status=DeliveryStatus.SENDING, next_attempt_at__lte=now)
    return (Q(status=DeliveryStatus.PENDING) & due) | stuck


def _claim(delivery_id: int, now: datetime) -> Delivery | None:
    """pending & due (or sending past its lease) → sending, for this worker only."""
    claimed = Delivery.objects.filter(_claimable(now), pk=delivery_id).update(
        status=DeliveryStatus.SENDING,
        attempts=F("attempts") + 1,
        next_attempt_at=now + SENDING_LEASE,
    )
    if not claimed:
        return None
    return Delivery.objects.select_related("endpoint").get(pk=delivery_id)


def deliver(delivery_id: int, *, now: datetime | None = None) -> str:
    """Send one delivery if it is due; returns its resulting status.

    Safe to run twice at once: the claim is a conditional UPDATE, so only one caller
    sends; an id that is not due (sent, failed, waiting for its retry time, or being
    sent by another worker) is left alone and its current status returned.
    """
    now = now or timezone.now()
    delivery = _claim(delivery_id, now)
    if delivery is None:
        status = Delivery.objects.filter(pk=delivery_id).values_list("status", flat=True).first()
        return status or ""
    if delivery.attempts > settings.NOTIFICATION_MAX_ATTEMPTS:
        # Claimed again after a worker died during the last allowed attempt.
        return _finish_failed(delivery, _("Gave up: the last attempt was interrupted."))
    try:
        _send(delivery)
    except DeliveryError as exc:
        return _record_failure(delivery, exc)
    except Exception as exc:  # a bug or an unexpected backend error: retry, and say so
        logger.exception("Delivery %s failed unexpectedly", delivery_id)
        return _record_failure(delivery, DeliveryError(repr(exc), retryable=True))
    return _record_sent(delivery)


def deliver_many(delivery_ids: Iterable[int]) -> dict[str, int]:
    """`deliver` each id; returns how many ended in each status."""
    counts: dict[str, int] = {}
    for delivery_id in delivery_ids:
        status = deliver(int(delivery_id))
        counts[status] = counts.get(status, 0) + 1
    return counts


def _send(delivery: Delivery) -> None:
    if delivery.channel == DeliveryChannel.EMAIL:
        _send_email(delivery)
    elif delivery.channel == DeliveryChannel.WEBHOOK:
        _send_webhook(delivery)
    else:
        raise DeliveryError(f"Unknown channel {delivery.channel!r}.", retryable=False)


def _send_email(delivery: Delivery) -> None:
    payload = delivery.payload or {}
    message = EmailMessage(
        subject=str(payload.get("subject", "")),
        body=str(payload.get("body", "")),
        from_email=settings.NOTIFICATION_EMAIL_FROM,
        to=[delivery.target],
        connection=get_connection(timeout=settings.EMAIL_TIMEOUT or EMAIL_TIMEOUT_SECONDS),
    )
    try:
        message.send()
    except (smtplib.SMTPRecipientsRefused, BadHeaderError, ValueError) as exc:
        raise DeliveryError(
            _("The mail server refused the message: %(error)s") % {"error": exc}, retryable=False
        ) from exc
    except (smtplib.SMTPException, OSError) as exc:
        raise DeliveryError(
            _("Could not send the email: %(error)s") % {"error": exc}, retryable=True
        ) from exc


def _send_webhook(delivery: Delivery) -> None:
    endpoint = delivery.endpoint
    if endpoint is None or not endpoint.active:
        raise DeliveryError(_("The webhook was removed or turned off."), retryable=False)
    post_webhook(endpoint.url, delivery.payload, timeout=settings.WEBHOOK_TIMEOUT_SECONDS)


def _mine(delivery: Delivery):
    """The row, only while this worker's claim holds (same attempt, still sending)."""
    return Delivery.objects.filter(
        pk=delivery.pk, status=DeliveryStatus.SENDING, attempts=delivery.attempts
    )


def _record_sent(delivery: Delivery) -> str:
    # Not conditional on the claim: even if the lease ran out meanwhile, it was sent.
    Delivery.objects.filter(pk=delivery.pk).exclude(status=DeliveryStatus.SENT).update(
        status=DeliveryStatus.SENT, sent_at=timezone.now(), next_attempt_at=None, last_error=""
    )
    return DeliveryStatus.SENT


def retry_delay(attempts: int, *, retry_after: float | None = None) -> timedelta:
    """How long to wait after `attempts` failed tries: base × 2^(n-1), or what a 429's
    Retry-After asked for (never less than a second), capped at MAX_RETRY_DELAY."""
    if retry_after is not None:
        delay = timedelta(seconds=max(1.0, retry_after))
    else:
        base = settings.NOTIFICATION_RETRY_BACKOFF_SECONDS
        delay = timedelta(seconds=base * 2 ** max(0, attempts - 1))
    return min(delay, MAX_RETRY_DELAY)


def _record_failure(delivery: Delivery, error: DeliveryError) -> str:
    now = timezone.now()
    message = str(error)[:2000]
    if not error.retryable or delivery.attempts >= settings.NOTIFICATION_MAX_ATTEMPTS:
        return _finish_failed(delivery, message)
    next_at = now + retry_delay(delivery.attempts, retry_after=error.retry_after)
    _mine(delivery).update(
        status=DeliveryStatus.PENDING, next_attempt_at=next_at, last_error=message
    )
    return DeliveryStatus.PENDING


def _finish_failed(delivery: Delivery, message: str) -> str:
    logger.warning("Delivery %s failed for good: %s", delivery.pk, message)
    _mine(delivery).update(status=DeliveryStatus.FAILED, next_attempt_at=None, last_error=message)
    return DeliveryStatus.FAILED


def due_delivery_ids(*, now: datetime | None = None, limit: int = RETRY_SCAN_LIMIT) -> list[int]:
    """Deliveries whose (re)try time has come, or stuck in sending past their lease."""
    now = now or timezone.now()
    return list(
        Delivery.objects.filter(
            status__in=[DeliveryStatus.PENDING, DeliveryStatus.SENDING], next_attempt_at__lte=now
        )
        .order_by("next_attempt_at")
        .values_list("pk", flat=True)[:limit]
    )


def enqueue_due_deliveries(*, now: datetime | None = None) -> int:
    """The beat's sweep: enqueue every due delivery (retries, lost tasks, dead workers)."""
    ids = due_delivery_ids(now=now)
    enqueue_deliveries(ids)
    return len(ids)


def retry_delivery(delivery_id: int) -> None:
    """Admin "retry now": a failed delivery gets a fresh set of attempts, sent soon.

    Only failed ones: a pending, sending or sent delivery is left as it is.
    """
    retried = Delivery.objects.filter(pk=delivery_id, status=DeliveryStatus.FAILED).update(
        status=DeliveryStatus.PENDING, attempts=0, next_attempt_at=timezone.now()
    )
    if retried:
        transaction.on_commit(lambda: enqueue_deliveries([delivery_id]))
