"""``GET /openapi.json``: the OpenAPI 3.1 description of the HTTP API, served as shipped.

The document is package data (``ccr_box/server/openapi.json``), read once when the app is built.
It holds no secrets, so it needs no API key. ``tests/test_openapi.py`` keeps it honest: every
route of the router is in it (and nothing else), and schemathesis checks it against a live server.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from importlib import resources

from aiohttp import web

RESOURCE = "openapi.json"


def load_document() -> bytes:
    """The packaged OpenAPI document (UTF-8 JSON)."""
    return resources.files("ccr_box.server").joinpath(RESOURCE).read_bytes()


def make_handler() -> Callable[[web.Request], Awaitable[web.Response]]:
    body = load_document()

    async def openapi_document(_request: web.Request) -> web.Response:
        return web.Response(body=body, content_type="application/json", charset="utf-8")

    return openapi_document
