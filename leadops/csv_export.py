"""CSV export of leads: UTF-8 with a BOM (so Excel in Japan opens it), English headers.

Every text cell that a spreadsheet would run as a formula (it starts with = + - @, a tab
or a carriage return) is prefixed with a single quote: a lead's name or company came from
outside and must never execute in the marketer's Excel. Numbers and dates are written
by us and stay as they are.
"""

from __future__ import annotations

import csv
from collections.abc import Callable, Iterator
from datetime import datetime
from typing import Any

from django.db.models import QuerySet
from django.http import StreamingHttpResponse
from django.utils import timezone

from leadops.models import Lead

BOM = "\ufeff"
FORMULA_PREFIXES = ("=", "+", "-", "@", "\t", "\r")


def _owner(lead: Lead) -> str:
    return lead.owner.get_username() if lead.owner_id else ""


# (header, value of a lead); the headers match the importer's, so a file re-imports.
EXPORT_COLUMNS: tuple[tuple[str, Callable[[Lead], Any]], ...] = (
    ("email", lambda lead: lead.email),
    ("last_name", lambda lead: lead.last_name),
    ("first_name", lambda lead: lead.first_name),
    ("company", lambda lead: lead.company),
    ("title", lambda lead: lead.title),
    ("job_level", lambda lead: lead.job_level),
    ("department", lambda lead: lead.department),
    ("industry", lambda lead: lead.industry),
    ("employee_count", lambda lead: lead.employee_count),
    ("phone", lambda lead: lead.phone),
    ("region", lambda lead: lead.region),
    ("source", lambda lead: lead.source),
    ("stage", lambda lead: lead.stage),
    ("score", lambda lead: lead.score),
    ("attribute_score", lambda lead: lead.attribute_score),
    ("behavior_score", lambda lead: lead.behavior_score),
    ("temperature", lambda lead: lead.temperature),
    ("owner", _owner),
    ("consent", lambda lead: lead.consent),
    ("unsubscribed", lambda lead: lead.unsubscribed),
    ("last_activity_at", lambda lead: lead.last_activity_at),
    ("created_at", lambda lead: lead.created_at),
)


def neutralize_cell(text: str) -> str:
    """The text, made inert for spreadsheets: a leading formula character gets a quote."""
    return "'" + text if text.startswith(FORMULA_PREFIXES) else text


def format_cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, datetime):
        return timezone.localtime(value).strftime("%Y-%m-%d %H:%M:%S")
    if isinstance(value, int):
        return str(value)
    return neutralize_cell(str(value))


class _Echo:
    """A file-like object whose write returns the line, so csv.writer can stream."""

    def write(self, value: str) -> str:
        return value


def iter_leads_csv(queryset: QuerySet[Lead]) -> Iterator[str]:
    """The CSV text of these leads, line by line, starting with the BOM."""
    if not queryset.ordered:
        queryset = queryset.order_by("id")
    writer = csv.writer(_Echo())
    yield BOM + writer.writerow([header for header, _value in EXPORT_COLUMNS])
    for lead in queryset.select_related("account", "owner").iterator(chunk_size=2000):
        yield writer.writerow([format_cell(value(lead)) for _header, value in EXPORT_COLUMNS])


def export_leads_csv(queryset: QuerySet[Lead]) -> bytes:
    """The whole CSV file of these leads as bytes (UTF-8 with BOM)."""
    return "".join(iter_leads_csv(queryset)).encode("utf-8")


def leads_csv_response(queryset: QuerySet[Lead], *, filename: str = "") -> StreamingHttpResponse:
    """A download of these leads, streamed so a large export does not sit in memory."""
    filename = filename or f"leads-{timezone.localtime():%Y%m%d-%H%M}.csv"
    response = StreamingHttpResponse(
        (line.encode("utf-8") for line in iter_leads_csv(queryset)),
        content_type="text/csv; charset=utf-8",
    )
    response["Content-Disposition"] = f'attachment; filename="{filename}"'
    return response
