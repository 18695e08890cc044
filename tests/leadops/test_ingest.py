"""The event ingest service: validation, idempotency, set-based writes, the commit hook."""

from __future__ import annotations

import json
import logging
import threading
from datetime import UTC, datetime, timedelta

import pytest
from django.db import connection
from django.utils import timezone

from leadops import ingest
from leadops.ingest import MAX_PROPERTIES_BYTES, ingest_events, validate_event
from leadops.models import Activity, Lead
from scoring.models import ScoringModel
from scoring.services import rescore_leads
from tests.factories import ActivityFactory, LeadFactory

pytestmark = pytest.mark.django_db


def event(event_id: str = "ev-1", **fields) -> dict:
    return {"event_id": event_id, "email": "taro@example.jp", "type": "page_view", **fields}


def errors_of(raw: object) -> dict:
    _event, errors = validate_event(raw, index=0, now=timezone.now())
    return errors


# --- validation -------------------------------------------------------------------------


def test_valid_event_is_cleaned():
    cleaned, errors = validate_event(
        event(email=" Taro@Example.JP", occurred_at="2026-01-01T09:00:00+09:00"),
        index=3,
        now=timezone.now(),
    )
    assert errors == {}
    assert cleaned.index == 3
    assert cleaned.email == "taro@example.jp"
    assert cleaned.occurred_at == datetime(2026, 1, 1, tzinfo=UTC)
    assert cleaned.properties_json == "{}"


def test_occurred_at_without_offset_is_in_the_workspace_time_zone():
    cleaned, _ = validate_event(
        event(occurred_at="2026-01-01T09:00:00"), index=0, now=timezone.now()
    )
    assert cleaned.occurred_at == datetime(2026, 1, 1, tzinfo=UTC)  # Asia/Tokyo


def test_occurred_at_defaults_to_now():
    now = timezone.now()
    cleaned, _ = validate_event(event(), index=0, now=now)
    assert cleaned.occurred_at == now


@pytest.mark.parametrize(
    ("value", "ok"),
    [
        ("2000-01-01T00:00:00Z", True),
        ("1999-12-31T23:59:59Z", False),
        ("+23:00", False),
        (1735689600, False),
        ("2026-02-30T00:00:00Z", False),
    ],
)
def test_occurred_at_range_and_format(value, ok):
    assert ("occurred_at" not in errors_of(event(occurred_at=value))) is ok


def test_occurred_at_may_be_up_to_a_day_ahead():
    now = timezone.now()
    _ok, errors = validate_event(
        event(occurred_at=(now + timedelta(hours=23)).isoformat()), index=0, now=now
    )
    assert errors == {}
    _bad, errors = validate_event(
        event(occurred_at=(now + timedelta(hours=25)).isoformat()), index=0, now=now
    )
    assert "occurred_at" in errors


def nested(depth: int) -> dict:
    value: dict = {}
    for _ in range(depth - 1):
        value = {"k": value}
    return value


def test_properties_depth_limit_is_five():
    assert errors_of(event(properties=nested(5))) == {}
    assert "properties" in errors_of(event(properties=nested(6)))
    assert "properties" in errors_of(event(properties={"a": [[[[["deep"]]]]]}))


def test_properties_size_limit_is_16_kb_of_json():
    overhead = len('{"b":""}')
    assert errors_of(event(properties={"b": "x" * (MAX_PROPERTIES_BYTES - overhead)})) == {}
    too_big = {"b": "x" * (MAX_PROPERTIES_BYTES - overhead + 1)}
    assert "properties" in errors_of(event(properties=too_big))
    # bytes, not characters: 3 bytes per kana
    assert "properties" in errors_of(event(properties={"b": "あ" * 6000}))


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"properties": {"a": "nul\x00"}}, "properties"),
        ({"properties": {"nul\x00": 1}}, "properties"),
        ({"properties": {"a": "\ud800"}}, "properties"),
        ({"event_id": "id\x00"}, "event_id"),
        ({"event_id": "   "}, "event_id"),
        ({"event_id": 17}, "event_id"),
        ({"source": "\ud800"}, "source"),
        ({"source": "s" * 101}, "source"),
        ({"type": ["page_view"]}, "type"),
        ({"email": None, "lead_id": True}, "lead_id"),
        ({"email": None, "lead_id": -1}, "lead_id"),
        ({"email": None, "lead_id": 2**63}, "lead_id"),
        ({"email": None}, "email"),
        ({"lead_id": 5}, "lead_id"),
    ],
)
def test_invalid_values(fields, field):
    assert field in errors_of(event(**fields))


