"""Webhook safety and HTTP behaviour, against real local HTTP(S) servers.

The test-only flag WEBHOOK_ALLOW_PRIVATE_HOSTS lets posts reach 127.0.0.1 (and plain
HTTP); with it off, loopback, private, link-local and the like are refused before any
connection is made, which the servers' empty request logs prove. Host names other
than localhost are resolved through `webhooks._getaddrinfo`, the one seam for DNS.
"""

from __future__ import annotations

import json
import socket
import ssl
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from django.core.exceptions import ValidationError

from handoff import webhooks
from handoff.webhooks import (
    DeliveryError,
    UnsafeWebhookURL,
    is_public_address,
    parse_retry_after,
    post_webhook,
    validate_webhook_url,
)

TEST_HOST = "hooks.example.test"


# --- a real local HTTP server ------------------------------------------------------------


@dataclass
class Reply:
    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b"ok"
    delay: float = 0.0


@dataclass
class LocalServer:
    """Records every request; answers from `replies` in order, then 200 "ok"."""

    port: int = 0
    requests: list[dict] = field(default_factory=list)
    replies: list[Reply] = field(default_factory=list)
    scheme: str = "http"
    lock: threading.Lock = field(default_factory=threading.Lock)

    def url(self, path: str = "/hook", host: str = "127.0.0.1") -> str:
        return f"{self.scheme}://{host}:{self.port}{path}"

    def next_reply(self) -> Reply:
        with self.lock:
            return self.replies.pop(0) if self.replies else Reply()


def _handler_for(server: LocalServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802 - the http.server API
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length)
            with server.lock:
                server.requests.append(
                    {"path": self.path, "headers": dict(self.headers), "body": body}
                )
            reply = server.next_reply()
            time.sleep(reply.delay)
            try:
                self.send_response(reply.status)
                for name, value in reply.headers.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(reply.body)))
                self.end_headers()
                self.wfile.write(reply.body)
            except (BrokenPipeError, ConnectionResetError):
                pass  # the client gave up (timeout tests)

        def log_message(self, format: str, *args) -> None:  # noqa: A002
            pass

    return Handler


