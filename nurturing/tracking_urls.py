"""Public mail-tracking endpoints (mounted at /t/): the open pixel, click redirects and
the unsubscribe page. The views are thin; the work is in `nurturing.tracking`.

    GET      /t/o/<token>.gif      a 1×1 gif; the open is recorded (deferred)
    GET      /t/c/<token>/<n>/     302 to the URL recorded as link n of the mail
    GET      /t/u/<token>/         a confirmation page with a one-click button
    POST     /t/u/<token>/         unsubscribes (also RFC 8058 one-click from mail apps)

A tampered, expired or foreign token, or a link number the mail did not have, is a 404
and records nothing: no open redirect, no event.
"""

from __future__ import annotations

import base64

from django.http import (
    Http404,
    HttpRequest,
    HttpResponse,
    HttpResponseNotFound,
    HttpResponseRedirect,
)
from django.shortcuts import render
from django.urls import path, register_converter
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_http_methods, require_safe

from nurturing import tracking

app_name = "nurturing_tracking"

# The smallest transparent GIF (1×1, 43 bytes).
PIXEL_GIF = base64.b64decode("R0lGODlhAQABAIAAAAAAAP///yH5BAEAAAAALAAAAAABAAEAAAIBRAA7")
NO_STORE = "no-store, no-cache, must-revalidate, private, max-age=0"


class TrackingTokenConverter:
    """What `django.core.signing` produces (URL-safe base64 and ":"), bounded in length."""

    regex = r"[A-Za-z0-9_\-:]{1,200}"

    def to_python(self, value: str) -> str:
        return value

    def to_url(self, value: str) -> str:
        return value


register_converter(TrackingTokenConverter, "tracking_token")


@require_safe
def open_pixel(request: HttpRequest, token: str) -> HttpResponse:
    """Hot path: a signature check and one Redis push, no query."""
    try:
        tracking.record_open(token)
    except tracking.InvalidToken:
        # A bare 404 (no template rendering): this URL is fetched by mail clients.
        return HttpResponseNotFound()
    response = HttpResponse(PIXEL_GIF, content_type="image/gif")
    response["Cache-Control"] = NO_STORE
    return response


@require_safe
def click(request: HttpRequest, token: str, link: int) -> HttpResponse:
    """Hot path: a signature check, one indexed read and one Redis push."""
    try:
        url = tracking.record_click(token, link)
    except tracking.InvalidToken as exc:
        raise Http404 from exc
    response = HttpResponseRedirect(url)
    response["Cache-Control"] = NO_STORE
    return response


# Exempt from CSRF, this endpoint only: RFC 8058 one-click unsubscribe is a POST sent by
# the recipient's mail provider, which has no CSRF cookie or token. That is safe here
# because the signed token in the URL is the credential: only the mail's recipient has
# it, and all a forged request could do is unsubscribe that recipient, the very thing
# the link is for. GET only shows the button, so link scanners unsubscribe nobody.
@csrf_exempt
@require_http_methods(["GET", "HEAD", "POST"])
def unsubscribe(request: HttpRequest, token: str) -> HttpResponse:
    try:
        if request.method == "POST":
            tracking.unsubscribe(token)
            return _page(request, "nurturing/unsubscribe_done.html", {})
        target = tracking.unsubscribe_target(token)
    except tracking.InvalidToken as exc:
        raise Http404 from exc
    context = {"email": mask_email(target.email), "unsubscribed": target.unsubscribed}
    return _page(request, "nurturing/unsubscribe.html", context)


def _page(request: HttpRequest, template: str, context: dict) -> HttpResponse:
    response = render(request, template, context)
    response["Cache-Control"] = NO_STORE
    response["X-Robots-Tag"] = "noindex"
    return response


def mask_email(email: str) -> str:
    """y****@example.co.jp: enough for the recipient to recognise, little for others."""
    local, _at, domain = email.partition("@")
    return f"{local[:1]}{'*' * max(1, len(local) - 1)}@{domain}"


urlpatterns = [
    path("o/<tracking_token:token>.gif", open_pixel, name="open"),
    path("c/<tracking_token:token>/<int:link>/", click, name="click"),
    path("u/<tracking_token:token>/", unsubscribe, name="unsubscribe"),
]
