"""CSV import of lead lists: the service, the `import_leads` command and the admin upload."""

from __future__ import annotations

import csv
import io
import random
import subprocess
import sys
import time
from pathlib import Path

import pytest
from django.contrib.auth.models import Group
from django.core.management import CommandError, call_command
from django.db import DatabaseError, connection
from django.urls import reverse
from django.utils import translation

from leadops import csv_import
from leadops.csv_import import (
    CsvImportError,
    RowStatus,
    import_leads_csv,
    parse_employee_count,
    split_full_name,
)
from leadops.models import Account, Lead
from tests.factories import AccountFactory, LeadFactory

BASE_DIR = Path(__file__).resolve().parents[2]
JA_HEADER = ["メールアドレス", "氏名", "会社名", "役職", "部署", "業種", "従業員数", "電話番号"]
JA_ROW = [
    "yamada@example.jp",
    "山田 太郎",
    "株式会社サンプル",
    "マーケティング部長",
    "マーケティング部",
    "ソフトウェア",
    "1,200名",
    "03-1234-5678",
]


@pytest.fixture(autouse=True)
def english(settings):
    # Messages are asserted in English whatever translations the catalogue gains.
    settings.LANGUAGE_CODE = "en"
    with translation.override("en"):
        yield


def csv_text(rows: list[list[str]]) -> str:
    out = io.StringIO()
    csv.writer(out, lineterminator="\r\n").writerows(rows)
    return out.getvalue()


def csv_bytes(rows: list[list[str]], encoding: str = "utf-8") -> bytes:
    return csv_text(rows).encode(encoding)


def run(data: bytes, **options) -> csv_import.ImportReport:
    return import_leads_csv(io.BytesIO(data), **options)


def statuses(report: csv_import.ImportReport) -> dict[int, str]:
    return {result.row: result.status for result in report.rows}


# --- encodings -------------------------------------------------------------------------


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("encoding", "expected"),
    [("utf-8", "utf-8"), ("utf-8-sig", "utf-8"), ("cp932", "cp932")],
)
def test_each_encoding_is_detected_and_japanese_text_survives(encoding, expected):
    report = run(csv_bytes([JA_HEADER, JA_ROW], encoding))

    assert report.encoding == expected
    assert statuses(report) == {2: RowStatus.CREATED}
    lead = Lead.objects.get(email="yamada@example.jp")
    assert (lead.last_name, lead.first_name, lead.company) == ("山田", "太郎", "株式会社サンプル")
    assert "email" not in report.ignored_columns


@pytest.mark.django_db
def test_bom_does_not_spoil_the_first_header():
    report = run(b"\xef\xbb\xbf" + csv_bytes([["email", "company"], ["a@example.jp", "A社"]]))

    assert report.columns == {"email": "email", "company": "company"}
    assert Lead.objects.filter(email="a@example.jp").exists()


@pytest.mark.django_db
@pytest.mark.parametrize(
    "data",
    [
        pytest.param(csv_text([["email"], ["a@example.jp"]]).encode("utf-16"), id="utf-16-bom"),
        pytest.param(csv_text([["email"], ["a@example.jp"]]).encode("utf-16-le"), id="utf-16-le"),
        pytest.param(
            csv_text([["メール"], ["a@example.jp"]]).encode("utf-16-be"), id="utf-16-be-japanese"
        ),
        pytest.param(random.Random(7).randbytes(4096), id="random"),
        pytest.param(b"PK\x03\x04\x14\x00\x06\x00\x08\x00\x00\x00!\x00" * 50, id="xlsx"),
    ],
)
def test_other_encodings_are_rejected_whole_with_advice(data):
    with pytest.raises(CsvImportError, match="not UTF-8 or Shift_JIS; save it as CSV UTF-8"):
        run(data)
    assert not Lead.objects.exists()


@pytest.mark.django_db
def test_a_forced_encoding_that_does_not_fit_is_an_error():
    data = csv_bytes([JA_HEADER, JA_ROW], "cp932")

    with pytest.raises(CsvImportError, match="not valid utf-8"):
        run(data, encoding="utf-8")
    assert run(data, encoding="cp932").counts["created"] == 1


# --- headers ---------------------------------------------------------------------------


@pytest.mark.django_db
def test_japanese_headers_fill_every_field_and_derive_codes():
    header = [*JA_HEADER, "流入元"]
    run(csv_bytes([header, [*JA_ROW, "ウェビナー"]]))

    lead = Lead.objects.get(email="yamada@example.jp")
    assert lead.title == "マーケティング部長"
    assert lead.job_level == "director"  # derived from 部長 in the title
    assert lead.department == "marketing"
    assert lead.industry == "software"
    assert lead.employee_count == 1200
    assert lead.phone == "03-1234-5678"
    assert lead.source == "ウェビナー"
    assert Account.objects.get(name="株式会社サンプル").industry == "software"


