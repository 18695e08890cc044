"""CSV import of lead lists (trade shows, name cards): decode, map headers, validate, upsert.

`import_leads_csv` is the one entry point; the admin upload view and the `import_leads`
command call it. A file-level problem (too large, empty, not UTF-8 / Shift_JIS, no email
column, unreadable CSV) raises `CsvImportError` before anything is written. Otherwise
every row is validated fully, then the rows are written in batches, each in one
transaction with a few set-based statements (`leadops.lead_bulk`), with the effect of
`upsert_lead` for each row; the returned `ImportReport` says what happened to each row
(header = row 1, as in Excel). A batch the database refuses is written again row by row
through `upsert_lead`, so only the failing row is lost and the report names it.
"""

from __future__ import annotations

import codecs
import csv
import io
import logging
import os
import re
import unicodedata
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any, BinaryIO

from django.conf import settings
from django.core.exceptions import ValidationError
from django.core.validators import validate_email
from django.db import DatabaseError, transaction
from django.db.models import F
from django.template.defaultfilters import filesizeformat
from django.utils.translation import gettext as _

from leadops.lead_bulk import LeadRow, bulk_upsert_leads
from leadops.models import Account, Department, Industry, JobLevel, Lead
from leadops.services import WRITABLE_LEAD_FIELDS, normalize_email, upsert_lead

logger = logging.getLogger(__name__)

ENCODINGS = ("auto", "utf-8", "cp932")
DEFAULT_SOURCE = "CSV import"
# Rows validated, looked up and written per transaction: one query for the existing
# leads of a batch and a handful of set-based statements to write it, one commit.
BATCH_ROWS = 1000
ROW_ERROR_KEY = "row"


class RowStatus:
    CREATED = "created"
    UPDATED = "updated"
    SKIPPED = "skipped"
    ERROR = "error"

    ALL = (CREATED, UPDATED, SKIPPED, ERROR)


class CsvImportError(Exception):
    """The file as a whole is rejected and nothing was imported; str() tells the user why."""


@dataclass(slots=True)
class RowResult:
    row: int
    status: str
    email: str = ""
    errors: dict[str, list[str]] = field(default_factory=dict)
    note: str = ""
    duplicate_of: int | None = None  # the earlier row with the same email, merged into

    @property
    def merge_note(self) -> str:
        if self.duplicate_of is None:
            return ""
        return _("same email as row %(row)d: merged into one lead") % {"row": self.duplicate_of}


@dataclass
class ImportReport:
    encoding: str
    columns: dict[str, str]  # lead field -> the header it was read from
    ignored_columns: list[str]
    dry_run: bool = False
    rows: list[RowResult] = field(default_factory=list)

    @property
    def counts(self) -> dict[str, int]:
        counter = Counter(result.status for result in self.rows)
        return {status: counter[status] for status in RowStatus.ALL}

    @property
    def error_rows(self) -> list[RowResult]:
        return [result for result in self.rows if result.status == RowStatus.ERROR]

    @property
    def merged_rows(self) -> list[RowResult]:
        return [result for result in self.rows if result.duplicate_of is not None]

    @property
    def error_lines(self) -> list[tuple[int, str, str, str]]:
        """(row, email, column label, message) for every error, in file order."""
        return [
            (result.row, result.email, self.label_for(key), message)
            for result in self.error_rows
            for key, messages in result.errors.items()
            for message in messages
        ]

    def label_for(self, key: str) -> str:
        if key == ROW_ERROR_KEY:
            return _("whole row")
        if key in ("last_name", "first_name") and key not in self.columns:
            return self.columns.get("full_name", key)
        return self.columns.get(key, key)


# --- entry point -----------------------------------------------------------------------


