"""Security headers on every URL pattern, as every role: CSP without inline script or
style, X-Frame-Options DENY, nosniff, Referrer-Policy; HSTS behind TLS in production;
and pages whose HTML needs no inline script or style (what the CSP would block)."""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from django.db.models import Model
from django.test import Client
from django.urls import URLPattern, URLResolver, get_resolver

from nurturing.models import WebForm

pytestmark = pytest.mark.django_db

ROLE_NAMES = ("anonymous", "marketer", "inside_sales", "sales", "manager", "superuser")
# Inline <script> that runs (data blocks such as json_script are fine), <style>, style="…",
# and on…= event handler attributes: all blocked by the policy, so none may be in a page.
INLINE_SCRIPT = re.compile(
    r"<script(?![^>]*\bsrc=)(?![^>]*type=\"application/(?:ld\+)?json\")[^>]*>", re.I
)
INLINE_STYLE = re.compile(r"<style[\s>]|\sstyle=[\"']", re.I)
EVENT_HANDLER = re.compile(r"<[a-z][^>]*\son[a-z]+=[\"']", re.I)


@dataclass(frozen=True)
class Route:
    url: str
    callback: Any
    admin_model: type[Model] | None


def _values(pattern: str) -> Iterator[tuple[str, str]]:
    """(placeholder, converter or regex) for `<conv:name>` and `(?P<name>regex)`."""
    for match in re.finditer(r"<(?:(\w+):)?(\w+)>", pattern):
        yield match.group(0), match.group(1) or "str"
    for match in re.finditer(r"\(\?P<(\w+)>((?:[^()]|\([^()]*\))*)\)", pattern):
        yield match.group(0), match.group(2)


def _concrete(pattern: str, object_id: str) -> str:
    """A URL matching `pattern`: ids become `object_id`, words a harmless word."""
    for placeholder, kind in _values(pattern):
        if kind in {"int", "path"} or "pk" in placeholder or "id" in placeholder:
            value = object_id
        elif "|" in kind:  # the admin's app_label alternation: its first app
            value = kind.split("|")[0]
        else:
            value = "x"
        pattern = pattern.replace(placeholder, value, 1)
    return pattern.lstrip("^").rstrip("$").replace("\\.", ".").replace("/?", "/")


def routes(object_ids: dict[type[Model], str], default_id: str) -> list[Route]:
    found: list[Route] = []

    def walk(patterns: list, prefix: str) -> None:
        for entry in patterns:
            text = prefix + str(entry.pattern)
            if isinstance(entry, URLResolver):
                walk(entry.url_patterns, text)
            elif isinstance(entry, URLPattern):
                admin = getattr(entry.callback, "model_admin", None)
                model = admin.model if admin is not None else None
                object_id = object_ids.get(model, default_id)
                found.append(Route("/" + _concrete(text, object_id), entry.callback, model))

    walk(get_resolver().url_patterns, "")
    return found


def assert_security_headers(response, url: str) -> None:
    policy = response.headers.get("Content-Security-Policy", "")
    directives = dict(
        (part.split()[0], part.split()[1:]) for part in policy.split(";") if part.split()
    )
    where = f"{url} ({response.status_code})"
    assert directives.get("script-src") == ["'self'"], where
    assert directives.get("style-src") == ["'self'"], where
    assert directives.get("object-src") == ["'none'"], where
    assert directives.get("frame-ancestors") == ["'none'"], where
    assert response.headers.get("X-Frame-Options") == "DENY", where
    assert response.headers.get("X-Content-Type-Options") == "nosniff", where
    assert response.headers.get("Referrer-Policy") == "same-origin", where


def assert_no_inline_code(response, url: str) -> None:
    if "text/html" not in response.headers.get("Content-Type", ""):
        return
    html = response.content.decode()
    for name, pattern in (
        ("inline script", INLINE_SCRIPT),
        ("inline style", INLINE_STYLE),
        ("event handler attribute", EVENT_HANDLER),
    ):
        found = pattern.search(html)
        assert found is None, f"{url}: {name} {html[found.start() : found.start() + 120]!r}"


@pytest.fixture
def object_ids(world, superuser) -> dict[type[Model], str]:
    """An existing row of each admin model that has one (so change pages render)."""
    from django.contrib import admin

    WebForm.objects.create(slug="contact", name="Contact")
    ids = {}
    for model in admin.site._registry:
        row = model._default_manager.order_by("pk").first()
        if row is not None:
            ids[model] = str(row.pk)
    return ids


def _client_for(role: str, users: dict, session_client) -> Client:
    return session_client(None if role == "anonymous" else users[role])


