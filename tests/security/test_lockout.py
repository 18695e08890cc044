"""Login lock-out (django-axes, leadops.lockout): after AXES_FAILURE_LIMIT failed logins
for one username from one address, that pair gets 429 with Retry-After and a page that
says how long to wait, even with the right password; other users and addresses do not."""

from __future__ import annotations

import uuid

import pytest
from axes.handlers.cache import AxesCacheHandler
from django.core.management import call_command
from django.test import Client

from tests.security.conftest import user_in_role

pytestmark = pytest.mark.django_db

LOGIN = "/admin/login/"
PASSWORD = "pw-Secret-123"


@pytest.fixture
def person(django_user_model):
    """A staff user with a fresh name, so no count from another test applies; their
    counts are cleared afterwards."""
    user = user_in_role(django_user_model, f"lock-{uuid.uuid4().hex[:8]}", "inside_sales")
    user.is_staff = True
    user.save(update_fields=["is_staff"])
    yield user
    AxesCacheHandler().reset_attempts(username=user.username, ip_address="10.0.0.1")


def log_in(username: str, password: str, *, ip: str = "10.0.0.1"):
    client = Client(REMOTE_ADDR=ip, HTTP_ACCEPT_LANGUAGE="en")
    body = {"username": username, "password": password, "next": "/admin/"}
    return client.post(LOGIN, body)


def test_lockout_after_the_failure_limit(settings, person):
    settings.AXES_FAILURE_LIMIT = 3
    for _ in range(2):
        answer = log_in(person.username, "wrong")
        assert answer.status_code == 200  # the login page again, with its error
    locked = log_in(person.username, "wrong")
    assert locked.status_code == 429
    assert int(locked.headers["Retry-After"]) == 15 * 60
    text = locked.content.decode()
    assert "Too many failed logins" in text and "Wait 15 minutes" in text
    assert locked.headers["Content-Security-Policy"]
    # The right password does not open a locked pair either.
    assert log_in(person.username, PASSWORD).status_code == 429
    # Another address, or another user from this address, may still log in.
    assert log_in(person.username, PASSWORD, ip="10.0.0.2").status_code == 302


def test_other_users_from_the_same_address_are_not_locked(settings, person, django_user_model):
    settings.AXES_FAILURE_LIMIT = 2
    for _ in range(3):
        log_in(person.username, "wrong")
    other = user_in_role(django_user_model, f"ok-{uuid.uuid4().hex[:8]}", "sales")
    other.is_staff = True
    other.save(update_fields=["is_staff"])
    try:
        assert log_in(other.username, PASSWORD).status_code == 302
    finally:
        AxesCacheHandler().reset_attempts(username=other.username, ip_address="10.0.0.1")


def test_a_successful_login_resets_the_count(settings, person):
    settings.AXES_FAILURE_LIMIT = 3
    log_in(person.username, "wrong")
    log_in(person.username, "wrong")
    assert log_in(person.username, PASSWORD).status_code == 302
    log_in(person.username, "wrong")
    log_in(person.username, "wrong")
    assert log_in(person.username, PASSWORD).status_code == 302


def test_the_cool_off_ends_the_lockout(settings, person):
    settings.AXES_FAILURE_LIMIT = 1
    assert log_in(person.username, "wrong").status_code == 429
    # The cool-off's end expires the counts from the cache; an administrator's
    # `manage.py axes_reset_ip_username 10.0.0.1 NAME` does the same at once.
    call_command("axes_reset_ip_username", "10.0.0.1", person.username)
    assert log_in(person.username, PASSWORD).status_code == 302


def test_logins_without_a_request_are_not_counted(person):
    """`authenticate()` from commands and scripts (no client address) still works."""
    from django.contrib.auth import authenticate

    assert authenticate(username=person.username, password=PASSWORD) == person
    assert authenticate(username=person.username, password="wrong") is None


def test_people_log_in_while_redis_is_down(person, caplog):
    # The counts cannot be read or written: the lock-out is skipped, logged, not a 500.
    from django.core.cache.backends.redis import RedisCacheClient
    from redis.exceptions import ConnectionError as RedisConnectionError

    def down(*args, **kwargs):
        raise RedisConnectionError("Connection refused")

    with pytest.MonkeyPatch.context() as patch:
        for method in ("get", "set", "add", "incr", "delete", "get_many", "set_many"):
            patch.setattr(RedisCacheClient, method, down)
        assert log_in(person.username, "wrong").status_code == 200  # the form, its error
        assert log_in(person.username, PASSWORD).status_code == 302
    assert "Login lock-out skipped: Redis did not answer" in caplog.text
