"""Website capture over HTTP: the snippet, its page views and the public form endpoint.

These endpoints are called from customers' sites, cross-origin, by anonymous visitors:
no login, no session, no CSRF token. What protects them instead: an origin allowlist
(the Origin header, else the Referer), CORS answers only for allowed origins, signed
tokens for identity, a honeypot and rate limits on forms. The work is in
`nurturing.capture`; these views only read the request and shape the answer.
"""

from __future__ import annotations

import hashlib
import json
import re
from functools import lru_cache
from typing import Any
from urllib.parse import quote, urljoin, urlsplit, urlunsplit

from django import forms
from django.contrib.staticfiles import finders
from django.core.validators import RegexValidator
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect, JsonResponse
from django.shortcuts import render
from django.urls import path
from django.utils.cache import patch_vary_headers
from django.utils.translation import gettext as _
from django.utils.translation import gettext_lazy
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_http_methods, require_safe

from leadops.middleware import client_ip
from leadops.models import Department, Industry, JobLevel
from nurturing import capture
from nurturing.models import WebForm

SNIPPET_PATH = "nurturing/capture.js"
# The snippet's URL is pasted into sites and cannot carry a version: a day of caching,
# then a cheap revalidation by ETag (a week of stale-while-revalidate hides it).
SNIPPET_CACHE_CONTROL = "public, max-age=86400, stale-while-revalidate=604800"
MAX_PAGE_VIEW_BODY = 8 * 1024
MAX_FORM_BODY = 64 * 1024
HONEYPOT_FIELD = "website"
VISITOR_FIELD = "leadops_vid"
SUBMISSION_FIELD = "leadops_sid"
ERRORS_FRAGMENT = "leadops-errors"
PREFLIGHT_MAX_AGE = "86400"
ALLOWED_REQUEST_HEADERS = "Content-Type, Accept"


# --- the snippet ------------------------------------------------------------------------


@require_safe
def snippet(request: HttpRequest) -> HttpResponse:
    """The JavaScript a site includes with <script async src=".../capture/snippet.js">."""
    body, etag = _snippet_source()
    if etag in request.headers.get("If-None-Match", ""):
        response = HttpResponse(status=304)
    else:
        response = HttpResponse(body, content_type="text/javascript; charset=utf-8")
    response["ETag"] = etag
    response["Cache-Control"] = SNIPPET_CACHE_CONTROL
    # Loaded by other sites' pages (also those that isolate themselves with COEP).
    response["Cross-Origin-Resource-Policy"] = "cross-origin"
    response["Access-Control-Allow-Origin"] = "*"
    return response


@lru_cache(maxsize=1)
def _snippet_source() -> tuple[bytes, str]:
    found = finders.find(SNIPPET_PATH)
    if not found:
        raise FileNotFoundError(f"static/{SNIPPET_PATH} is missing")
    with open(found, "rb") as source:
        body = source.read()
    return body, f'"{hashlib.sha256(body).hexdigest()[:32]}"'


# --- page views -------------------------------------------------------------------------


# Cross-site by design: the snippet posts from customers' pages, without cookies of ours.
# The allowlist decides who may post; there is no session for CSRF to protect.
@csrf_exempt
@require_http_methods(["POST", "OPTIONS"])
def page_view(request: HttpRequest) -> HttpResponse:
    """POST {"visitor", "view", "url", "title", "referrer", "identity"?, "click"?}.

    The snippet sends it as text/plain (a CORS "simple" request: no preflight round
    trip); application/json works too, after a preflight. 204 when there is nothing to
    tell the snippet, 200 {"identity": …} / {"forget": true} when its cookie changes.
    """
    origin = capture.request_origin(request.META)
    if origin not in capture.capture_origins():
        return _forbidden(request, json_answer=True)
    if request.method == "OPTIONS":
        return _preflight(origin)
    if _declared_length(request) > MAX_PAGE_VIEW_BODY:
        return _cors(_json_error(_("The page view is larger than 8 KB."), status=413), origin)
    data = _json_body(request)
    view, errors = capture.parse_page_view(data)
    if view is not None and capture.origin_of(view.url) not in capture.capture_origins():
        errors = {"url": [_("This page is not on a site allowed to send page views.")]}
    if errors:
        return _cors(_json_error(_invalid_message(), status=400, errors=errors), origin)
    outcome = capture.record_page_view(
        view, identity=_string(data.get("identity")), click=_string(data.get("click"))
    )
    return _cors(_page_view_answer(outcome), origin)


