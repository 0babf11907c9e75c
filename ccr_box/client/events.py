"""The one reader of the operator event stream (``GET /admin/events/stream``, a WebSocket).

The server first replays the events after ``after`` it still holds, then sends every new one as
it happens. The last event may be ``{"kind":"overflow"}`` (this reader fell behind: open again
with ``after`` = the last ``seq`` seen). The stream ends when the server closes it (1001 at
shutdown). Used by the console (live tables) and by anything else holding an
:class:`~ccr_box.client.admin.AdminClient` (``admin.stream(after)``).
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import aiohttp

from ccr_box.client.errors import EndpointMissing, ServerRefused, ServerUnavailable
from ccr_box.client.http import NETWORK_ERRORS, HttpClient, describe, display_url

STREAM_PATH = "/admin/events/stream"
HEARTBEAT_S = 20.0  # a ping every 20 s; no pong within half of it closes the stream
CLOSE_TIMEOUT_S = 5.0

Frames = AsyncIterator[dict[str, Any]]


@asynccontextmanager
async def open_stream(client: HttpClient, after: int = 0) -> AsyncIterator[Frames]:
    """``async with open_stream(client, after=seq) as events: async for event in events: ...``

    Opens the stream on ``client``'s session (the handshake is bounded by its timeout). Raises
    :class:`EndpointMissing` (an older server), :class:`ServerRefused` (e.g. 401) or
    :class:`ServerUnavailable` when it cannot be opened; iteration ends when the connection
    closes. Only JSON objects with a ``kind`` are events; anything else is skipped.
    """
    where = display_url(client.base_url)
    try:
        ws = await client.session().ws_connect(
            client.base_url + STREAM_PATH,
            params={"after": str(after)},
            headers=client.headers,
            heartbeat=HEARTBEAT_S,
            timeout=aiohttp.ClientWSTimeout(ws_close=CLOSE_TIMEOUT_S),
        )
    except aiohttp.WSServerHandshakeError as exc:
        raise _refusal(exc.status, where) from None
    except NETWORK_ERRORS as exc:
        raise ServerUnavailable(
            f"cannot reach the ccr-box server at {where}: {describe(exc)}"
        ) from None
    try:
        yield _events(ws)
    finally:
        await ws.close()


def _refusal(status: int, where: str) -> Exception:
    """What a failed handshake means (its body is not available: the words are ours)."""
    if status in (404, 405):
        error = "Not found" if status == 404 else "Method not allowed"
        return EndpointMissing(status, error, "the event stream is not available on this server")
    if status == 401:
        return ServerRefused(401, "Unauthorized", "Unauthorized")
    text = f"{where} refused the event stream (HTTP {status})"
    if 400 <= status < 500:
        return ServerRefused(status, text, text)
    return ServerUnavailable(text)  # 5xx, or an answer that was no WebSocket upgrade


async def _events(ws: aiohttp.ClientWebSocketResponse) -> Frames:
    async for msg in ws:
        if msg.type == aiohttp.WSMsgType.ERROR:
            break
        if msg.type != aiohttp.WSMsgType.TEXT:
            continue
        try:
            event = json.loads(msg.data)
        except ValueError:
            continue
        if isinstance(event, dict) and "kind" in event:
            yield event
