"""The demo workspace (`manage.py load_demo`): realistic, deterministic, idempotent."""

from __future__ import annotations

import io
import re
import time
from datetime import timedelta

import pytest
from django.contrib.auth import authenticate, get_user_model
from django.contrib.auth.password_validation import validate_password
from django.core.management import CommandError, call_command
from django.db.models import Max
from django.utils import timezone, translation

from leadops import demo
from leadops.models import Account, Activity, Lead, Stage

SMALL = {"leads": 150, "accounts": 20, "days": 10}


@pytest.fixture(autouse=True)
def fast_password_hashing(settings):
    # Seven demo users per load: the production hasher would dominate these tests.
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


@pytest.fixture(autouse=True)
def english():
    with translation.override("en"):
        yield


def _load(**sizes: int) -> str:
    # pytest-django runs with DEBUG off, where the command wants --force.
    out = io.StringIO()
    call_command("load_demo", stdout=out, force=True, **{**SMALL, **sizes})
    return out.getvalue()


def _counts() -> tuple[int, int, int, int]:
    return (
        get_user_model().objects.count(),
        Account.objects.count(),
        Lead.objects.count(),
        Activity.objects.count(),
    )


@pytest.mark.django_db
def test_second_load_adds_nothing():
    first = _load()
    counts = _counts()
    second = _load()

    assert counts[2] == SMALL["leads"] and counts[1] == SMALL["accounts"]
    assert counts[3] > SMALL["leads"]
    assert _counts() == counts
    assert f"added {len(demo.DEMO_USERS) + 1} users" in first
    assert "added 0 users, 0 accounts, 0 leads, 0 activities" in second


@pytest.mark.django_db
def test_one_demo_user_per_role_and_an_admin():
    _load(leads=5, accounts=2)

    for username, (role, _, _) in demo.DEMO_USERS.items():
        user = authenticate(username=username, password=demo.DEMO_PASSWORD)
        assert user is not None and user.is_staff and not user.is_superuser
        assert list(user.groups.values_list("name", flat=True)) == [role]
    admin = authenticate(username="admin", password=demo.DEMO_PASSWORD)
    assert admin is not None and admin.is_superuser
    validate_password(demo.DEMO_PASSWORD)  # the documented password passes the validators


@pytest.mark.django_db
def test_existing_user_keeps_the_password_they_chose():
    get_user_model().objects.create_user("demo-is", password="my-own-Secret-9")

    _load(leads=5, accounts=2)

    assert authenticate(username="demo-is", password="my-own-Secret-9") is not None
    assert get_user_model().objects.get(username="demo-is").groups.filter(name="inside_sales")


@pytest.mark.django_db
def test_leads_look_like_japanese_b2b_contacts():
    _load()
    leads = list(Lead.objects.select_related("account"))

    assert all(
        re.fullmatch(r"[a-z0-9.]+@[a-z0-9-]+\.example\.(co|ac|or)\.jp", x.email) for x in leads
    )
    assert all(x.email.endswith(x.account.domain) for x in leads)
    assert all(re.search(r"[\u3040-\u30ff\u4e00-\u9fff]", x.last_name) for x in leads)
    assert any(x.title.endswith("部 部長") for x in leads)
    assert {x.industry for x in leads} >= {"software", "it_services", "manufacturing"}
    assert len({x.job_level for x in leads}) >= 4 and len({x.department for x in leads}) >= 4
    assert {x.source for x in leads} >= {"展示会", "ウェビナー", "資料DL", "Web広告", "CSV import"}
    assert all(
        "株式会社" in x.account.name or x.account.industry in ("education", "public") for x in leads
    )
    # Loading ends with a rescore, so the workspace opens with real scores.
    assert all(x.score == x.attribute_score + x.behavior_score for x in leads)
    assert sum(x.attribute_score > 0 for x in leads) > len(leads) / 2
    assert {x.temperature for x in leads} >= {"cold", "warm"}


@pytest.mark.django_db
def test_demo_sales_rep_owns_some_accepted_leads():
    _load()
    owned = Lead.objects.filter(owner__username=demo.DEMO_SALES_USERNAME)

    assert owned.exists()
    assert set(owned.values_list("stage", flat=True)) <= {Stage.SAL, Stage.OPPORTUNITY}
    assert not Lead.objects.filter(owner__isnull=True, stage=Stage.SAL).exists()