def import_leads_csv(
    stream: BinaryIO,
    *,
    default_source: str = "",
    dry_run: bool = False,
    encoding: str = "auto",
) -> ImportReport:
    """Import the lead list in `stream` (bytes); return the per-row report.

    Rows without a source cell get `default_source` (or "CSV import") when their lead is
    new or has no source yet. With `dry_run` nothing is written: the report says what
    would happen. Raises CsvImportError, before writing anything, when the file is unusable.
    """
    source = _check_default_source(default_source)
    data = read_limited(stream, max_bytes=settings.CSV_IMPORT_MAX_BYTES)
    text, used_encoding = decode_csv_bytes(data, encoding=encoding)
    del data  # the decoded text is all we need from here on
    header = scan_csv(text)
    columns, ignored = map_headers(header)
    report = ImportReport(
        encoding=used_encoding,
        columns={name: header[index] for index, name in columns.items()},
        ignored_columns=ignored,
        dry_run=dry_run,
    )
    importer = _BatchImporter(columns, width=len(header), default_source=source, dry_run=dry_run)
    for batch in _batches(_data_rows(text), BATCH_ROWS):
        report.rows.extend(importer.import_batch(batch))
    return report


def _check_default_source(default_source: str) -> str:
    source = default_source.strip() or DEFAULT_SOURCE
    limit = Lead._meta.get_field("source").max_length
    if len(source) > limit:
        raise CsvImportError(
            _("The default source is longer than %(limit)d characters; shorten it.")
            % {"limit": limit}
        )
    return source


# --- reading and decoding --------------------------------------------------------------


def too_large_message(size: int | None = None) -> str:
    limit = filesizeformat(settings.CSV_IMPORT_MAX_BYTES)
    if size is None:
        return _(
            "The file is larger than %(limit)s. Split it into smaller files and import "
            "them one by one."
        ) % {"limit": limit}
    return _(
        "The file is %(size)s, larger than the limit of %(limit)s. Split it into smaller "
        "files and import them one by one."
    ) % {"size": filesizeformat(size), "limit": limit}


def read_limited(stream: BinaryIO, *, max_bytes: int) -> bytes:
    """The stream's bytes; CsvImportError when it holds more than `max_bytes`.

    The size is checked before reading when it is known, and the read is bounded, so a
    huge file is refused without being loaded.
    """
    size = _known_size(stream)
    if size is not None and size > max_bytes:
        raise CsvImportError(too_large_message(size))
    data = stream.read(max_bytes + 1)
    if len(data) > max_bytes:
        raise CsvImportError(too_large_message(size))
    return data


def _known_size(stream: BinaryIO) -> int | None:
    size = getattr(stream, "size", None)  # Django's UploadedFile
    if isinstance(size, int):
        return size
    try:
        return os.fstat(stream.fileno()).st_size
    except (AttributeError, OSError, io.UnsupportedOperation):
        return None


# Bytes cp932 has no character for: Python's codec still maps them (to U+0080 and
# private-use U+F8F0..U+F8F3), so their presence means the file is not Shift_JIS.
_CP932_UNMAPPED = re.compile("[\x80\uf8f0-\uf8f3]")
_UTF16_32_BOMS = (codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE, codecs.BOM_UTF32_BE)


def not_csv_encoding_message() -> str:
    return _(
        "The file is not UTF-8 or Shift_JIS; save it as CSV UTF-8 (in Excel: "
        '"CSV UTF-8 (comma delimited)") and upload it again.'
    )


def decode_csv_bytes(data: bytes, *, encoding: str = "auto") -> tuple[str, str]:
    """(text, encoding used). `auto` tries UTF-8 (BOM or not), then cp932, both strictly."""
    if encoding not in ENCODINGS:
        raise CsvImportError(
            _("Unknown encoding %(encoding)s; use auto, utf-8 or cp932.") % {"encoding": encoding}
        )
    if not data.startswith(_UTF16_32_BOMS):
        for name in ("utf-8", "cp932") if encoding == "auto" else (encoding,):
            text = _decode_strictly(data, name)
            if text is not None:
                return text, name
    if encoding != "auto":
        raise CsvImportError(
            _(
                "The file is not valid %(encoding)s; choose the right encoding, or save it as "
                "CSV UTF-8 and upload it again."
            )
            % {"encoding": encoding}
        )
    raise CsvImportError(not_csv_encoding_message())


def _decode_strictly(data: bytes, name: str) -> str | None:
    try:
        text = data.decode("utf-8-sig" if name == "utf-8" else "cp932")
    except UnicodeDecodeError:
        return None
    if name == "cp932" and _CP932_UNMAPPED.search(text):
        return None
    return text


# --- CSV structure and headers ---------------------------------------------------------


def _reader(text: str) -> Iterator[list[str]]:
    return csv.reader(io.StringIO(text, newline=""))