@pytest.mark.django_db
def test_english_and_variant_headers_are_mapped():
    header = ["E-mail", "Last Name", "first_name", "Company", "Title", "job_level", "Industry"]
    row = ["Smith@Example.com", "Smith", "Jane", "Acme", "VP Sales", "経営層・役員", "finance"]
    report = run(csv_bytes([header, row]))

    assert set(report.columns) == {
        "email",
        "last_name",
        "first_name",
        "company",
        "title",
        "job_level",
        "industry",
    }
    lead = Lead.objects.get(email="smith@example.com")
    assert (lead.last_name, lead.first_name, lead.company) == ("Smith", "Jane", "Acme")
    assert lead.job_level == "executive"  # the explicit column wins over the title
    assert lead.industry == "finance"


@pytest.mark.django_db
def test_unknown_and_repeated_headers_are_listed_as_ignored():
    header = ["メール", "来場日", "メールアドレス", "備考", ""]
    report = run(csv_bytes([header, ["a@example.jp", "11/5", "b@example.jp", "メモ", ""]]))

    assert report.ignored_columns == ["来場日", "メールアドレス", "備考"]
    assert list(Lead.objects.values_list("email", flat=True)) == ["a@example.jp"]


@pytest.mark.django_db
def test_a_file_without_an_email_column_is_rejected():
    with pytest.raises(CsvImportError, match="no email column") as exc:
        run(csv_bytes([["氏名", "会社名"], ["山田 太郎", "A社"]]))
    assert "氏名, 会社名" in str(exc.value)
    assert not Lead.objects.exists() and not Account.objects.exists()


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"", "empty"),
        (b"\xef\xbb\xbf", "empty"),
        (b"\r\n\r\n", "empty"),
        ("メールアドレス,氏名\r\n".encode("cp932"), "no data rows"),
        (b"email\r\n,\r\n\r\n", "no data rows"),
        (b"\r\nemail\r\na@example.jp\r\n", "first row is empty"),
    ],
)
def test_empty_files_are_rejected(data, message):
    with pytest.raises(CsvImportError, match=message):
        run(data)
    assert not Lead.objects.exists()


# --- cell values -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("full_name", "expected"),
    [
        ("山田 太郎", ("山田", "太郎")),
        ("山田　太郎", ("山田", "太郎")),  # full-width space
        ("  山田   太郎  ", ("山田", "太郎")),
        ("山田 太郎 次郎", ("山田", "太郎 次郎")),  # only the first space splits
        ("山田太郎", ("山田太郎", "")),
    ],
)
def test_full_name_splits_on_the_first_space_in_japanese_order(full_name, expected):
    assert split_full_name(full_name) == expected


@pytest.mark.django_db
def test_separate_name_columns_win_over_the_split_full_name():
    rows = [
        ["email", "氏名", "名"],
        ["a@example.jp", "山田 太郎", "太朗"],
        ["b@example.jp", "佐藤", ""],
    ]
    run(csv_bytes(rows))

    a, b = Lead.objects.order_by("email")
    assert (a.last_name, a.first_name) == ("山田", "太朗")
    assert (b.last_name, b.first_name) == ("佐藤", "")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("1200", 1200),
        ("1,200", 1200),
        ("120名", 120),
        ("100人", 100),
        ("１２０名", 120),
        (" 3,000 名 ", 3000),
        ("約50名", 50),
        ("1000名以上", 1000),
        ("100～299名", 100),  # a size band gives its lower bound
        ("0", 0),
    ],
)
def test_employee_count_formats(text, expected):
    assert parse_employee_count(text) == expected


@pytest.mark.parametrize("text", ["多数", "1.5", "-3", "5万", "99999999999"])
def test_employee_count_rejects_what_is_not_a_count(text):
    with pytest.raises(csv_import.ValidationError):
        parse_employee_count(text)


@pytest.mark.parametrize(
    ("title", "level"),
    [
        ("代表取締役社長", "executive"),
        ("執行役員", "executive"),
        ("CEO", "executive"),
        ("事業部長", "director"),
        ("本部長", "director"),
        ("営業部 部長", "director"),
        ("課長", "manager"),
        ("マネージャー", "manager"),
        ("主任", "staff"),
        ("営業担当", "staff"),
        ("一般", "staff"),
        ("エンジニア", None),
    ],
)
def test_job_level_from_title_words(title, level):
    assert csv_import.job_level_from_title(title) == level


@pytest.mark.parametrize(
    ("text", "code"),
    [
        ("マーケティング部", "marketing"),
        ("第二営業部", "sales"),
        ("経営企画室", "management"),
        ("情報システム部", "it"),
        ("it", "it"),
        ("Sales", "sales"),
        ("総務部", "other"),
    ],
)
def test_department_names_map_to_codes(text, code):
    assert csv_import.parse_department(text) == code