def test_every_url_pattern_has_the_headers_for_every_role(world, users, object_ids, session_client):
    """Every route (admin model routes: for the superuser, who reaches them all) and
    every role: the headers are there whatever the status (200, 302, 403, 404, 405)."""
    all_routes = routes(object_ids, default_id=str(world.mine.pk))
    assert len(all_routes) > 100  # the walk found the admin and the API, not just a few
    seen_statuses = set()
    for role in ROLE_NAMES:
        client = _client_for(role, users, session_client)
        for route in all_routes:
            if route.admin_model is not None and role not in {"superuser", "manager"}:
                continue
            response = client.get(route.url)
            seen_statuses.add(response.status_code)
            assert_security_headers(response, f"{role} GET {route.url}")
            assert_no_inline_code(response, f"{role} GET {route.url}")
    assert {200, 302, 404} <= seen_statuses


def test_pages_render_without_inline_code(world, users, session_client):
    """The pages people work in, each rendered in full by a role that may see it."""
    pages = {
        "inside_sales": ["/", "/queue/", f"/leads/{world.unowned.pk}/", "/notifications/"],
        "sales": ["/inbox/", f"/leads/{world.mine.pk}/"],
        "manager": ["/dashboard/", "/admin/", "/api/docs/"],
        "marketer": ["/admin/nurturing/segment/add/", "/admin/scoring/scoringmodel/"],
    }
    for role, urls in pages.items():
        client = session_client(users[role])
        for url in urls:
            response = client.get(url)
            assert response.status_code == 200, f"{role} {url}"
            assert_security_headers(response, url)
            assert_no_inline_code(response, url)


def test_api_docs_load_their_script_and_styles_from_files(users, session_client):
    client = session_client(users["manager"])
    page = client.get("/api/docs/").content.decode()
    scripts = re.findall(r'<script src="([^"]+)"', page)
    assert any("swagger-ui-bundle" in src for src in scripts)
    init = next(src for src in scripts if "script" in src.split("?")[-1])
    answer = client.get(init)
    assert answer.status_code == 200
    assert "SwaggerUIBundle" in answer.content.decode()
    assert "javascript" in answer.headers["Content-Type"]


def test_login_page_and_lockout_page_have_the_headers(session_client):
    response = session_client(None).get("/admin/login/")
    assert response.status_code == 200
    assert_security_headers(response, "/admin/login/")
    assert_no_inline_code(response, "/admin/login/")


def test_public_snippet_and_pixel_keep_their_cross_origin_headers(session_client):
    client = session_client(None)
    snippet = client.get("/capture/snippet.js")
    assert snippet.status_code == 200
    assert snippet.headers["Access-Control-Allow-Origin"] == "*"
    assert snippet.headers["Cross-Origin-Resource-Policy"] == "cross-origin"
    assert_security_headers(snippet, "/capture/snippet.js")
    pixel = client.get("/t/o/not-a-token.gif")
    assert pixel.status_code == 404
    assert_security_headers(pixel, "/t/o/…")


def test_hsts_and_https_redirect_behind_a_tls_proxy(settings, db):
    """Production settings: plain HTTP is redirected; HTTPS (as the proxy reports it in
    X-Forwarded-Proto) carries HSTS; the health check answers over plain HTTP."""
    settings.SECURE_SSL_REDIRECT = True
    settings.SECURE_HSTS_SECONDS = 31536000
    settings.SECURE_HSTS_INCLUDE_SUBDOMAINS = True
    settings.SECURE_HSTS_PRELOAD = True
    client = Client()
    plain = client.get("/admin/login/")
    assert plain.status_code == 301
    assert plain.headers["Location"].startswith("https://")
    secure = client.get("/admin/login/", HTTP_X_FORWARDED_PROTO="https")
    assert secure.status_code == 200
    assert secure.headers["Strict-Transport-Security"] == (
        "max-age=31536000; includeSubDomains; preload"
    )
    assert_security_headers(secure, "/admin/login/ over TLS")
    assert client.get("/healthz/").status_code != 301


def test_production_settings_turn_on_hsts_and_secure_cookies():
    """What `DEBUG=false` gives, read from a fresh settings module (check --deploy in
    test_check_deploy.py runs Django's own checks on the same settings)."""
    import subprocess
    import sys

    code = (
        "from django.conf import settings as s; "
        "print(s.SECURE_HSTS_SECONDS, s.SECURE_SSL_REDIRECT, s.SESSION_COOKIE_SECURE, "
        "s.CSRF_COOKIE_SECURE, s.SECURE_PROXY_SSL_HEADER[0], s.X_FRAME_OPTIONS)"
    )
    env = _production_env()
    result = subprocess.run(
        [sys.executable, "-c", f"import django; django.setup(); {code}"],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    assert result.stdout.split() == [
        "31536000",
        "True",
        "True",
        "True",
        "HTTP_X_FORWARDED_PROTO",
        "DENY",
    ]


def _production_env() -> dict[str, str]:
    import os

    return {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "leadops.settings",
        "DEBUG": "false",
        "SECRET_KEY": "check-deploy-" + "0" * 64,
        "ALLOWED_HOSTS": "leadops.example.com",
    }
