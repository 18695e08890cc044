"""Notifications: who is told what, once; deliveries claimed, sent, retried and failed.

Emails go through Django's locmem backend (pytest-django's default) or a real SMTP
connection attempt; webhooks post to a real local HTTP server (tests/handoff/
test_webhooks.py) with the test-only flag that lets them reach 127.0.0.1, except
where a test proves that, with the flag off, loopback is refused.
"""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Iterator
from datetime import timedelta

import pytest
import redis
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group
from django.core import mail
from django.db import connection, transaction
from django.utils import timezone

from handoff import tasks
from handoff.models import (
    Delivery,
    DeliveryChannel,
    DeliveryStatus,
    Handoff,
    HandoffKind,
    Notification,
    NotificationKind,
    SlaState,
    WebhookEndpoint,
)
from handoff.notifications import (
    deliver,
    due_delivery_ids,
    enqueue_deliveries,
    mark_notifications_read,
    notify,
    recent_notifications,
    retry_delay,
    retry_delivery,
    unread_count,
)
from leadops.celery import app
from leadops.engines import redis_url
from tests.factories import LeadFactory
from tests.handoff.test_webhooks import LocalServer, Reply, serve
from tests.worker import celery_worker_process  # noqa: F401  (a fixture)

User = get_user_model()
MQL = NotificationKind.MQL_ASSIGNED


# --- helpers -----------------------------------------------------------------------------


@pytest.fixture
def webhook_server() -> Iterator[LocalServer]:
    """A plain-HTTP server on 127.0.0.1 recording what it receives."""
    yield from serve(LocalServer())


@pytest.fixture
def other_server() -> Iterator[LocalServer]:
    """A second server: the target of redirects, which must never be reached."""
    yield from serve(LocalServer())


@pytest.fixture
def allow_private(settings) -> None:
    settings.WEBHOOK_ALLOW_PRIVATE_HOSTS = True


def make_user(username: str, role: str = "inside_sales", *, email: str | None = None, **extra):
    user = User.objects.create_user(
        username=username,
        email=f"{username}@example.jp" if email is None else email,
        password="pw-Secret-123",
        **extra,
    )
    user.groups.add(Group.objects.get(name=role))
    return user


def make_handoff(*, lead=None, kind: str = HandoffKind.INSIDE_SALES, assignee=None, **fields):
    now = timezone.now()
    defaults = {
        "opened_at": now,
        "due_at": now + timedelta(hours=24),
        "warn_at": now + timedelta(hours=18),
    }
    lead = lead or LeadFactory(score=92, temperature="hot")
    return Handoff.objects.create(lead=lead, kind=kind, assignee=assignee, **(defaults | fields))


def endpoint(url: str = "https://93.184.216.34/hook", **fields) -> WebhookEndpoint:
    # Created directly, as a migration or an old row would be: sending checks again.
    return WebhookEndpoint.objects.create(
        name=fields.pop("name", "Slack #leads"), url=url, **fields
    )


def deliveries(**filters) -> list[Delivery]:
    return list(Delivery.objects.filter(**filters).order_by("channel", "target"))


# --- notify: who gets what ---------------------------------------------------------------


