"""Website capture: the snippet, page views, identification and the public form endpoint."""

from __future__ import annotations

import json
import threading
import time
import uuid
from datetime import timedelta
from urllib.parse import parse_qs, unquote, urlsplit

import pytest
import redis
import time_machine
from django.core import signing
from django.db import connection
from django.urls import reverse
from django.utils import timezone
from redis.backoff import NoBackoff
from redis.retry import Retry

from leadops.middleware import client_ip
from leadops.models import Activity, Lead
from nurturing import capture
from nurturing.admin.capture import WebFormAdminForm
from nurturing.capture import PageView, forget_capture_origins
from nurturing.models import AnonymousPageView, WebForm, WebVisitor
from scoring.services import rescore_leads, score_breakdown_for
from tests.factories import LeadFactory
from tests.worker import CeleryWorkers, celery_worker_process  # noqa: F401  (a fixture)

SITE = "https://www.example.co.jp"
OTHER_SITE = "https://evil.example.com"
PV_URL = reverse("capture-page-view")


@pytest.fixture(autouse=True)
def capture_settings(settings):
    """Every test reads the allowlist afresh, stays far below the rate limits and starts
    with an empty page-view queue."""
    settings.LEADOPS_CAPTURE_ORIGINS = []
    settings.LEADOPS_CAPTURE_ORIGINS_CACHE_SECONDS = 0
    settings.LEADOPS_FORM_RATE_PER_IP = 1000
    settings.LEADOPS_FORM_RATE_PER_FORM = 1000
    forget_capture_origins()
    queue = capture.queue_client()
    queue.delete(capture.QUEUE_KEY, capture.FLAG_KEY)
    yield
    forget_capture_origins()
    queue.delete(capture.QUEUE_KEY, capture.FLAG_KEY)


def drain() -> None:
    """What the Celery task does: store every queued page view."""
    while capture.drain_page_views():
        pass


def stored_view(visitor: uuid.UUID, path: str, *, at=None) -> None:
    """A page view stored as the drain stores it (no queue)."""
    at = at or timezone.now()
    capture.store_page_views([PageView(visitor, uuid.uuid4(), SITE + path, occurred_at=at)])


@pytest.fixture
def web_form(db) -> WebForm:
    # A new slug (and primary key) per test: rate-limit counters never carry over.
    return WebForm.objects.create(
        name="資料請求",
        slug=f"docs-{uuid.uuid4().hex[:8]}",
        allowed_origins=[SITE],
        source="資料DL",
    )


def form_url(form: WebForm) -> str:
    return reverse("capture-form", args=[form.slug])


def send_view(client, *, visitor: uuid.UUID, path: str = "/", origin: str = SITE, **extra):
    body = {"visitor": str(visitor), "view": str(uuid.uuid4()), "url": SITE + path, **extra}
    return client.post(
        PV_URL, data=json.dumps(body), content_type="text/plain;charset=UTF-8", HTTP_ORIGIN=origin
    )


def post_json(client, form: WebForm, body: dict, *, origin: str | None = SITE, **headers):
    if origin:
        headers["HTTP_ORIGIN"] = origin
    return client.post(
        form_url(form),
        data=json.dumps(body),
        content_type="application/json",
        HTTP_ACCEPT="application/json",
        **headers,
    )


def post_classic(client, form: WebForm, data: dict, *, page: str = "/contact", **headers):
    return client.post(
        form_url(form), data=data, HTTP_ORIGIN=SITE, HTTP_REFERER=SITE + page, **headers
    )


GOOD_FORM = {
    "email": "Sato@Example.co.jp",
    "last_name": "佐藤",
    "first_name": "花子",
    "company": "株式会社サンプル",
    "job_level": "director",
    "department": "marketing",
    "industry": "software",
    "employee_count": 120,
    "phone": "03-1234-5678",
    "message": "料金について詳しく知りたいです。",
}


# --- the snippet --------------------------------------------------------------------------


def test_snippet_is_served_as_javascript_with_long_cache_headers(client):
    response = client.get(reverse("capture-snippet"))

    assert response.status_code == 200
    assert response["Content-Type"] == "text/javascript; charset=utf-8"
    assert "max-age=86400" in response["Cache-Control"]
    assert response["Cross-Origin-Resource-Policy"] == "cross-origin"
    body = response.content.decode()
    assert "/capture/pv/" in body and "leadops_vid" in body and "leadops_lid" in body

    again = client.get(reverse("capture-snippet"), HTTP_IF_NONE_MATCH=response["ETag"])
    assert again.status_code == 304


