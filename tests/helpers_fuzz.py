"""Plumbing for the hypothesis bad-input suites: one real server per test, oracles, settings.

Hypothesis runs a test's examples one after another; starting a server per example would cost
more than the examples. So a fuzz test is a plain (sync) test that owns an ``asyncio.Runner``:
it starts the real server and the fake Bot API on that loop once, then a ``@given`` function
defined inside the test runs each example on the same loop with ``runner.run(...)``. When every
example has passed, the test publishes its figures (``tests.figures.record``).
"""

from __future__ import annotations

import json
import logging
import math
import os
from pathlib import Path
from typing import Any

from aiohttp.test_utils import TestClient, TestServer
from hypothesis import HealthCheck, Phase, settings

from ccr_box.clock import ManualClock
from ccr_box.protocol import chat_id_text
from ccr_box.server import keys
from ccr_box.server.app import Options, make_app
from tests import figures
from tests.conftest import Harness, make_config
from tests.fake_telegram import FakeTelegram

MAX_HTTP_BODY = 1024 * 1024  # contract §7.1 (413 above)
MAX_FRAME_BYTES = 65_536  # contract §4.4 (dropped above)
# Nesting no Telegram update or agent frame comes near: deeper inputs may be refused (ccr-box
# bounds nesting), shallower ones must be handled like any other JSON.
PLAIN_DEPTH = 16

WATCHED_LOGGERS = ("ccr_box", "aiohttp", "asyncio")


# Shrinking replays a failure hundreds of times against the live server (minutes): off unless
# asked for. A failure still names its inputs byte for byte (``note``), reproducibly.
SHRINK_ENV = "CCR_BOX_FUZZ_SHRINK"


def fuzz_settings(examples: int) -> settings:
    """``examples`` hypothesis examples (20 times as many in soak mode), reproducible."""
    phases = [Phase.explicit, Phase.generate]
    if os.environ.get(SHRINK_ENV, "") not in ("", "0"):
        phases.append(Phase.shrink)
    return settings(
        max_examples=examples * (20 if figures.soak() else 1),
        deadline=None,
        derandomize=True,
        database=None,
        phases=phases,
        print_blob=False,
        suppress_health_check=[
            HealthCheck.function_scoped_fixture,
            HealthCheck.too_slow,
            HealthCheck.data_too_large,
            HealthCheck.large_base_example,
        ],
    )


async def start_harness(
    tmp_path: Path, fake: FakeTelegram, *, options: Options, **telegram: Any
) -> Harness:
    """conftest's ``start_server``, on the caller's own event loop."""
    await fake.start()
    config = make_config(tmp_path / "data", fake, **telegram)
    clock = ManualClock()
    app = make_app(config, clock=clock, options=options)
    client = TestClient(TestServer(app, host="127.0.0.1", port=0))
    await client.start_server()
    return Harness(client, fake, clock)


async def stop_harness(h: Harness) -> None:
    await h.client.close()
    if h.fake is not None:
        await h.fake.close()


async def drained(h: Harness) -> None:
    """Every after-commit effect started so far (texts, callback answers) has reached the fake."""
    await h.hub.settled()
    await h.app[keys.NOTIFIER].drain()


def error_records(records: list[logging.LogRecord], start: int = 0) -> list[str]:
    """ERROR (or worse) records of ccr-box, aiohttp and asyncio since index ``start``."""
    return [
        f"{r.name}: {r.getMessage()}" + (" [traceback]" if r.exc_info else "")
        for r in records[start:]
        if r.levelno >= logging.ERROR and r.name.split(".")[0] in WATCHED_LOGGERS
    ]


def clip(raw: bytes | str, limit: int = 300) -> str:
    text = repr(raw)
    return text if len(text) <= limit else f"{text[:limit]}…({len(raw)} long)"


# -- oracles --------------------------------------------------------------------------------------


class _NotJson(ValueError):
    pass


def _no_constant(name: str) -> Any:
    raise _NotJson(name)


def _finite(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise _NotJson(text)
    return value


def parse(raw: bytes | str) -> tuple[str, Any]:
    """How Python's json reads ``raw``: ``("ok", value)``, ``("bad", None)``, or
    ``("deep", None)`` for nesting this interpreter cannot parse (valid or not)."""
    try:
        return "ok", json.loads(raw)
    except RecursionError:
        return "deep", None
    except ValueError:  # UnicodeDecodeError included
        return "bad", None


def plain(raw: bytes | str) -> bool:
    """True when ``raw`` is unremarkable JSON that every parser reads alike: UTF-8 without a BOM,
    no NaN/Infinity, finite numbers, no lone surrogates, at most ``PLAIN_DEPTH`` levels."""
    try:
        text = raw.decode("utf-8") if isinstance(raw, bytes) else raw
        value = json.loads(text, parse_constant=_no_constant, parse_float=_finite)
    except (ValueError, RecursionError):
        return False
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, str):
            try:
                item.encode("utf-8")
            except UnicodeEncodeError:
                return False
        elif isinstance(item, dict | list):
            if depth > PLAIN_DEPTH:
                return False
            children = list(item.items()) if isinstance(item, dict) else list(enumerate(item))
            for key, child in children:
                stack.append((key, depth))
                stack.append((child, depth + 1))
    return True


def _field(obj: Any, *path: str) -> Any:
    for key in path:
        if not isinstance(obj, dict):
            return None
        obj = obj.get(key)
    return obj


def sender(update: Any) -> tuple[str | None, str | None]:
    """(chat id, user id) of an update per contract §7.2 step 2."""
    if not isinstance(update, dict):
        return None, None
    message = update.get("message")
    if isinstance(message, dict):
        return chat_id_text(_field(message, "chat", "id")), chat_id_text(
            _field(message, "from", "id")
        )
    callback = update.get("callback_query")
    if isinstance(callback, dict):
        return chat_id_text(_field(callback, "message", "chat", "id")), chat_id_text(
            _field(callback, "from", "id")
        )
    return None, None


def dedup_key(update: Any) -> int | None:
    """The ``update_id`` that makes two deliveries "the same update" (§7.2 step 1): a positive
    integer, not a boolean. Beyond SQLite's 64 bits the server treats it as absent (wire.py)."""
    value = update.get("update_id") if isinstance(update, dict) else None
    if isinstance(value, int) and not isinstance(value, bool) and 0 < value <= 2**63 - 1:
        return value
    return None