@pytest.mark.django_db
def test_notify_writes_one_notification_per_recipient_and_their_deliveries(settings):
    settings.SITE_URL = "https://leads.example.com"
    alice, bob = make_user("alice"), make_user("bob", email="")
    lead = LeadFactory(last_name="佐藤", first_name="花子", score=92, temperature="hot")
    lead.account.name = "株式会社サンプル"
    lead.account.save()
    handoff = make_handoff(lead=lead, assignee=alice)
    hook = endpoint()

    notify(MQL, {handoff.pk: [alice.pk, bob.pk]})

    rows = list(Notification.objects.order_by("recipient__username"))
    assert [(n.recipient, n.kind, n.event_key) for n in rows] == [
        (alice, MQL, f"mql_assigned:{handoff.pk}"),
        (bob, MQL, f"mql_assigned:{handoff.pk}"),
    ]
    assert rows[0].lead_id == lead.pk and rows[0].handoff_id == handoff.pk
    assert rows[0].title == "New MQL: 佐藤 花子 (株式会社サンプル)"
    assert "Score 92 (Hot)." in rows[0].body and "First contact due by" in rows[0].body

    # Bob has no email address: an in-app notification only.
    email, webhook = deliveries()
    assert (email.channel, email.target, email.notification) == (
        "email",
        "alice@example.jp",
        rows[0],
    )
    assert email.payload["subject"] == rows[0].title
    assert f"https://leads.example.com/leads/{lead.pk}/" in email.payload["body"]
    assert (webhook.channel, webhook.endpoint, webhook.target) == (
        "webhook",
        hook,
        f"webhook:{hook.pk}",
    )
    assert webhook.payload["text"].startswith("*New MQL: 佐藤 花子 (株式会社サンプル)*\n")
    assert f"<https://leads.example.com/leads/{lead.pk}/|Open the lead>" in webhook.payload["text"]
    assert {d.status for d in (email, webhook)} == {"pending"}


@pytest.mark.django_db
def test_webhooks_get_only_the_kinds_they_asked_for():
    handoff = make_handoff()
    every = endpoint(name="all")
    breaches = endpoint(name="breaches", url="https://93.184.216.35/h", kinds=["sla_breached"])
    endpoint(name="off", url="https://93.184.216.36/h", active=False)

    notify(MQL, {handoff.pk: []})
    notify(NotificationKind.SLA_BREACHED, {handoff.pk: []})

    posted = {(d.event_key.split(":")[0], d.endpoint.name) for d in deliveries(channel="webhook")}
    assert posted == {
        ("mql_assigned", every.name),
        ("sla_breached", every.name),
        ("sla_breached", breaches.name),
    }


@pytest.mark.django_db
def test_a_retried_caller_notifies_nobody_twice(django_capture_on_commit_callbacks):
    alice = make_user("alice")
    handoff = make_handoff(assignee=alice)
    endpoint()

    with django_capture_on_commit_callbacks() as first:
        notify(MQL, {handoff.pk: [alice.pk]})
    with django_capture_on_commit_callbacks() as again:
        notify(MQL, {handoff.pk: [alice.pk]})

    assert Notification.objects.count() == 1
    assert Delivery.objects.count() == 2
    assert len(first) == 1 and again == []  # nothing new, nothing enqueued


@pytest.mark.django_db
def test_a_new_recipient_of_a_known_event_is_told_without_a_second_post():
    alice, carol = make_user("alice"), make_user("carol")
    handoff = make_handoff(assignee=alice)
    endpoint()
    notify(MQL, {handoff.pk: [alice.pk]})

    notify(MQL, {handoff.pk: [carol.pk]})  # reassigned to Carol

    assert sorted(Notification.objects.values_list("recipient__username", flat=True)) == [
        "alice",
        "carol",
    ]
    assert sorted(d.target for d in deliveries()) == [
        "alice@example.jp",
        "carol@example.jp",
        f"webhook:{WebhookEndpoint.objects.get().pk}",
    ]


@pytest.mark.django_db
def test_inactive_unknown_and_missing_recipients_and_handoffs_are_skipped():
    alice, gone = make_user("alice"), make_user("gone", is_active=False)
    handoff = make_handoff()

    notify(MQL, {handoff.pk: [alice.pk, gone.pk, None, 999_999], 888_888: [alice.pk]})

    assert list(Notification.objects.values_list("recipient__username", flat=True)) == ["alice"]


@pytest.mark.django_db
def test_an_unknown_kind_is_a_programming_error():
    with pytest.raises(ValueError):
        notify("lead_exploded", {make_handoff().pk: []})