# --- page views ---------------------------------------------------------------------------


def test_an_anonymous_view_is_queued_then_stored_as_one_row(client, web_form):
    visitor = uuid.uuid4()

    response = send_view(client, visitor=visitor, path="/pricing?_lo=x", title="料金")

    assert response.status_code == 204
    assert response["Access-Control-Allow-Origin"] == SITE
    assert capture.queued_page_views() == 1
    assert not AnonymousPageView.objects.exists()  # stored by the drain, not the request
    drain()
    view = AnonymousPageView.objects.get(visitor__visitor_id=visitor)
    assert (view.url, view.title, view.merged_at) == (SITE + "/pricing", "料金", None)
    assert WebVisitor.objects.get(visitor_id=visitor).lead is None
    assert not Activity.objects.exists()


def test_page_views_from_a_site_not_on_the_allowlist_are_refused(client, web_form):
    visitor = uuid.uuid4()

    response = send_view(client, visitor=visitor, origin=OTHER_SITE)

    assert response.status_code == 403
    assert "Access-Control-Allow-Origin" not in response
    assert capture.queued_page_views() == 0


def test_the_capture_origins_setting_allows_a_site_without_any_form(client, db, settings):
    settings.LEADOPS_CAPTURE_ORIGINS = ["https://Blog.Example.co.jp:443/"]

    body = {"visitor": str(uuid.uuid4()), "url": "https://blog.example.co.jp/post"}
    response = client.post(
        PV_URL,
        data=json.dumps(body),
        content_type="text/plain",
        HTTP_ORIGIN="https://blog.example.co.jp",
    )
    drain()

    assert response.status_code == 204
    assert AnonymousPageView.objects.get().url == "https://blog.example.co.jp/post"


def test_page_view_preflight_answers_allowed_origins_only(client, web_form):
    allowed = client.options(PV_URL, HTTP_ORIGIN=SITE, HTTP_ACCESS_CONTROL_REQUEST_METHOD="POST")
    refused = client.options(
        PV_URL, HTTP_ORIGIN=OTHER_SITE, HTTP_ACCESS_CONTROL_REQUEST_METHOD="POST"
    )

    assert allowed.status_code == 204
    assert allowed["Access-Control-Allow-Origin"] == SITE
    assert "POST" in allowed["Access-Control-Allow-Methods"]
    assert "Content-Type" in allowed["Access-Control-Allow-Headers"]
    assert "Origin" in allowed["Vary"]
    assert refused.status_code == 403
    assert "Access-Control-Allow-Origin" not in refused


def test_bad_page_views_get_a_message_per_field(client, web_form):
    body = {"visitor": "not-a-uuid", "url": "javascript:alert(1)"}
    response = client.post(
        PV_URL, data=json.dumps(body), content_type="text/plain", HTTP_ORIGIN=SITE
    )
    not_json = client.post(PV_URL, data="{", content_type="text/plain", HTTP_ORIGIN=SITE)
    elsewhere = send_view(client, visitor=uuid.uuid4(), url=OTHER_SITE + "/")

    assert response.status_code == 400
    assert set(response.json()["errors"]) == {"visitor", "url"}
    assert not_json.status_code == 400
    assert "non_field_errors" in not_json.json()["errors"]
    assert elsewhere.status_code == 400
    assert "url" in elsewhere.json()["errors"]
    assert capture.queued_page_views() == 0


def test_the_hot_path_touches_no_database(client, web_form, settings, django_assert_num_queries):
    settings.LEADOPS_CAPTURE_ORIGINS_CACHE_SECONDS = 60
    capture.capture_origins()  # the allowlist, as a warm process holds it
    lead, visitor = LeadFactory(), uuid.uuid4()
    identity = capture.issue_identity_token(lead.pk, visitor)

    with django_assert_num_queries(0):
        anonymous = send_view(client, visitor=uuid.uuid4(), path="/a")
        identified = send_view(client, visitor=visitor, path="/b", identity=identity)

    assert (anonymous.status_code, identified.status_code) == (204, 204)
    assert capture.queued_page_views() == 2


