"""Writes of the lead core. Every single-lead create/update goes through `upsert_lead`;
behaviour events (which may create leads in bulk) go through `leadops.ingest.ingest_events`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from django.db import IntegrityError, transaction

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
    "region",
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
    email: str,
    *,
    fields: dict[str, Any],
    company: str | None = None,
    create_defaults: Mapping[str, Any] | None = None,
) -> tuple[Lead, bool]:
    """Create the lead with this email, or update the fields given; return (lead, created).

    Only keys present in `fields` are written, so a partial update keeps the rest.
    `company` names the lead's account (created on first sight); None leaves it as is.
    `create_defaults` (writable fields too) apply only when the lead is new, under `fields`.
    Safe when two callers create the same email at once: the second updates the first's row.
    """
    defaults = dict(create_defaults or {})
    _check_writable({**defaults, **fields})
    email = normalize_email(email)
    lead = _locked_lead(email)
    if lead is None:
        lead = _try_create_lead(email, fields={**defaults, **fields}, company=company)
        if lead is not None:
            _on_lead_saved(lead)
            return lead, True
        # Another transaction created this email between our read and our insert.
        lead = _locked_lead(email)
    _apply_lead_fields(lead, fields=fields, company=company)
    lead.save()
    _on_lead_saved(lead)
    return lead, False


def _check_writable(fields: Mapping[str, Any]) -> None:
    unknown = set(fields) - set(WRITABLE_LEAD_FIELDS)
    if unknown:
        raise ValueError(f"Not writable lead fields: {sorted(unknown)}")


def _locked_lead(email: str) -> Lead | None:
    # no_key: like every writer of a lead row, so activity inserts (FOR KEY SHARE on
    # their lead) never queue between two of them (see scoring's _lock_leads).
    return Lead.objects.select_for_update(no_key=True).filter(email=email).first()


def _try_create_lead(email: str, *, fields: dict[str, Any], company: str | None) -> Lead | None:
    """The new lead, or None when a concurrent insert of the same email won the race."""
    try:
        # A savepoint: the unique-email violation must not abort the caller's transaction.
        with transaction.atomic():
            lead = Lead(email=email)
            _apply_lead_fields(lead, fields=fields, company=company)
            lead.save(force_insert=True)
            return lead
    except IntegrityError:
        if Lead.objects.filter(email=email).exists():
            return None
        raise


def _apply_lead_fields(lead: Lead, *, fields: Mapping[str, Any], company: str | None) -> None:
    for field, value in fields.items():
        setattr(lead, field, value)
    if company is not None:
        lead.account = get_or_create_account(
            company,
            industry=fields.get("industry") or "",
            employee_count=fields.get("employee_count"),
        )


def _on_lead_saved(lead: Lead) -> None:
    lead_id = lead.pk
    transaction.on_commit(lambda: _after_lead_committed(lead_id))


def _after_lead_committed(lead_id: int) -> None:
    """Runs after a lead's fields were created or changed and committed."""
    notify_leads_changed([lead_id])


def notify_leads_changed(lead_ids: Iterable[int]) -> None:
    """Runs after leads' fields were created or changed and committed (one or many leads).

    Scoring rescores the changed leads (the attribute score depends on lead fields).
    """
    from scoring.services import schedule_rescore

    schedule_rescore(lead_ids)