@pytest.mark.django_db
def test_notify_is_part_of_the_callers_transaction(django_capture_on_commit_callbacks):
    alice = make_user("alice")
    handoff = make_handoff(assignee=alice)

    with (
        django_capture_on_commit_callbacks() as callbacks,
        pytest.raises(RuntimeError),
        transaction.atomic(),
    ):
        notify(MQL, {handoff.pk: [alice.pk]})
        raise RuntimeError("the caller failed")

    assert Notification.objects.count() == Delivery.objects.count() == 0
    assert callbacks == []


@pytest.mark.django_db
def test_notify_is_set_based_a_few_queries_whatever_the_count(django_assert_num_queries):
    team = [make_user(f"is{i}") for i in range(3)]
    endpoint()
    one = [make_handoff()]
    many = [make_handoff() for _ in range(150)]

    with django_assert_num_queries(3):
        notify(MQL, {h.pk: [u.pk for u in team] for h in one})
    with django_assert_num_queries(3):
        notify(MQL, {h.pk: [u.pk for u in team] for h in many})

    assert Notification.objects.count() == 151 * 3
    assert Delivery.objects.filter(channel="email").count() == 151 * 3
    assert Delivery.objects.filter(channel="webhook").count() == 151


@pytest.mark.django_db
def test_every_kind_reads_well(settings):
    settings.SITE_URL = "http://127.0.0.1:8000"
    rep, sales = make_user("alice"), make_user("sam", "sales")
    first_contact = make_handoff(assignee=rep)
    unassigned = make_handoff()
    acceptance = make_handoff(kind=HandoffKind.SALES, assignee=sales)

    notify(NotificationKind.SLA_WARNING, {first_contact.pk: [rep.pk]})
    notify(NotificationKind.SLA_BREACHED, {unassigned.pk: [rep.pk]})
    notify(NotificationKind.SQL_ASSIGNED, {acceptance.pk: [sales.pk]})
    notify(
        NotificationKind.SQL_REJECTED,
        {acceptance.pk: [rep.pk]},
        extra={"reason": "no_budget", "comment": "来期に再検討"},
    )

    texts = {n.kind: (n.title, n.body) for n in Notification.objects.all()}
    assert texts["sla_warning"][0].startswith("SLA warning: ")
    assert "First contact due by" in texts["sla_warning"][1]
    assert "Assigned to alice." in texts["sla_warning"][1]
    assert texts["sla_breached"][0].startswith("SLA breached: ")
    assert "The deadline was" in texts["sla_breached"][1]
    assert "Nobody is assigned yet." in texts["sla_breached"][1]
    assert texts["sql_assigned"][0].startswith("New SQL for you: ")
    assert "Accept or reject by" in texts["sql_assigned"][1]
    assert texts["sql_rejected"][0].startswith("SQL rejected: ")
    assert "Reason: No budget" in texts["sql_rejected"][1]
    assert "Comment: 来期に再検討" in texts["sql_rejected"][1]


@pytest.mark.django_db
def test_script_in_a_comment_stays_text_and_is_escaped_for_slack():
    rep = make_user("alice")
    handoff = make_handoff(kind=HandoffKind.SALES)
    endpoint()
    comment = '<script>alert("x")</script> & <b>'

    notify(
        NotificationKind.SQL_REJECTED,
        {handoff.pk: [rep.pk]},
        extra={"reason": "other", "comment": comment},
    )

    note = Notification.objects.get()
    email, webhook = deliveries()
    # Plain text: the page templates escape it; a text/plain mail shows it as text.
    assert comment in note.body and comment in email.payload["body"]
    text = webhook.payload["text"]
    assert "<script>" not in text and "<b>" not in text
    assert '&lt;script&gt;alert("x")&lt;/script&gt; &amp; &lt;b&gt;' in text


