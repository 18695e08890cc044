"""upsert_lead and its helpers: create-or-update by email, accounts, races."""

from __future__ import annotations

import threading

import pytest
from django.db import connection

from leadops import services
from leadops.models import Account, Lead
from leadops.services import get_or_create_account, normalize_email, upsert_lead
from tests.factories import AccountFactory, LeadFactory

pytestmark = pytest.mark.django_db


def test_normalize_email():
    assert normalize_email("  Taro@Example.JP ") == "taro@example.jp"


def test_upsert_creates_then_updates_only_given_fields():
    lead, created = upsert_lead("Taro@Example.jp", fields={"first_name": "太郎", "title": "部長"})
    assert created and lead.email == "taro@example.jp"
    again, created = upsert_lead("taro@example.JP", fields={"title": "本部長"})
    assert not created and again.pk == lead.pk
    again.refresh_from_db()
    assert (again.first_name, again.title) == ("太郎", "本部長")


def test_create_defaults_apply_only_to_new_leads_and_yield_to_fields():
    lead, _ = upsert_lead("a@example.jp", fields={}, create_defaults={"source": "API"})
    assert lead.source == "API"
    lead, _ = upsert_lead(
        "b@example.jp", fields={"source": "展示会"}, create_defaults={"source": "API"}
    )
    assert lead.source == "展示会"
    LeadFactory(email="c@example.jp", source="紹介")
    lead, _ = upsert_lead("c@example.jp", fields={}, create_defaults={"source": "API"})
    lead.refresh_from_db()
    assert lead.source == "紹介"


def test_company_names_the_account_and_none_leaves_it():
    lead, _ = upsert_lead("a@example.jp", fields={"industry": "software"}, company=" 株式会社A ")
    assert lead.account.name == "株式会社A"
    assert lead.account.industry == "software"
    lead, _ = upsert_lead("a@example.jp", fields={"title": "x"})
    assert lead.account.name == "株式会社A"
    lead, _ = upsert_lead("a@example.jp", fields={}, company="")
    assert lead.account is None


def test_not_writable_fields_raise():
    with pytest.raises(ValueError, match="score"):
        upsert_lead("a@example.jp", fields={"score": 100})
    with pytest.raises(ValueError, match="stage"):
        upsert_lead("a@example.jp", fields={}, create_defaults={"stage": "sql"})
    assert not Lead.objects.exists()


def test_account_blank_fields_are_filled_never_overwritten():
    account = AccountFactory(name="株式会社B", industry="", employee_count=None, domain="b.jp")
    assert get_or_create_account("株式会社B", industry="retail", employee_count=40) == account
    account.refresh_from_db()
    assert (account.industry, account.employee_count) == ("retail", 40)
    get_or_create_account("株式会社B", industry="finance", domain="other.jp")
    account.refresh_from_db()
    assert (account.industry, account.domain) == ("retail", "b.jp")
    assert get_or_create_account("  ") is None
    assert Account.objects.count() == 1


def test_insert_race_lost_becomes_an_update(monkeypatch):
    # Another transaction inserted the email after our read: our insert conflicts, and
    # the lead is updated instead of the request failing.
    existing = LeadFactory(email="race@example.jp", title="old")
    real = services._locked_lead
    reads = iter([None])
    monkeypatch.setattr(services, "_locked_lead", lambda email: next(reads, real(email)))
    lead, created = upsert_lead("race@example.jp", fields={"title": "new"})
    assert not created and lead.pk == existing.pk
    existing.refresh_from_db()
    assert existing.title == "new"


def test_other_integrity_errors_still_raise():
    from django.db import IntegrityError

    with pytest.raises(IntegrityError):
        upsert_lead("a@example.jp", fields={"employee_count": -1})


@pytest.mark.django_db(transaction=True)
def test_concurrent_creates_of_one_email_do_not_fail():
    outcomes: list[bool] = []
    failures: list[BaseException] = []
    barrier = threading.Barrier(4)

    def create() -> None:
        try:
            barrier.wait()
            outcomes.append(upsert_lead("same@example.jp", fields={"title": "t"})[1])
        except BaseException as exc:  # reported to the test
            failures.append(exc)
        finally:
            connection.close()

    threads = [threading.Thread(target=create) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert failures == []
    assert sorted(outcomes) == [False, False, False, True]
    assert Lead.objects.filter(email="same@example.jp").count() == 1


def test_lead_commit_hook_runs_with_the_lead_id(monkeypatch, django_capture_on_commit_callbacks):
    calls: list[int] = []
    monkeypatch.setattr(services, "_after_lead_committed", calls.append)
    with django_capture_on_commit_callbacks(execute=True):
        lead, _ = upsert_lead("a@example.jp", fields={})
    assert calls == [lead.pk]
