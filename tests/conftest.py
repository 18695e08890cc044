"""Shared fixtures. The suite runs on real PostgreSQL and Redis: the servers named by
DATABASE_URL / REDIS_URL, or the embedded ones under ./var/ when those are unset."""

from __future__ import annotations

from pathlib import Path

import pytest
from rest_framework.test import APIClient

from leadops.engines import ensure_embedded_engines


def pytest_configure(config: pytest.Config) -> None:
    ensure_embedded_engines()
    # WhiteNoise warns on every request when STATIC_ROOT is missing (no collectstatic).
    from django.conf import settings

    Path(settings.STATIC_ROOT).mkdir(parents=True, exist_ok=True)


@pytest.fixture(autouse=True)
def fast_password_hashing(settings) -> None:
    # PBKDF2 costs ~1 s per user on a busy 2-core machine; tests don't need its strength.
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


@pytest.fixture
def api_client() -> APIClient:
    return APIClient()


def _user_with_role(django_user_model, username: str, role: str):
    from django.contrib.auth.models import Group

    user = django_user_model.objects.create_user(username=username, password="pw-Secret-123")
    user.groups.add(Group.objects.get(name=role))
    return user


@pytest.fixture
def marketer(db, django_user_model):
    return _user_with_role(django_user_model, "marketer1", "marketer")


@pytest.fixture
def is_rep(db, django_user_model):
    return _user_with_role(django_user_model, "is1", "inside_sales")


@pytest.fixture
def sales_rep(db, django_user_model):
    return _user_with_role(django_user_model, "sales1", "sales")


@pytest.fixture
def other_sales_rep(db, django_user_model):
    return _user_with_role(django_user_model, "sales2", "sales")


@pytest.fixture
def manager(db, django_user_model):
    return _user_with_role(django_user_model, "manager1", "manager")


@pytest.fixture
def token_client(api_client):
    """An APIClient authenticated with a real token of the given user."""

    def make(user) -> APIClient:
        from rest_framework.authtoken.models import Token

        token, _ = Token.objects.get_or_create(user=user)
        client = APIClient()
        client.credentials(HTTP_AUTHORIZATION=f"Token {token.key}")
        return client

    return make


@pytest.fixture(autouse=True)
def english_by_default(settings):
    """Tests assert messages in English; the product's default language is Japanese.

    Tests of the Japanese side ask for it (Accept-Language, `translation.override`).
    """
    settings.LANGUAGE_CODE = "en"