@pytest.mark.django_db
def test_a_lead_name_with_line_breaks_makes_a_one_line_subject():
    rep = make_user("alice")
    handoff = make_handoff(
        lead=LeadFactory(last_name="山田\r\nBcc: x@evil.test", first_name="太郎")
    )

    notify(MQL, {handoff.pk: [rep.pk]})

    (email,) = deliveries(channel="email")
    assert "\n" not in email.payload["subject"] and "\r" not in email.payload["subject"]
    assert deliver(email.pk) == "sent"
    assert mail.outbox[0].to == ["alice@example.jp"] and mail.outbox[0].bcc == []


@pytest.mark.django_db
def test_texts_are_written_in_the_sites_default_language(settings):
    from django.conf import settings as django_settings

    from leadops.i18n_compile import compile_catalogues

    compile_catalogues()
    settings.LOCALE_PATHS = list(django_settings.LOCALE_PATHS)  # reload catalogues
    settings.LANGUAGE_CODE = "ja"
    rep = make_user("alice")
    handoff = make_handoff(lead=LeadFactory(score=92, temperature="hot"))

    notify(MQL, {handoff.pk: [rep.pk]})

    assert "ホット" in Notification.objects.get().body


# --- the bell ----------------------------------------------------------------------------


@pytest.mark.django_db
def test_unread_count_recent_and_mark_read():
    alice, bob = make_user("alice"), make_user("bob")
    handoffs = [make_handoff() for _ in range(3)]
    for handoff in handoffs:
        notify(MQL, {handoff.pk: [alice.pk, bob.pk]})
    bobs = Notification.objects.filter(recipient=bob).first()

    assert unread_count(alice) == 3
    recent = recent_notifications(alice, limit=2)
    assert [n.handoff_id for n in recent] == [handoffs[2].pk, handoffs[1].pk]

    # Someone else's id is ignored.
    assert mark_notifications_read(alice, ids=[recent[0].pk, bobs.pk]) == 1
    assert unread_count(alice) == 2 and unread_count(bob) == 3
    assert mark_notifications_read(alice) == 2
    assert unread_count(alice) == 0
    assert mark_notifications_read(alice) == 0


def test_an_anonymous_user_has_no_notifications():
    from django.contrib.auth.models import AnonymousUser

    anonymous = AnonymousUser()
    assert unread_count(anonymous) == 0
    assert recent_notifications(anonymous) == []
    assert mark_notifications_read(anonymous) == 0


# --- delivery: email ---------------------------------------------------------------------


@pytest.fixture
def mql_for_alice(db):
    alice = make_user("alice")
    handoff = make_handoff(assignee=alice)
    notify(MQL, {handoff.pk: [alice.pk]})
    return Delivery.objects.get(channel="email")


@pytest.mark.django_db
def test_an_email_is_sent_once_from_the_notification_sender(settings, mql_for_alice):
    settings.NOTIFICATION_EMAIL_FROM = "LeadOps <alerts@example.jp>"

    assert deliver(mql_for_alice.pk) == "sent"
    assert deliver(mql_for_alice.pk) == "sent"  # a retried task finds it sent

    (message,) = mail.outbox
    assert message.to == ["alice@example.jp"]
    assert message.from_email == "LeadOps <alerts@example.jp>"
    assert message.subject == mql_for_alice.payload["subject"]
    assert message.body == mql_for_alice.payload["body"]
    delivery = Delivery.objects.get(pk=mql_for_alice.pk)
    assert (delivery.status, delivery.attempts, delivery.last_error) == ("sent", 1, "")
    assert delivery.sent_at is not None and delivery.next_attempt_at is None


