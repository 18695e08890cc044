"""Webhook receivers that misbehave. Most cases are tested in tests/handoff (500 retried
with backoff then failed, 429 honouring Retry-After, a silent receiver timing out, a
redirect to 127.0.0.1 never followed, each delivery posted once even when its task runs
again); this adds the receiver that "hangs" by trickling its answer a byte at a time,
each byte within the socket timeout, which only a deadline for the whole post stops.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator

import pytest

from handoff.webhooks import DeliveryError, post_webhook

pytestmark = pytest.mark.slow

TIMEOUT_SECONDS = 1.0


@pytest.fixture
def trickling_server() -> Iterator[str]:
    """Answers every connection with a status line sent one byte per 0.1 s, for 20 s."""
    listener = socket.create_server(("127.0.0.1", 0))
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                client, _address = listener.accept()
            except OSError:
                return
            with client:
                client.recv(65536)
                for byte in b"HTTP/1.1 200 OK\r\n" * 20:
                    if stop.wait(0.1):
                        return
                    try:
                        client.sendall(bytes([byte]))
                    except OSError:
                        break

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{listener.getsockname()[1]}/hook"
    stop.set()
    listener.close()
    thread.join(timeout=5)


def test_a_receiver_trickling_its_answer_is_cut_off_at_the_timeout(settings, trickling_server):
    settings.WEBHOOK_ALLOW_PRIVATE_HOSTS = True
    started = time.monotonic()
    with pytest.raises(DeliveryError) as caught:
        post_webhook(trickling_server, {"text": "hello"}, timeout=TIMEOUT_SECONDS)
    elapsed = time.monotonic() - started
    assert caught.value.retryable
    assert "did not answer in time" in str(caught.value)
    assert elapsed < TIMEOUT_SECONDS + 1.0