def serve(server: LocalServer, tls: ssl.SSLContext | None = None) -> Iterator[LocalServer]:
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _handler_for(server))
    if tls is not None:
        httpd.socket = tls.wrap_socket(httpd.socket, server_side=True)
        server.scheme = "https"
    server.port = httpd.server_address[1]
    thread = threading.Thread(target=httpd.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield server
    finally:
        httpd.shutdown()
        httpd.server_close()


@pytest.fixture
def webhook_server() -> Iterator[LocalServer]:
    """A plain-HTTP server on 127.0.0.1 recording what it receives."""
    yield from serve(LocalServer())


@pytest.fixture
def other_server() -> Iterator[LocalServer]:
    """A second server: the target of redirects, which must never be reached."""
    yield from serve(LocalServer())


@pytest.fixture
def allow_private(settings) -> None:
    settings.WEBHOOK_ALLOW_PRIVATE_HOSTS = True


@pytest.fixture
def fake_dns(monkeypatch) -> dict[str, list[str]]:
    """Host name → addresses returned, in turn, by successive lookups (last one repeats)."""
    answers: dict[str, list[str]] = {}
    real = webhooks._getaddrinfo

    def lookup(host: str, port: int) -> list[tuple]:
        if host not in answers:
            return real(host, port)
        queue = answers[host]
        ip = queue.pop(0) if len(queue) > 1 else queue[0]
        family = socket.AF_INET6 if ":" in ip else socket.AF_INET
        return [(family, socket.SOCK_STREAM, 6, "", (ip, port))]

    monkeypatch.setattr(webhooks, "_getaddrinfo", lookup)
    return answers


# --- addresses ---------------------------------------------------------------------------

NOT_PUBLIC = [
    "127.0.0.1",
    "127.8.9.10",
    "10.0.0.1",
    "172.16.5.4",
    "192.168.1.1",
    "169.254.169.254",  # cloud metadata
    "0.0.0.0",  # noqa: S104 - an address under test, not a bind
    "100.64.0.1",  # carrier-grade NAT
    "192.0.2.10",  # documentation
    "224.0.0.1",
    "239.255.255.250",
    "240.0.0.1",
    "255.255.255.255",
    "::1",
    "::",
    "fe80::1",
    "fc00::1",
    "fd12:3456::1",
    "ff02::1",
    "::ffff:127.0.0.1",  # IPv4-mapped loopback
    "::ffff:10.0.0.1",
    "2002:7f00:1::1",  # 6to4 wrapping 127.0.0.1
    "64:ff9b::a00:1",  # NAT64 wrapping 10.0.0.1
    "2001:db8::1",  # documentation
]
PUBLIC = ["8.8.8.8", "93.184.216.34", "2606:4700:4700::1111", "2a00:1450:4001:82a::200e"]


@pytest.mark.parametrize("address", NOT_PUBLIC)
def test_local_private_and_special_addresses_are_not_public(address):
    import ipaddress

    assert is_public_address(ipaddress.ip_address(address)) is False


@pytest.mark.parametrize("address", PUBLIC)
def test_internet_addresses_are_public(address):
    import ipaddress

    assert is_public_address(ipaddress.ip_address(address)) is True


# --- validation on save ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("http://93.184.216.34/hook", "https://"),
        ("ftp://93.184.216.34/hook", "https://"),
        ("https://127.0.0.1/hook", "127.0.0.1"),
        ("https://localhost:8443/hook", "private, local or reserved"),
        ("https://10.1.2.3/hook", "10.1.2.3"),
        ("https://192.168.0.10/hook", "192.168.0.10"),
        ("https://169.254.169.254/latest/meta-data/", "169.254.169.254"),
        ("https://[::1]/hook", "::1"),
        ("https://[fe80::1]/hook", "fe80::1"),
        ("https://0x7f000001/hook", "127.0.0.1"),  # hex spelling of loopback
        ("https://2130706433/hook", "127.0.0.1"),  # decimal spelling of loopback
        ("https://0.0.0.0/hook", "0.0.0.0"),  # noqa: S104
        ("https://user:secret@93.184.216.34/hook", "user name or password"),
        ("https:///hook", "valid URL"),
        ("https://93.184.216.34:99999/hook", "valid URL"),
    ],
)
def test_unsafe_urls_are_refused_on_save_with_a_clear_message(url, message):
    with pytest.raises(ValidationError) as caught:
        validate_webhook_url(url)
    assert message in caught.value.messages[0]


def test_a_public_https_address_is_accepted():
    validate_webhook_url("https://93.184.216.34/services/T000/B000/XXXX")


def test_a_host_name_is_checked_by_every_address_it_resolves_to(fake_dns, monkeypatch):
    fake_dns["good.example.test"] = ["93.184.216.34"]
    validate_webhook_url("https://good.example.test/hook")

    # One public and one private address: refused, whichever the resolver lists first.
    def both(host: str, port: int) -> list[tuple]:
        return [
            (socket.AF_INET, socket.SOCK_STREAM, 6, "", ("93.184.216.34", port)),
            (socket.AF_INET, socket.SOCK_STREAM, 6, "", ("10.0.0.7", port)),
        ]

    monkeypatch.setattr(webhooks, "_getaddrinfo", both)
    with pytest.raises(ValidationError, match="10.0.0.7"):
        validate_webhook_url("https://mixed.example.test/hook")


def test_a_host_that_does_not_resolve_is_refused_on_save():
    with pytest.raises(ValidationError, match="could not be resolved"):
        validate_webhook_url("https://no-such-host.invalid/hook")


def test_the_test_flag_allows_plain_http_to_loopback(allow_private):
    validate_webhook_url("http://127.0.0.1:9/hook")


# --- refused on send: no request reaches the target ---------------------------------------


