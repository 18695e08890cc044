"""Write the bench table into docs/performance.md between markers, one block per size."""

from __future__ import annotations

import re
from pathlib import Path

HEADER = """# Performance

Figures are measured by `make bench` on this repository's own code, with the engine's
own limit for the same work measured in the same run (see `bench/`). Each block below is
rewritten by the run that produced it; the prose around them is kept.
"""


def write_report(path: Path, *, size_name: str, size: dict, table: str) -> None:
    text = path.read_text() if path.exists() else HEADER
    command = (
        "make bench" if size_name == "small" else f'make bench BENCH_ARGS="--size {size_name}"'
    )
    block = (
        f"<!-- bench:{size_name} -->\n"
        f"### Size `{size_name}`: {size['leads']:,} leads, {size['events']:,} events\n\n"
        f"Reproduce with `{command}`.\n\n{table}\n<!-- /bench:{size_name} -->"
    )
    pattern = re.compile(rf"<!-- bench:{size_name} -->.*?<!-- /bench:{size_name} -->", re.S)
    text = (
        pattern.sub(lambda _: block, text)
        if pattern.search(text)
        else text.rstrip() + "\n\n" + block
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text.rstrip() + "\n")