def test_one_drain_stores_many_visitors_views_in_a_batch(
    db, web_form, django_assert_max_num_queries
):
    lead, known = LeadFactory(), uuid.uuid4()
    capture.identify_visitor(known, lead.pk)
    new = [uuid.uuid4() for _ in range(20)]
    at = timezone.now()
    views = [PageView(v, uuid.uuid4(), SITE + f"/{i}", occurred_at=at) for i, v in enumerate(new)]
    views += [PageView(new[0], uuid.uuid4(), SITE + "/again", occurred_at=at)]
    views += [PageView(known, uuid.uuid4(), SITE + "/known", occurred_at=at)]
    views += [PageView(uuid.uuid4(), uuid.uuid4(), SITE + "/t", lead_id=lead.pk, occurred_at=at)]

    with django_assert_max_num_queries(12):
        capture.store_page_views(views)

    assert WebVisitor.objects.filter(visitor_id__in=new, lead=None).count() == 20
    assert AnonymousPageView.objects.count() == 21
    assert sorted(a.properties["url"] for a in Activity.objects.filter(lead=lead)) == [
        SITE + "/known",
        SITE + "/t",
    ]


def test_without_redis_a_view_is_stored_at_once(client, web_form, monkeypatch):
    unreachable = redis.Redis(host="127.0.0.1", port=1, retry=Retry(NoBackoff(), 0))
    monkeypatch.setattr(capture, "queue_client", lambda: unreachable)
    visitor = uuid.uuid4()

    response = send_view(client, visitor=visitor, path="/offline")

    assert response.status_code == 204
    assert AnonymousPageView.objects.get(visitor__visitor_id=visitor).url == SITE + "/offline"


def test_a_token_of_a_deleted_lead_leaves_the_view_anonymous(client, web_form):
    lead, visitor = LeadFactory(), uuid.uuid4()
    identity = capture.issue_identity_token(lead.pk, visitor)
    lead.delete()

    send_view(client, visitor=visitor, path="/pricing", identity=identity)
    drain()

    assert AnonymousPageView.objects.get(visitor__visitor_id=visitor).url == SITE + "/pricing"
    assert not Activity.objects.exists()


def test_a_view_with_a_valid_identity_becomes_an_activity_directly(client, web_form):
    lead, visitor = LeadFactory(), uuid.uuid4()
    token = capture.issue_identity_token(lead.pk, visitor)

    response = send_view(client, visitor=visitor, path="/case/1", identity=token)
    drain()

    assert response.status_code == 204
    activity = Activity.objects.get(lead=lead)
    assert activity.type == "page_view"
    assert activity.properties["url"] == SITE + "/case/1"
    assert not AnonymousPageView.objects.exists()


def test_a_resent_view_is_recorded_once(client, web_form):
    lead, visitor = LeadFactory(), uuid.uuid4()
    body = {
        "visitor": str(visitor),
        "view": str(uuid.uuid4()),
        "url": SITE + "/",
        "identity": capture.issue_identity_token(lead.pk, visitor),
    }
    for _ in range(2):
        response = client.post(
            PV_URL, data=json.dumps(body), content_type="text/plain", HTTP_ORIGIN=SITE
        )
        assert response.status_code == 204
    drain()

    assert Activity.objects.filter(lead=lead).count() == 1


@pytest.mark.parametrize(
    "make_token",
    [
        pytest.param(lambda lead, vid: "x" + capture.issue_identity_token(lead, vid), id="edited"),
        pytest.param(
            lambda lead, vid: signing.dumps({"l": lead, "v": vid.hex}, salt="other"),
            id="other-purpose",
        ),
        pytest.param(
            lambda lead, vid: capture.issue_identity_token(lead, uuid.uuid4()), id="other-visitor"
        ),
        pytest.param(
            lambda lead, vid: signing.dumps({"l": lead, "v": vid.hex}, key="not-our-secret-key"),
            id="foreign-key",
        ),
    ],
)
def test_a_tampered_identity_is_ignored_and_nothing_merges(client, web_form, make_token):
    lead, visitor = LeadFactory(), uuid.uuid4()
    send_view(client, visitor=visitor, path="/first")

    response = send_view(
        client, visitor=visitor, path="/pricing", identity=make_token(lead.pk, visitor)
    )
    drain()

    assert response.status_code == 200
    assert response.json() == {"forget": True}
    assert not Activity.objects.exists()
    assert AnonymousPageView.objects.filter(merged_at__isnull=True).count() == 2
    assert WebVisitor.objects.get(visitor_id=visitor).lead is None


