"""CSV export of leads: the function, formula neutralising, and the admin action."""

from __future__ import annotations

import csv
import io

import pytest
from django.contrib.auth.models import Group
from django.urls import reverse
from django.utils import translation

from leadops.csv_export import export_leads_csv, neutralize_cell
from leadops.csv_import import import_leads_csv
from leadops.models import Lead
from tests.factories import AccountFactory, LeadFactory


@pytest.fixture(autouse=True)
def english(settings):
    settings.LANGUAGE_CODE = "en"
    with translation.override("en"):
        yield


def parse(data: bytes) -> list[dict[str, str]]:
    assert data.startswith(b"\xef\xbb\xbf")
    return list(csv.DictReader(io.StringIO(data.decode("utf-8-sig"), newline="")))


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("=1+2", "'=1+2"),
        ('=HYPERLINK("http://evil.example","x")', '\'=HYPERLINK("http://evil.example","x")'),
        ("+81-3-1234-5678", "'+81-3-1234-5678"),
        ("-2+3", "'-2+3"),
        ("@SUM(A1:A2)", "'@SUM(A1:A2)"),
        ("\t=1", "'\t=1"),
        ("\r=1", "'\r=1"),
        ("山田", "山田"),
        ("a=b", "a=b"),
        ("", ""),
    ],
)
def test_neutralize_cell(text, expected):
    assert neutralize_cell(text) == expected


@pytest.mark.django_db
def test_export_is_utf8_with_bom_english_headers_and_japanese_values():
    lead = LeadFactory(
        email="yamada@example.jp", last_name="山田", account__name="株式会社サンプル"
    )

    rows = parse(export_leads_csv(Lead.objects.all()))

    assert list(rows[0])[:5] == ["email", "last_name", "first_name", "company", "title"]
    assert rows == [rows[0]]
    row = rows[0]
    assert (row["email"], row["last_name"], row["company"]) == (
        lead.email,
        "山田",
        "株式会社サンプル",
    )
    assert (row["job_level"], row["employee_count"], row["score"]) == ("director", "120", "0")
    assert row["owner"] == "" and row["consent"] == "false"


@pytest.mark.django_db
def test_export_neutralises_formulas_in_every_text_cell():
    LeadFactory(
        email="evil@example.jp",
        last_name="=CMD|' /C calc'!A0",
        first_name="@SUM(1+1)",
        title="-1+1",
        phone="+81 3 0000 0000",
        source="\t=1",
        account=AccountFactory(name='=HYPERLINK("http://evil.example")'),
        behavior_score=-20,
    )

    row = parse(export_leads_csv(Lead.objects.all()))[0]

    assert row["last_name"] == "'=CMD|' /C calc'!A0"
    assert row["first_name"] == "'@SUM(1+1)"
    assert row["title"] == "'-1+1"
    assert row["phone"] == "'+81 3 0000 0000"
    assert row["source"] == "'\t=1"
    assert row["company"] == '\'=HYPERLINK("http://evil.example")'
    assert row["behavior_score"] == "-20"  # a number we wrote, not text from outside
    text_cells = [value for key, value in row.items() if key != "behavior_score"]
    assert not any(value.startswith(("=", "+", "-", "@", "\t", "\r")) for value in text_cells)


@pytest.mark.django_db
def test_export_escapes_commas_quotes_and_newlines():
    LeadFactory(email="q@example.jp", title='部長, "営業"\n兼 課長', account__name="A, Inc.")

    data = export_leads_csv(Lead.objects.all())
    row = parse(data)[0]

    assert row["title"] == '部長, "営業"\n兼 課長'
    assert row["company"] == "A, Inc."
    assert b'"\xe9\x83\xa8\xe9\x95\xb7, ""' in data  # quoted, inner quotes doubled


@pytest.mark.django_db
def test_export_follows_the_queryset_given():
    LeadFactory.create_batch(3, source="展示会")
    LeadFactory(source="ウェビナー", email="webinar@example.jp")

    rows = parse(export_leads_csv(Lead.objects.filter(source="ウェビナー")))

    assert [row["email"] for row in rows] == ["webinar@example.jp"]
    assert parse(export_leads_csv(Lead.objects.none())) == []


@pytest.mark.django_db
def test_an_exported_file_imports_back_unchanged():
    LeadFactory.create_batch(3, phone="03-1234-5678", department="sales")

    report = import_leads_csv(io.BytesIO(export_leads_csv(Lead.objects.all())))

    assert report.counts == {"created": 0, "updated": 0, "skipped": 3, "error": 0}
    assert "stage" in report.ignored_columns


# --- the admin action ------------------------------------------------------------------


def export_via_admin(client, leads) -> tuple[int, bytes, str]:
    response = client.post(
        reverse("admin:leadops_lead_changelist"),
        {"action": "export_csv", "_selected_action": [lead.pk for lead in leads]},
    )
    body = b"".join(response.streaming_content) if response.streaming else response.content
    return response.status_code, body, response.get("Content-Disposition", "")


@pytest.mark.django_db
def test_admin_action_exports_only_the_selected_leads(client, admin_user):
    client.force_login(admin_user)
    chosen = LeadFactory.create_batch(2)
    LeadFactory(email="not-chosen@example.jp")

    status, body, disposition = export_via_admin(client, chosen)

    assert status == 200
    assert disposition.startswith('attachment; filename="leads-')
    assert {row["email"] for row in parse(body)} == {lead.email for lead in chosen}


@pytest.mark.django_db
def test_admin_action_respects_the_admins_queryset_for_a_sales_rep(client, django_user_model):
    rep = django_user_model.objects.create_user(username="rep", is_staff=True)
    rep.groups.add(Group.objects.get(name="sales"))
    own = LeadFactory(owner=rep)
    others = LeadFactory()
    client.force_login(rep)

    status, body, _disposition = export_via_admin(client, [own, others])

    assert status == 200
    assert [row["email"] for row in parse(body)] == [own.email]
    assert parse(body)[0]["owner"] == "rep"


@pytest.mark.django_db
def test_neutralised_cells_import_back_without_the_quote():
    LeadFactory(email="intl@example.jp", phone="+81-3-1234-5678")
    data = export_leads_csv(Lead.objects.all())
    Lead.objects.all().delete()

    import_leads_csv(io.BytesIO(data))

    assert Lead.objects.get(email="intl@example.jp").phone == "+81-3-1234-5678"