@pytest.mark.parametrize(
    ("text", "code"),
    [
        ("ソフトウェア", "software"),
        ("製造業", "manufacturing"),
        ("金融", "finance"),
        ("情報通信業", "it_services"),
        ("it_services", "it_services"),
        ("小売業", "retail"),
        ("医療", "healthcare"),
        ("教育", "education"),
        ("官公庁", "public"),
        ("不動産", "other"),
    ],
)
def test_industry_names_map_to_codes(text, code):
    assert csv_import.parse_industry(text) == code


@pytest.mark.parametrize(
    ("text", "code"),
    [
        ("executive", "executive"),
        ("部長・事業部長", "director"),
        ("課長・マネージャー", "manager"),
        ("一般担当者", "staff"),
        ("その他", "other"),
    ],
)
def test_job_level_labels_and_codes(text, code):
    assert csv_import.parse_job_level(text) == code


# --- per-row errors --------------------------------------------------------------------


@pytest.mark.django_db
def test_row_errors_are_reported_per_field_and_valid_rows_still_land():
    rows = [
        ["email", "氏名", "従業員数", "会社名"],
        ["ok1@example.jp", "山田 太郎", "100", "A社"],
        ["not-an-email", "佐藤 花子", "多数", "B社"],
        ["", "鈴木 一郎", "10", "C社"],
        ["ok2@ｅｘａｍｐｌｅ．ｊｐ", "田中 次郎", "20名", "D社"],
        ["ok3@example.jp", "x" * 101, "", ""],
    ]
    report = run(csv_bytes(rows))

    assert statuses(report) == {2: "created", 3: "error", 4: "error", 5: "created", 6: "error"}
    by_row = {result.row: result for result in report.rows}
    assert set(by_row[3].errors) == {"email", "employee_count"}
    assert by_row[4].errors["email"] == ["The email is empty; every row needs one."]
    assert "at most 100" in by_row[6].errors["last_name"][0]
    assert report.counts == {"created": 2, "updated": 0, "skipped": 0, "error": 3}
    assert set(Lead.objects.values_list("email", flat=True)) == {
        "ok1@example.jp",
        "ok2@example.jp",  # full-width characters normalised
    }
    # Nothing of a row in error is written, not even its company.
    assert set(Account.objects.values_list("name", flat=True)) == {"A社", "D社"}
    assert ("3", "not-an-email", "従業員数") in {
        (str(r), e, c) for r, e, c, _ in report.error_lines
    }


@pytest.mark.django_db
def test_ragged_rows_are_row_errors():
    text = (
        "email,氏名,会社名\r\n"
        "short@example.jp,山田 太郎\r\n"
        "long@example.jp,佐藤 花子,B社,extra\r\n"
        "padded@example.jp,鈴木 一郎,C社,,\r\n"
        "ok@example.jp,田中 次郎,D社\r\n"
    )
    report = run(text.encode())

    assert statuses(report) == {2: "error", 3: "error", 4: "created", 5: "created"}
    assert "2 cells but the header has 3" in report.rows[0].errors["row"][0]
    assert set(Lead.objects.values_list("email", flat=True)) == {
        "padded@example.jp",
        "ok@example.jp",
    }


@pytest.mark.django_db
def test_quoted_cells_with_commas_and_newlines_keep_row_numbers_as_in_excel():
    rows = [["email", "会社名", "役職"], ["a@example.jp", "A, Inc.", "部長\n営業"], ["bad", "", ""]]
    report = run(csv_bytes(rows))

    assert statuses(report) == {2: "created", 3: "error"}
    assert Lead.objects.get(email="a@example.jp").company == "A, Inc."


@pytest.mark.django_db
def test_nul_bytes_make_a_row_error_not_a_crash():
    data = b"email,company\r\na@example.jp,A\x00B\r\nb@example.jp,B\r\n"
    report = run(data)

    assert statuses(report) == {2: "error", 3: "created"}
    assert "NUL" in report.rows[0].errors["row"][0]
    assert list(Lead.objects.values_list("email", flat=True)) == ["b@example.jp"]


@pytest.mark.django_db
def test_blank_rows_are_skipped():
    report = run(b"email\r\na@example.jp\r\n\r\n,\r\nb@example.jp\r\n")

    assert statuses(report) == {2: "created", 3: "skipped", 4: "skipped", 5: "created"}