def test_an_email_click_identifies_the_visitor_and_merges_earlier_views(client, web_form):
    lead, visitor = LeadFactory(), uuid.uuid4()
    send_view(client, visitor=visitor, path="/pricing")
    send_view(client, visitor=visitor, path="/case/7")
    drain()

    response = send_view(
        client, visitor=visitor, path="/news", click=capture.issue_click_token(lead.pk)
    )
    drain()

    assert response.status_code == 200
    identity = response.json()["identity"]
    assert capture.read_identity_token(identity, visitor) == lead.pk
    urls = sorted(a.properties["url"] for a in Activity.objects.filter(lead=lead))
    assert urls == [SITE + "/case/7", SITE + "/news", SITE + "/pricing"]
    assert not AnonymousPageView.objects.filter(merged_at__isnull=True).exists()
    assert WebVisitor.objects.get(visitor_id=visitor).lead == lead


def test_a_tampered_or_expired_click_token_identifies_nobody(client, web_form):
    lead, visitor = LeadFactory(), uuid.uuid4()
    with time_machine.travel(timezone.now() - timedelta(days=2)):
        expired = capture.issue_click_token(lead.pk)

    for token in (capture.issue_click_token(lead.pk)[:-2] + "zz", expired):
        response = send_view(client, visitor=visitor, click=token)
        assert response.status_code == 204
    drain()

    assert not Activity.objects.exists()
    assert AnonymousPageView.objects.filter(merged_at__isnull=True).count() == 2
    assert WebVisitor.objects.get(visitor_id=visitor).lead is None


def test_a_known_visitor_without_its_cookie_still_counts_for_its_lead(client, web_form):
    lead, visitor = LeadFactory(), uuid.uuid4()
    capture.identify_visitor(visitor, lead.pk)

    response = send_view(client, visitor=visitor, path="/pricing")
    drain()

    assert response.status_code == 204
    assert Activity.objects.get(lead=lead).properties["url"] == SITE + "/pricing"
    assert not AnonymousPageView.objects.exists()


def test_merging_twice_records_each_view_once(db, web_form):
    lead, visitor = LeadFactory(), uuid.uuid4()
    stored_view(visitor, "/a")
    stored_view(visitor, "/b")

    assert capture.identify_visitor(visitor, lead.pk) == 2
    AnonymousPageView.objects.update(merged_at=None)  # as if the first merge was cut short
    assert capture.identify_visitor(visitor, lead.pk) == 2

    assert Activity.objects.filter(lead=lead).count() == 2


def test_click_tokens_are_only_added_to_links_to_allowed_sites(db, web_form):
    lead = LeadFactory()

    ours = capture.with_click_token(SITE + "/pricing?utm_source=mail#plans", lead.pk)
    theirs = capture.with_click_token(OTHER_SITE + "/article", lead.pk)

    parts = urlsplit(ours)
    assert parts.fragment == "plans"
    query = parse_qs(parts.query)
    assert query["utm_source"] == ["mail"]
    assert capture.read_click_token(query["_lo"][0]) == lead.pk
    assert theirs == OTHER_SITE + "/article"


@pytest.mark.django_db(transaction=True)
def test_a_view_arriving_during_an_identification_is_not_left_anonymous(monkeypatch):
    """The page-view statement waits for an identification holding the visitor row and
    then sees its lead (FOR KEY SHARE against FOR UPDATE)."""
    WebForm.objects.create(name="f", slug="race", allowed_origins=[SITE])
    lead, visitor = LeadFactory(), uuid.uuid4()
    stored_view(visitor, "/before")
    merging, go_on = threading.Event(), threading.Event()
    merge_views = capture._merge_views

    def slow_merge(*args, **kwargs):
        merging.set()  # the visitor row is locked and linked, not yet committed
        go_on.wait(5)
        time.sleep(0.3)  # the page view below is waiting for our lock by now
        return merge_views(*args, **kwargs)

    monkeypatch.setattr(capture, "_merge_views", slow_merge)
    identify = _thread(lambda: capture.identify_visitor(visitor, lead.pk))
    assert merging.wait(5)
    view = _thread(lambda: stored_view(visitor, "/during"))
    go_on.set()
    identify.join(10)
    view.join(10)

    assert not AnonymousPageView.objects.filter(merged_at__isnull=True).exists()
    urls = sorted(a.properties["url"] for a in Activity.objects.filter(lead=lead))
    assert urls == [SITE + "/before", SITE + "/during"]


