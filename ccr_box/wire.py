"""Decoding untrusted JSON and ids: the one path every body, frame and update goes through.

Anyone who can reach the server can send bytes; none of them may turn into a 5xx, a traceback
or a dropped connection. :func:`decode_json` accepts exactly what can later be stored in SQLite
and sent on as JSON, and refuses everything else with :class:`BadJson`:

- bytes that are not UTF-8/16/32 text, or text with a lone surrogate (``"\\ud800"`` or its raw
  bytes, which ``json.loads`` lets through) — it cannot be stored or sent on;
- nesting deeper than :data:`~ccr_box.limits.MAX_JSON_DEPTH` (far beyond any Telegram update or
  CCR frame, and far below the interpreter's recursion limit, so no later ``json.dumps`` or
  recursive walk can hit a ``RecursionError``);
- ``NaN`` / ``Infinity`` and floats that overflow to infinity (not JSON; Telegram rejects them);
- integers over 4300 digits (Python's int-parsing limit).

:func:`int64` is the range check for ids that end up in SQLite INTEGER columns.
"""

from __future__ import annotations

import json
import math
from typing import Any

from ccr_box import limits

INT64_MIN = -(2**63)
INT64_MAX = 2**63 - 1


class BadJson(ValueError):
    """The input is not a JSON value ccr-box can accept (see the module docstring)."""


def _no_constant(name: str) -> Any:
    raise BadJson(f"{name} is not JSON")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise BadJson("number out of range")
    return value


_DECODER = json.JSONDecoder(parse_constant=_no_constant, parse_float=_finite_float)


def decode_json(raw: str | bytes | bytearray) -> Any:
    """The JSON value in ``raw``, or :class:`BadJson`."""
    try:
        if isinstance(raw, bytes | bytearray):
            # json.loads' own detection (UTF-8/16/32, BOM) with "surrogatepass", as json.loads does.
            text = raw.decode(json.detect_encoding(raw), "surrogatepass")
        else:
            text = raw
        value = _DECODER.decode(text)
    except (ValueError, RecursionError) as exc:  # UnicodeDecodeError is a ValueError
        raise BadJson(type(exc).__name__) from None
    # Cheap screens first: depth cannot exceed the number of openers, and a surrogate needs a
    # non-ASCII character or a \u escape. Only suspicious inputs pay for the walk.
    deep = text.count("[") + text.count("{") > limits.MAX_JSON_DEPTH
    if deep or not text.isascii() or "\\u" in text:
        _check(value)
    return value


def decode_object(raw: str | bytes | bytearray) -> dict[str, Any]:
    """A JSON object, or :class:`BadJson`."""
    value = decode_json(raw)
    if not isinstance(value, dict):
        raise BadJson("not an object")
    return value


def acceptable(value: Any) -> bool:
    """Whether an already parsed value passes the same checks as :func:`decode_json`.

    For values that arrive inside a larger answer (one update of a ``getUpdates`` batch): the
    one bad item is skipped, its neighbours are not lost with it.
    """
    try:
        _check(value)
    except BadJson:
        return False
    return True


def _check(value: Any) -> None:
    """Walk without recursion: refuse too deep nesting, unencodable strings, NaN/Infinity."""
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, str):
            _check_text(item)
        elif isinstance(item, float) and not math.isfinite(item):
            raise BadJson("number out of range")
        elif isinstance(item, dict | list):
            if depth > limits.MAX_JSON_DEPTH:
                raise BadJson("nested too deeply")
            children = item.items() if isinstance(item, dict) else enumerate(item)
            for key, child in children:
                if isinstance(key, str):
                    _check_text(key)
                if isinstance(child, str | float | dict | list):
                    stack.append((child, depth + 1))


def _check_text(text: str) -> None:
    if not text.isascii():
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:
            raise BadJson("lone surrogate") from None


def int64(value: Any) -> int | None:
    """``value`` if it is an integer SQLite can store (not a bool), else None."""
    if isinstance(value, int) and not isinstance(value, bool) and INT64_MIN <= value <= INT64_MAX:
        return value
    return None


def positive_int64(value: Any) -> int | None:
    """Like :func:`int64`, but only ids above zero (Telegram's update and message ids)."""
    number = int64(value)
    return number if number is not None and number > 0 else None


def clip(value: Any, limit: int = 80) -> str:
    """A client-supplied value made safe for one log line: repr'd, clipped, no control chars."""
    text = repr(value) if not isinstance(value, str) else value
    text = text.encode("utf-8", "backslashreplace").decode("ascii", "backslashreplace")
    text = " ".join(text.split())  # newlines and tabs would forge or split log lines
    text = "".join(ch if ch.isprintable() else "?" for ch in text)
    return text if len(text) <= limit else f"{text[:limit]}…(+{len(text) - limit})"