def _is_blank(cells: list[str]) -> bool:
    return not any(cell.strip() for cell in cells)


def scan_csv(text: str) -> list[str]:
    """The header row, once the whole text has been checked to parse and have data rows.

    This pass writes nothing, so a file that breaks half-way is rejected whole.
    """
    if not text.strip():
        raise CsvImportError(_("The file is empty; export the list again and upload it."))
    rows = _reader(text)
    header = _next_record(rows, 1) or []
    if "\x00" in "".join(header):
        raise CsvImportError(not_csv_encoding_message())
    if _is_blank(header):
        raise CsvImportError(
            _(
                "The first row is empty; it must hold the column names "
                "(for example メールアドレス, 氏名, 会社名)."
            )
        )
    if not _has_data_rows(rows):
        raise CsvImportError(_("The file has a header row but no data rows; add the leads."))
    return header


def _next_record(rows: Iterator[list[str]], number: int) -> list[str] | None:
    try:
        return next(rows, None)
    except csv.Error as exc:
        raise CsvImportError(
            _("Row %(row)d is not valid CSV (%(error)s); check it for an unclosed quote.")
            % {"row": number, "error": exc}
        ) from exc


def _has_data_rows(rows: Iterator[list[str]]) -> bool:
    found = False
    number = 2
    while (cells := _next_record(rows, number)) is not None:
        found = found or not _is_blank(cells)
        number += 1
    return found


def _data_rows(text: str) -> Iterator[tuple[int, list[str]]]:
    rows = _reader(text)
    next(rows)  # the header
    return enumerate(rows, start=2)


def _header_key(text: str) -> str:
    key = unicodedata.normalize("NFKC", text).strip().lower()
    key = re.sub(r"\(必須\)|\(required\)", "", key)
    return re.sub(r"[\s_\-・.*※:]", "", key)


_HEADER_ALIASES: dict[str, tuple[str, ...]] = {
    "email": (
        "email",
        "emailaddress",
        "mail",
        "mailaddress",
        "メール",
        "メールアドレス",
        "eメール",
        "eメールアドレス",
        "電子メール",
        "電子メールアドレス",
    ),
    "full_name": ("氏名", "名前", "お名前", "姓名", "name", "fullname"),
    "last_name": ("姓", "苗字", "名字", "lastname", "familyname", "surname"),
    "first_name": ("名", "firstname", "givenname"),
    "company": ("会社名", "会社", "企業名", "企業", "勤務先", "company", "companyname"),
    "title": ("役職", "役職名", "肩書", "肩書き", "title", "jobtitle", "position"),
    "department": ("部署", "部署名", "部門", "所属部署", "department", "dept", "division"),
    "job_level": ("役職区分", "役職レベル", "職位", "joblevel"),
    "industry": ("業種", "業界", "industry"),
    "employee_count": (
        "従業員数",
        "社員数",
        "従業員規模",
        "employeecount",
        "employees",
        "numberofemployees",
    ),
    "phone": ("電話番号", "電話", "tel", "phone", "phonenumber", "telephone"),
    "region": ("都道府県", "地域", "エリア", "region", "prefecture", "state"),
    "source": ("流入元", "流入経路", "リードソース", "ソース", "source", "leadsource"),
}
_FIELD_BY_HEADER = {alias: name for name, aliases in _HEADER_ALIASES.items() for alias in aliases}


def map_headers(header: list[str]) -> tuple[dict[int, str], list[str]]:
    """Column index -> lead field, and the headers that are ignored (unknown or repeated)."""
    columns: dict[int, str] = {}
    ignored: list[str] = []
    for index, text in enumerate(header):
        name = _FIELD_BY_HEADER.get(_header_key(text))
        if name is not None and name not in columns.values():
            columns[index] = name
        elif text.strip():
            ignored.append(text.strip())
    if "email" not in columns.values():
        raise CsvImportError(
            _(
                "The file has no email column; add one named メールアドレス (or email). "
                "Columns found: %(columns)s"
            )
            % {"columns": ", ".join(h.strip() for h in header if h.strip())}
        )
    return columns, ignored


# --- cleaning one row ------------------------------------------------------------------