def test_loopback_is_refused_on_send_and_never_reached(webhook_server):
    for url in (
        webhook_server.url(),  # http
        webhook_server.url().replace("http://", "https://"),
        webhook_server.url(host="localhost").replace("http://", "https://"),
    ):
        with pytest.raises(UnsafeWebhookURL) as caught:
            post_webhook(url, {"text": "hello"})
        assert caught.value.retryable is False
    assert webhook_server.requests == []


def test_private_and_link_local_targets_are_refused_before_connecting(monkeypatch):
    attempts: list[tuple] = []
    monkeypatch.setattr(
        webhooks.socket, "create_connection", lambda *args, **kw: attempts.append(args)
    )
    for url in (
        "https://10.0.0.5/hook",
        "https://192.168.1.20:8443/hook",
        "https://169.254.169.254/latest/meta-data/",
        "https://[fe80::1]/hook",
        "https://[::ffff:127.0.0.1]/hook",
    ):
        with pytest.raises(UnsafeWebhookURL):
            post_webhook(url, {"text": "hello"})
    assert attempts == []


def test_dns_that_changes_to_loopback_after_saving_is_refused_on_send(fake_dns, webhook_server):
    # Public when the admin saved it; rebinding to 127.0.0.1 when the worker sends.
    fake_dns[TEST_HOST] = ["93.184.216.34", "127.0.0.1"]
    url = f"https://{TEST_HOST}:{webhook_server.port}/hook"
    validate_webhook_url(url)

    with pytest.raises(UnsafeWebhookURL, match="127.0.0.1"):
        post_webhook(url, {"text": "hello"})
    assert webhook_server.requests == []


def test_the_connection_goes_to_the_checked_address_with_one_lookup(
    allow_private, fake_dns, webhook_server, monkeypatch
):
    lookups: list[str] = []
    resolve = webhooks._getaddrinfo

    def counting(host: str, port: int) -> list[tuple]:
        lookups.append(host)
        return resolve(host, port)

    monkeypatch.setattr(webhooks, "_getaddrinfo", counting)
    fake_dns[TEST_HOST] = ["127.0.0.1"]
    post_webhook(webhook_server.url(host=TEST_HOST), {"text": "hello"})

    assert lookups == [TEST_HOST]  # http.client made no lookup of its own
    (request,) = webhook_server.requests
    assert request["headers"]["Host"] == f"{TEST_HOST}:{webhook_server.port}"


# --- HTTP behaviour (flag on, a real local server) ----------------------------------------


def test_a_post_is_slack_compatible_json(allow_private, webhook_server):
    post_webhook(webhook_server.url("/services/T1/B2/x?y=1"), {"text": "新しいMQL &lt;x&gt;"})

    (request,) = webhook_server.requests
    assert request["path"] == "/services/T1/B2/x?y=1"
    assert request["headers"]["Content-Type"].startswith("application/json")
    assert json.loads(request["body"]) == {"text": "新しいMQL &lt;x&gt;"}


@pytest.mark.parametrize("status", [500, 502, 503, 408])
def test_server_errors_are_retryable(allow_private, webhook_server, status):
    webhook_server.replies.append(Reply(status=status, body=b"try later"))
    with pytest.raises(DeliveryError) as caught:
        post_webhook(webhook_server.url(), {"text": "x"})
    assert caught.value.retryable is True
    assert f"HTTP {status}" in str(caught.value) and "try later" in str(caught.value)


def test_429_is_retryable_after_the_time_asked(allow_private, webhook_server):
    webhook_server.replies.append(Reply(status=429, headers={"Retry-After": "120"}))
    with pytest.raises(DeliveryError) as caught:
        post_webhook(webhook_server.url(), {"text": "x"})
    assert (caught.value.retryable, caught.value.retry_after) == (True, 120.0)


@pytest.mark.parametrize("status", [400, 403, 404, 410])
def test_client_errors_are_not_retried(allow_private, webhook_server, status):
    webhook_server.replies.append(Reply(status=status, body=b"invalid_token"))
    with pytest.raises(DeliveryError) as caught:
        post_webhook(webhook_server.url(), {"text": "x"})
    assert caught.value.retryable is False