def test_missing_fields_are_each_reported():
    errors = errors_of({})
    assert set(errors) == {"event_id", "email", "type"}


EMAIL_EDGE_CASES = [
    "taro@example.jp",
    "a@b.co",
    "a@b.c",
    "first.last+tag@sub.example.co.jp",
    "o'brien@example.ie",
    "{weird}|~!#$%&'*+/=?^_`-@example.com",
    ".taro@example.jp",
    "taro.@example.jp",
    "ta..ro@example.jp",
    "taro@-example.jp",
    "taro@example-.jp",
    "taro@example.-jp",
    "taro@example.jp.",
    "taro@example..jp",
    "taro@localhost",
    "taro@[127.0.0.1]",
    "taro@[::1]",
    "taro@example.xn--p1ai",
    "taro@例え.jp",
    "太郎@example.jp",
    '"taro jiro"@example.jp',
    "taro@example.j1",
    "taro@123.456",
    "taro@" + "a" * 63 + ".jp",
    "taro@" + "a" * 64 + ".jp",
    "taro@example." + "a" * 63,
    "taro@example." + "a" * 64,
    "taro@@example.jp",
    "taro",
    "",
    "@example.jp",
    "taro@",
    "a" * 240 + "@example.jp",
]


def _random_addresses(count: int) -> list[str]:
    import random

    rng = random.Random(20261121)
    local_chars = "abcz09.-_+'!{}\"@ é"
    domain_chars = "abz09.-_ é"
    addresses = []
    for _ in range(count):
        local = "".join(rng.choice(local_chars) for _ in range(rng.randint(0, 6)))
        domain = "".join(rng.choice(domain_chars) for _ in range(rng.randint(0, 9)))
        addresses.append(f"{local}@{domain}")
    return addresses


def test_the_fast_email_check_gives_djangos_verdict():
    from django.core.exceptions import ValidationError
    from django.core.validators import validate_email

    for address in EMAIL_EDGE_CASES + _random_addresses(20_000):
        try:
            validate_email(address)
            django_accepts = True
        except ValidationError:
            django_accepts = False
        if ingest._PLAIN_EMAIL.fullmatch(address):
            assert django_accepts, address  # the fast pattern accepts only what Django does
        assert ingest.is_valid_email(address) == django_accepts, address
    assert ingest._PLAIN_EMAIL.fullmatch("first.last+tag@sub.example.co.jp")


@pytest.mark.parametrize(
    "values",
    [
        [],
        [""],
        ["plain", "two words", "comma,brace{}", 'quote"inside', "back\\slash", '\\"'],
        ['{"url":"https://example.jp/?q=\\"a\\""}', "NULL", "null", "日本語"],
    ],
)
def test_text_array_round_trips_through_postgresql(values):
    with connection.cursor() as cursor:
        cursor.execute("SELECT %s::text[]", [ingest.text_array(values)])
        assert cursor.fetchone()[0] == values


def test_text_array_refuses_a_nul_rather_than_splitting_the_element():
    with pytest.raises(ValueError, match="NUL"):
        ingest.text_array(["a\x00b", "c"])