def _nfkc_lower(text: str) -> str:
    return unicodedata.normalize("NFKC", text).strip().lower()


def _words(japanese: str, latin: str) -> re.Pattern[str]:
    """A pattern for any of the `|`-separated words; English ones only as whole words."""
    # \b does not work next to Japanese letters (they are \w too), so an English word is
    # only required not to be part of a longer Latin word.
    english = [rf"(?<![a-z]){word}(?![a-z])" for word in latin.split("|")]
    return re.compile("|".join([japanese, *english]))


def _table(*rows: tuple[str, str, str]) -> list[tuple[str, re.Pattern[str]]]:
    return [(code, _words(japanese, latin)) for code, japanese, latin in rows]


def _first_match(text: str, table: list[tuple[str, re.Pattern[str]]]) -> str | None:
    return next((code for code, pattern in table if pattern.search(text)), None)


# Order matters: the first level whose words appear wins (取締役部長 → executive).
_TITLE_LEVELS = _table(
    (JobLevel.EXECUTIVE, "社長|代表|取締役|役員|会長", "c[eotfim]o|president|founder|chairman"),
    (JobLevel.DIRECTOR, "本部長|事業部長|部長", "director|vp|vice president|head of"),
    (JobLevel.MANAGER, "課長|マネージャー|マネジャー", "manager"),
    (JobLevel.STAFF, "主任|担当|一般", "staff"),
)
_JOB_LEVEL_LABELS = {
    **{code: code for code in JobLevel.values},
    "経営層・役員": JobLevel.EXECUTIVE,
    "経営層": JobLevel.EXECUTIVE,
    "部長・事業部長": JobLevel.DIRECTOR,
    "課長・マネージャー": JobLevel.MANAGER,
    "一般担当者": JobLevel.STAFF,
    "担当者": JobLevel.STAFF,
    "その他": JobLevel.OTHER,
}
_DEPARTMENTS = _table(
    (Department.MARKETING, "マーケ|販売促進|販促", "marketing"),
    (Department.SALES, "営業|セールス", "sales"),
    (Department.MANAGEMENT, "経営企画|経営戦略|経営管理", "corporate planning"),
    (Department.IT, "情報システム|情シス|社内it", "it"),
)
_INDUSTRIES = _table(
    (Industry.SOFTWARE, "ソフトウ[ェエ]ア", "software|saas"),
    (Industry.IT_SERVICES, "itサービス|情報サービス|情報通信|システムインテグレ|受託開発", "sier"),
    (Industry.HEALTHCARE, "医療|病院|製薬|医薬|ヘルスケア|介護|福祉", "healthcare|medical|pharma"),
    (Industry.MANUFACTURING, "製造|メーカー", "manufacturing"),
    (Industry.FINANCE, "金融|銀行|証券|保険", "finance|financial|bank|banking|insurance"),
    (Industry.RETAIL, "小売|流通|通販|eコマース", "retail|ec|e-commerce"),
    (Industry.EDUCATION, "教育|学校|大学", "education"),
    (Industry.PUBLIC, "官公庁|公共|自治体|行政|公務|政府", "public|government"),
)


def job_level_from_title(title: str) -> str | None:
    """The job level a title's words imply (社長 → executive, 部長 → director …), or None."""
    text = _nfkc_lower(title).replace("社長室", "")  # the president's office, not its head
    return _first_match(text, _TITLE_LEVELS)


def parse_job_level(text: str) -> str:
    """A job level code from a code, a PRODUCT.md label or title words; else other."""
    key = _nfkc_lower(text).replace(" ", "")
    return _JOB_LEVEL_LABELS.get(key) or job_level_from_title(key) or JobLevel.OTHER


# Sets built once: `Choices.values` builds a new list on every access (hot path).
_DEPARTMENT_CODES = frozenset(Department.values)
_INDUSTRY_CODES = frozenset(Industry.values)


def parse_department(text: str) -> str:
    key = _nfkc_lower(text)
    if key in _DEPARTMENT_CODES:
        return key
    return _first_match(key, _DEPARTMENTS) or Department.OTHER


def parse_industry(text: str) -> str:
    key = _nfkc_lower(text).replace("_", " ")
    if key.replace(" ", "_") in _INDUSTRY_CODES:
        return key.replace(" ", "_")
    return _first_match(key, _INDUSTRIES) or Industry.OTHER


