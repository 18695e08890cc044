"""factory_boy factories for the lead core."""

from __future__ import annotations

import uuid

import factory
from django.utils import timezone

from leadops.models import Account, Activity, Lead


class AccountFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Account

    name = factory.Sequence(lambda n: f"株式会社テスト{n}")
    domain = factory.Sequence(lambda n: f"test{n}.example.jp")
    industry = "software"
    employee_count = 120


class LeadFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Lead

    email = factory.Sequence(lambda n: f"lead{n}@example.jp")
    first_name = "太郎"
    last_name = factory.Sequence(lambda n: f"山田{n}")
    account = factory.SubFactory(AccountFactory)
    title = "部長"
    job_level = "director"
    department = "marketing"
    industry = "software"
    employee_count = 120
    source = "展示会"


class ActivityFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Activity

    lead = factory.SubFactory(LeadFactory)
    type = "page_view"
    occurred_at = factory.LazyFunction(timezone.now)
    properties = factory.LazyFunction(lambda: {"url": "https://example.jp/pricing"})
    event_id = factory.LazyFunction(lambda: uuid.uuid4().hex)
    fingerprint = "0" * 64
    source = "api"
