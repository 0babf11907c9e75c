"""API-key and webhook-secret checks (contract §3), all constant-time."""

from __future__ import annotations

import hmac
import re
from collections.abc import Awaitable, Callable
from typing import TypeVar

from aiohttp import web

R = TypeVar("R", bound=web.StreamResponse)

Handler = Callable[[web.Request], Awaitable[R]]
"""An aiohttp request handler that answers with an ``R`` (``Handler[web.Response]``, ...)."""

_BEARER = re.compile(r"^bearer +(\S+)$", re.IGNORECASE)


def secret_equals(presented: str | None, expected: str) -> bool:
    """Constant-time comparison of the bytes; an empty expected secret matches nothing.

    aiohttp decodes header bytes that are not UTF-8 into lone surrogates ("surrogateescape");
    encoding them back the same way compares the bytes the client really sent, so a stray
    byte is just a wrong secret (401), never an encoding error.
    """
    if not expected or presented is None:
        return False
    return hmac.compare_digest(_wire_bytes(presented), _wire_bytes(expected))


def _wire_bytes(text: str) -> bytes:
    try:
        return text.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:  # a surrogate surrogateescape did not make (e.g. from a URL)
        return text.encode("utf-8", "surrogatepass")


def bearer_key(header: str | None) -> str | None:
    if not header:
        return None
    match = _BEARER.match(header)
    return match.group(1) if match else None


def header_key_ok(request: web.Request, api_key: str) -> bool:
    """True when ``Authorization: Bearer`` or ``X-API-Key`` carries the key (either suffices)."""
    bearer_ok = secret_equals(bearer_key(request.headers.get("Authorization")), api_key)
    x_api_ok = secret_equals(request.headers.get("X-API-Key"), api_key)
    return bearer_ok or x_api_ok


def subprotocol_items(request: web.BaseRequest) -> list[str]:
    """``Sec-WebSocket-Protocol`` items; a header split over several lines counts as one list."""
    values = request.headers.getall("Sec-WebSocket-Protocol", [])
    return [item.strip() for value in values for item in value.split(",") if item.strip()]


def subprotocol_key_ok(request: web.Request, api_key: str) -> bool:
    """``Sec-WebSocket-Protocol: ccr, <key>``: first item ``ccr``, second the key."""
    items = subprotocol_items(request)
    return len(items) >= 2 and items[0] == "ccr" and secret_equals(items[1], api_key)


def require_api_key(handler: Handler[R]) -> Handler[R | web.Response]:
    """Wrap a handler: 401 JSON unless the request carries the API key (before any body read)."""
    from ccr_box.server import keys  # local: keys imports typing-only modules
    from ccr_box.server.http import json_error

    async def guarded(request: web.Request) -> R | web.Response:
        if not header_key_ok(request, request.app[keys.CONFIG].current.server.api_key):
            return json_error(401, "Unauthorized")
        return await handler(request)

    guarded.__name__ = getattr(handler, "__name__", "guarded")
    return guarded