def test_fingerprint_is_sha256_of_canonical_json():
    import hashlib

    properties = {"z": 1, "a": {"y": "ü", "b": [1, 2]}}
    cleaned, _ = validate_event(
        event(occurred_at="2026-01-01T09:00:00+09:00", properties=properties),
        index=0,
        now=timezone.now(),
    )
    canonical = json.dumps(
        {
            "lead": "taro@example.jp",
            "type": "page_view",
            "occurred_at": "2026-01-01T00:00:00+00:00",
            "properties": properties,
        },
        sort_keys=True,
        separators=(",", ":"),
        ensure_ascii=False,
    )
    assert cleaned.fingerprint == hashlib.sha256(canonical.encode()).hexdigest()


# --- storing ----------------------------------------------------------------------------


def test_batch_stores_valid_events_and_reports_errors_by_index():
    result = ingest_events([event("a"), {"type": "x"}, event("b", email="b@example.jp")])
    assert (result.accepted, result.duplicates) == (2, 0)
    assert [error["index"] for error in result.errors] == [1]
    assert Lead.objects.count() == 2
    assert set(Activity.objects.values_list("event_id", flat=True)) == {"a", "b"}


def test_events_for_an_existing_lead_by_email_or_id():
    lead = LeadFactory(email="taro@example.jp")
    result = ingest_events([event("a"), event("b", email=None, lead_id=lead.id)])
    assert result.accepted == 2
    assert result.lead_ids == {lead.id}
    assert Lead.objects.count() == 1
    assert lead.activities.count() == 2


def test_unknown_lead_id_is_an_item_error():
    result = ingest_events([event("a", email=None, lead_id=987654321), event("b")])
    assert result.accepted == 1
    assert result.errors[0]["index"] == 0
    assert "lead_id" in result.errors[0]["errors"]


def test_same_id_same_body_is_a_duplicate_even_without_occurred_at():
    ingest_events([event("a", properties={"url": "/x"})])
    result = ingest_events([event("a", properties={"url": "/x"})])
    assert (result.accepted, result.duplicates, result.errors) == (0, 1, [])


def test_same_instant_in_another_offset_is_the_same_body():
    ingest_events([event("a", occurred_at="2026-01-01T09:00:00+09:00")])
    result = ingest_events([event("a", occurred_at="2026-01-01T00:00:00Z")])
    assert result.duplicates == 1


def test_same_id_with_another_body_is_an_error_and_keeps_the_first():
    ingest_events([event("a", properties={"url": "/x"})])
    result = ingest_events([event("b"), event("a", properties={"url": "/y"})])
    assert result.accepted == 1
    assert result.errors[0]["index"] == 1
    assert "event_id" in result.errors[0]["errors"]
    assert Activity.objects.get(event_id="a").properties == {"url": "/x"}


def test_repeats_inside_one_batch():
    result = ingest_events([event("a"), event("a"), event("a", type="email_open")])
    assert (result.accepted, result.duplicates) == (1, 1)
    assert [error["index"] for error in result.errors] == [2]


def test_a_reused_id_does_not_leave_a_new_lead_behind():
    ingest_events([event("a")])
    result = ingest_events([event("a", email="someone-new@example.jp")])
    assert result.errors and result.accepted == 0
    assert not Lead.objects.filter(email="someone-new@example.jp").exists()


def test_last_activity_at_only_moves_forward():
    # Ingest leaves the lead row alone; the rescore that follows the events writes it.
    lead = LeadFactory(email="taro@example.jp", last_activity_at=datetime(2026, 3, 1, tzinfo=UTC))
    rescore_leads(ingest_events([event("old", occurred_at="2026-02-01T00:00:00Z")]).lead_ids)
    lead.refresh_from_db()
    assert lead.last_activity_at == datetime(2026, 3, 1, tzinfo=UTC)
    result = ingest_events(
        [
            event("n1", occurred_at="2026-03-05T00:00:00Z"),
            event("n2", occurred_at="2026-03-04T00:00:00Z"),
        ]
    )
    lead.refresh_from_db()
    assert lead.last_activity_at == datetime(2026, 3, 1, tzinfo=UTC)
    rescore_leads(result.lead_ids)
    lead.refresh_from_db()
    assert lead.last_activity_at == datetime(2026, 3, 5, tzinfo=UTC)