def _thread(work) -> threading.Thread:
    def run() -> None:
        try:
            work()
        finally:
            connection.close()

    thread = threading.Thread(target=run)
    thread.start()
    return thread


# --- forms: origins -----------------------------------------------------------------------


def test_a_form_post_from_an_allowed_origin_creates_the_lead_and_the_event(client, web_form):
    response = post_json(client, web_form, GOOD_FORM, HTTP_REFERER=SITE + "/docs?_lo=abc")

    assert response.status_code == 200
    assert response.json() == {"ok": True, "identity": None, "redirect": None}
    assert response["Access-Control-Allow-Origin"] == SITE
    lead = Lead.objects.get(email="sato@example.co.jp")
    assert (lead.last_name, lead.company, lead.source, lead.employee_count) == (
        "佐藤",
        "株式会社サンプル",
        "資料DL",
        120,
    )
    event = Activity.objects.get(lead=lead)
    assert event.type == "form_submit"
    assert event.properties == {
        "form": web_form.slug,
        "form_name": "資料請求",
        "url": SITE + "/docs",
        "message": "料金について詳しく知りたいです。",
    }


def test_a_second_post_updates_the_lead_without_blanking_it(client, web_form):
    post_json(client, web_form, GOOD_FORM)

    post_json(client, web_form, {"email": "sato@example.co.jp", "title": "部長"})

    lead = Lead.objects.get(email="sato@example.co.jp")
    assert (lead.title, lead.phone, lead.source) == ("部長", "03-1234-5678", "資料DL")
    assert Activity.objects.filter(lead=lead, type="form_submit").count() == 2


@pytest.mark.parametrize(
    "headers",
    [
        pytest.param({"origin": OTHER_SITE}, id="other-origin"),
        pytest.param({"origin": "null"}, id="opaque-origin"),
        pytest.param({"origin": None, "HTTP_REFERER": OTHER_SITE + "/x"}, id="other-referer"),
        pytest.param({"origin": None}, id="no-origin-no-referer"),
        pytest.param({"origin": "http://www.example.co.jp"}, id="http-not-https"),
    ],
)
def test_form_posts_from_elsewhere_are_forbidden(client, web_form, headers):
    response = post_json(client, web_form, GOOD_FORM, **headers)

    assert response.status_code == 403
    assert "Access-Control-Allow-Origin" not in response
    assert "allowed origins" in response.json()["detail"]
    assert not Lead.objects.exists()


def test_the_referer_stands_in_for_a_missing_origin(client, web_form):
    response = post_json(client, web_form, GOOD_FORM, origin=None, HTTP_REFERER=SITE + "/c")

    assert response.status_code == 200
    assert Lead.objects.filter(email="sato@example.co.jp").exists()


def test_a_classic_post_from_elsewhere_gets_a_403_page(client, web_form):
    response = client.post(form_url(web_form), data=GOOD_FORM, HTTP_ORIGIN=OTHER_SITE)

    assert response.status_code == 403
    assert response["Content-Type"].startswith("text/html")
    assert b"allowed origins" in response.content
    assert not Lead.objects.exists()


def test_unknown_and_inactive_forms_are_not_found(client, web_form):
    web_form.active = False
    web_form.save()

    assert post_json(client, web_form, GOOD_FORM).status_code == 404
    missing = client.post("/capture/forms/nope/", data=GOOD_FORM, HTTP_ORIGIN=SITE)
    assert missing.status_code == 404


def test_form_preflight_answers_the_forms_origins_only(client, web_form):
    url = form_url(web_form)
    allowed = client.options(url, HTTP_ORIGIN=SITE, HTTP_ACCESS_CONTROL_REQUEST_METHOD="POST")
    refused = client.options(url, HTTP_ORIGIN=OTHER_SITE)

    assert allowed.status_code == 204
    assert allowed["Access-Control-Allow-Origin"] == SITE
    assert refused.status_code == 403


# --- forms: honeypot, rate limits, bad input ----------------------------------------------