@pytest.fixture
def refused_email(db):
    """Makes the database refuse one email, whichever way the lead is written.

    A real error from PostgreSQL (a trigger, dropped with the test's transaction), as a
    value the validation cannot foresee would raise it, in the bulk and the per-row path.
    """

    def refuse(email: str) -> None:
        with connection.cursor() as cursor:
            cursor.execute(
                """
                CREATE FUNCTION test_refuse_lead() RETURNS trigger LANGUAGE plpgsql AS $$
                BEGIN
                    IF NEW.email = TG_ARGV[0] THEN
                        RAISE EXCEPTION 'value too long for type character varying(20)'
                            USING ERRCODE = 'string_data_right_truncation';
                    END IF;
                    RETURN NEW;
                END $$
                """
            )
            cursor.execute(
                "CREATE TRIGGER test_refuse_lead BEFORE INSERT OR UPDATE ON leadops_lead "
                "FOR EACH ROW EXECUTE FUNCTION test_refuse_lead(%s)",
                [email],
            )

    return refuse


@pytest.mark.django_db
def test_a_row_failing_in_the_database_is_rolled_back_whole(refused_email):
    refused_email("boom@example.jp")
    rows = [["email", "会社名"], ["a@example.jp", "A社"], ["boom@example.jp", "爆発社"]]
    report = run(csv_bytes(rows + [["c@example.jp", "C社"]]))

    assert statuses(report) == {2: "created", 3: "error", 4: "created"}
    assert "could not be saved" in report.rows[1].errors["row"][0]
    assert "value too long" in report.rows[1].errors["row"][0]
    assert not Lead.objects.filter(email="boom@example.jp").exists()
    assert not Account.objects.filter(name="爆発社").exists()  # the row's account is gone too
    assert Lead.objects.count() == 2


@pytest.mark.django_db
def test_a_batch_the_database_refuses_is_written_again_row_by_row(monkeypatch, refused_email):
    monkeypatch.setattr(csv_import, "BATCH_ROWS", 4)
    per_row: list[str] = []
    real_upsert = csv_import.upsert_lead

    def spy(email, **kwargs):
        per_row.append(email)
        return real_upsert(email, **kwargs)

    monkeypatch.setattr(csv_import, "upsert_lead", spy)
    LeadFactory(email="u5@example.jp", title="部長", phone="03-0000-0000")
    refused_email("u6@example.jp")
    rows = [["email", "役職", "会社名"]] + [[f"u{i}@example.jp", "", f"社{i}"] for i in range(12)]
    report = run(csv_bytes(rows))

    # Rows 2-5, 6-9 (u4…u7, with the refused u6 at row 8) and 10-13 are the batches.
    assert report.counts == {"created": 10, "updated": 1, "skipped": 0, "error": 1}
    assert [(row, label) for row, _e, label, _m in report.error_lines] == [(8, "whole row")]
    assert report.error_lines[0][1] == "u6@example.jp"
    assert per_row == ["u4@example.jp", "u5@example.jp", "u6@example.jp", "u7@example.jp"]
    assert set(Lead.objects.values_list("email", flat=True)) == {
        f"u{i}@example.jp" for i in range(12) if i != 6
    }
    known = Lead.objects.get(email="u5@example.jp")
    assert (known.title, known.phone, known.company) == ("部長", "03-0000-0000", "社5")
    assert not Account.objects.filter(name="社6").exists()


@pytest.mark.django_db
def test_rescoring_hears_of_each_batch_once_committed(
    monkeypatch, refused_email, django_capture_on_commit_callbacks
):
    from leadops import services

    monkeypatch.setattr(csv_import, "BATCH_ROWS", 3)
    calls: list[list[int]] = []
    monkeypatch.setattr(services, "notify_leads_changed", lambda ids: calls.append(list(ids)))
    LeadFactory(email="u1@example.jp", title="部長")
    refused_email("u4@example.jp")
    rows = [["email", "役職"]] + [[f"u{i}@example.jp", "課長"] for i in range(6)]

    with django_capture_on_commit_callbacks(execute=True):
        run(csv_bytes(rows))

    ids = dict(Lead.objects.values_list("email", "id"))
    # One call for the bulk batch (u0-u2), one per row written by the per-row retry.
    assert calls == [
        sorted(ids[f"u{i}@example.jp"] for i in range(3)),
        [ids["u3@example.jp"]],
        [ids["u5@example.jp"]],
    ]


@pytest.fixture(params=["bulk", "row by row"])
def write_path(request, monkeypatch):
    """Runs a test through the bulk write and through the per-row retry (`upsert_lead`)."""
    if request.param == "row by row":

        def refuse(rows):
            raise DatabaseError("forced: write row by row")

        monkeypatch.setattr(csv_import, "bulk_upsert_leads", refuse)
    return request.param