@pytest.mark.parametrize("status", [301, 302, 307, 308])
def test_redirects_are_not_followed(allow_private, webhook_server, other_server, status):
    webhook_server.replies.append(Reply(status=status, headers={"Location": other_server.url()}))
    with pytest.raises(DeliveryError, match="redirect") as caught:
        post_webhook(webhook_server.url(), {"text": "x"})

    assert caught.value.retryable is False
    assert len(webhook_server.requests) == 1
    assert other_server.requests == []


def test_a_slow_server_times_out_and_is_retryable(allow_private, webhook_server):
    webhook_server.replies.append(Reply(delay=1.5))
    started = time.monotonic()
    with pytest.raises(DeliveryError, match="did not answer in time") as caught:
        post_webhook(webhook_server.url(), {"text": "x"}, timeout=0.3)
    assert caught.value.retryable is True
    assert time.monotonic() - started < 1.4


def test_a_closed_port_is_a_retryable_connection_error(allow_private):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # nothing listens once it is closed
    with pytest.raises(DeliveryError, match="Could not reach") as caught:
        post_webhook(f"http://127.0.0.1:{port}/hook", {"text": "x"})
    assert caught.value.retryable is True


def test_retry_after_is_read_as_seconds_or_an_http_date():
    now = datetime(2026, 11, 24, 9, 0, tzinfo=UTC)
    assert parse_retry_after("30") == 30.0
    later, earlier = now + timedelta(seconds=90), now - timedelta(hours=1)
    assert parse_retry_after(format_datetime(later, usegmt=True), now=now) == 90
    assert parse_retry_after(format_datetime(earlier, usegmt=True), now=now) == 0
    assert parse_retry_after("soon") is None
    assert parse_retry_after(None) is None


# --- TLS: pinned to the checked address, certificate checked for the host name ------------


@pytest.fixture(scope="module")
def certificate(tmp_path_factory) -> tuple[Path, Path]:
    folder = tmp_path_factory.mktemp("tls")
    cert, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run(
        [
            "openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
            "-subj", f"/CN={TEST_HOST}", "-addext", f"subjectAltName=DNS:{TEST_HOST}",
            "-keyout", str(key), "-out", str(cert),
        ],
        check=True,
        capture_output=True,
    )  # fmt: skip
    return cert, key


@pytest.fixture
def tls_server(certificate) -> Iterator[LocalServer]:
    cert, key = certificate
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    yield from serve(LocalServer(), tls=context)


@pytest.fixture
def trust_test_certificate(certificate, monkeypatch) -> None:
    monkeypatch.setattr(
        webhooks, "_tls_context", lambda: ssl.create_default_context(cafile=str(certificate[0]))
    )


def test_https_goes_to_the_checked_address_and_verifies_the_host_name(
    allow_private, fake_dns, tls_server, trust_test_certificate
):
    fake_dns[TEST_HOST] = ["127.0.0.1"]
    post_webhook(tls_server.url(host=TEST_HOST), {"text": "over TLS"})

    (request,) = tls_server.requests
    assert json.loads(request["body"]) == {"text": "over TLS"}


def test_a_certificate_for_another_name_is_refused(
    allow_private, fake_dns, tls_server, trust_test_certificate
):
    fake_dns["other.example.test"] = ["127.0.0.1"]
    with pytest.raises(DeliveryError, match="TLS"):
        post_webhook(tls_server.url(host="other.example.test"), {"text": "x"})
    assert tls_server.requests == []


def test_an_untrusted_certificate_is_refused(allow_private, fake_dns, tls_server):
    fake_dns[TEST_HOST] = ["127.0.0.1"]
    with pytest.raises(DeliveryError, match="TLS"):
        post_webhook(tls_server.url(host=TEST_HOST), {"text": "x"})
    assert tls_server.requests == []