@pytest.mark.django_db
def test_an_unreachable_mail_server_is_retried_later(settings, mql_for_alice):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        closed_port = sock.getsockname()[1]
    settings.EMAIL_BACKEND = "django.core.mail.backends.smtp.EmailBackend"
    settings.EMAIL_HOST, settings.EMAIL_PORT = "127.0.0.1", closed_port
    before = timezone.now()

    assert deliver(mql_for_alice.pk) == "pending"

    delivery = Delivery.objects.get(pk=mql_for_alice.pk)
    assert delivery.attempts == 1 and "Could not send the email" in delivery.last_error
    assert delivery.next_attempt_at >= before + timedelta(seconds=60)


# --- delivery: webhooks ------------------------------------------------------------------


@pytest.fixture
def hook_delivery(db, allow_private, webhook_server) -> Delivery:
    endpoint(url=webhook_server.url())
    notify(MQL, {make_handoff().pk: []})
    return Delivery.objects.get(channel="webhook")


@pytest.mark.django_db
def test_a_webhook_is_posted_once(hook_delivery, webhook_server):
    assert deliver(hook_delivery.pk) == "sent"
    assert deliver(hook_delivery.pk) == "sent"
    tasks.deliver_pending([hook_delivery.pk])  # the task, retried

    (request,) = webhook_server.requests
    assert json.loads(request["body"]) == hook_delivery.payload


@pytest.mark.django_db
def test_a_500_is_retried_with_exponential_backoff_then_failed(
    settings, hook_delivery, webhook_server
):
    settings.NOTIFICATION_MAX_ATTEMPTS = 3
    settings.NOTIFICATION_RETRY_BACKOFF_SECONDS = 60
    webhook_server.replies.extend([Reply(status=500, body=b"oops")] * 3)

    started = timezone.now()
    assert deliver(hook_delivery.pk) == "pending"
    first = Delivery.objects.get(pk=hook_delivery.pk)
    assert first.attempts == 1 and "HTTP 500" in first.last_error
    assert (
        started + timedelta(seconds=60)
        <= first.next_attempt_at
        <= timezone.now() + timedelta(seconds=61)
    )

    # Not due yet: nothing is sent.
    assert deliver(hook_delivery.pk) == "pending"
    assert len(webhook_server.requests) == 1

    assert deliver(hook_delivery.pk, now=first.next_attempt_at) == "pending"
    second = Delivery.objects.get(pk=hook_delivery.pk)
    assert second.attempts == 2
    assert second.next_attempt_at - timezone.now() > timedelta(seconds=110)  # 120 s: doubled

    assert deliver(hook_delivery.pk, now=second.next_attempt_at) == "failed"
    failed = Delivery.objects.get(pk=hook_delivery.pk)
    assert (failed.attempts, failed.next_attempt_at) == (3, None)
    assert len(webhook_server.requests) == 3
    assert deliver(hook_delivery.pk, now=timezone.now() + timedelta(days=1)) == "failed"
    assert len(webhook_server.requests) == 3


@pytest.mark.django_db
def test_a_429_waits_as_long_as_retry_after_says(hook_delivery, webhook_server):
    webhook_server.replies.append(Reply(status=429, headers={"Retry-After": "600"}))

    assert deliver(hook_delivery.pk) == "pending"

    delivery = Delivery.objects.get(pk=hook_delivery.pk)
    wait = delivery.next_attempt_at - timezone.now()
    assert timedelta(seconds=590) < wait <= timedelta(seconds=600)
    assert hook_delivery.pk not in due_delivery_ids(now=timezone.now() + timedelta(seconds=300))
    assert hook_delivery.pk in due_delivery_ids(now=timezone.now() + timedelta(seconds=601))


@pytest.mark.django_db
def test_a_redirect_fails_at_once_and_its_target_is_never_posted(
    hook_delivery, webhook_server, other_server
):
    webhook_server.replies.append(Reply(status=302, headers={"Location": other_server.url()}))

    assert deliver(hook_delivery.pk) == "failed"

    delivery = Delivery.objects.get(pk=hook_delivery.pk)
    assert delivery.attempts == 1 and "redirect" in delivery.last_error
    assert other_server.requests == []