def test_a_filled_honeypot_looks_accepted_and_stores_nothing(client, web_form):
    visitor = uuid.uuid4()
    as_json = post_json(client, web_form, {**GOOD_FORM, "website": "http://spam.example"})
    classic = post_classic(
        client,
        web_form,
        {**GOOD_FORM, "website": "x", "next": "/thanks", "leadops_vid": str(visitor)},
    )

    assert as_json.status_code == 200
    assert as_json.json() == {"ok": True, "identity": None, "redirect": None}
    assert classic.status_code == 303
    assert classic["Location"] == SITE + "/thanks"
    assert not Lead.objects.exists()
    assert not Activity.objects.exists()
    assert not WebVisitor.objects.exists()


def test_too_many_posts_from_one_address_get_429_with_retry_after(client, web_form, settings):
    settings.LEADOPS_FORM_RATE_PER_IP = 2
    address = f"10.{uuid.uuid4().int % 250}.{uuid.uuid4().int % 250}.9"

    answers = [
        post_json(client, web_form, {**GOOD_FORM, "email": f"r{i}@example.jp"}, REMOTE_ADDR=address)
        for i in range(3)
    ]
    other_address = post_json(client, web_form, GOOD_FORM, REMOTE_ADDR="192.0.2.77")

    assert [a.status_code for a in answers] == [200, 200, 429]
    assert 1 <= int(answers[2]["Retry-After"]) <= 60
    assert answers[2]["Access-Control-Allow-Origin"] == SITE
    assert "Wait" in answers[2].json()["detail"]
    assert not Lead.objects.filter(email="r2@example.jp").exists()
    assert other_address.status_code == 200


def test_a_form_has_its_own_limit_across_addresses(client, web_form, settings):
    settings.LEADOPS_FORM_RATE_PER_FORM = 1

    first = post_json(client, web_form, GOOD_FORM, REMOTE_ADDR="192.0.2.1")
    second = post_json(client, web_form, GOOD_FORM, REMOTE_ADDR="192.0.2.2")

    assert first.status_code == 200
    assert second.status_code == 429
    assert int(second["Retry-After"]) >= 1


def test_the_client_address_comes_from_the_trusted_proxy(settings):
    settings.LEADOPS_TRUSTED_PROXY_COUNT = 1
    meta = {"REMOTE_ADDR": "10.0.0.2", "HTTP_X_FORWARDED_FOR": "6.6.6.6, 203.0.113.5"}

    assert client_ip(meta) == "203.0.113.5"
    settings.LEADOPS_TRUSTED_PROXY_COUNT = 0
    assert client_ip(meta) == "10.0.0.2"


def test_bad_fields_get_a_message_per_field(client, web_form):
    body = {
        "email": "not-an-email",
        "job_level": "ceo",
        "employee_count": -3,
        "phone": "call me",
        "next": OTHER_SITE + "/thanks",
    }

    response = post_json(client, web_form, body)

    assert response.status_code == 400
    errors = response.json()["errors"]
    assert set(errors) == {"email", "job_level", "employee_count", "phone", "next"}
    assert errors["email"] == ["Enter a valid email address."]
    assert all(isinstance(message, str) for messages in errors.values() for message in messages)
    assert response["Access-Control-Allow-Origin"] == SITE
    assert not Lead.objects.exists()


def test_a_missing_email_and_nested_values_are_refused(client, web_form):
    missing = post_json(client, web_form, {"last_name": "佐藤"})
    nested = post_json(client, web_form, {"email": ["a@example.jp"]})
    not_an_object = client.post(
        form_url(web_form), data="[1]", content_type="application/json", HTTP_ORIGIN=SITE
    )

    assert missing.status_code == 400
    assert "email" in missing.json()["errors"]
    assert nested.status_code == 400
    assert not_an_object.status_code == 400
    assert not Lead.objects.exists()


def test_broken_bodies_get_400_not_500(client, web_form):
    nested = "[" * 3000 + "]" * 3000  # deeper than Python's recursion limit
    deep_view = client.post(PV_URL, data=nested, content_type="text/plain", HTTP_ORIGIN=SITE)
    deep_form = client.post(
        form_url(web_form), data=nested, content_type="application/json", HTTP_ORIGIN=SITE
    )
    multipart = client.post(
        form_url(web_form),
        data=b"--x\r\nContent-Disposition: form-data\r\n\r\nbroken",
        content_type="multipart/form-data; boundary=x",
        HTTP_ORIGIN=SITE,
    )
    too_big = client.post(PV_URL, data="x" * 9000, content_type="text/plain", HTTP_ORIGIN=SITE)

    assert deep_view.status_code == 400
    assert deep_form.status_code == 400
    assert multipart.status_code == 400
    assert too_big.status_code == 413
    assert not Lead.objects.exists()


