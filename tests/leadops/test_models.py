import pytest
from django.contrib.auth.models import Group
from django.db import IntegrityError, transaction

from leadops.models import Lead
from tests.factories import LeadFactory


@pytest.mark.django_db
def test_email_must_be_stored_lower_case():
    with pytest.raises(IntegrityError), transaction.atomic():
        LeadFactory(email="Upper@Example.jp")


@pytest.mark.django_db
def test_email_is_unique():
    LeadFactory(email="same@example.jp")
    with pytest.raises(IntegrityError), transaction.atomic():
        LeadFactory(email="same@example.jp")
    assert Lead.objects.filter(email="same@example.jp").count() == 1


@pytest.mark.django_db
def test_four_role_groups_exist_after_migrate():
    names = set(Group.objects.values_list("name", flat=True))
    assert {"marketer", "inside_sales", "sales", "manager"} <= names
    assert Group.objects.get(name="sales").permissions.filter(codename="view_lead").exists()
