"""``GET /ready`` (open readiness check) and ``GET /metrics`` (Prometheus text format).

Readiness: the server is ready when its database answers a trivial query on the reader thread
within ``DB_CHECK_TIMEOUT_S`` (503 otherwise). Telegram problems (state ``error`` or ``conflict``)
do not make it unready: agents, hooks and queued commands keep working, so the answer stays 200
with ``"degraded": true``. The body carries no secrets and no ids.

``/metrics`` needs the API key unless ``server.metrics_public`` is true; the config is read per
request, so a live reload takes effect at once. The text is ``prometheus_client``'s
``generate_latest`` of the app's own registry (``server/metrics.py``).
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
from collections.abc import Callable
from typing import Any, TypeVar

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from ccr_box import __version__
from ccr_box.config import secrets_of
from ccr_box.db import stats
from ccr_box.errors import CcrBoxError
from ccr_box.server import keys
from ccr_box.server.auth import require_api_key
from ccr_box.server.http import json_response

T = TypeVar("T")

log = logging.getLogger("ccr_box.observe")

DB_CHECK_TIMEOUT_S = 2.0  # a reader stuck behind a huge listing counts as not ready
DEGRADED_TELEGRAM_STATES = ("error", "conflict")
MAX_ERROR_CHARS = 200


def _describe(exc: BaseException, timeout_s: float) -> str:
    """A short, id-free description of a database failure."""
    if isinstance(exc, TimeoutError):
        return f"no answer within {timeout_s:g} s"
    if isinstance(exc, CcrBoxError):
        return str(exc)
    if isinstance(exc, sqlite3.Error):
        return f"{type(exc).__name__}: {exc}"
    return type(exc).__name__


def _masked(app: web.Application, text: str | None) -> str | None:
    """``text`` cut short, with any configured secret replaced (it is shown without a key)."""
    if text is None:
        return None
    for secret in secrets_of(app[keys.CONFIG].current):
        text = text.replace(secret, "<redacted>")
    return text[:MAX_ERROR_CHARS]


async def _read(
    app: web.Application, job: Callable[[sqlite3.Connection], T], timeout_s: float
) -> T:
    return await asyncio.wait_for(app[keys.DB].read(job), timeout_s)


async def database_check(app: web.Application) -> dict[str, Any]:
    """``{"ok": true}`` or ``{"ok": false, "error": "..."}``; never raises."""
    try:
        failure = app[keys.DB].sync_failure
        if failure is not None:
            raise failure
        await _read(app, stats.check, DB_CHECK_TIMEOUT_S)
    except Exception as exc:
        log.warning("readiness: database check failed: %s", type(exc).__name__)
        return {"ok": False, "error": _masked(app, _describe(exc, DB_CHECK_TIMEOUT_S))}
    return {"ok": True}


async def ready(request: web.Request) -> web.Response:
    """``GET /ready`` — 200 when the database answers, 503 when it does not."""
    app = request.app
    database = await database_check(app)
    state = app[keys.STATE]
    tg = state.telegram
    telegram = {
        "mode": "off" if tg.state == "off" else tg.mode,
        "state": tg.state,
        "lastOkAt": tg.last_ok_at,
        "lastError": _masked(app, tg.last_error),
    }
    body = {
        "ready": database["ok"],
        "degraded": tg.state in DEGRADED_TELEGRAM_STATES,
        "checks": {
            "database": database,
            "telegram": telegram,
            "machines": {"connected": len(app[keys.HUB].connected())},
        },
        "version": __version__,
        "uptimeS": round(max(app[keys.CLOCK].now_ms() - state.started_at, 0) / 1000, 3),
    }
    return json_response(body, status=200 if database["ok"] else 503)


async def _scrape(request: web.Request) -> web.Response:
    app = request.app
    metrics = app[keys.METRICS]
    try:
        counts = await _read(app, stats.counts, DB_CHECK_TIMEOUT_S)
    except Exception as exc:  # the other metrics are still worth serving
        log.warning("metrics: database counts failed: %s", type(exc).__name__)
        counts = None
    metrics.scraped(counts, len(app[keys.HUB].connected()), app[keys.STATE].started_at)
    return web.Response(
        body=generate_latest(metrics.registry), headers={"Content-Type": CONTENT_TYPE_LATEST}
    )


_scrape_with_key = require_api_key(_scrape)


async def metrics_handler(request: web.Request) -> web.Response:
    """``GET /metrics`` — open when ``server.metrics_public``, else the API key is required."""
    if request.app[keys.CONFIG].current.server.metrics_public:
        return await _scrape(request)
    return await _scrape_with_key(request)
