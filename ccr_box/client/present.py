"""Showing what the operator API returns, for the CLI tables and the console alike.

Labels, commands and errors come from untrusted sources (Telegram users, agents): :func:`plain`
makes them one inert line before any of them reaches a terminal.
"""

from __future__ import annotations

import re
from typing import Any

_UNSAFE = re.compile(r"[\x00-\x1f\x7f-\x9f\u200e\u200f\u202a-\u202e\u2066-\u2069]")


def plain(value: Any) -> str:
    """One line of inert text: whitespace collapsed, control and bidi characters replaced."""
    if value is None:
        return ""
    text = " ".join(str(value).split())
    return _UNSAFE.sub("\ufffd", text)


def shorten(value: Any, width: int = 60) -> str:
    """:func:`plain`, cut to ``width`` characters with "…" when longer."""
    text = plain(value)
    return text if len(text) <= width else text[: width - 1] + "…"


def age(ms: int | None, now_ms: int) -> str:
    """``"3m ago"`` (``"in 2h"`` for a future time, ``""`` for none)."""
    if ms is None:
        return ""
    delta = (now_ms - ms) // 1000
    ahead, delta = delta < 0, abs(delta)
    if delta < 5 and not ahead:
        return "just now"
    for size, unit in ((86400, "d"), (3600, "h"), (60, "m"), (1, "s")):
        if delta >= size or size == 1:
            amount = f"{delta // size}{unit}"
            return f"in {amount}" if ahead else f"{amount} ago"
    raise AssertionError("unreachable")