def test_last_activity_at_moves_without_an_active_model():
    lead = LeadFactory(email="taro@example.jp", last_activity_at=None)
    ScoringModel.objects.filter(status="active").update(status="archived")
    rescore_leads(ingest_events([event("a", occurred_at="2026-03-05T00:00:00Z")]).lead_ids)
    lead.refresh_from_db()
    assert lead.last_activity_at == datetime(2026, 3, 5, tzinfo=UTC)


def test_unsubscribe_sets_the_flag_and_other_events_do_not():
    other = LeadFactory(email="other@example.jp")
    ingest_events([event("u", type="unsubscribe"), event("p", email="other@example.jp")])
    assert Lead.objects.get(email="taro@example.jp").unsubscribed is True
    other.refresh_from_db()
    assert other.unsubscribed is False


def test_script_tags_are_data():
    ingest_events([event(properties={"title": "<script>x</script>"})])
    assert Activity.objects.get().properties == {"title": "<script>x</script>"}


def test_more_than_1000_items_is_refused():
    with pytest.raises(ValueError, match="1000"):
        ingest_events([event(f"e{i}") for i in range(1001)])


def test_hook_runs_after_commit_with_the_touched_leads(
    monkeypatch, django_capture_on_commit_callbacks
):
    calls: list[frozenset[int]] = []
    monkeypatch.setattr(ingest, "_after_events_committed", calls.append)
    known = LeadFactory(email="known@example.jp")
    with django_capture_on_commit_callbacks(execute=True) as callbacks:
        ingest_events([event("a"), event("b", email="known@example.jp"), {"bad": 1}])
    assert len(callbacks) == 1
    new = Lead.objects.get(email="taro@example.jp")
    assert calls == [frozenset({known.id, new.id})]


@pytest.mark.django_db(transaction=True)
def test_hook_runs_after_a_single_event_in_autocommit(monkeypatch):
    calls: list[frozenset[int]] = []
    monkeypatch.setattr(ingest, "_after_events_committed", calls.append)
    ingest_events([event("a")])
    assert calls == [frozenset({Lead.objects.get(email="taro@example.jp").id})]
    ingest_events([event("a")])  # a duplicate touches nothing
    assert len(calls) == 1


def test_no_hook_when_nothing_was_accepted(monkeypatch, django_capture_on_commit_callbacks):
    with django_capture_on_commit_callbacks() as callbacks:
        ingest_events([{"bad": 1}])
    assert callbacks == []


def test_a_batch_of_1000_takes_a_fixed_number_of_queries(django_assert_num_queries):
    LeadFactory.create_batch(3)
    items = [event(f"e{i}", email=f"lead{i % 300}@example.jp") for i in range(1000)]
    # savepoint, read the leads, create the 297 missing, insert activities, release: no
    # lead row is rewritten
    with django_assert_num_queries(5):
        result = ingest_events(items)
    assert result.accepted == 1000
    # known leads only: no create
    more = [event(f"f{i}", email=f"lead{i % 300}@example.jp") for i in range(1000)]
    with django_assert_num_queries(4):
        assert ingest_events(more).accepted == 1000
    # resent: + the fingerprints of the conflicting ids
    with django_assert_num_queries(5):
        assert ingest_events(items).duplicates == 1000
    # unsubscribes: + one update setting the flag
    leaving = [event(f"u{i}", type="unsubscribe", email=f"lead{i}@example.jp") for i in range(9)]
    with django_assert_num_queries(5):
        assert ingest_events(leaving).accepted == 9
    assert Activity.objects.count() == 2009
    assert Lead.objects.filter(unsubscribed=True).count() == 9


def test_existing_activity_rows_from_elsewhere_count_by_fingerprint():
    ActivityFactory(event_id="from-elsewhere", fingerprint="0" * 64)
    result = ingest_events([event("from-elsewhere")])
    assert "event_id" in result.errors[0]["errors"]


# --- concurrency ------------------------------------------------------------------------