@pytest.mark.django_db
def test_accounts_are_created_on_first_sight_and_filled_never_overwritten(write_path):
    AccountFactory(name="空社", industry="", employee_count=None)
    AccountFactory(name="満社", industry="finance", employee_count=500)
    AccountFactory(name="零社", industry="", employee_count=0)
    LeadFactory(email="old@example.jp", account=AccountFactory(name="旧社"), industry="")
    rows = [
        ["email", "会社名", "業種", "従業員数"],
        ["a@example.jp", "空社", "ソフトウェア", "1,200名"],
        ["b@example.jp", "満社", "小売", "50"],
        ["c@example.jp", "新社", "", ""],
        ["d@example.jp", "新社", "製造業", "300"],
        ["e@example.jp", "新社", "金融", "10"],
        ["f@example.jp", "零社", "", "80"],
        ["old@example.jp", "満社", "教育", ""],
    ]
    report = run(csv_bytes(rows))

    assert report.counts == {"created": 6, "updated": 1, "skipped": 0, "error": 0}
    accounts = {a.name: (a.industry, a.employee_count) for a in Account.objects.all()}
    assert accounts == {
        "空社": ("software", 1200),  # blank fields filled
        "満社": ("finance", 500),  # never overwritten
        "零社": ("", 80),  # 0 employees counts as unknown
        "新社": ("manufacturing", 300),  # created blank by row 4, filled by row 5
        "旧社": ("software", 120),
    }
    # The leads keep their own values, whatever their account holds.
    assert Lead.objects.get(email="b@example.jp").industry == "retail"
    old = Lead.objects.get(email="old@example.jp")
    assert (old.company, old.industry) == ("満社", "education")


@pytest.mark.django_db
def test_awkward_values_survive_the_bulk_write_unchanged():
    awkward = ['A, "Inc." {x}', "back\\slash\\", "NULL", "  padded ", "絵文字🎉"]
    rows = [["email", "会社名", "役職"]]
    rows += [[f"w{i}@example.jp", value, value] for i, value in enumerate(awkward)]
    run(csv_bytes(rows))

    stored = Lead.objects.select_related("account").order_by("email")
    # Cells are stripped when read, as ever; everything else is kept as written.
    assert [(lead.company, lead.title) for lead in stored] == [
        (value.strip(), value.strip()) for value in awkward
    ]


def big_list(existing: int, rows: int) -> tuple[list[list[str]], dict[str, int]]:
    """A lead list of `rows` leads, 20 bad rows and 30 repeats; {email: its first row}."""
    header = ["メールアドレス", "氏名", "会社名", "役職", "従業員数", "電話番号"]
    body = [
        [
            f"r{i}@example.jp",
            f"姓{i} 名",
            f"社{i % 250}",
            "" if i < existing else "課長",
            "" if i % 3 else f"{i}名",
            f"090-{i:04d}",
        ]
        for i in range(rows)
    ]
    for k in range(20):
        body.insert(150 * k + 7, [f"bad{k}", "x", "", "", "", ""])
    body += [[f"r{i}@example.jp", "", "", "本部長", "", ""] for i in range(1000, 1030)]
    first_row: dict[str, int] = {}
    for number, cells in enumerate(body, start=2):
        first_row.setdefault(cells[0], number)
    return [header, *body], first_row


@pytest.mark.django_db
def test_a_large_import_lands_whole_in_few_queries(django_assert_max_num_queries):
    Lead.objects.bulk_create(
        Lead(email=f"r{i}@example.jp", title="部長", phone="03", source="" if i % 2 else "紹介")
        for i in range(300)
    )
    rows, first_row = big_list(existing=300, rows=3000)

    with django_assert_max_num_queries(4 * 8):  # 4 batches: a lookup and ≤ 7 writes each
        report = run(csv_bytes(rows))

    assert report.counts == {"created": 2700, "updated": 330, "skipped": 0, "error": 20}
    assert {row for row, *_ in report.error_lines} == {first_row[f"bad{k}"] for k in range(20)}
    assert [(r.row, r.duplicate_of) for r in report.merged_rows][:2] == [
        (len(rows) - 29, first_row["r1000@example.jp"]),
        (len(rows) - 28, first_row["r1001@example.jp"]),
    ]
    assert Lead.objects.count() == 3000
    assert Account.objects.count() == 250
    leads = Lead.objects.select_related("account").in_bulk(
        [
            "r0@example.jp",
            "r1@example.jp",
            "r1005@example.jp",
            "r2997@example.jp",
            "r2999@example.jp",
        ],
        field_name="email",
    )
    r0, r1 = leads["r0@example.jp"], leads["r1@example.jp"]
    assert (r0.title, r0.phone, r0.last_name, r0.source) == ("部長", "090-0000", "姓0", "紹介")
    assert (r1.title, r1.company, r1.employee_count, r1.source) == (
        "部長",
        "社1",
        None,
        "CSV import",
    )
    r1005 = leads["r1005@example.jp"]
    assert (r1005.title, r1005.job_level, r1005.last_name) == ("本部長", "director", "姓1005")
    assert (r1005.company, r1005.phone) == ("社5", "090-1005")
    r2997 = leads["r2997@example.jp"]
    assert (r2997.first_name, r2997.employee_count, r2997.company) == ("名", 2997, "社247")
    assert (r2997.stage, r2997.score, r2997.temperature) == ("new", 0, "cold")
    assert (r2997.consent, r2997.unsubscribed, r2997.created_at is not None) == (False, False, True)
    assert leads["r2999@example.jp"].employee_count is None
    assert Account.objects.get(name="社3").employee_count == 3  # from the first row naming it