@pytest.mark.django_db
def test_a_timeout_is_retried(settings, hook_delivery, webhook_server):
    settings.WEBHOOK_TIMEOUT_SECONDS = 0.3
    webhook_server.replies.append(Reply(delay=1.0))

    assert deliver(hook_delivery.pk) == "pending"
    assert "did not answer in time" in Delivery.objects.get(pk=hook_delivery.pk).last_error


@pytest.mark.django_db
def test_with_the_flag_off_a_loopback_webhook_is_refused_and_never_reached(webhook_server):
    # Saved before the check existed, or by hand: the send checks again.
    endpoint(url=webhook_server.url().replace("http://", "https://"))
    notify(MQL, {make_handoff().pk: []})
    delivery = Delivery.objects.get(channel="webhook")

    assert deliver(delivery.pk) == "failed"

    assert "127.0.0.1" in Delivery.objects.get(pk=delivery.pk).last_error
    assert webhook_server.requests == []


@pytest.mark.django_db
def test_a_turned_off_webhook_is_not_posted(hook_delivery, webhook_server):
    WebhookEndpoint.objects.update(active=False)

    assert deliver(hook_delivery.pk) == "failed"
    assert webhook_server.requests == []


@pytest.mark.django_db
def test_a_delivery_stuck_in_sending_is_taken_over_after_its_lease(hook_delivery, webhook_server):
    now = timezone.now()
    # A worker claimed it and died: its lease is still running …
    Delivery.objects.filter(pk=hook_delivery.pk).update(
        status="sending", attempts=1, next_attempt_at=now + timedelta(minutes=4)
    )
    assert deliver(hook_delivery.pk) == "sending"
    assert hook_delivery.pk not in due_delivery_ids(now=now)
    assert webhook_server.requests == []

    # … and once it ran out, the retry scan and a worker take it over.
    later = now + timedelta(minutes=5)
    assert hook_delivery.pk in due_delivery_ids(now=later)
    assert deliver(hook_delivery.pk, now=later) == "sent"
    assert Delivery.objects.get(pk=hook_delivery.pk).attempts == 2
    assert len(webhook_server.requests) == 1


@pytest.mark.django_db
def test_a_delivery_interrupted_on_its_last_attempt_is_failed_not_resent(
    settings, hook_delivery, webhook_server
):
    settings.NOTIFICATION_MAX_ATTEMPTS = 2
    past = timezone.now() - timedelta(seconds=1)
    Delivery.objects.filter(pk=hook_delivery.pk).update(
        status="sending", attempts=2, next_attempt_at=past
    )

    assert deliver(hook_delivery.pk) == "failed"
    assert webhook_server.requests == []


@pytest.mark.django_db(transaction=True)
def test_two_workers_delivering_at_once_post_once(allow_private, webhook_server):
    endpoint(url=webhook_server.url())
    notify(MQL, {make_handoff().pk: []})
    delivery = Delivery.objects.get(channel="webhook")
    webhook_server.replies.append(Reply(delay=1.0))
    start = threading.Barrier(2)
    results: list[str] = []

    def worker() -> None:
        try:
            start.wait(timeout=10)
            results.append(deliver(delivery.pk))
        finally:
            connection.close()

    threads = [threading.Thread(target=worker) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)

    assert len(webhook_server.requests) == 1
    # The loser finds it being sent (or, on a slow machine, already sent).
    assert "sent" in results and set(results) <= {"sending", "sent"}
    assert Delivery.objects.get(pk=delivery.pk).status == "sent"


def test_retry_delays_double_and_are_capped(settings):
    settings.NOTIFICATION_RETRY_BACKOFF_SECONDS = 60
    assert [retry_delay(n).total_seconds() for n in (1, 2, 3, 4)] == [60, 120, 240, 480]
    assert retry_delay(30) == timedelta(hours=6)
    assert retry_delay(1, retry_after=5) == timedelta(seconds=5)
    assert retry_delay(1, retry_after=0) == timedelta(seconds=1)
    assert retry_delay(1, retry_after=10**9) == timedelta(hours=6)