def run_in_threads(*targets) -> list[BaseException]:
    failures: list[BaseException] = []
    barrier = threading.Barrier(len(targets))

    def run(target) -> None:
        try:
            barrier.wait()
            target()
        except BaseException as exc:  # reported to the test
            failures.append(exc)
        finally:
            connection.close()

    threads = [threading.Thread(target=run, args=(target,)) for target in targets]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return failures


@pytest.mark.django_db(transaction=True)
def test_concurrent_batches_on_the_same_leads_neither_fail_nor_deadlock():
    emails = [f"shared{i}@example.jp" for i in range(50)]
    LeadFactory(email=emails[0])
    forward = [event(f"f{i}", email=email) for i, email in enumerate(emails)]
    backward = [event(f"b{i}", email=email) for i, email in enumerate(reversed(emails))]
    same = [event(f"s{i}", email=email) for i, email in enumerate(emails)]
    failures = run_in_threads(
        lambda: ingest_events(forward),
        lambda: ingest_events(backward),
        lambda: ingest_events(same),
        lambda: ingest_events(list(reversed(same))),
    )
    assert failures == []
    assert Lead.objects.count() == 50
    assert Activity.objects.count() == 150
    rescore_leads(Lead.objects.values_list("pk", flat=True))
    assert not Lead.objects.filter(last_activity_at=None).exists()


def test_awkward_text_survives_the_round_trip_verbatim():
    awkward = "q\"uote \\back\\slash {brace,comma} NULL \\u0000 ü 日本 'single'"
    properties = {awkward: [awkward, {"k": awkward}], "n": 1.5, "t": True, "z": None}
    result = ingest_events(
        [
            event(awkward, source=awkward, properties=properties),
            event("NULL", email="null@example.jp"),
            event("", email="x@example.jp"),
        ]
    )
    assert result.accepted == 2 and result.errors[0]["index"] == 2
    activity = Activity.objects.get(event_id=awkward)
    assert (activity.source, activity.properties) == (awkward, properties)
    assert Activity.objects.get(event_id="NULL").lead.email == "null@example.jp"


def test_occurred_at_is_stored_as_the_same_instant():
    ingest_events([event(occurred_at="2026-03-01T09:30:15.123456+09:00")])
    stored = Activity.objects.get().occurred_at
    assert stored == datetime(2026, 3, 1, 0, 30, 15, 123456, tzinfo=UTC)


@pytest.mark.django_db(transaction=True)
def test_a_deadlock_victim_is_run_again_and_nothing_is_lost_or_doubled(monkeypatch):
    from django.db import OperationalError
    from psycopg.errors import DeadlockDetected

    from leadops import ingest as ingest_module

    real_store = ingest_module._store
    calls = []

    def store_losing_the_first_race(events, result):
        calls.append(1)
        real_store(events, result)  # writes, then PostgreSQL picks this one as the victim
        if len(calls) == 1:
            raise OperationalError("deadlock detected") from DeadlockDetected()

    monkeypatch.setattr(ingest_module, "_store", store_losing_the_first_race)
    items = [
        {"event_id": f"dl-{i}", "email": "deadlock@example.jp", "type": "email_open"}
        for i in range(3)
    ]
    result = ingest_module.ingest_events(items)
    assert (len(calls), result.accepted, result.duplicates, result.errors) == (2, 3, 0, [])
    assert Activity.objects.filter(event_id__startswith="dl-").count() == 3


@pytest.mark.django_db(transaction=True)
def test_other_database_errors_are_not_retried(monkeypatch):
    from django.db import OperationalError

    from leadops import ingest as ingest_module

    calls = []

    def failing_store(events, result):
        calls.append(1)
        raise OperationalError("server closed the connection")

    monkeypatch.setattr(ingest_module, "_store", failing_store)
    with pytest.raises(OperationalError):
        ingest_module.ingest_events(
            [
                {"event_id": "x", "email": "a@example.jp", "type": "email_open"},
                {"event_id": "y", "email": "a@example.jp", "type": "email_open"},
            ]
        )
    assert len(calls) == 1


