"""Request guards for the API, and who is asking (the client address behind proxies)."""

from __future__ import annotations

from collections.abc import Callable, Mapping

from django.conf import settings
from django.http import HttpRequest, HttpResponse, JsonResponse

from leadops.api_errors import PayloadTooLarge

API_PREFIX = "/api/"


class ApiBodySizeLimitMiddleware:
    """Answer 413 (JSON) to an API request whose declared body is over the upload limit.

    DRF's parsers read the raw stream, which skips Django's own check of
    DATA_UPLOAD_MAX_MEMORY_SIZE; checking Content-Length here also refuses the body
    before anything reads it.
    """

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        limit = settings.DATA_UPLOAD_MAX_MEMORY_SIZE
        path = request.path_info
        if limit is not None and path.startswith(API_PREFIX) and _declared_length(request) > limit:
            return JsonResponse(
                {"detail": str(PayloadTooLarge.default_detail)},
                status=PayloadTooLarge.status_code,
            )
        return self.get_response(request)


def _declared_length(request: HttpRequest) -> int:
    try:
        return int(request.META.get("CONTENT_LENGTH") or 0)
    except ValueError:
        return 0


def client_ip(meta: Mapping[str, str]) -> str:
    """The client's address. Behind LEADOPS_TRUSTED_PROXY_COUNT proxies, the entry of
    X-Forwarded-For that the outermost trusted proxy appended (anything to its left is
    whatever the client chose to send)."""
    proxies = int(getattr(settings, "LEADOPS_TRUSTED_PROXY_COUNT", 0) or 0)
    forwarded = [ip.strip() for ip in meta.get("HTTP_X_FORWARDED_FOR", "").split(",") if ip.strip()]
    if proxies > 0 and forwarded:
        return forwarded[-min(proxies, len(forwarded))]
    return meta.get("REMOTE_ADDR", "") or "unknown"