# --- dedupe and merge ------------------------------------------------------------------


@pytest.mark.django_db
def test_rows_with_the_same_email_merge_into_one_lead(write_path):
    rows = [
        ["email", "氏名", "会社名", "役職", "電話番号"],
        ["dup@example.jp", "山田 太郎", "A社", "", "03-1111-1111"],
        ["other@example.jp", "佐藤 花子", "B社", "", ""],
        ["DUP@Example.jp", "", "", "課長", "03-2222-2222"],
    ]
    report = run(csv_bytes(rows))

    assert statuses(report) == {2: "created", 3: "created", 4: "updated"}
    assert [(r.row, r.duplicate_of) for r in report.merged_rows] == [(4, 2)]
    lead = Lead.objects.get(email="dup@example.jp")
    assert (lead.last_name, lead.company, lead.title) == ("山田", "A社", "課長")
    assert lead.job_level == "manager"
    assert lead.phone == "03-2222-2222"  # the later non-empty cell wins
    assert Lead.objects.count() == 2


@pytest.mark.django_db
def test_duplicates_across_batches_merge_too(monkeypatch, write_path):
    monkeypatch.setattr(csv_import, "BATCH_ROWS", 2)
    rows = [["email", "役職"]] + [[f"u{i}@example.jp", ""] for i in range(5)]
    rows += [["u0@example.jp", "部長"]]
    report = run(csv_bytes(rows))

    assert report.counts == {"created": 5, "updated": 1, "skipped": 0, "error": 0}
    assert report.rows[-1].duplicate_of == 2
    assert Lead.objects.get(email="u0@example.jp").job_level == "director"


@pytest.mark.django_db
def test_known_emails_are_updated_only_by_non_empty_cells(write_path):
    LeadFactory(email="known@example.jp", title="部長", phone="03-0000-0000", source="ウェビナー")
    rows = [
        ["メールアドレス", "役職", "電話番号", "部署"],
        ["Known@example.jp", "", "090-1234-5678", ""],
    ]
    report = run(csv_bytes(rows), default_source="展示会 2026-11")

    assert statuses(report) == {2: "updated"}
    lead = Lead.objects.get(email="known@example.jp")
    assert (lead.title, lead.phone, lead.department) == ("部長", "090-1234-5678", "marketing")
    assert lead.source == "ウェビナー"  # a default source never overwrites the lead's origin
    assert Lead.objects.count() == 1


@pytest.mark.django_db
def test_default_source_applies_to_new_leads_without_a_source_cell(write_path):
    rows = [["email", "流入元"], ["a@example.jp", ""], ["b@example.jp", "紹介"]]
    run(csv_bytes(rows), default_source=" 展示会 2026-11 ")

    assert dict(Lead.objects.values_list("email", "source")) == {
        "a@example.jp": "展示会 2026-11",
        "b@example.jp": "紹介",
    }
    run(b"email\nc@example.jp\n")
    assert Lead.objects.get(email="c@example.jp").source == "CSV import"


@pytest.mark.django_db
def test_reimporting_the_same_file_skips_unchanged_rows_with_few_queries(
    django_assert_max_num_queries,
):
    data = csv_bytes([JA_HEADER] + [[f"r{i}@example.jp", *JA_ROW[1:]] for i in range(50)])
    assert run(data).counts["created"] == 50

    with django_assert_max_num_queries(3):  # one lookup for the batch, one transaction
        report = run(data)
    assert report.counts == {"created": 0, "updated": 0, "skipped": 50, "error": 0}


@pytest.mark.django_db
def test_dry_run_writes_nothing_and_predicts_the_outcome():
    LeadFactory(email="known@example.jp", title="部長")
    rows = [["email", "役職"], ["new@example.jp", ""], ["known@example.jp", "課長"], ["bad", ""]]
    rows.append(["new@example.jp", "主任"])
    report = run(csv_bytes(rows), dry_run=True)

    assert report.dry_run
    assert statuses(report) == {2: "created", 3: "updated", 4: "error", 5: "updated"}
    assert list(Lead.objects.values_list("email", "title")) == [("known@example.jp", "部長")]


# --- size limit ------------------------------------------------------------------------


