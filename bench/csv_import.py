"""CSV import speed: rows/s for a fresh import, an unchanged re-import and a changed one.

    uv run python -m bench.csv_import                 # 20,000 rows, 3 rounds
    uv run python -m bench.csv_import --rows 100000 --rounds 1

It creates a throwaway database `leadops_bench_csv` on the server DATABASE_URL names
(as `make bench` does with `leadops_bench`), migrates it, generates a realistic lead list
in memory (Japanese headers and values, ~10 leads per company), imports it through
`import_leads_csv` as the admin upload does, prints the figures and drops the database.
"""

from __future__ import annotations

import argparse
import csv
import io
import os
import random
import statistics
import time
from urllib.parse import urlsplit, urlunsplit

BENCH_DB = "leadops_bench_csv"
HEADER = [
    "メールアドレス",
    "氏名",
    "会社名",
    "役職",
    "部署",
    "業種",
    "従業員数",
    "電話番号",
    "流入元",
]
LAST = ["佐藤", "鈴木", "高橋", "田中", "伊藤", "渡辺", "山本", "中村", "小林", "加藤"]
FIRST = ["太郎", "花子", "一郎", "美咲", "健太", "陽子", "翔", "さくら", "大輔", "愛"]
TITLES = ["代表取締役社長", "マーケティング部長", "営業課長", "主任", "担当", "エンジニア", ""]
DEPARTMENTS = ["マーケティング部", "第二営業部", "経営企画室", "情報システム部", "総務部", ""]
INDUSTRIES = ["ソフトウェア", "製造業", "金融", "情報通信業", "小売業", "医療", "不動産", ""]
COUNTS = ["1,200名", "50名", "300", "約100名", "5000", "100～299名", ""]
SOURCES = ["展示会 2026-11", "ウェビナー", "", "", ""]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=3, help="each on an empty database")
    args = parser.parse_args()
    admin_url = _point_django_at_database(BENCH_DB)
    try:
        rounds = [run_round(args.rows, seed) for seed in range(args.rounds)]
    finally:
        _drop_database(admin_url, BENCH_DB)
    print_figures(args.rows, rounds)


def _point_django_at_database(name: str) -> str:
    """Mirrors bench.__main__._point_django_at_bench_database for another database name."""
    from bench.__main__ import _recreate_database
    from leadops.engines import database_url, ensure_embedded_engines

    ensure_embedded_engines()
    parts = urlsplit(database_url())
    _recreate_database(parts, name)
    os.environ["DATABASE_URL"] = urlunsplit(parts._replace(path=f"/{name}"))
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "leadops.settings")
    import django

    django.setup()
    from django.core.management import call_command

    call_command("migrate", verbosity=0)
    return urlunsplit(parts._replace(path="/postgres"))


def _drop_database(admin_url: str, name: str) -> None:
    import psycopg
    from django.db import connections

    connections.close_all()
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def lead_list(rows: int, *, seed: int, title_suffix: str = "") -> bytes:
    """A UTF-8 lead list of `rows` distinct leads, the same for the same seed."""
    pick = random.Random(seed).choice
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\r\n")
    writer.writerow(HEADER)
    for i in range(rows):
        title = pick(TITLES)
        writer.writerow(
            [
                f"lead{seed}-{i}@company{i // 10}.example.jp",
                f"{pick(LAST)} {pick(FIRST)}",
                f"株式会社サンプル{seed}-{i // 10}",
                title + title_suffix if title else "",
                pick(DEPARTMENTS),
                pick(INDUSTRIES),
                pick(COUNTS),
                f"03-{i % 10000:04d}-{(i * 7) % 10000:04d}",
                pick(SOURCES),
            ]
        )
    return out.getvalue().encode()


def run_round(rows: int, seed: int) -> dict[str, float]:
    """Rows/s of each kind of import, on an empty database."""
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute("TRUNCATE leadops_lead, leadops_account RESTART IDENTITY CASCADE")
    data = lead_list(rows, seed=seed)
    figures = {
        "fresh": timed_import(data, expect="created"),
        "unchanged": timed_import(data, expect="skipped"),
        "changed": timed_import(lead_list(rows, seed=seed, title_suffix="代理"), expect="updated"),
    }
    print(f"round {seed + 1}: " + ", ".join(f"{k} {v:,.0f} rows/s" for k, v in figures.items()))
    return figures


def timed_import(data: bytes, *, expect: str) -> float:
    from leadops.csv_import import import_leads_csv

    started = time.perf_counter()
    report = import_leads_csv(io.BytesIO(data), default_source="bench")
    elapsed = time.perf_counter() - started
    rows = len(report.rows)
    # A changed list leaves rows without a title as they were: skipped, not updated.
    if report.counts["error"] or report.counts[expect] < rows * 0.8:
        raise SystemExit(f"unexpected outcome for a {expect} import: {report.counts}")
    return rows / elapsed


def print_figures(rows: int, rounds: list[dict[str, float]]) -> None:
    print(f"\n{rows:,} rows, {len(rounds)} round(s), {os.cpu_count()} cores")
    for kind in rounds[0]:
        values = [figures[kind] for figures in rounds]
        print(
            f"  {kind:<10} median {statistics.median(values):>9,.0f} rows/s"
            f"  (min {min(values):,.0f}, max {max(values):,.0f})"
        )


if __name__ == "__main__":
    main()
