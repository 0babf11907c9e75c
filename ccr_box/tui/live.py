"""The console's additions to :class:`AdminClient`: the event stream and newer operator endpoints.

Servers that predate an endpoint answer 404 ``Not found`` (or 405): that becomes
:class:`EndpointMissing`, which the console shows as "not available on this server".
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import aiohttp

from ccr_box.errors import CcrBoxError
from ccr_box.tui.client import AdminClient, AdminError, AdminUnavailable, display_url

STREAM_PATH = "/admin/events/stream"


class EndpointMissing(CcrBoxError):
    """This server does not offer the endpoint (an older ccr-box)."""


def is_missing(exc: AdminError) -> bool:
    """404/405 from the router (``Not found``), not a refusal such as ``Session not found``."""
    generic = exc.message in ("Not found", "Method not allowed") or "answered HTTP" in exc.message
    return exc.status in (404, 405) and generic


class ConsoleClient(AdminClient):
    async def send_command(self, session_id: str, text: str) -> dict[str, Any]:
        """As :meth:`AdminClient.send_command`; an older server without it: EndpointMissing."""
        try:
            return await super().send_command(session_id, text)
        except AdminError as exc:
            if is_missing(exc):
                raise EndpointMissing("sending commands is not available on this server") from None
            raise

    @asynccontextmanager
    async def stream(self, after: int = 0) -> AsyncIterator[AsyncIterator[dict[str, Any]]]:
        """``async with client.stream(after=seq) as frames: async for frame in frames: ...``

        The server first replays the events after ``after`` it still holds, then streams.

        Raises :class:`EndpointMissing` (404), :class:`AdminError` (e.g. 401) or
        :class:`AdminUnavailable` when the stream cannot be opened; iteration ends when the
        connection closes. Frames that are not JSON objects are skipped.
        """
        where = display_url(self.base_url)
        headers = {"Authorization": f"Bearer {self._api_key}"}
        async with aiohttp.ClientSession() as session:
            try:
                ws = await session.ws_connect(
                    self.base_url + STREAM_PATH,
                    params={"after": str(after)},
                    headers=headers,
                    heartbeat=20,
                    timeout=aiohttp.ClientWSTimeout(ws_close=5),
                )
            except aiohttp.WSServerHandshakeError as exc:
                if exc.status in (404, 405):
                    raise EndpointMissing(
                        "the event stream is not available on this server"
                    ) from None
                raise AdminError(exc.status, exc.message or f"HTTP {exc.status}") from None
            except (aiohttp.ClientError, OSError, TimeoutError) as exc:
                raise AdminUnavailable(
                    f"cannot reach {where}: {exc or type(exc).__name__}"
                ) from None
            try:
                yield _frames(ws)
            finally:
                await ws.close()


async def _frames(ws: aiohttp.ClientWebSocketResponse) -> AsyncIterator[dict[str, Any]]:
    async for msg in ws:
        if msg.type != aiohttp.WSMsgType.TEXT:
            continue
        try:
            frame = json.loads(msg.data)
        except ValueError:
            continue
        if isinstance(frame, dict):
            yield frame