def _page_view_answer(outcome: capture.PageViewOutcome) -> HttpResponse:
    body: dict[str, Any] = {}
    if outcome.identity:
        body["identity"] = outcome.identity
    if outcome.forget_identity:
        body["forget"] = True
    return JsonResponse(body) if body else HttpResponse(status=204)


# --- forms ------------------------------------------------------------------------------


class _PhoneField(forms.CharField):
    default_validators = [
        RegexValidator(
            r"^[0-9０-９+\-－ー()（） ]{4,50}$",
            gettext_lazy("Enter a phone number: digits, spaces, +, - and parentheses."),
        )
    ]


def _choices(choices: list[tuple[str, str]]) -> list[tuple[str, str]]:
    return [("", "---------"), *choices]


class CaptureForm(forms.Form):
    """The fields a website form may post; any other field is ignored."""

    email = forms.EmailField(max_length=254)
    last_name = forms.CharField(max_length=100, required=False)
    first_name = forms.CharField(max_length=100, required=False)
    company = forms.CharField(max_length=200, required=False)
    title = forms.CharField(max_length=200, required=False)
    phone = _PhoneField(max_length=50, required=False)
    job_level = forms.ChoiceField(choices=_choices(JobLevel.choices), required=False)
    department = forms.ChoiceField(choices=_choices(Department.choices), required=False)
    industry = forms.ChoiceField(choices=_choices(Industry.choices), required=False)
    employee_count = forms.IntegerField(min_value=1, max_value=10_000_000, required=False)
    region = forms.CharField(max_length=50, required=False)
    consent = forms.BooleanField(required=False)
    message = forms.CharField(max_length=3000, required=False)
    page_url = forms.CharField(max_length=2000, required=False)
    next = forms.CharField(max_length=2000, required=False)

    LEAD_FIELDS = (
        "first_name",
        "last_name",
        "title",
        "phone",
        "job_level",
        "department",
        "industry",
        "employee_count",
        "region",
    )

    def __init__(self, *args: Any, origin: str, allowed: frozenset[str], **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.origin, self.allowed = origin, allowed

    def clean_message(self) -> str:
        # Control characters would bloat the activity's JSON (each escaped to 6 bytes).
        return re.sub(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]", "", self.cleaned_data["message"])

    def clean_page_url(self) -> str:
        value = self.cleaned_data["page_url"]
        if value and capture.origin_of(value) is None:
            raise forms.ValidationError(_("Enter the page's full address (http or https)."))
        return capture.strip_query_param(value, capture.CLICK_PARAM) if value else ""

    def clean_next(self) -> str:
        value = self.cleaned_data["next"]
        if not value:
            return ""
        target = safe_next_url(value, origin=self.origin, allowed=self.allowed)
        if target is None:
            raise forms.ValidationError(
                _("The next address must be a page on a site allowed for this form.")
            )
        return target

    def submission(self, data: Any, *, referer: str) -> capture.FormSubmission:
        cleaned = self.cleaned_data
        fields = {f: cleaned[f] for f in self.LEAD_FIELDS if cleaned[f] not in ("", None)}
        if cleaned["consent"]:
            fields["consent"] = True  # a missing tick never withdraws an earlier consent
        properties = {"url": cleaned["page_url"] or referer, "message": cleaned["message"]}
        return capture.FormSubmission(
            email=cleaned["email"],
            fields=fields,
            company=cleaned["company"] or None,
            properties={key: value for key, value in properties.items() if value},
            visitor_id=capture.parse_uuid(data.get(VISITOR_FIELD)),
            submission_id=capture.parse_uuid(data.get(SUBMISSION_FIELD)),
        )


def safe_next_url(value: str, *, origin: str, allowed: frozenset[str]) -> str | None:
    """An absolute URL on an allowed site for `next` (a path is taken on the posting
    site), or None: the form endpoint must never be an open redirect."""
    value = value.strip()
    if value.startswith("/") and not value.startswith("//"):
        value = urljoin(origin + "/", value)
    if "\\" in value or any(ord(ch) < 32 for ch in value):
        return None
    return value if capture.origin_of(value) in allowed else None


# Cross-site by design: a customer's website (another origin) posts here, from a plain
# HTML form or fetch, without any cookie of ours — a CSRF token could not be obtained
# and there is no session it would protect. The origin allowlist, the honeypot and the
# rate limits guard the endpoint instead.
@csrf_exempt
@require_http_methods(["POST", "OPTIONS"])
def form_post(request: HttpRequest, slug: str) -> HttpResponse:
    """A website form's post: lead upsert + form_submit event + visitor identification."""
    as_json = _wants_json(request)
    form = WebForm.objects.filter(slug=slug, active=True).first()
    if form is None:
        return _not_found(request, json_answer=as_json)
    allowed = capture.form_origins(form)
    origin = capture.request_origin(request.META)
    if origin not in allowed:
        return _forbidden(request, json_answer=as_json)
    if request.method == "OPTIONS":
        return _preflight(origin)
    refusal = _refusal(request, form, origin=origin, as_json=as_json)
    if refusal is not None:
        return refusal
    return _cors(
        _handle_form(request, form, origin=origin, allowed=allowed, as_json=as_json), origin
    )


def _refusal(
    request: HttpRequest, form: WebForm, *, origin: str, as_json: bool
) -> HttpResponse | None:
    if _declared_length(request) > MAX_FORM_BODY:
        message = _("The form is larger than 64 KB: shorten the message.")
        return _cors(_message(request, message, status=413, json_answer=as_json), origin)
    wait = capture.form_rate_wait(form, client_ip(request.META))
    if wait is None:
        return None
    message = _("Too many submissions. Wait %(seconds)d seconds and send the form again.") % {
        "seconds": wait
    }
    response = _message(request, message, status=429, json_answer=as_json)
    response["Retry-After"] = str(wait)
    return _cors(response, origin)


def _handle_form(
    request: HttpRequest, form: WebForm, *, origin: str, allowed: frozenset[str], as_json: bool
) -> HttpResponse:
    data = _form_data(request)
    if data is None:
        return _json_error(_("Send the form fields as a JSON object or a form post."), status=400)
    if data.get(HONEYPOT_FIELD):
        # A bot filled the hidden field: answer like a success, store nothing.
        next_url = safe_next_url(_string(data.get("next")), origin=origin, allowed=allowed)
        return _success(request, next_url=next_url, identity=None, lead_id=None, as_json=as_json)
    fields = CaptureForm(data, origin=origin, allowed=allowed)
    if not fields.is_valid():
        return _invalid_form(request, fields, origin=origin, allowed=allowed, as_json=as_json)
    page = _page_url(request)
    page = page if capture.origin_of(page) in allowed else ""
    result = capture.submit_web_form(form, fields.submission(data, referer=page))
    return _success(
        request,
        next_url=fields.cleaned_data["next"] or None,
        identity=result.identity,
        lead_id=result.lead.pk,
        as_json=as_json,
    )


def _page_url(request: HttpRequest) -> str:
    referer = request.headers.get("Referer", "")[: capture.MAX_URL_LENGTH]
    return capture.strip_query_param(referer, capture.CLICK_PARAM)


def _success(
    request: HttpRequest,
    *,
    next_url: str | None,
    identity: str | None,
    lead_id: int | None,
    as_json: bool,
) -> HttpResponse:
    if as_json:
        return JsonResponse({"ok": True, "identity": identity, "redirect": next_url})
    if next_url:
        # The next page's snippet reads `_lo` and stores the identity (a classic post
        # cannot hand the snippet a token any other way).
        if lead_id is not None:
            next_url = capture.add_query_param(
                next_url, capture.CLICK_PARAM, capture.issue_click_token(lead_id)
            )
        return HttpResponseRedirect(next_url, status=303)
    context = {"title": _("Thank you"), "message": _("We received your submission.")}
    return render(request, "nurturing/capture_message.html", context)


def _invalid_form(
    request: HttpRequest,
    fields: CaptureForm,
    *,
    origin: str,
    allowed: frozenset[str],
    as_json: bool,
) -> HttpResponse:
    errors = {name: [str(m) for m in messages] for name, messages in fields.errors.items()}
    if as_json:
        return _json_error(_invalid_message(), status=400, errors=errors)
    back = safe_next_url(request.headers.get("Referer", ""), origin=origin, allowed=allowed)
    if back:
        # Back to the form; the snippet shows each message next to its field. The
        # fragment never reaches a server log.
        fragment = quote(json.dumps(errors, ensure_ascii=False, separators=(",", ":")))
        url = urlunsplit(urlsplit(back)._replace(fragment=f"{ERRORS_FRAGMENT}={fragment}"))
        return HttpResponseRedirect(url, status=303)
    context = {"title": _("Please check the form"), "message": _invalid_message(), "errors": errors}
    return render(request, "nurturing/capture_message.html", context, status=400)


def _form_data(request: HttpRequest) -> Any:
    """The posted fields: a JSON object or the form-encoded body; None if neither."""
    if request.content_type != "application/json":
        return request.POST
    data = _json_body(request)
    if not isinstance(data, dict) or any(isinstance(v, dict | list) for v in data.values()):
        return None
    return data


def _wants_json(request: HttpRequest) -> bool:
    """fetch / XHR callers get JSON; a classic HTML form post gets redirects and pages."""
    return (
        "application/json" in request.headers.get("Accept", "")
        or request.content_type == "application/json"
        or request.headers.get("Sec-Fetch-Mode") == "cors"
    )


# --- answers ----------------------------------------------------------------------------


def _cors(response: HttpResponse, origin: str) -> HttpResponse:
    response["Access-Control-Allow-Origin"] = origin
    patch_vary_headers(response, ["Origin"])
    return response


def _preflight(origin: str) -> HttpResponse:
    response = HttpResponse(status=204)
    response["Access-Control-Allow-Methods"] = "POST, OPTIONS"
    response["Access-Control-Allow-Headers"] = ALLOWED_REQUEST_HEADERS
    response["Access-Control-Max-Age"] = PREFLIGHT_MAX_AGE
    return _cors(response, origin)


def _forbidden(request: HttpRequest, *, json_answer: bool) -> HttpResponse:
    message = _(
        "This site may not post to LeadOps. Add its origin (e.g. https://www.example.co.jp) "
        "to the form's allowed origins."
    )
    response = _message(request, message, status=403, json_answer=json_answer)
    patch_vary_headers(response, ["Origin"])
    return response


def _not_found(request: HttpRequest, *, json_answer: bool) -> HttpResponse:
    message = _("No active form has this key: check the form's address.")
    return _message(request, message, status=404, json_answer=json_answer)


def _message(request: HttpRequest, message: str, *, status: int, json_answer: bool):
    if json_answer:
        return _json_error(message, status=status)
    context = {"title": _("The form could not be sent"), "message": message}
    return render(request, "nurturing/capture_message.html", context, status=status)


def _json_error(message: str, *, status: int, errors: dict | None = None) -> JsonResponse:
    body: dict[str, Any] = {"detail": message}
    if errors:
        body["errors"] = errors
    return JsonResponse(body, status=status, json_dumps_params={"ensure_ascii": False})


def _invalid_message() -> str:
    return _("Some fields are invalid: see the message for each field.")


# --- request helpers --------------------------------------------------------------------


def _json_body(request: HttpRequest) -> Any:
    try:
        return json.loads(request.body)
    except (ValueError, RecursionError):  # also UnicodeDecodeError; absurdly nested JSON
        return None


def _declared_length(request: HttpRequest) -> int:
    try:
        return int(request.META.get("CONTENT_LENGTH") or 0)
    except ValueError:
        return 0


def _string(value: object) -> str:
    return value if isinstance(value, str) else ""


urlpatterns = [
    path("snippet.js", snippet, name="capture-snippet"),
    path("pv/", page_view, name="capture-page-view"),
    path("forms/<slug:slug>/", form_post, name="capture-form"),
]
