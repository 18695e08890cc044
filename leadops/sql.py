"""Small helpers for the hand-written set-based SQL of ingest and bulk import."""

from __future__ import annotations

import json
from functools import cache
from typing import Any

from django.db import connection, connections, models
from django.db.models import QuerySet


@cache
def model_default_columns(
    model: type[models.Model], *, given: tuple[str, ...]
) -> tuple[list[str], list[str], tuple[Any, ...]]:
    """(columns, SQL expressions, their parameters) of the model's columns not `given`.

    Taken from the model, so a field added later gets its default here too. Timestamps
    set on save are the transaction's now().
    """
    template = model()
    columns, expressions, values = [], [], []
    for model_field in model._meta.concrete_fields:
        if model_field.primary_key or model_field.name in given:
            continue
        columns.append(connection.ops.quote_name(model_field.column))
        if getattr(model_field, "auto_now", False) or getattr(model_field, "auto_now_add", False):
            expressions.append("now()")
            continue
        expressions.append(f"%s::{column_type(model_field)}")
        values.append(
            model_field.get_db_prep_save(getattr(template, model_field.attname), connection)
        )
    return columns, expressions, tuple(values)


def column_type(model_field: models.Field) -> str:
    """The column's type without a length: a cast to varchar(n) would cut a long value
    silently, while storing text into the column refuses it."""
    db_type = model_field.db_type(connection)
    return "text" if db_type.startswith("varchar") else db_type


def planner_row_estimate(queryset: QuerySet) -> int:
    """PostgreSQL's estimate of the rows a queryset returns: instant on any table size."""
    sql, params = queryset.query.sql_with_params()
    with connections[queryset.db].cursor() as cursor:
        cursor.execute(f"EXPLAIN (FORMAT JSON) {sql}", params)
        plan = cursor.fetchone()[0]
    if isinstance(plan, str):
        plan = json.loads(plan)
    return int(plan[0]["Plan"]["Plan Rows"])
