"""Rate limits of the API's ingest endpoints (leadops.throttling): per token, 429 with
Retry-After and a JSON message beyond the limit; reads and other tokens unaffected;
Redis down lets requests through. (The website forms' limiter: tests/nurturing/
test_capture.py, test_too_many_posts_from_one_address_get_429_with_retry_after.)"""

from __future__ import annotations

import pytest
import redis

from leadops import throttling

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def fresh_counters():
    """Counters of earlier runs (same user ids on a recreated database) start at 0."""
    client = throttling._client()
    for key in client.scan_iter(f"{throttling.KEY_PREFIX}:*"):
        client.delete(key)
    yield


def event(number: int) -> dict:
    return {"event_id": f"rate-{number}", "email": "rate@example.jp", "type": "page_view"}


def test_ingest_beyond_the_rate_is_429_with_retry_after(settings, marketer, manager, token_client):
    settings.LEADOPS_API_INGEST_RATE = (3, 60)
    client = token_client(marketer)
    answers = [client.post("/api/v1/events/", event(n), format="json") for n in range(3)]
    assert [a.status_code for a in answers] == [202, 202, 202]
    refused = client.post("/api/v1/events/", event(3), format="json")
    assert refused.status_code == 429
    assert 1 <= int(refused.headers["Retry-After"]) <= 60
    assert "at most 3 per 60 seconds" in refused.json()["detail"]
    # The same budget covers lead upserts; reads are not counted.
    lead = client.post("/api/v1/leads/", {"email": "rate2@example.jp"}, format="json")
    assert lead.status_code == 429
    assert client.get("/api/v1/leads/").status_code == 200
    # Another token has its own budget.
    other = token_client(manager)
    assert other.post("/api/v1/events/", event(4), format="json").status_code == 202


def test_a_batch_counts_as_one_request(settings, marketer, token_client):
    settings.LEADOPS_API_INGEST_RATE = (1, 60)
    client = token_client(marketer)
    batch = {"events": [event(n) for n in range(10, 20)]}
    answer = client.post("/api/v1/events/", batch, format="json")
    assert answer.status_code == 202 and answer.json()["accepted"] == 10


def test_the_limit_can_be_turned_off(settings, marketer, token_client):
    settings.LEADOPS_API_INGEST_RATE = None
    client = token_client(marketer)
    answers = [client.post("/api/v1/events/", event(n), format="json") for n in range(5)]
    assert {a.status_code for a in answers} == {202}


def test_redis_down_lets_ingest_through(settings, marketer, token_client, monkeypatch):
    settings.LEADOPS_API_INGEST_RATE = (1, 60)
    unreachable = redis.Redis(host="127.0.0.1", port=1, socket_connect_timeout=0.1)
    monkeypatch.setattr(throttling, "_client", lambda: unreachable)
    client = token_client(marketer)
    answers = [client.post("/api/v1/events/", event(n), format="json") for n in range(3)]
    assert {a.status_code for a in answers} == {202}


def test_the_rate_setting_is_read_from_the_environment(monkeypatch):
    from django.core.exceptions import ImproperlyConfigured

    from leadops.settings import env_rate

    monkeypatch.setenv("LEADOPS_API_INGEST_RATE", "500/s")
    assert env_rate("LEADOPS_API_INGEST_RATE", "1/min") == (500, 1)
    monkeypatch.setenv("LEADOPS_API_INGEST_RATE", "off")
    assert env_rate("LEADOPS_API_INGEST_RATE", "1/min") is None
    monkeypatch.setenv("LEADOPS_API_INGEST_RATE", "lots")
    with pytest.raises(ImproperlyConfigured):
        env_rate("LEADOPS_API_INGEST_RATE", "1/min")
    monkeypatch.delenv("LEADOPS_API_INGEST_RATE")
    assert env_rate("LEADOPS_API_INGEST_RATE", "120000/min") == (120000, 60)
