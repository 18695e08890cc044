"""Many lead upserts at once: what `upsert_lead` does for one lead, in set-based SQL.

`bulk_upsert_leads(rows)` has the effect of calling `upsert_lead(row.email,
fields=row.fields, company=row.company)` for each row in order, in one transaction, with
at most five statements whatever the number of rows (`upsert_lead` needs ~7 queries per
row). The CSV import writes its batches of ~1,000 rows this way:

1. accounts: insert the names not seen yet (`INSERT … ON CONFLICT (name) DO NOTHING`);
2. read the accounts' ids and fields; only when some blank account field can be filled,
   one UPDATE fills them (filled, never overwritten, as `get_or_create_account` does);
3. leads: insert the new emails (`INSERT … SELECT FROM unnest(…) ON CONFLICT (email)
   DO NOTHING RETURNING id, email`);
4. one UPDATE of the other emails, where only the fields given overwrite (COALESCE).

Rows are inserted and locked in a stable order (name, email, id) so that concurrent
imports naming the same accounts or leads wait for each other instead of deadlocking.
Any database error propagates and rolls the whole call back.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cache
from typing import Any

from django.db import DatabaseError, connection, transaction

from leadops import services
from leadops.models import Account, Lead
from leadops.sql import column_type, model_default_columns

# Lead columns written from the rows (the account's id is written besides them).
_LEAD_FIELDS = services.WRITABLE_LEAD_FIELDS


@dataclass(frozen=True, slots=True)
class LeadRow:
    """One lead write: as `upsert_lead(email, fields=fields, company=company)`."""

    email: str  # normalized (lower case)
    fields: Mapping[str, Any]
    company: str | None = None  # the account's name; None leaves the account as is
    # The source of a lead that has none (new, or stored blank) when `fields` has none.
    default_source: str = ""


@dataclass(slots=True)
class BulkOutcome:
    created: dict[str, int] = field(default_factory=dict)  # email -> lead id
    updated: dict[str, int] = field(default_factory=dict)


class BulkWriteIncomplete(DatabaseError):
    """A lead vanished between the insert and the update (deleted concurrently)."""


@dataclass(slots=True)
class _LeadChange:
    """All rows of one email merged, in row order: later values win."""

    fields: dict[str, Any] = field(default_factory=dict)
    set_account: bool = False
    company: str = ""
    default_source: str = ""


@transaction.atomic
def bulk_upsert_leads(rows: Sequence[LeadRow]) -> BulkOutcome:
    """Create or update the leads of `rows` (and their accounts); say which was which.

    Scoring hears of every lead written once the transaction commits.
    """
    for row in rows:
        _check_writable(row.fields)
    changes = _merged_by_email(rows)
    account_ids = _upsert_accounts(_account_values(rows))
    outcome = BulkOutcome(created=_insert_leads(changes, account_ids))
    rest = {email: change for email, change in changes.items() if email not in outcome.created}
    outcome.updated = _update_leads(rest, account_ids)
    if len(outcome.created) + len(outcome.updated) != len(changes):
        raise BulkWriteIncomplete("a lead was deleted while being updated")
    lead_ids = sorted([*outcome.created.values(), *outcome.updated.values()])
    # Looked up when called, so the function scoring wires in is the one that runs.
    transaction.on_commit(lambda: services.notify_leads_changed(lead_ids))
    return outcome


def _check_writable(fields: Mapping[str, Any]) -> None:
    unknown = set(fields) - set(_LEAD_FIELDS)
    if unknown:
        raise ValueError(f"Not writable lead fields: {sorted(unknown)}")


def _merged_by_email(rows: Sequence[LeadRow]) -> dict[str, _LeadChange]:
    changes: dict[str, _LeadChange] = {}
    for row in rows:
        change = changes.setdefault(row.email, _LeadChange(default_source=row.default_source))
        change.fields.update(row.fields)
        if row.company is not None:
            change.set_account, change.company = True, row.company.strip()
    return changes


# --- accounts --------------------------------------------------------------------------


def _account_values(rows: Sequence[LeadRow]) -> dict[str, tuple[str, int | None]]:
    """{name: (industry, employee_count)} as the rows would leave a new account.

    As if each row in turn created the account or filled its blank fields: the first
    non-blank value wins, where 0 employees counts as blank (as a stored 0 does).
    """
    values: dict[str, tuple[str, int | None]] = {}
    for row in rows:
        name = (row.company or "").strip()
        if not name:
            continue
        industry, count = values.get(name, ("", None))
        new_count = row.fields.get("employee_count")
        values[name] = (
            industry or row.fields.get("industry") or "",
            count if count or new_count is None else new_count,
        )
    return values


def _upsert_accounts(values: dict[str, tuple[str, int | None]]) -> dict[str, int]:
    """{name: account id}, creating missing accounts and filling blank fields."""
    if not values:
        return {}
    names = sorted(values)
    _insert_accounts(names, values)
    stored = _read_accounts(names)
    _fill_blank_accounts(
        {
            name: fill
            for name, (_id, industry, count) in stored.items()
            if (fill := _fills(industry, count, *values[name])) is not None
        }
    )
    return {name: account_id for name, (account_id, _i, _c) in stored.items()}


def _insert_accounts(names: list[str], values: dict[str, tuple[str, int | None]]) -> None:
    columns, expressions, defaults = model_default_columns(
        Account, given=("name", "industry", "employee_count")
    )
    sql = f"""
        INSERT INTO leadops_account (name, industry, employee_count, {", ".join(columns)})
        SELECT a.name, a.industry, a.employee_count, {", ".join(expressions)}
        FROM unnest(%s::text[], %s::text[], %s::integer[]) AS a(name, industry, employee_count)
        WHERE NOT EXISTS (SELECT 1 FROM leadops_account x WHERE x.name = a.name)
        ORDER BY a.name
        ON CONFLICT (name) DO NOTHING
    """
    params = [
        *defaults,
        _array(names),
        _array(values[name][0] for name in names),
        _array(values[name][1] for name in names),
    ]
    with connection.cursor() as cursor:
        cursor.execute(sql, params)


def _read_accounts(names: list[str]) -> dict[str, tuple[int, str, int | None]]:
    # A statement of its own: it sees accounts a concurrent import committed after our
    # insert began (that insert skipped them as conflicts).
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT name, id, industry, employee_count FROM leadops_account"
            " WHERE name = ANY(%s::text[])",
            [_array(names)],
        )
        return {name: (account_id, ind, count) for name, account_id, ind, count in cursor}


def _fills(
    industry: str, count: int | None, new_industry: str, new_count: int | None
) -> tuple[str | None, int | None] | None:
    """(industry, employee_count) to fill in (None: keep), or None when nothing changes."""
    fill_industry = new_industry if not industry and new_industry else None
    fill_count = new_count if not count and new_count is not None and new_count != count else None
    if fill_industry is None and fill_count is None:
        return None
    return fill_industry, fill_count


def _fill_blank_accounts(fills: dict[str, tuple[str | None, int | None]]) -> None:
    # The blank test is repeated in SQL, so a value stored concurrently is never overwritten.
    if not fills:
        return
    names = sorted(fills)
    sql = """
        WITH given AS MATERIALIZED (
            SELECT * FROM unnest(%s::text[], %s::text[], %s::integer[])
                AS g(name, industry, employee_count)
        ),
        locked AS MATERIALIZED (
            SELECT a.id FROM leadops_account a JOIN given g ON g.name = a.name
            ORDER BY a.id FOR NO KEY UPDATE OF a
        )
        UPDATE leadops_account a
        SET industry = CASE WHEN a.industry = '' THEN COALESCE(g.industry, '')
                            ELSE a.industry END,
            employee_count = CASE WHEN COALESCE(a.employee_count, 0) = 0
                                  THEN COALESCE(g.employee_count, a.employee_count)
                                  ELSE a.employee_count END
        FROM given g, locked k
        WHERE a.id = k.id AND a.name = g.name
    """
    params = [
        _array(names),
        _array(fills[name][0] for name in names),
        _array(fills[name][1] for name in names),
    ]
    with connection.cursor() as cursor:
        cursor.execute(sql, params)


# --- leads -----------------------------------------------------------------------------


def _insert_leads(changes: dict[str, _LeadChange], account_ids: dict[str, int]) -> dict[str, int]:
    """Insert the emails no lead has; return {email: id} of the leads created."""
    if not changes:
        return {}
    names = ("email", *_LEAD_FIELDS, "account_id")
    columns, expressions, defaults = model_default_columns(Lead, given=(*names[:-1], "account"))
    sql = f"""
        INSERT INTO leadops_lead ({", ".join(names)}, {", ".join(columns)})
        SELECT {", ".join(f"t.{name}" for name in names)}, {", ".join(expressions)}
        FROM unnest({_array_casts(names)}) AS t({", ".join(names)})
        WHERE NOT EXISTS (SELECT 1 FROM leadops_lead l WHERE l.email = t.email)
        ORDER BY t.email
        ON CONFLICT (email) DO NOTHING
        RETURNING email, id
    """
    rows = [_new_lead_values(email, change, account_ids) for email, change in changes.items()]
    with connection.cursor() as cursor:
        # In the order of the placeholders: the defaults come before the arrays.
        cursor.execute(sql, [*defaults, *_arrays(rows)])
        return dict(cursor.fetchall())


def _new_lead_values(email: str, change: _LeadChange, account_ids: dict[str, int]) -> tuple:
    fields = {**_blank_lead_fields(), **change.fields}
    if "source" not in change.fields:
        fields["source"] = change.default_source
    account_id = account_ids.get(change.company) if change.set_account else None
    return (email, *(fields[name] for name in _LEAD_FIELDS), account_id)


def _update_leads(changes: dict[str, _LeadChange], account_ids: dict[str, int]) -> dict[str, int]:
    """Write the given fields of existing leads; return {email: id} of the leads found."""
    if not changes:
        return {}
    names = ("email", *_LEAD_FIELDS, "set_account", "account_id", "default_source")
    sql = f"""
        WITH given AS MATERIALIZED (
            SELECT * FROM unnest({_array_casts(names)}) AS t({", ".join(names)})
        ),
        locked AS MATERIALIZED (
            SELECT l.id FROM leadops_lead l JOIN given t ON t.email = l.email
            ORDER BY l.id FOR NO KEY UPDATE OF l
        )
        UPDATE leadops_lead l
        SET {_update_assignments()},
            account_id = CASE WHEN t.set_account THEN t.account_id ELSE l.account_id END,
            updated_at = now()
        FROM given t, locked k
        WHERE l.id = k.id AND l.email = t.email
        RETURNING l.email, l.id
    """
    rows = [_changed_lead_values(email, change, account_ids) for email, change in changes.items()]
    with connection.cursor() as cursor:
        cursor.execute(sql, _arrays(rows))
        return dict(cursor.fetchall())


def _update_assignments() -> str:
    # A field the rows did not give is NULL in its array: the stored value stays. The
    # default source only fills a blank source, as it would for a new lead.
    assignments = [
        f"{name} = COALESCE(t.{name}, l.{name})" for name in _LEAD_FIELDS if name != "source"
    ]
    assignments.append(
        "source = COALESCE(t.source, NULLIF(l.source, ''), NULLIF(t.default_source, ''), l.source)"
    )
    return ",\n            ".join(assignments)


def _changed_lead_values(email: str, change: _LeadChange, account_ids: dict[str, int]) -> tuple:
    account_id = account_ids.get(change.company) if change.set_account else None
    fields = change.fields
    return (
        email,
        *(fields.get(name) for name in _LEAD_FIELDS),
        change.set_account,
        account_id,
        change.default_source,
    )


# --- columns and arrays ----------------------------------------------------------------


@cache
def _blank_lead_fields() -> dict[str, Any]:
    """The writable fields of a new lead before anything is set (the model's defaults)."""
    template = Lead()
    return {name: getattr(template, name) for name in _LEAD_FIELDS}


_EXTRA_TYPES = {"set_account": "boolean", "account_id": "bigint", "default_source": "text"}


def _array_casts(names: Iterable[str]) -> str:
    types = (_EXTRA_TYPES.get(name) or column_type(Lead._meta.get_field(name)) for name in names)
    return ", ".join(f"%s::{db_type}[]" for db_type in types)


def _arrays(rows: list[tuple]) -> list[str]:
    """One array literal per column of `rows` (tuples of equal length)."""
    return [_array(column) for column in zip(*rows, strict=True)]


# Arrays go to PostgreSQL as ONE array-literal string each, cast in SQL (`%s::text[]`),
# as in leadops.ingest: psycopg adapts a Python list element by element, which costs
# far more than quoting one string.


def _array(values: Iterable[Any]) -> str:
    """A PostgreSQL array literal: None is NULL, booleans t/f, everything else quoted."""
    return "{" + ",".join(_element(value) for value in values) + "}"


def _element(value: Any) -> str:
    if value is None:
        return "NULL"
    if isinstance(value, bool):
        return "t" if value else "f"
    text = str(value).replace("\\", "\\\\").replace('"', '\\"')
    return f'"{text}"'