# --- one event: one statement -----------------------------------------------------------


@pytest.mark.django_db(transaction=True)
def test_one_event_is_one_statement_in_autocommit(django_assert_num_queries):
    LeadFactory(email="known@example.jp")
    with django_assert_num_queries(1):  # a new lead
        assert ingest_events([event("a")]).accepted == 1
    with django_assert_num_queries(1):  # a known lead
        assert ingest_events([event("b", email="known@example.jp")]).accepted == 1
    with django_assert_num_queries(1):  # a resent event
        assert ingest_events([event("b", email="known@example.jp")]).duplicates == 1
    assert Activity.objects.count() == 2


def test_one_event_for_a_new_email_creates_the_lead_with_its_activity():
    result = ingest_events([event("u", type="unsubscribe", occurred_at="2026-03-01T00:00:00Z")])
    lead = Lead.objects.get(email="taro@example.jp")
    assert (result.accepted, result.lead_ids) == (1, {lead.id})
    assert (lead.source, lead.unsubscribed) == ("API", True)
    assert lead.last_activity_at == datetime(2026, 3, 1, tzinfo=UTC)
    assert lead.created_at is not None and lead.score == 0
    assert Activity.objects.get(event_id="u").lead == lead


def test_one_event_for_an_unknown_lead_id_writes_nothing():
    result = ingest_events([event("a", email=None, lead_id=987654321)])
    assert result.errors == [{"index": 0, "errors": {"lead_id": [ingest._unknown_lead_message()]}}]
    assert not Activity.objects.exists()


def test_one_event_by_lead_id_moves_last_activity_forward_only():
    lead = LeadFactory(last_activity_at=datetime(2026, 3, 1, tzinfo=UTC))
    ingest_events([event("old", email=None, lead_id=lead.id, occurred_at="2026-02-01T00:00Z")])
    rescore_leads([lead.id])
    lead.refresh_from_db()
    assert lead.last_activity_at == datetime(2026, 3, 1, tzinfo=UTC)
    ingest_events([event("new", email=None, lead_id=lead.id, occurred_at="2026-03-02T00:00Z")])
    rescore_leads([lead.id])
    lead.refresh_from_db()
    assert lead.last_activity_at == datetime(2026, 3, 2, tzinfo=UTC)
    assert Activity.objects.filter(lead=lead).count() == 2


def test_one_reused_event_id_is_an_error_and_a_resend_a_duplicate():
    ingest_events([event("a", properties={"url": "/x"})])
    assert ingest_events([event("a", properties={"url": "/x"})]).duplicates == 1
    result = ingest_events([event("a", properties={"url": "/y"})])
    assert result.errors == [{"index": 0, "errors": {"event_id": [ingest._reused_id_message()]}}]
    assert Activity.objects.get(event_id="a").properties == {"url": "/x"}


def wait_until_blocked(seconds: float = 10) -> None:
    """Until another backend (the call under test, in its thread) waits for this one."""
    deadline = timezone.now() + timedelta(seconds=seconds)
    while timezone.now() < deadline:
        with connection.cursor() as cursor:
            cursor.execute(
                "SELECT count(*) FROM pg_locks WHERE NOT granted "
                "AND pg_backend_pid() = ANY(pg_blocking_pids(pid))"
            )
            if cursor.fetchone()[0]:
                return
    raise AssertionError("the call under test never waited for the other transaction")


def run_while_holding(hold, call) -> list:
    """`hold()` runs in an open transaction; `call()` runs in a thread and is let finish
    only after it waits for that transaction, which then commits: a deterministic race."""
    outcome: list = []

    def target() -> None:
        try:
            outcome.append(call())
        finally:
            connection.close()

    from django.db import transaction

    with transaction.atomic():
        hold()
        thread = threading.Thread(target=target)
        thread.start()
        wait_until_blocked()
    thread.join(timeout=30)
    assert outcome, "the call failed: see the thread's traceback"
    return outcome