_COUNT_NOISE = re.compile(r"[,\s名人]|^(約|およそ|社員)|(以上|程度|前後|規模|くらい|ぐらい)$")
_COUNT = re.compile(r"(\d+)(?:[-~〜](\d+))?")
_MAX_COUNT = 2_147_483_647


def parse_employee_count(text: str) -> int:
    """A head count from "1,200", "120名", "100人", "１２０名"; a range gives its lower bound."""
    match = _COUNT.fullmatch(_COUNT_NOISE.sub("", unicodedata.normalize("NFKC", text)))
    if match is None or int(match.group(1)) > _MAX_COUNT:
        raise ValidationError(
            _("Employee count must be a whole number such as 1200, 1,200 or 120名.")
        )
    return int(match.group(1))


def split_full_name(name: str) -> tuple[str, str]:
    """(last_name, first_name) from "山田 太郎" or "山田　太郎" (Japanese order, 姓 名)."""
    parts = re.split(r"[ \u3000]+", name.strip(), maxsplit=1)
    return parts[0], parts[1] if len(parts) > 1 else ""


def clean_email(text: str) -> str:
    # Lists typed in Japanese often carry a full-width ＠ or letters.
    email = normalize_email(unicodedata.normalize("NFKC", text))
    try:
        validate_email(email)
    except ValidationError as exc:
        raise ValidationError(
            _("%(value)s is not a valid email address; correct it.") % {"value": text}
        ) from exc
    return email


def _max_length(name: str) -> int:
    model_field = Account._meta.get_field("name") if name == "company" else None
    return (model_field or Lead._meta.get_field(name)).max_length


def _text_cleaner(name: str, *, nfkc: bool = False) -> Callable[[str], str]:
    limit = _max_length(name)

    def clean(text: str) -> str:
        value = unicodedata.normalize("NFKC", text) if nfkc else text
        if len(value) > limit:
            raise ValidationError(
                _("Too long: %(length)d characters, at most %(limit)d; shorten it.")
                % {"length": len(value), "limit": limit}
            )
        return value

    return clean


_CLEANERS: dict[str, Callable[[str], Any]] = {
    "email": clean_email,
    "last_name": _text_cleaner("last_name"),
    "first_name": _text_cleaner("first_name"),
    "company": _text_cleaner("company"),
    "title": _text_cleaner("title"),
    "department": parse_department,
    "job_level": parse_job_level,
    "industry": parse_industry,
    "employee_count": parse_employee_count,
    "phone": _text_cleaner("phone", nfkc=True),
    "region": _text_cleaner("region", nfkc=True),
    "source": _text_cleaner("source"),
}


def clean_row_values(values: dict[str, str]) -> tuple[dict[str, Any], dict[str, list[str]]]:
    """Cleaned lead values from one row's non-blank cells by field, and errors by field."""
    values = _with_split_name(values)
    cleaned: dict[str, Any] = {}
    errors: dict[str, list[str]] = {}
    for name, text in values.items():
        try:
            cleaned[name] = _CLEANERS[name](text)
        except ValidationError as exc:
            errors[name] = exc.messages
    if "email" not in values:
        errors["email"] = [_("The email is empty; every row needs one.")]
    if "job_level" not in cleaned and cleaned.get("title"):
        level = job_level_from_title(cleaned["title"])
        if level:
            cleaned["job_level"] = level
    return cleaned, errors


def _unquote_formula(text: str) -> str:
    # Our export (and careful users) quote a cell like '+81-3… so Excel shows it as text;
    # the quote is not part of the value.
    return text[1:] if text[:1] == "'" and text[1:2] in ("=", "+", "-", "@") else text


def _with_split_name(values: dict[str, str]) -> dict[str, str]:
    values = dict(values)
    full_name = values.pop("full_name", "")
    if full_name:
        last, first = split_full_name(full_name)
        # Separate 姓 / 名 columns, when filled, are more exact than a split 氏名.
        values.setdefault("last_name", last)
        if first:
            values.setdefault("first_name", first)
    return values


# --- writing ---------------------------------------------------------------------------


@dataclass(slots=True)
class _Candidate:
    """A row that passed validation: what to upsert."""

    row: int
    email: str
    fields: dict[str, Any]
    company: str | None