@pytest.mark.django_db
def test_behaviour_spans_the_days_asked_for_and_sets_last_activity():
    _load(days=30)
    now = timezone.now()
    events = Activity.objects.all()
    span = events.aggregate(first=Max("occurred_at"))["first"] - min(
        events.values_list("occurred_at", flat=True)
    )

    assert span > timedelta(days=20)
    assert not events.filter(occurred_at__gt=now).exists()
    assert not events.filter(occurred_at__lt=now - timedelta(days=32)).exists()
    assert events.filter(type="page_view").count() > events.count() / 2
    assert events.filter(properties__url__icontains="/pricing").exists()
    assert events.filter(properties__url__icontains="/case/").exists()
    assert {"email_open", "email_click", "document_download", "webinar_attended"} <= set(
        events.values_list("type", flat=True)
    )
    assert all(
        re.fullmatch(r"[0-9a-f]{64}", f) for f in events.values_list("fingerprint", flat=True)
    )
    latest = Lead.objects.annotate(latest=Max("activities__occurred_at"))
    assert all(lead.last_activity_at == lead.latest for lead in latest)


@pytest.mark.django_db
def test_unsubscribed_leads_have_an_unsubscribe_event_as_their_last():
    _load(leads=400, accounts=30)
    unsubscribed = Lead.objects.filter(unsubscribed=True)

    assert unsubscribed.exists()
    for lead in unsubscribed:
        assert lead.activities.latest("occurred_at").type == "unsubscribe"
        assert not lead.consent


def test_same_seed_draws_the_same_workspace():
    now = timezone.now()

    def draw():
        plan = demo._DemoGenerator(seed=7, days=30, now=now).plan(accounts=10, leads=50)
        return [(lead.email, lead.title) for lead, _ in plan.leads], [
            (event.event_id, event.occurred_at) for event, _ in plan.events
        ]

    assert draw() == draw()


@pytest.mark.django_db
def test_sizes_come_from_the_environment(monkeypatch):
    monkeypatch.setenv("LEADOPS_DEMO_LEADS", "40")
    monkeypatch.setenv("LEADOPS_DEMO_ACCOUNTS", "6")
    call_command("load_demo", force=True, stdout=io.StringIO())

    assert Lead.objects.count() == 40 and Account.objects.count() == 6


@pytest.mark.django_db
def test_refuses_to_publish_demo_passwords_when_debug_is_off(settings):
    settings.DEBUG = False

    with pytest.raises(CommandError, match="--force"):
        call_command("load_demo", leads=5, accounts=2, stdout=io.StringIO())
    assert not Lead.objects.exists()


@pytest.mark.django_db
def test_rejects_sizes_below_one():
    with pytest.raises(CommandError, match="at least 1"):
        _load(accounts=0)


@pytest.mark.slow
@pytest.mark.django_db
def test_full_size_workspace_loads_in_well_under_a_minute():
    started = time.monotonic()
    summary = demo.load_demo_workspace()

    assert time.monotonic() - started < 45
    assert summary.accounts == demo.DEFAULT_ACCOUNTS >= 300
    assert summary.leads == demo.DEFAULT_LEADS >= 3000
    assert summary.activities > 2 * demo.DEFAULT_LEADS  # ~2.5 a lead: most do little
    assert demo.DEFAULT_DAYS >= 30


@pytest.mark.django_db
def test_the_queue_has_a_day_of_work_and_no_mql_without_its_hand_off():
    from handoff.models import ContactAttempt, Handoff

    _load(leads=600, accounts=60)
    mqls = set(Lead.objects.filter(stage=Stage.MQL).values_list("pk", flat=True))
    waiting = Handoff.objects.for_inside_sales().not_done()
    assert mqls and set(waiting.values_list("lead_id", flat=True)) == mqls
    assert waiting.filter(status="claimed").exists() and waiting.filter(status="open").exists()
    assert ContactAttempt.objects.exists()
    sqls = set(Lead.objects.filter(stage=Stage.SQL).values_list("pk", flat=True))
    inbox = Handoff.objects.for_sales().not_done()
    assert set(inbox.values_list("lead_id", flat=True)) == sqls
    # Opened over the last working days: some clocks are already past their deadline.
    assert waiting.filter(due_at__lt=timezone.now()).exists()
    before = (Handoff.objects.count(), ContactAttempt.objects.count())
    _load(leads=600, accounts=60)
    assert (Handoff.objects.count(), ContactAttempt.objects.count()) == before
