"""Login lock-out (django-axes): who is counted, and what a locked-out person sees.

Failed logins are counted per username and client address in Redis (axes' cache
handler, which here lets people log in while Redis is down); after `AXES_FAILURE_LIMIT`
of them that pair is refused for `AXES_COOLOFF_TIME`, with a 429, a Retry-After header
and a page that says how long to wait. Settings: LEADOPS_LOGIN_FAILURE_LIMIT,
LEADOPS_LOGIN_COOLOFF_MINUTES.
"""

from __future__ import annotations

import logging
from typing import Any

from axes.backends import AxesStandaloneBackend
from axes.handlers.cache import AxesCacheHandler
from axes.helpers import get_cool_off
from django.http import HttpRequest, HttpResponse
from django.shortcuts import render
from django.utils.translation import gettext as _
from redis.exceptions import RedisError

from leadops.middleware import client_ip as _client_ip_of

LOCKOUT_TEMPLATE = "admin/locked_out.html"
logger = logging.getLogger(__name__)


class LockoutCacheHandler(AxesCacheHandler):
    """axes' cache handler that lets people log in while Redis is down.

    The counts live in Redis; without it they can be neither read nor written, and axes
    would answer every login with a 500 although PostgreSQL, and so every page, still
    works. The lock-out is skipped instead (logged as a warning) and counts again as
    soon as Redis answers.
    """

    def get_failures(self, request: HttpRequest, credentials: dict | None = None) -> int:
        try:
            return super().get_failures(request, credentials)
        except RedisError as exc:
            _warn_unavailable(exc)
            return 0

    def user_login_failed(self, sender: Any, credentials: dict, request=None, **kwargs) -> None:
        try:
            super().user_login_failed(sender, credentials, request, **kwargs)
        except RedisError as exc:
            _warn_unavailable(exc)

    def user_logged_in(self, sender: Any, request: HttpRequest, user: Any, **kwargs) -> None:
        try:
            super().user_logged_in(sender, request, user, **kwargs)
        except RedisError as exc:
            _warn_unavailable(exc)


def _warn_unavailable(exc: RedisError) -> None:
    logger.warning("Login lock-out skipped: Redis did not answer (%s)", exc)


class LoginLockoutBackend(AxesStandaloneBackend):
    """axes' guard, for logins that come with a request (the login page).

    `authenticate()` without a request (management commands, `adduser`'s checks,
    scripts) cannot be attributed to a client address: axes would raise; nothing to
    count there, so it passes to the next backend.
    """

    def authenticate(self, request: HttpRequest | None, *args: Any, **kwargs: Any) -> None:
        if request is None:
            return None
        return super().authenticate(request, *args, **kwargs)


def client_ip(request: HttpRequest) -> str:
    """The same client address the form rate limits use (LEADOPS_TRUSTED_PROXY_COUNT)."""
    return _client_ip_of(request.META)


def lockout_response(
    request: HttpRequest, original_response: HttpResponse | None = None, credentials: Any = None
) -> HttpResponse:
    """429 with Retry-After and a page that says how long to wait."""
    cool_off = get_cool_off(request)
    seconds = max(1, int(cool_off.total_seconds())) if cool_off else 0
    minutes = max(1, -(-seconds // 60))
    message = _(
        "Too many failed logins for this user from your address. Wait %(minutes)d minutes "
        "and try again, or ask an administrator to unlock the account."
    ) % {"minutes": minutes}
    context = {"title": _("Login locked"), "message": message}
    response = render(request, LOCKOUT_TEMPLATE, context, status=429)
    if seconds:
        response["Retry-After"] = str(seconds)
    return response