# --- retry now, the retry scan, enqueueing -------------------------------------------------


@pytest.mark.django_db
def test_retry_now_gives_a_failed_delivery_a_fresh_start(
    hook_delivery, webhook_server, django_capture_on_commit_callbacks
):
    Delivery.objects.filter(pk=hook_delivery.pk).update(
        status="failed", attempts=6, last_error="HTTP 500", next_attempt_at=None
    )

    with django_capture_on_commit_callbacks() as callbacks:
        retry_delivery(hook_delivery.pk)

    delivery = Delivery.objects.get(pk=hook_delivery.pk)
    assert (delivery.status, delivery.attempts) == ("pending", 0)
    assert len(callbacks) == 1
    assert deliver(delivery.pk) == "sent"
    assert len(webhook_server.requests) == 1


@pytest.mark.django_db
def test_retry_now_leaves_deliveries_that_did_not_fail_alone(
    mql_for_alice, django_capture_on_commit_callbacks
):
    deliver(mql_for_alice.pk)

    with django_capture_on_commit_callbacks() as callbacks:
        retry_delivery(mql_for_alice.pk)

    assert Delivery.objects.get(pk=mql_for_alice.pk).status == "sent"
    assert callbacks == []
    assert len(mail.outbox) == 1


@pytest.mark.django_db
def test_the_retry_scan_finds_due_and_stuck_deliveries_only():
    notify(MQL, {make_handoff().pk: [make_user(f"u{i}").pk for i in range(6)]})
    ids = [d.pk for d in deliveries()]
    now = timezone.now()
    states = [
        ("pending", now - timedelta(seconds=1)),  # due retry
        ("pending", now + timedelta(minutes=1)),  # waiting
        ("sending", now - timedelta(seconds=1)),  # lease ran out
        ("sending", now + timedelta(minutes=4)),  # being sent
        ("sent", None),
        ("failed", None),
    ]
    for pk, (status, at) in zip(ids, states, strict=True):
        Delivery.objects.filter(pk=pk).update(status=status, next_attempt_at=at)

    assert sorted(due_delivery_ids(now=now)) == sorted([ids[0], ids[2]])


@pytest.fixture
def celery_queue():
    client = redis.Redis.from_url(redis_url())
    queue = app.conf.task_default_queue
    client.delete(queue)
    yield lambda: [json.loads(m) for m in client.lrange(queue, 0, -1)]
    client.delete(queue)


@pytest.mark.django_db
def test_deliveries_are_enqueued_after_commit_in_batches(
    celery_queue, django_capture_on_commit_callbacks
):
    team = [make_user(f"is{i}").pk for i in range(3)]
    handoffs = [make_handoff() for _ in range(40)]

    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        notify(MQL, {h.pk: team for h in handoffs})
    assert celery_queue() == []  # nothing before the commit
    for callback in callbacks:
        callback()

    messages = celery_queue()
    assert {m["headers"]["task"] for m in messages} == {"handoff.tasks.deliver_pending"}
    assert len(messages) == 2  # 120 deliveries in batches of 100
    # The body is [args, kwargs, embed]; args is [delivery_ids].
    enqueued = [pk for m in messages for pk in json.loads(_body(m))[0][0]]
    assert sorted(enqueued) == sorted(Delivery.objects.values_list("pk", flat=True))


def _body(message: dict) -> str:
    import base64

    return base64.b64decode(message["body"]).decode()


@pytest.mark.django_db
def test_a_broker_outage_loses_nothing(monkeypatch, mql_for_alice, caplog):
    from kombu.exceptions import OperationalError

    def broker_down(*args, **kwargs):
        raise OperationalError("Error 111 connecting to redis")

    monkeypatch.setattr(tasks.deliver_pending, "delay", broker_down)

    enqueue_deliveries([mql_for_alice.pk])  # logs, does not raise

    assert "Could not enqueue" in caplog.text
    assert mql_for_alice.pk in due_delivery_ids()


