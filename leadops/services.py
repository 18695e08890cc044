"""Writes of the lead core. Every lead create/update goes through `upsert_lead`."""

from __future__ import annotations

from typing import Any

from django.db import transaction

from leadops.models import Account, Lead

# Fields a caller (API, CSV import, form) may set on a lead. Score, stage and owner are
# never among them: scoring and the hand-off own those.
WRITABLE_LEAD_FIELDS = (
    "first_name",
    "last_name",
    "title",
    "job_level",
    "department",
    "industry",
    "employee_count",
    "phone",
    "source",
    "consent",
)


def normalize_email(email: str) -> str:
    return email.strip().lower()


def get_or_create_account(
    name: str, *, industry: str = "", employee_count: int | None = None, domain: str = ""
) -> Account | None:
    """The account called `name`, created on first sight; blank names have no account."""
    name = name.strip()
    if not name:
        return None
    account, created = Account.objects.get_or_create(
        name=name,
        defaults={"industry": industry, "employee_count": employee_count, "domain": domain},
    )
    if not created:
        _fill_blank_account_fields(
            account, industry=industry, employee_count=employee_count, domain=domain
        )
    return account


def _fill_blank_account_fields(account: Account, **values: Any) -> None:
    # A later list may know what an earlier one did not; it never overwrites.
    changed = [f for f, v in values.items() if v not in ("", None) and not getattr(account, f)]
    for field in changed:
        setattr(account, field, values[field])
    if changed:
        account.save(update_fields=changed)


@transaction.atomic
def upsert_lead(
    email: str, *, fields: dict[str, Any], company: str | None = None
) -> tuple[Lead, bool]:
    """Create the lead with this email, or update the fields given; return (lead, created).

    Only keys present in `fields` are written, so a partial update keeps the rest.
    `company` names the lead's account (created on first sight); None leaves it as is.
    """
    unknown = set(fields) - set(WRITABLE_LEAD_FIELDS)
    if unknown:
        raise ValueError(f"Not writable lead fields: {sorted(unknown)}")
    lead = Lead.objects.select_for_update().filter(email=normalize_email(email)).first()
    created = lead is None
    if created:
        lead = Lead(email=normalize_email(email))
    for field, value in fields.items():
        setattr(lead, field, value)
    if company is not None:
        lead.account = get_or_create_account(
            company,
            industry=fields.get("industry") or "",
            employee_count=fields.get("employee_count"),
        )
    lead.save()
    return lead, created