def _batches(rows: Iterable[tuple[int, list[str]]], size: int) -> Iterator[list]:
    batch: list[tuple[int, list[str]]] = []
    for item in rows:
        batch.append(item)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def _existing_leads(emails: set[str]) -> dict[str, dict[str, Any]]:
    """What the database holds for these emails, by email: one query per batch."""
    rows = Lead.objects.filter(email__in=emails).values(
        "email", *WRITABLE_LEAD_FIELDS, company=F("account__name")
    )
    return {row.pop("email"): row for row in rows}


class _BatchImporter:
    """Validates and writes the rows of one file, batch by batch, remembering emails seen.

    A batch is planned in Python (statuses, merges, what changed) and written by one
    `bulk_upsert_leads` call. Rows are validated, so the database seldom refuses one; when
    it does, the batch is rolled back and written again row by row through `upsert_lead`.
    """

    def __init__(
        self, columns: dict[int, str], *, width: int, default_source: str, dry_run: bool
    ) -> None:
        self.columns = columns
        self.width = width
        self.default_source = default_source
        self.dry_run = dry_run
        self.first_row: dict[str, int] = {}  # email -> the first row that wrote it

    def import_batch(self, batch: list[tuple[int, list[str]]]) -> list[RowResult]:
        checked = [self.check_row(number, cells) for number, cells in batch]
        emails = {item.email for item in checked if isinstance(item, _Candidate)}
        known = _existing_leads(emails) if emails else {}
        if self.dry_run:
            return [self._apply(item, known, self._predict) for item in checked]
        first_row, before = dict(self.first_row), {e: dict(v) for e, v in known.items()}
        try:
            return self._write_in_bulk(checked, known)
        except DatabaseError as exc:
            logger.warning("CSV import: rows %s-%s retried one by one: %s", *_span(batch), exc)
            self.first_row = first_row
            with transaction.atomic():
                return [self._apply(item, before, self._upsert_row) for item in checked]

    def _write_in_bulk(
        self, checked: list[RowResult | _Candidate], known: dict[str, dict]
    ) -> list[RowResult]:
        planned: list[tuple[RowResult, LeadRow]] = []

        def plan(item: _Candidate, fields: dict[str, Any], *, before, seen: bool) -> RowResult:
            result = self._predict(item, fields, before=before, seen=seen)
            planned.append((result, self._lead_row(item)))
            return result

        results = [self._apply(item, known, plan) for item in checked]
        if planned:
            created = bulk_upsert_leads([row for _result, row in planned]).created
            for result, row in planned:
                if result.status == RowStatus.CREATED and row.email not in created:
                    result.status = RowStatus.UPDATED  # a concurrent writer created it first
        return results

    def _lead_row(self, item: _Candidate) -> LeadRow:
        default = "" if "source" in item.fields else self.default_source
        return LeadRow(item.email, item.fields, item.company, default_source=default)

    def check_row(self, number: int, cells: list[str]) -> RowResult | _Candidate:
        """Validate the whole row before anything of it is written."""
        if _is_blank(cells):
            return RowResult(number, RowStatus.SKIPPED, note=_("blank row"))
        values = {
            name: _unquote_formula(cells[index].strip())
            for index, name in self.columns.items()
            if index < len(cells) and cells[index].strip()
        }
        shape_error = self._shape_error(cells)
        if shape_error:
            return RowResult(number, RowStatus.ERROR, values.get("email", ""), shape_error)
        cleaned, errors = clean_row_values(values)
        if errors:
            return RowResult(number, RowStatus.ERROR, values.get("email", ""), errors)
        email = cleaned.pop("email")
        return _Candidate(number, email, cleaned, cleaned.pop("company", None))

    def _shape_error(self, cells: list[str]) -> dict[str, list[str]]:
        if any("\x00" in cell for cell in cells):
            message = _("The row contains a NUL character; remove it (or re-save the file).")
            return {ROW_ERROR_KEY: [message]}
        # Excel pads rows with empty cells; only cells with data past the header are lost.
        too_many = len(cells) > self.width and not _is_blank(cells[self.width :])
        if len(cells) < self.width or too_many:
            message = _(
                "The row has %(cells)d cells but the header has %(columns)d columns; "
                "check for a missing or extra comma."
            ) % {"cells": len(cells), "columns": self.width}
            return {ROW_ERROR_KEY: [message]}
        return {}

    def _apply(
        self, item: RowResult | _Candidate, known: dict[str, dict], write: _Write
    ) -> RowResult:
        if isinstance(item, RowResult):
            return item
        before = known.get(item.email)
        fields = dict(item.fields)
        if "source" not in fields and not (before and before["source"]):
            fields["source"] = self.default_source
        duplicate_of = self.first_row.get(item.email)
        if before is not None and _unchanged(before, fields, item.company):
            result = RowResult(item.row, RowStatus.SKIPPED, item.email, note=_("no changes"))
        else:
            seen = before is not None or duplicate_of is not None
            result = write(item, fields, before=before, seen=seen)
        if result.status != RowStatus.ERROR:
            known[item.email] = _merged(before, fields, item.company)
            self.first_row.setdefault(item.email, item.row)
            result.duplicate_of = duplicate_of
        return result

    @staticmethod
    def _predict(
        item: _Candidate, fields: dict[str, Any], *, before: dict | None, seen: bool
    ) -> RowResult:
        status = RowStatus.UPDATED if seen else RowStatus.CREATED
        return RowResult(item.row, status, item.email)

    @staticmethod
    def _upsert_row(
        item: _Candidate, fields: dict[str, Any], *, before: dict | None, seen: bool
    ) -> RowResult:
        try:
            # upsert_lead is atomic (a savepoint inside the batch's transaction): a row
            # that fails leaves nothing behind and the batch goes on.
            _lead, created = upsert_lead(item.email, fields=fields, company=item.company)
        except ValidationError as exc:
            errors = getattr(exc, "message_dict", None) or {ROW_ERROR_KEY: exc.messages}
            return RowResult(item.row, RowStatus.ERROR, item.email, errors)
        except DatabaseError as exc:
            message = _("The row could not be saved (%(error)s); correct it and import it again.")
            errors = {ROW_ERROR_KEY: [message % {"error": str(exc).strip()}]}
            return RowResult(item.row, RowStatus.ERROR, item.email, errors)
        status = RowStatus.CREATED if created else RowStatus.UPDATED
        return RowResult(item.row, status, item.email)


