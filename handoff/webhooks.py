"""Posting to Slack-compatible incoming webhooks without opening a door into our network.

A webhook URL is typed by a person in the admin and fetched by our workers, which sit
next to the database, Redis and the cloud metadata service: a classic SSRF target. So:

- HTTPS only, no user name or password in the URL;
- every address the host resolves to must be public (not loopback, private,
  link-local, reserved, multicast, unspecified, shared, or an IPv6 wrapper of one),
  checked when the URL is saved (`validate_webhook_url`) and again on every send,
  because DNS may have changed since;
- the connection goes to the address that was checked (no second lookup that a
  rebinding DNS server could answer differently), while TLS still verifies the
  certificate for the host name;
- redirects are not followed: a 3xx is a failure, not a new target.

`settings.WEBHOOK_ALLOW_PRIVATE_HOSTS` lifts the address and scheme checks (HTTP is
allowed too) so the tests can post to a server on 127.0.0.1. It is not read from the
environment: production cannot turn it on by accident.
"""

from __future__ import annotations

import contextlib
import http.client
import ipaddress
import json
import socket
import ssl
import threading
from collections.abc import Mapping
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any
from urllib.parse import SplitResult, urlsplit

from django.conf import settings
from django.core.exceptions import ValidationError
from django.utils.translation import gettext as _

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

# 64:ff9b::/96 is NAT64: the last 32 bits are an IPv4 address the gateway reaches.
_NAT64 = ipaddress.ip_network("64:ff9b::/96")
# Enough of an error body to show in the admin; the rest is not read.
_MAX_ERROR_BODY = 2000
USER_AGENT = "LeadOps-Webhook/1.0"


class DeliveryError(Exception):
    """A send that did not go through.

    `retryable`: try again later (5xx, 429, timeout, connection error); otherwise the
    delivery is failed at once (refused address, redirect, other 4xx). `retry_after`:
    seconds the receiver asked us to wait (429 Retry-After), if it said.
    """

    def __init__(self, message: str, *, retryable: bool, retry_after: float | None = None):
        super().__init__(message)
        self.retryable = retryable
        self.retry_after = retry_after


class UnsafeWebhookURL(DeliveryError):
    """The URL or the addresses its host resolves to are not allowed."""

    def __init__(self, message: str) -> None:
        super().__init__(message, retryable=False)


# --- checks ----------------------------------------------------------------------------


def _allow_private() -> bool:
    return bool(getattr(settings, "WEBHOOK_ALLOW_PRIVATE_HOSTS", False))


def _embedded_ipv4(ip: IPAddress) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 address stands for (mapped, 6to4, NAT64), if any."""
    if not isinstance(ip, ipaddress.IPv6Address):
        return None
    if ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    if ip.sixtofour is not None:
        return ip.sixtofour
    if ip in _NAT64:
        return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    return None


def is_public_address(ip: IPAddress) -> bool:
    """True for an address on the public internet; False for anything local or special."""
    inner = _embedded_ipv4(ip)
    if inner is not None and not is_public_address(inner):
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.teredo is not None:
        return False  # a tunnel to an address we cannot check
    special = (
        ip.is_loopback
        or ip.is_private
        or ip.is_link_local
        or ip.is_reserved
        or ip.is_multicast
        or ip.is_unspecified
    )
    # is_global also rules out shared (100.64/10, carrier NAT) and documentation ranges.
    return not special and ip.is_global


def _parse(url: str) -> SplitResult:
    """The URL's parts, or UnsafeWebhookURL when its form is not allowed."""
    try:
        parts = urlsplit(url.strip())
        parts.port  # noqa: B018 - raises ValueError on a bad port
    except ValueError as exc:
        raise UnsafeWebhookURL(_("Enter a valid URL.")) from exc
    allowed = ("https", "http") if _allow_private() else ("https",)
    if parts.scheme.lower() not in allowed:
        raise UnsafeWebhookURL(_("Webhook URLs must start with https://."))
    if not parts.hostname:
        raise UnsafeWebhookURL(_("Enter a valid URL."))
    if parts.username is not None or parts.password is not None:
        raise UnsafeWebhookURL(_("Webhook URLs must not contain a user name or password."))
    return parts


def _port(parts: SplitResult) -> int:
    return parts.port or (443 if parts.scheme.lower() == "https" else 80)


def _getaddrinfo(host: str, port: int) -> list[tuple]:
    # One seam for tests that need a host name to resolve to a given address.
    return socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)


def resolve_public_addresses(host: str, port: int) -> list[IPAddress]:
    """Every address `host` resolves to; UnsafeWebhookURL if any is not public.

    All of them, not just the first: a name with one public and one private address
    would otherwise reach the private one whenever the resolver lists it first.
    A lookup failure raises a retryable DeliveryError (DNS is often briefly down).
    """
    try:
        infos = _getaddrinfo(host, port)
    except (socket.gaierror, UnicodeError) as exc:
        raise DeliveryError(
            _("The host name %(host)s could not be resolved.") % {"host": host}, retryable=True
        ) from exc
    addresses: list[IPAddress] = []
    for _family, _type, _proto, _name, sockaddr in infos:
        ip = ipaddress.ip_address(str(sockaddr[0]).split("%", 1)[0])
        if ip not in addresses:
            addresses.append(ip)
    if not addresses:
        raise DeliveryError(
            _("The host name %(host)s could not be resolved.") % {"host": host}, retryable=True
        )
    if not _allow_private():
        for ip in addresses:
            if not is_public_address(ip):
                raise UnsafeWebhookURL(
                    _(
                        "%(host)s resolves to %(ip)s, a private, local or reserved address: "
                        "webhooks may only post to public internet addresses."
                    )
                    % {"host": host, "ip": ip}
                )
    return addresses


