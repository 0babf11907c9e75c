"""Run the proof suites and publish their figures (docs/RELIABILITY.md).

    .venv/bin/python scripts/reliability.py            # the CI-sized run, table on stdout
    .venv/bin/python scripts/reliability.py --soak     # the long soak (CCR_BOX_SOAK=1)
    .venv/bin/python scripts/reliability.py --write    # also replace the table in the document

Each suite records what it tried and what it found through ``tests/figures.py`` once its own
assertions passed; this script sums those lines per suite. A failing suite publishes nothing and
makes this script exit non-zero, so the document only ever shows figures from green runs.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "RELIABILITY.md"
MARKERS = {
    False: ("<!-- figures:start -->", "<!-- figures:end -->"),
    True: ("<!-- soak:start -->", "<!-- soak:end -->"),
}
SUITES = [
    "tests/test_bad_input.py",
    "tests/test_chaos_*.py",
    "tests/test_fuzz_*.py",
    "tests/test_security*.py",
    "tests/test_throttle.py",
    "tests/test_openapi.py",
]
# Not figures: when and in which mode (shown in the heading), which suite (the row).
NOT_SHOWN = {"at", "soak", "suite"}
# Identities, not amounts: listed as found (a seed replays a chaos run), never summed.
LISTED = {"seed"}


def run(soak: bool, pytest_args: list[str]) -> tuple[int, list[dict[str, Any]], float]:
    with tempfile.TemporaryDirectory() as tmp:
        figures = Path(tmp) / "figures.jsonl"
        env = {**os.environ, "CCR_BOX_FIGURES": str(figures)}
        if soak:
            env["CCR_BOX_SOAK"] = "1"
        suites = sorted(str(p.relative_to(ROOT)) for pattern in SUITES for p in ROOT.glob(pattern))
        started = time.monotonic()
        code = subprocess.call(
            [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *suites, *pytest_args],
            cwd=ROOT,
            env=env,
        )
        elapsed = time.monotonic() - started
        lines = figures.read_text().splitlines() if figures.exists() else []
    return code, [json.loads(line) for line in lines], elapsed


def summarise(records: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    totals: dict[str, dict[str, Any]] = defaultdict(dict)
    for record in records:
        row = totals[record["suite"]]
        row["runs"] = row.get("runs", 0) + 1
        for key, value in record.items():
            if key in NOT_SHOWN:
                continue
            if key in LISTED:
                row[key] = f"{row[key]}/{value}" if key in row else value
            elif isinstance(value, bool) or not isinstance(value, int | float):
                row[key] = value
            else:
                row[key] = row.get(key, 0) + value
    return dict(sorted(totals.items()))


def table(totals: dict[str, dict[str, Any]], soak: bool, elapsed: float) -> str:
    out = [
        f"Last run: {time.strftime('%Y-%m-%d')}, {'soak' if soak else 'CI-sized'} mode, "
        f"{elapsed:.0f} s on {os.cpu_count()} cores "
        f"(`.venv/bin/python scripts/reliability.py{' --soak' if soak else ''}`).",
        "",
        "| suite | figures |",
        "|---|---|",
    ]
    for suite, row in totals.items():
        figures = ", ".join(f"{key} {value}" for key, value in row.items())
        out.append(f"| {suite} | {figures} |")
    return "\n".join(out)


def write(doc: Path, text: str, soak: bool) -> None:
    start, end = MARKERS[soak]
    body = doc.read_text()
    head, found, rest = body.partition(start)
    if not found:
        raise SystemExit(f"{doc}: no {start} marker")
    _, _, tail = rest.partition(end)
    doc.write_text(f"{head}{start}\n{text}\n{end}{tail}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--soak", action="store_true", help="the long soak mode (CCR_BOX_SOAK=1)")
    parser.add_argument("--write", action="store_true", help=f"update the table in {DOC.name}")
    parser.add_argument("pytest_args", nargs="*", help="passed on to pytest (after --)")
    args = parser.parse_args()
    code, records, elapsed = run(args.soak, args.pytest_args)
    text = table(summarise(records), args.soak, elapsed)
    print(text)
    if code != 0:
        print(f"\npytest exited {code}: figures not published", file=sys.stderr)
        return code
    if args.write:
        write(DOC, text, args.soak)
        print(f"\nwrote {DOC.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
