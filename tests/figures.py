"""Figures the proof suites publish (docs/RELIABILITY.md): what was tried, what was found.

A suite calls ``record("server_kills", kills=8, updates=1200, duplicates=0, lost=0)`` once it has
checked its run. Nothing is written unless ``CCR_BOX_FIGURES`` names a file; then each call
appends one JSON line, which ``scripts/reliability.py`` sums into the table of the document.
Numbers are only recorded after the test's own assertions, so a failing run publishes nothing.
"""

from __future__ import annotations

import fcntl
import json
import os
import time
from typing import Any

ENV = "CCR_BOX_FIGURES"


def soak() -> bool:
    """The longer soak mode (``CCR_BOX_SOAK=1``), documented in the README and RELIABILITY.md."""
    return os.environ.get("CCR_BOX_SOAK", "") not in ("", "0", "false")


def record(suite: str, **numbers: int | float | str) -> None:
    path = os.environ.get(ENV)
    if not path:
        return
    line: dict[str, Any] = {"suite": suite, "at": int(time.time()), "soak": soak(), **numbers}
    with open(path, "a", encoding="utf-8") as out:
        fcntl.flock(out, fcntl.LOCK_EX)  # pytest-xdist or parallel runs append whole lines
        out.write(json.dumps(line, sort_keys=True) + "\n")