def test_messages_follow_the_visitors_language(client, web_form):
    response = post_json(client, web_form, {"email": "x"}, HTTP_ACCEPT_LANGUAGE="ja")

    assert response.json()["errors"]["email"] == ["有効なメールアドレスを入力してください。"]


def test_a_classic_post_with_errors_goes_back_to_the_form(client, web_form):
    response = post_classic(client, web_form, {"email": "nope"}, page="/contact?x=1#top")

    assert response.status_code == 303
    location = urlsplit(response["Location"])
    assert (location.netloc, location.path, location.query) == (
        "www.example.co.jp",
        "/contact",
        "x=1",
    )
    name, _, value = location.fragment.partition("=")
    assert name == "leadops-errors"
    assert list(json.loads(unquote(value))) == ["email"]
    assert not Lead.objects.exists()


def test_a_classic_post_with_errors_and_no_referer_gets_a_400_page(client, web_form):
    response = client.post(form_url(web_form), data={"email": "nope"}, HTTP_ORIGIN=SITE)

    assert response.status_code == 400
    assert b"email" in response.content


def test_a_classic_post_goes_on_to_next_with_a_click_token(client, web_form):
    visitor = uuid.uuid4()
    response = post_classic(
        client, web_form, {**GOOD_FORM, "next": "/thanks", "leadops_vid": str(visitor)}
    )

    assert response.status_code == 303
    location = urlsplit(response["Location"])
    assert (location.scheme, location.netloc, location.path) == (
        "https",
        "www.example.co.jp",
        "/thanks",
    )
    token = parse_qs(location.query)["_lo"][0]
    lead = Lead.objects.get(email="sato@example.co.jp")
    assert capture.read_click_token(token) == lead.pk
    assert WebVisitor.objects.get(visitor_id=visitor).lead == lead


def test_a_classic_post_without_next_gets_a_thank_you_page(client, web_form):
    response = post_classic(client, web_form, GOOD_FORM)

    assert response.status_code == 200
    assert b"Thank you" in response.content


def test_a_double_submit_records_one_event(client, web_form):
    submission = str(uuid.uuid4())
    for _ in range(2):
        post_json(client, web_form, {**GOOD_FORM, "leadops_sid": submission})

    assert Activity.objects.filter(type="form_submit").count() == 1


# --- forms: identification and scoring ---------------------------------------------------


def test_a_visitors_anonymous_views_merge_when_they_submit_a_form(client, web_form):
    visitor = uuid.uuid4()
    for path in ("/", "/pricing", "/case/3"):
        assert send_view(client, visitor=visitor, path=path).status_code == 204
    drain()
    assert AnonymousPageView.objects.count() == 3
    assert not Activity.objects.exists()

    response = post_json(client, web_form, {**GOOD_FORM, "leadops_vid": str(visitor)})

    assert response.status_code == 200
    lead = Lead.objects.get(email="sato@example.co.jp")
    assert capture.read_identity_token(response.json()["identity"], visitor) == lead.pk
    activities = Activity.objects.filter(lead=lead)
    assert sorted(activities.values_list("type", flat=True)) == ["form_submit"] + ["page_view"] * 3
    assert not AnonymousPageView.objects.filter(merged_at__isnull=True).exists()
    assert lead.score == 0

    rescore_leads([lead.pk])

    lead.refresh_from_db()
    assert lead.behavior_score >= 50 + 30 + 20
    rules = {item["rule"] for item in score_breakdown_for(lead)}
    assert {"Form submit", "Pricing page view", "Case study page view"} <= rules


def test_views_still_queued_when_the_visitor_submits_go_to_the_lead(client, web_form):
    visitor = uuid.uuid4()
    send_view(client, visitor=visitor, path="/pricing")  # not drained yet

    post_json(client, web_form, {**GOOD_FORM, "leadops_vid": str(visitor)})
    drain()

    lead = Lead.objects.get(email="sato@example.co.jp")
    assert Activity.objects.get(lead=lead, type="page_view").properties["url"] == SITE + "/pricing"
    assert not AnonymousPageView.objects.exists()


