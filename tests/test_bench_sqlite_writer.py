"""Smoke run of ``scripts/bench_sqlite_writer.py --quick``: it runs and prints its table.

Throughput is not asserted (no timed assertions): the figures are the script's output, quoted in
``ccr_box/db/__init__.py`` and the README.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("aiosqlite")  # a dev extra: the benchmark's baseline

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "bench_sqlite_writer.py"


def test_quick_run_prints_the_table(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, str(SCRIPT), "--quick", "--dir", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    header = next(line for line in lines if line.lstrip().startswith("concurrency"))
    for column in ("ccr-box", "aiosqlite txn/job", "aiosqlite batched", "ratio vs txn/job"):
        assert column in header
    row = re.compile(r"^\s*(\d+) \|.*\|\s*[0-9.]+x \|\s*[0-9.]+x$")
    assert [int(m.group(1)) for line in lines if (m := row.match(line))] == [1, 16, 64]
    assert list(tmp_path.iterdir()) == []  # its database files are removed
