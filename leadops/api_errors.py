"""The API's exception handler (see settings.REST_FRAMEWORK).

DRF's handler, plus: Django's RequestDataTooBig becomes a JSON 413, and validation
errors (messages per field) also carry a top-level `detail` sentence.
"""

from __future__ import annotations

from typing import Any

from django.core.exceptions import RequestDataTooBig
from django.utils.translation import gettext as _
from django.utils.translation import gettext_lazy
from rest_framework import status
from rest_framework.exceptions import APIException, ValidationError
from rest_framework.response import Response
from rest_framework.views import exception_handler as drf_exception_handler


class PayloadTooLarge(APIException):
    status_code = status.HTTP_413_REQUEST_ENTITY_TOO_LARGE
    default_detail = gettext_lazy(
        "The request body is larger than 2 MB. Send smaller requests "
        "(for events: at most 1,000 per batch, properties up to 16 KB each)."
    )
    default_code = "payload_too_large"


class Conflict(APIException):
    """409: the action does not fit the object's current state (stage, status, job)."""

    status_code = status.HTTP_409_CONFLICT
    default_detail = gettext_lazy("This action does not fit the lead's current state.")
    default_code = "conflict"


def exception_handler(exc: Exception, context: dict[str, Any]) -> Response | None:
    if isinstance(exc, RequestDataTooBig):
        exc = PayloadTooLarge()
    response = drf_exception_handler(exc, context)
    if response is not None and isinstance(exc, ValidationError):
        response.data = with_detail(response.data)
    return response


def with_detail(data: Any) -> Any:
    """Validation errors with a `detail` sentence on top; the per-field messages kept."""
    if isinstance(data, list):
        data = {"non_field_errors": data}
    if isinstance(data, dict) and "detail" not in data:
        return {"detail": _("Some fields are invalid: see the message for each field."), **data}
    return data
