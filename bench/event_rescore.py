"""The rescore after events, in-process: what one drain task costs per batch of leads.

    uv run python -m bench.event_rescore --build --leads 200000 --events 4000000
    uv run python -m bench.event_rescore                       # on leadops_bench as it is

Each round gives `--batch` random distinct leads one new page view each (committed, as
ingest would) and times `rescore_leads` on their ids on one connection, as a Celery drain
task does; then it prints the time per round and where the last rounds' time went, per
statement. The first round pays the process's set-up (imports, the model's SQL) and the
cache of those leads' pages; read the later ones. `--build` first creates the database
`--database` with `bench.data` and scores it once (a few minutes at 200k leads).
"""

from __future__ import annotations

import argparse
import os
import random
import time
from collections import Counter, defaultdict


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--database", default="leadops_bench")
    parser.add_argument("--build", action="store_true", help="create and score the data first")
    parser.add_argument("--leads", type=int, default=200_000)
    parser.add_argument("--events", type=int, default=4_000_000)
    parser.add_argument("--batch", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    # One chunk on this connection, so that every statement is timed here.
    os.environ["SCORING_PARALLEL_CHUNKS"] = "1"
    if args.build:
        _build(args.database, leads=args.leads, events=args.events)
    else:
        from bench.pages import _point_django_at

        _point_django_at(args.database)
    _measure(batch=args.batch, rounds=args.rounds, rng=random.Random(args.seed))


def _build(database: str, *, leads: int, events: int) -> None:
    from bench import data, rescore
    from bench.__main__ import _point_django_at_bench_database

    _point_django_at_bench_database(database)
    data.generate(leads=leads, events=events)
    seconds, _changed, _mql = rescore.first_scoring()
    print(f"first scoring: {seconds:.1f} s")


def _measure(*, batch: int, rounds: int, rng: random.Random) -> None:
    from django.db import connection, transaction

    from scoring.services import rescore_leads

    with connection.cursor() as cursor:
        cursor.execute("SELECT min(id), max(id) FROM leadops_lead")
        low, high = cursor.fetchone()
    spent: defaultdict[str, float] = defaultdict(float)
    calls: Counter[str] = Counter()

    def timed(execute, sql, params, many, context):
        started = time.perf_counter()
        try:
            return execute(sql, params, many, context)
        finally:
            key = " ".join(sql.split())[:60]
            spent[key] += time.perf_counter() - started
            calls[key] += 1

    for number in range(rounds):
        ids = rng.sample(range(low, high + 1), batch)
        with transaction.atomic(), connection.cursor() as cursor:
            cursor.execute(
                """INSERT INTO leadops_activity (lead_id, type, occurred_at, properties,
                    event_id, fingerprint, source, received_at)
                SELECT id, 'page_view', now(), '{"url": "https://example.jp/pricing"}',
                       'rescore-bench-' || gen_random_uuid(), '', 'bench', now()
                FROM unnest(%s::bigint[]) AS id""",
                [ids],
            )
        spent.clear()
        calls.clear()
        started = time.perf_counter()
        with connection.execute_wrapper(timed):
            result = rescore_leads(ids)
        seconds = time.perf_counter() - started
        print(
            f"round {number + 1}: {batch:,} leads rescored in {seconds * 1000:.0f} ms "
            f"({result.changed:,} changed)"
        )
    print("the last round, per statement:")
    for key, total in sorted(spent.items(), key=lambda item: -item[1])[:8]:
        print(f"  {total * 1000:8.1f} ms  {calls[key]:3d}×  {key}")


if __name__ == "__main__":
    main()
