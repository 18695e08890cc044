"""Schemathesis against /api/schema/, in process (the WSGI app, the test database):
no 5xx, data that breaks the schema is refused, and no operation answers without a token.

Bounded: a few examples per operation and mode (see SETTINGS), well under a minute.
"""

from __future__ import annotations

import pytest
import schemathesis
from django.urls import Resolver404, resolve
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import ignored_auth, negative_data_rejection

from leadops.wsgi import application

pytestmark = pytest.mark.django_db

# Each generated example is one request against the in-process app: small numbers keep
# the whole run (every operation, positive and negative data) well under a minute.
SETTINGS = settings(
    max_examples=8,
    deadline=None,
    derandomize=True,
    suppress_health_check=list(HealthCheck),
    database=None,
)


# Loaded through the app itself at collection: generating the schema reads no data.
schema = schemathesis.openapi.from_wsgi("/api/schema/", application)


@pytest.fixture(autouse=True)
def keep_the_test_connection():
    """The WSGI handler closes the database connection after each request (as in
    production); the test's transaction lives on it, so keep it open, as Django's test
    client does."""
    from django.core.signals import request_finished, request_started
    from django.db import close_old_connections

    request_started.disconnect(close_old_connections)
    request_finished.disconnect(close_old_connections)
    yield
    request_started.connect(close_old_connections)
    request_finished.connect(close_old_connections)


@pytest.fixture
def manager_token(manager, world) -> str:
    from rest_framework.authtoken.models import Token

    return Token.objects.get_or_create(user=manager)[0].key


# A batch of events is stored item by item: invalid items come back by index in a 202
# (README, "The API in one minute"), so a batch with broken items is not a 4xx.
PARTIAL_BATCH = ("POST", "/api/v1/events/")


@schema.parametrize()
@SETTINGS
def test_api_with_a_manager_token(case, manager_token):
    """Valid and invalid data as a manager (who may call every operation): no 5xx,
    and a request that breaks the schema is not accepted (2xx)."""
    checks = [not_a_server_error, ignored_auth]
    partial_batch = (case.method.upper(), case.path) == PARTIAL_BATCH
    # A blank filter (`?stage=`) means "no filter", as a form's empty field would.
    blank_filter = any(value == "" for value in (case.query or {}).values())
    if not partial_batch and not blank_filter:
        checks.append(negative_data_rejection)
    response = case.call_and_validate(
        headers={"Authorization": f"Token {manager_token}"}, checks=checks
    )
    if partial_batch and case.meta.generation.mode.is_negative and response.status_code == 202:
        answer = response.json()
        sent = case.body.get("events", [case.body]) if isinstance(case.body, dict) else []
        assert answer["errors"], "a broken event was stored without an error"
        assert answer["accepted"] + answer["duplicates"] + len(answer["errors"]) == len(sent)


@schema.parametrize()
@settings(SETTINGS, max_examples=3)
def test_api_without_a_token_is_401(case):
    """Every operation refuses an anonymous caller (a path the URLs do not route, such as
    a non-numeric id, is a 404 before anything else)."""
    response = case.call()
    try:
        resolve(case.formatted_path)
    except Resolver404:
        assert response.status_code == 404
        return
    assert response.status_code == 401, f"{case.method} {case.formatted_path}"