def write_big_csv(path: Path, megabytes: int) -> Path:
    row = b"someone@example.jp,\xe5\xb1\xb1\xe7\x94\xb0 \xe5\xa4\xaa\xe9\x83\x8e,ACME\r\n"
    with path.open("wb") as out:
        out.write(b"email,name,company\r\n")
        chunk = row * (1024 * 1024 // len(row))
        for _ in range(megabytes):
            out.write(chunk)
    return path


@pytest.mark.django_db
def test_a_50_mb_file_is_rejected_quickly_before_parsing(tmp_path):
    path = write_big_csv(tmp_path / "big.csv", 50)
    started = time.monotonic()

    with path.open("rb") as stream, pytest.raises(CsvImportError, match="larger than the limit"):
        import_leads_csv(stream)
    assert time.monotonic() - started < 2
    assert not Lead.objects.exists()


@pytest.mark.django_db
def test_a_stream_of_unknown_size_is_cut_at_the_limit(settings):
    settings.CSV_IMPORT_MAX_BYTES = 1000

    class Pipe(io.RawIOBase):  # no fileno, no size: only a bounded read protects us
        def __init__(self) -> None:
            self.sent = 0

        def readable(self) -> bool:
            return True

        def readinto(self, buffer) -> int:
            buffer[: len(buffer)] = b"a" * len(buffer)
            self.sent += len(buffer)
            return len(buffer)

    pipe = Pipe()
    with pytest.raises(CsvImportError, match="larger than"):
        import_leads_csv(io.BufferedReader(pipe))
    assert pipe.sent < 100_000


# --- the command -----------------------------------------------------------------------


@pytest.mark.django_db
def test_command_prints_summary_and_row_errors(tmp_path):
    path = tmp_path / "tradeshow.csv"
    rows = [
        ["メールアドレス", "氏名", "来場日"],
        ["a@example.jp", "山田 太郎", "11/5"],
        ["bad", "x", ""],
    ]
    path.write_bytes(csv_bytes(rows, "cp932"))
    out = io.StringIO()

    call_command("import_leads", str(path), "--source", "展示会 2026-11", stdout=out)

    text = out.getvalue()
    assert "1 created, 0 updated, 0 skipped, 1 errors (encoding: cp932)" in text
    assert "Ignored columns: 来場日" in text
    assert "row 3 (bad) メールアドレス: bad is not a valid email address" in text
    assert Lead.objects.get(email="a@example.jp").source == "展示会 2026-11"


@pytest.mark.django_db
def test_command_dry_run_and_forced_encoding(tmp_path):
    path = tmp_path / "list.csv"
    path.write_bytes(csv_bytes([JA_HEADER, JA_ROW], "cp932"))
    out = io.StringIO()

    call_command("import_leads", str(path), "--dry-run", "--encoding", "cp932", stdout=out)

    assert out.getvalue().startswith("Dry run, nothing written: 1 created")
    assert not Lead.objects.exists()
    with pytest.raises(CommandError, match="not valid utf-8"):
        call_command("import_leads", str(path), "--encoding", "utf-8", stdout=io.StringIO())


@pytest.mark.django_db
def test_command_rejects_a_50_mb_file(tmp_path):
    path = write_big_csv(tmp_path / "big.csv", 50)

    with pytest.raises(CommandError, match="larger than the limit"):
        call_command("import_leads", str(path), stdout=io.StringIO())
    with pytest.raises(CommandError, match="No such file"):
        call_command("import_leads", str(tmp_path / "missing.csv"), stdout=io.StringIO())


def test_command_exit_code_is_non_zero_for_a_rejected_file(tmp_path):
    path = tmp_path / "utf16.csv"
    path.write_bytes("email\r\na@example.jp\r\n".encode("utf-16"))

    result = subprocess.run(
        [sys.executable, "manage.py", "import_leads", str(path)],
        cwd=BASE_DIR,
        capture_output=True,
        text=True,
        timeout=120,
        env={**__import__("os").environ, "LANGUAGE_CODE": "en"},
    )

    assert result.returncode == 1
    assert "not UTF-8 or Shift_JIS" in result.stderr
    assert result.stdout == ""


# --- the admin upload ------------------------------------------------------------------


@pytest.fixture
def admin_client_en(client, admin_user):
    client.force_login(admin_user)
    return client


IMPORT_URL = "admin:leadops_lead_import_csv"


def upload(client, data: bytes, name: str = "list.csv", **fields):
    file = io.BytesIO(data)
    file.name = name
    return client.post(reverse(IMPORT_URL), {"file": file, "source": "", **fields})


@pytest.mark.django_db
def test_change_list_has_an_import_button_and_the_form_renders(admin_client_en):
    changelist = admin_client_en.get(reverse("admin:leadops_lead_changelist"))
    assert changelist.status_code == 200
    assert reverse(IMPORT_URL).encode() in changelist.content
    assert b"Import CSV" in changelist.content

    form = admin_client_en.get(reverse(IMPORT_URL))
    assert form.status_code == 200
    assert b'enctype="multipart/form-data"' in form.content
    assert b'name="source"' in form.content


@pytest.mark.django_db
def test_admin_upload_imports_and_shows_the_report(admin_client_en):
    rows = [
        JA_HEADER + ["備考"],
        JA_ROW + ["VIP"],
        ["broken", "佐藤 花子", "", "", "", "", "多数", "", ""],
    ]
    response = upload(admin_client_en, csv_bytes(rows, "cp932"), source="展示会 2026-11")

    assert response.status_code == 200
    assert "admin/leadops/lead/import_report.html" in [t.name for t in response.templates]
    page = response.content.decode()
    assert '<td class="count-created">1</td>' in page
    assert '<td class="count-error">1</td>' in page
    assert "備考" in page  # ignored column
    assert "broken is not a valid email address" in page
    assert "Employee count must be a whole number" in page
    assert Lead.objects.get(email="yamada@example.jp").source == "展示会 2026-11"


@pytest.mark.django_db
def test_admin_dry_run_saves_nothing(admin_client_en):
    response = upload(admin_client_en, csv_bytes([JA_HEADER, JA_ROW]), dry_run="on")

    assert response.status_code == 200
    assert "nothing was saved" in response.content.decode()
    assert not Lead.objects.exists()


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("data", "message"),
    [
        ("email\r\na@example.jp\r\n".encode("utf-16"), "not UTF-8 or Shift_JIS"),
        (random.Random(3).randbytes(2000), "not UTF-8 or Shift_JIS"),
        (b"name,company\r\nx,y\r\n", "no email column"),
        (b"", "The submitted file is empty"),
        (b"email\r\n", "no data rows"),
        (b'email,company\r\na@example.jp,"' + b"x" * 200_000 + b"\r\n", "not valid CSV"),
    ],
)
def test_admin_shows_file_problems_as_form_errors(admin_client_en, data, message):
    response = upload(admin_client_en, data)

    assert response.status_code == 200
    assert "admin/leadops/lead/import_form.html" in [t.name for t in response.templates]
    assert message in response.content.decode()
    assert not Lead.objects.exists()