def check_webhook_url(url: str) -> tuple[SplitResult, list[IPAddress]]:
    """The parsed URL and its checked addresses; raises DeliveryError / UnsafeWebhookURL."""
    parts = _parse(url)
    return parts, resolve_public_addresses(parts.hostname or "", _port(parts))


def validate_webhook_url(url: str) -> None:
    """Django validator (admin form, model clean): the same check as sending.

    A host that does not resolve right now is refused too: the person saving it can fix
    a typo at once, rather than find failed deliveries later.
    """
    try:
        check_webhook_url(url)
    except DeliveryError as exc:
        raise ValidationError(str(exc), code="unsafe_webhook_url") from exc


# --- sending ---------------------------------------------------------------------------


def _tls_context() -> ssl.SSLContext:
    # The system's trusted CAs, certificate and host name checked (tests trust their own CA).
    return ssl.create_default_context()


class _PinnedHTTPConnection(http.client.HTTPConnection):
    """Connects to a given IP address while the Host header names the host."""

    def __init__(self, host: str, port: int, *, ip: IPAddress, timeout: float) -> None:
        super().__init__(host, port, timeout=timeout)
        self._ip = ip

    def connect(self) -> None:
        self.sock = socket.create_connection((str(self._ip), self.port), self.timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


class _PinnedHTTPSConnection(_PinnedHTTPConnection):
    """As above over TLS; the certificate is verified for the host name, not the IP."""

    default_port = http.client.HTTPS_PORT

    def __init__(self, host: str, port: int, *, ip: IPAddress, timeout: float) -> None:
        super().__init__(host, port, ip=ip, timeout=timeout)
        self._context = _tls_context()

    def connect(self) -> None:
        super().connect()
        self.sock = self._context.wrap_socket(self.sock, server_hostname=self.host)


def parse_retry_after(value: str | None, *, now: datetime | None = None) -> float | None:
    """Seconds to wait from a Retry-After header (delay-seconds or an HTTP date)."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - (now or datetime.now(UTC))).total_seconds())


def post_webhook(url: str, payload: Mapping[str, Any], *, timeout: float | None = None) -> None:
    """POST `payload` as JSON to `url`; returns on a 2xx, raises DeliveryError otherwise.

    The URL is checked again here and the request goes to the first checked address.
    """
    parts, addresses = check_webhook_url(url)
    timeout = float(timeout if timeout is not None else settings.WEBHOOK_TIMEOUT_SECONDS)
    body = json.dumps(payload, ensure_ascii=False).encode()
    target = parts.path or "/"
    if parts.query:
        target += "?" + parts.query
    connection_class = (
        _PinnedHTTPSConnection if parts.scheme.lower() == "https" else _PinnedHTTPConnection
    )
    conn = connection_class(parts.hostname or "", _port(parts), ip=addresses[0], timeout=timeout)
    # The socket timeout bounds each read; this bounds the whole post, so a receiver
    # trickling its answer a byte at a time cannot hold a worker for longer.
    deadline = _Deadline(conn, timeout)
    try:
        conn.request(
            "POST",
            target,
            body=body,
            headers={"Content-Type": "application/json; charset=utf-8", "User-Agent": USER_AGENT},
        )
        response = conn.getresponse()
        _check_response(response)
    except (OSError, http.client.HTTPException) as exc:
        raise _transport_error(exc, timed_out=deadline.expired) from exc
    finally:
        deadline.cancel()
        conn.close()


def _transport_error(exc: Exception, *, timed_out: bool) -> DeliveryError:
    if timed_out or isinstance(exc, TimeoutError):
        return DeliveryError(_("The webhook did not answer in time."), retryable=True)
    if isinstance(exc, ssl.SSLError):
        return DeliveryError(
            _("TLS error talking to the webhook: %(error)s") % {"error": exc}, retryable=True
        )
    return DeliveryError(
        _("Could not reach the webhook: %(error)s") % {"error": exc}, retryable=True
    )


class _Deadline:
    """Shuts the connection's socket down when `seconds` have passed: a read blocked on
    it returns at once, and the post fails as timed out."""

    def __init__(self, conn: http.client.HTTPConnection, seconds: float) -> None:
        self.expired = False
        self._conn = conn
        self._timer = threading.Timer(seconds, self._expire)
        self._timer.daemon = True
        self._timer.start()

    def _expire(self) -> None:
        self.expired = True
        sock = self._conn.sock
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)

    def cancel(self) -> None:
        self._timer.cancel()


def _check_response(response: http.client.HTTPResponse) -> None:
    status = response.status
    if 200 <= status < 300:
        return
    detail = response.read(_MAX_ERROR_BODY).decode("utf-8", "replace").strip()
    message = _("The webhook answered HTTP %(status)s.") % {"status": status}
    if detail:
        message += " " + detail
    if 300 <= status < 400:
        raise DeliveryError(
            _("The webhook answered with a redirect (HTTP %(status)s); redirects are not followed.")
            % {"status": status},
            retryable=False,
        )
    if status == 429:
        retry_after = parse_retry_after(response.getheader("Retry-After"))
        raise DeliveryError(message, retryable=True, retry_after=retry_after)
    # 408 and 5xx are the receiver's trouble and may pass; other 4xx will not.
    raise DeliveryError(message, retryable=status >= 500 or status == 408)
