"""Fixtures of the security suite: a small world with two sales reps' leads and
hand-offs, and clients per role (token for the API, session for pages)."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
from django.contrib.auth.models import Group
from django.test import Client

from handoff import services
from handoff.models import Handoff
from leadops.models import Lead
from tests.factories import ActivityFactory, LeadFactory

ROLES = ("marketer", "inside_sales", "sales", "manager")


@dataclass
class World:
    """Leads and hand-offs of two sales reps, and an unowned lead in the IS queue."""

    mine: Lead  # an SQL of sales_rep (their sales hand-off open)
    theirs: Lead  # an SQL of other_sales_rep
    unowned: Lead  # an MQL waiting in the IS queue, no owner
    my_handoff: Handoff
    their_handoff: Handoff
    queue_handoff: Handoff


def _open_handoff(**lead_fields) -> Handoff:
    lead = LeadFactory(stage="nurturing", **lead_fields)
    ActivityFactory(lead=lead)
    services.mark_lead_mql(lead.pk, reason="test")
    return Handoff.objects.get(lead=lead, kind="inside_sales")


def _sql_for(rep, *, is_rep) -> tuple[Lead, Handoff]:
    handoff = _open_handoff()
    sales = services.qualify_lead(handoff.pk, actor=is_rep, sales_rep=rep)
    return Lead.objects.get(pk=handoff.lead_id), sales


@pytest.fixture
def world(db, is_rep, sales_rep, other_sales_rep) -> World:
    mine, my_handoff = _sql_for(sales_rep, is_rep=is_rep)
    theirs, their_handoff = _sql_for(other_sales_rep, is_rep=is_rep)
    queue_handoff = _open_handoff()
    return World(
        mine=mine,
        theirs=theirs,
        unowned=queue_handoff.lead,
        my_handoff=my_handoff,
        their_handoff=their_handoff,
        queue_handoff=queue_handoff,
    )


@pytest.fixture
def superuser(db, django_user_model):
    return django_user_model.objects.create_superuser("root1", "root@example.jp", "pw-Secret-123")


@pytest.fixture
def users(marketer, is_rep, sales_rep, manager, superuser) -> dict:
    """One user per role, and a superuser; staff, as `adduser` makes every role."""
    for user in (marketer, is_rep, sales_rep, manager):
        user.is_staff = True
        user.save(update_fields=["is_staff"])
    return {
        "marketer": marketer,
        "inside_sales": is_rep,
        "sales": sales_rep,
        "manager": manager,
        "superuser": superuser,
    }


@pytest.fixture
def session_client():
    """A browser-like client logged in as the given user (None: anonymous)."""

    def make(user) -> Client:
        client = Client(HTTP_ACCEPT_LANGUAGE="en")
        if user is not None:
            client.force_login(user, backend="django.contrib.auth.backends.ModelBackend")
        return client

    return make


PASSWORD = "pw-Secret-123"  # the suite's usual test password (tests/conftest.py)


def user_in_role(django_user_model, username: str, role: str):
    user = django_user_model.objects.create_user(username=username, password=PASSWORD)
    user.groups.add(Group.objects.get(name=role))
    return user