# How a planned row is written: (row, its fields, *, before=stored values, seen=known lead).
_Write = Callable[..., RowResult]


def _span(batch: list[tuple[int, list[str]]]) -> tuple[int, int]:
    return batch[0][0], batch[-1][0]


def _unchanged(before: dict[str, Any], fields: dict[str, Any], company: str | None) -> bool:
    same_company = company is None or before.get("company") == company
    return same_company and all(before.get(name) == value for name, value in fields.items())


def _merged(before: dict | None, fields: dict[str, Any], company: str | None) -> dict:
    merged = dict(before or dict.fromkeys((*WRITABLE_LEAD_FIELDS, "company"), ""))
    merged.update(fields)
    if company is not None:
        merged["company"] = company
    return merged


# --- text report (the command prints it) -----------------------------------------------


def report_lines(report: ImportReport, *, max_rows: int | None = None) -> list[str]:
    """The report as lines of text: summary, columns, then errors and merged rows."""
    counts = report.counts
    lines = [
        (_("Dry run, nothing written: ") if report.dry_run else "")
        + _(
            "%(created)d created, %(updated)d updated, %(skipped)d skipped, %(error)d errors "
            "(encoding: %(encoding)s)."
        )
        % {**counts, "encoding": report.encoding},
        _("Columns: %(columns)s")
        % {"columns": ", ".join(f"{h} → {name}" for name, h in report.columns.items())},
    ]
    if report.ignored_columns:
        lines.append(_("Ignored columns: %(c)s") % {"c": ", ".join(report.ignored_columns)})
    lines += [
        _("row %(row)d (%(email)s) %(column)s: %(message)s")
        % {"row": row, "email": email or "-", "column": label, "message": message}
        for row, email, label, message in report.error_lines[:max_rows]
    ]
    lines += [
        _("row %(row)d: %(note)s") % {"row": result.row, "note": result.merge_note}
        for result in report.merged_rows[:max_rows]
    ]
    return lines