def test_later_views_with_the_issued_identity_are_activities(client, web_form):
    visitor = uuid.uuid4()
    identity = post_json(client, web_form, {**GOOD_FORM, "leadops_vid": str(visitor)}).json()[
        "identity"
    ]

    send_view(client, visitor=visitor, path="/pricing", identity=identity)
    drain()

    lead = Lead.objects.get(email="sato@example.co.jp")
    assert Activity.objects.filter(lead=lead, type="page_view").count() == 1
    assert not AnonymousPageView.objects.exists()


# --- admin --------------------------------------------------------------------------------


def test_allowed_origins_are_validated_and_normalized_in_the_admin(db):
    good = WebFormAdminForm(
        data={
            "name": "問い合わせ",
            "slug": "contact",
            "allowed_origins": "https://WWW.Example.co.jp/\nhttp://localhost:8000, https://例え.jp",
            "source": "Webフォーム",
            "active": "on",
        }
    )
    bad = WebFormAdminForm(
        data={
            "name": "x",
            "slug": "x",
            "allowed_origins": "https://www.example.co.jp/contact\nftp://files.example\n*.example.jp",
            "source": "Webフォーム",
        }
    )

    assert good.is_valid(), good.errors
    assert good.cleaned_data["allowed_origins"] == [
        "https://www.example.co.jp",
        "http://localhost:8000",
        "https://xn--r8jz45g.jp",
    ]
    assert not bad.is_valid()
    assert len(bad.errors["allowed_origins"]) == 3


def test_visitors_and_anonymous_views_are_read_only_in_the_admin(admin_client, web_form):
    stored_view(uuid.uuid4(), "/pricing")
    view = AnonymousPageView.objects.get()

    views_list = admin_client.get(reverse("admin:nurturing_anonymouspageview_changelist"))
    visitors_list = admin_client.get(
        reverse("admin:nurturing_webvisitor_changelist"), {"q": "not-a-uuid"}
    )
    change = admin_client.get(reverse("admin:nurturing_anonymouspageview_change", args=[view.pk]))
    add = admin_client.get(reverse("admin:nurturing_webvisitor_add"))
    forms_list = admin_client.get(reverse("admin:nurturing_webform_changelist"))

    assert views_list.status_code == 200 and b"/pricing" in views_list.content
    assert visitors_list.status_code == 200
    assert change.status_code == 200 and b'name="_save"' not in change.content
    assert add.status_code == 403
    assert forms_list.status_code == 200 and web_form.slug.encode() in forms_list.content


def test_saving_a_form_in_the_admin_applies_its_origins_at_once(admin_client, settings):
    settings.LEADOPS_CAPTURE_ORIGINS_CACHE_SECONDS = 3600
    assert capture.capture_origins() == frozenset()

    response = admin_client.post(
        reverse("admin:nurturing_webform_add"),
        {
            "name": "問い合わせ",
            "slug": "contact",
            "allowed_origins": "https://shop.example.jp",
            "source": "Webフォーム",
            "active": "on",
        },
    )

    assert response.status_code == 302
    assert WebForm.objects.get(slug="contact").allowed_origins == ["https://shop.example.jp"]
    assert capture.capture_origins() == {"https://shop.example.jp"}


def test_purging_old_anonymous_views_keeps_recent_ones(db, web_form):
    visitor = uuid.uuid4()
    stored_view(visitor, "/old", at=timezone.now() - timedelta(days=200))
    stored_view(visitor, "/new")

    assert capture.purge_anonymous_views(older_than_days=180) == 1
    assert list(AnonymousPageView.objects.values_list("url", flat=True)) == [SITE + "/new"]


# --- a real worker ------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
def test_a_real_worker_drains_the_queued_views(client, celery_worker_process: CeleryWorkers):  # noqa: F811
    WebForm.objects.create(name="f", slug="worker", allowed_origins=[SITE])
    lead, visitor = LeadFactory(), uuid.uuid4()
    identity = capture.issue_identity_token(lead.pk, visitor)

    for i in range(5):
        assert send_view(client, visitor=uuid.uuid4(), path=f"/anonymous/{i}").status_code == 204
    for i in range(3):
        send_view(client, visitor=visitor, path=f"/known/{i}", identity=identity)

    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if AnonymousPageView.objects.count() == 5 and Activity.objects.count() == 3:
            break
        time.sleep(0.2)
    else:
        pytest.fail("The worker did not store the views:\n" + celery_worker_process.log_tail())
    assert capture.queued_page_views() == 0
    assert celery_worker_process.task_lines("nurturing.drain_page_views", "succeeded") >= 1