@pytest.mark.django_db
def test_admin_without_a_file_is_a_form_error(admin_client_en):
    response = admin_client_en.post(reverse(IMPORT_URL), {"source": "x"})

    assert response.status_code == 200
    assert "This field is required." in response.content.decode()


@pytest.mark.django_db
def test_admin_upload_with_only_the_file_field_is_imported(admin_client_en):
    file = io.BytesIO(b"email\r\nonly@example.jp\r\n")
    file.name = "only.csv"

    response = admin_client_en.post(reverse(IMPORT_URL), {"file": file})

    assert response.status_code == 200
    assert Lead.objects.get(email="only@example.jp").source == "CSV import"


@pytest.mark.django_db
def test_admin_rejects_a_50_mb_upload_with_a_form_error(admin_client_en, tmp_path):
    path = write_big_csv(tmp_path / "big.csv", 50)

    with path.open("rb") as file:
        response = admin_client_en.post(reverse(IMPORT_URL), {"file": file, "source": ""})

    assert response.status_code == 200
    assert "larger than the limit of 20.0\xa0MB" in response.content.decode()
    assert not Lead.objects.exists()


@pytest.fixture
def staff_in_role(db, django_user_model):
    def make(role: str):
        user = django_user_model.objects.create_user(username=f"staff-{role}", is_staff=True)
        user.groups.add(Group.objects.get(name=role))
        return user

    return make


@pytest.mark.django_db
def test_only_staff_who_may_add_leads_can_import(client, staff_in_role):
    client.force_login(staff_in_role("inside_sales"))  # may change leads, not add them
    assert client.get(reverse(IMPORT_URL)).status_code == 403
    assert upload(client, csv_bytes([JA_HEADER, JA_ROW])).status_code == 403
    changelist = client.get(reverse("admin:leadops_lead_changelist"))
    assert changelist.status_code == 200
    assert reverse(IMPORT_URL).encode() not in changelist.content
    assert not Lead.objects.exists()

    client.force_login(staff_in_role("marketer"))
    assert upload(client, csv_bytes([JA_HEADER, JA_ROW])).status_code == 200
    assert Lead.objects.count() == 1


@pytest.mark.django_db
def test_anonymous_users_are_sent_to_the_login(client):
    response = client.get(reverse(IMPORT_URL))

    assert response.status_code == 302
    assert reverse("admin:login") in response["Location"]


@pytest.mark.django_db
def test_admin_report_caps_the_error_table(admin_client_en, monkeypatch):
    from leadops import admin_csv

    monkeypatch.setattr(admin_csv, "REPORT_MAX_ROWS", 2)
    response = upload(admin_client_en, b"email\r\nbad1\r\nbad2\r\nbad3\r\nok@example.jp\r\n")

    page = response.content.decode()
    assert '<td class="count-error">3</td>' in page
    assert "bad2 is not a valid" in page and "bad3 is not a valid" not in page
    assert "Only the first 2 errors are shown." in page
