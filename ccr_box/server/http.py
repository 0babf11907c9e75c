"""HTTP plumbing shared by the routes: JSON errors, body reading, the error middleware."""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable
from typing import Any, TypeGuard

from aiohttp import web

from ccr_box import limits
from ccr_box.wire import BadJson, decode_object

log = logging.getLogger("ccr_box.server")


class BodyTooLarge(Exception):
    pass


def _compact(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


def json_response(
    data: Any, *, status: int = 200, headers: dict[str, str] | None = None
) -> web.Response:
    """Compact JSON, byte-for-byte what the CCR Worker's ``JSON.stringify`` produced."""
    return web.json_response(data, status=status, headers=headers, dumps=_compact)


def json_error(status: int, error: str, **extra: Any) -> web.Response:
    return json_response({"error": error, **extra}, status=status)


def text_response(status: int, text: str) -> web.Response:
    return web.Response(status=status, text=text)


async def read_body(request: web.Request, limit: int = limits.MAX_HTTP_BODY) -> bytes:
    """The request body, refusing more than ``limit`` bytes without buffering them."""
    if request.content_length is not None and request.content_length > limit:
        raise BodyTooLarge
    data = bytearray()
    async for chunk in request.content.iter_chunked(64 * 1024):
        data += chunk
        if len(data) > limit:
            raise BodyTooLarge
    return bytes(data)


def parse_object(raw: bytes) -> dict[str, Any]:
    """JSON object or BadJson, whatever the Content-Type said (see :mod:`ccr_box.wire`)."""
    return decode_object(raw)


async def read_json_object(request: web.Request) -> dict[str, Any] | web.Response:
    """Body as a JSON object, or the contract's 413/400 JSON error response."""
    try:
        return parse_object(await read_body(request))
    except BodyTooLarge:
        return json_error(413, "Request body too large")
    except BadJson:
        return json_error(400, "Invalid JSON body")


def is_nonempty_str(value: Any) -> TypeGuard[str]:
    return isinstance(value, str) and len(value) >= 1


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Contract §2.1: JSON 404/405 bodies, and no exception text ever reaches a client."""
    try:
        return await handler(request)
    except web.HTTPMethodNotAllowed as exc:
        allow = ", ".join(sorted(exc.allowed_methods))
        return json_response({"error": "Method not allowed"}, status=405, headers={"Allow": allow})
    except web.HTTPNotFound:
        return json_error(404, "Not found")
    except web.HTTPException:
        raise
    except ConnectionError:
        # The client went away mid-request (body cut short, socket reset): nothing to answer,
        # and nothing for the log beyond a debug line.
        log.debug("client left during %s %s", request.method, _safe_path(request))
        return json_error(400, "Connection lost")
    except Exception:
        log.exception("unhandled error in %s %s", request.method, _safe_path(request))
        return json_error(500, "Internal server error")


def _safe_path(request: web.Request) -> str:
    path = request.path
    if path.startswith("/webhook/telegram/"):
        return "/webhook/telegram/***"
    return path