@pytest.mark.django_db(transaction=True)
def test_one_event_whose_new_email_was_created_meanwhile_goes_to_that_lead(caplog):
    # The statement's snapshot has no such lead, its insert meets the other one's row:
    # the statement fails on the foreign key and runs again, seeing the lead now.
    with caplog.at_level(logging.INFO, logger="leadops.ingest"):
        [result] = run_while_holding(
            lambda: LeadFactory(email="taro@example.jp"), lambda: ingest_events([event("a")])
        )
    assert "lead changed concurrently, running again" in caplog.text
    lead = Lead.objects.get(email="taro@example.jp")
    assert (result.accepted, result.errors, result.lead_ids) == (1, [], {lead.id})
    assert Activity.objects.get(event_id="a").lead == lead


@pytest.mark.django_db(transaction=True)
def test_one_event_whose_id_was_stored_meanwhile_is_sorted_out_by_fingerprint(monkeypatch):
    # Stored after the statement's snapshot: the fingerprint is read in a second query.
    read_again: list[list[str]] = []
    sort_out = ingest._sort_out_conflicts

    def spy(conflicting, result):
        if conflicting:
            read_again.append([valid.event_id for valid in conflicting])
        sort_out(conflicting, result)

    monkeypatch.setattr(ingest, "_sort_out_conflicts", spy)
    [result] = run_while_holding(
        lambda: ingest_events([event("a"), event("b")]), lambda: ingest_events([event("a")])
    )
    assert (result.accepted, result.duplicates, result.errors) == (0, 1, [])
    [result] = run_while_holding(
        lambda: ingest_events([event("c"), event("d")]),
        lambda: ingest_events([event("c", email="new@example.jp")]),
    )
    assert result.errors[0]["errors"] == {"event_id": [ingest._reused_id_message()]}
    assert not Lead.objects.filter(email="new@example.jp").exists()
    assert read_again == [["a"], ["c"]]


@pytest.mark.django_db(transaction=True)
def test_concurrent_single_events_for_one_new_email_make_one_lead():
    calls = [
        lambda i=i: ingest_events([event(f"c{i}", email="fresh@example.jp")]) for i in range(8)
    ]
    assert run_in_threads(*calls) == []
    lead = Lead.objects.get(email="fresh@example.jp")
    assert Activity.objects.filter(lead=lead).count() == 8


@pytest.mark.django_db(transaction=True)
def test_a_single_event_deadlock_victim_is_run_again(monkeypatch):
    from django.db import OperationalError
    from psycopg.errors import DeadlockDetected

    real_statement = ingest._one_statement
    calls = []

    def statement_losing_the_first_race(valid_event):
        calls.append(1)
        if len(calls) == 1:  # PostgreSQL rolled the statement back
            raise OperationalError("deadlock detected") from DeadlockDetected()
        return real_statement(valid_event)

    monkeypatch.setattr(ingest, "_one_statement", statement_losing_the_first_race)
    result = ingest_events([event("dl")])
    assert (len(calls), result.accepted, result.errors) == (2, 1, [])
    assert Activity.objects.filter(event_id="dl").count() == 1


@pytest.mark.django_db(transaction=True)
def test_other_database_errors_of_a_single_event_are_not_retried(monkeypatch):
    from django.db import OperationalError

    calls = []

    def failing_statement(valid_event):
        calls.append(1)
        raise OperationalError("server closed the connection")

    monkeypatch.setattr(ingest, "_one_statement", failing_statement)
    with pytest.raises(OperationalError):
        ingest_events([event("x")])
    assert len(calls) == 1


def test_one_event_keeps_awkward_text_verbatim():
    awkward = "q\"uote \\back\\slash %(name)s %s {brace} NULL ü 日本 'single'"
    result = ingest_events([event(awkward, source=awkward, properties={awkward: awkward})])
    assert result.accepted == 1
    activity = Activity.objects.get(event_id=awkward)
    assert (activity.source, activity.properties) == (awkward, {awkward: awkward})
