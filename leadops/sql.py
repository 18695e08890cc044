"""Small helpers for the hand-written set-based SQL of ingest, bulk import, rescoring
and the dashboard."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from functools import cache, partial
from typing import Any, TypeVar

import psycopg
from django.db import connection, connections, models, transaction
from django.db.backends.utils import CursorWrapper
from django.db.models import QuerySet

Item = TypeVar("Item")
Result = TypeVar("Result")


def map_on_own_connections(
    work: Callable[[Item], Result], items: Iterable[Item], *, workers: int, name: str
) -> Iterator[Result]:
    """`work(item)` for every item, `workers` at once, each in a transaction of its own on
    its own database connection (a thread named `name`-N); results in item order.

    One statement keeps one PostgreSQL backend, one core, busy: this is how a pass over
    every lead or a page of independent aggregates uses the others. The connections see
    only committed rows, so callers inside a transaction must not use it.
    """
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix=name) as pool:
        yield from pool.map(partial(_in_own_connection, work), list(items))


def prepared_cursor() -> CursorWrapper:
    """A cursor whose statements PostgreSQL plans once per connection (from their fifth
    run, `DB_PREPARED_STATEMENTS`), for the hot statements that plan longer than they run.

    Django binds parameters on the client, so PostgreSQL parses and plans every statement
    anew. For the single-event ingest statement (a chain of data-modifying CTEs) planning
    is most of its cost: 0.7 ms of PostgreSQL CPU per event against 0.2–0.3 ms prepared,
    measured at 1M leads. This cursor binds on the server, so psycopg can prepare it.
    Use it as a context manager, like `connection.cursor()`.
    """
    if connection.queries_logged:
        # Django logs the SQL it reads back from a client-side cursor (a prepared run
        # leaves none on a server-side one): while queries are logged (DEBUG, captures in
        # tests) the statement runs unprepared, through Django's own cursor.
        return connection.cursor()
    # What connection.cursor() does around its own cursor: the per-request health check
    # and the thread check.
    connection.close_if_health_check_failed()
    connection.ensure_connection()
    connection.validate_thread_sharing()
    return connection.make_cursor(psycopg.Cursor(connection.connection))


def _in_own_connection(work: Callable[[Item], Result], item: Item) -> Result:
    try:
        with transaction.atomic():
            return work(item)
    finally:
        connections.close_all()  # this thread's connection: threads do not reuse them


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