@pytest.mark.django_db
def test_the_beat_task_enqueues_due_deliveries(celery_queue, mql_for_alice):
    assert tasks.retry_due_deliveries() == 1
    (message,) = celery_queue()
    assert message["headers"]["task"] == "handoff.tasks.deliver_pending"


def test_the_beat_schedule_runs_the_monitor_and_the_retry_scan_every_minute():
    schedule = {entry["task"]: entry["schedule"] for entry in tasks.BEAT_SCHEDULE.values()}
    assert schedule == {
        "handoff.tasks.check_slas": 60.0,
        "handoff.tasks.retry_due_deliveries": 60.0,
    }


@pytest.mark.django_db
def test_the_sla_task_runs_the_monitor(django_capture_on_commit_callbacks):
    rep = make_user("alice")
    now = timezone.now()
    handoff = make_handoff(
        assignee=rep, warn_at=now - timedelta(minutes=1), due_at=now + timedelta(hours=2)
    )

    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        result = tasks.check_slas()

    assert result["warned"] == 1
    assert Handoff.objects.get(pk=handoff.pk).sla_state == SlaState.WARNING
    # The monitor hands the announcement to a task; run it as the worker would.
    [announce] = [c for c in callbacks if getattr(c, "func", None) is not None]
    assert announce.args == (NotificationKind.SLA_WARNING, [handoff.pk])
    tasks.announce_sla_change(*announce.args)
    note = Notification.objects.get()
    assert (note.kind, note.recipient) == (NotificationKind.SLA_WARNING, rep)


# --- end to end: a real Celery worker ------------------------------------------------------


@pytest.fixture
def worker(monkeypatch, request):
    # The worker's mails go to its log (console backend), where the test counts them.
    monkeypatch.setenv("EMAIL_BACKEND", "django.core.mail.backends.console.EmailBackend")
    return request.getfixturevalue("celery_worker_process")


def _wait_for(condition, *, timeout: float = 60.0, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.2)
    pytest.fail(f"timed out waiting for {what}")


@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
def test_a_worker_sends_each_notification_once_even_when_tasks_run_again(worker, webhook_server):
    alice = make_user("alice")
    lead = LeadFactory(last_name="Smith", first_name="Anna", account__name="Acme KK")
    handoff = make_handoff(lead=lead, assignee=alice)
    # The worker runs without the test-only flag: a loopback webhook must be refused there.
    endpoint(url=webhook_server.url().replace("http://", "https://"))

    with transaction.atomic():
        notify(MQL, {handoff.pk: [alice.pk]})

    def settled() -> bool:
        return not Delivery.objects.filter(status__in=["pending", "sending"]).exists()

    _wait_for(settled, what="the deliveries\n" + worker.log_tail())
    email = Delivery.objects.get(channel=DeliveryChannel.EMAIL)
    webhook = Delivery.objects.get(channel=DeliveryChannel.WEBHOOK)
    assert email.status == DeliveryStatus.SENT
    assert webhook.status == DeliveryStatus.FAILED and "127.0.0.1" in webhook.last_error
    assert webhook_server.requests == []

    # The same task delivered again (a redelivery after a lost ack, a second beat).
    tasks.deliver_pending.delay([email.pk, webhook.pk])
    tasks.deliver_pending.delay([email.pk])
    task = "handoff.tasks.deliver_pending"
    _wait_for(lambda: worker.task_lines(task, "succeeded") >= 3, what="the repeated tasks")

    assert worker.log().count("Subject: New MQL: Smith Anna (Acme KK)") == 1
    assert "To: alice@example.jp" in worker.log()
    assert webhook_server.requests == []
