"""Helpers for the queue / maintenance / database tests (real sockets, real SQLite)."""

from __future__ import annotations

import asyncio
import base64
import json
import os
from contextlib import closing
from typing import Any

from aiohttp import WSMsgType

from ccr_box.server import keys
from tests.conftest import API_KEY, CHAT, Harness

DAY_MS = 24 * 60 * 60 * 1000


async def receive_json(ws: Any, timeout: float = 5.0) -> dict[str, Any]:
    msg = await ws.receive(timeout=timeout)
    assert msg.type == WSMsgType.TEXT, msg
    return json.loads(msg.data)


async def connect_booted(h: Harness, machine_id: str) -> tuple[Any, list[dict[str, Any]]]:
    """Connect an agent, read its boot frame, and return the frames the connect flush sent.

    The read loop (which answers pings) only starts after the connect flush and its database
    write finished, so the pong marks the end of everything the connection sequence did.
    """
    ws = await h.connect(machine_id)
    boot = await receive_json(ws)
    assert boot["type"] == "boot", boot
    return ws, await sync(ws)


async def sync(ws: Any) -> list[dict[str, Any]]:
    """Send a ping; return every frame received before the pong."""
    await ws.send_str('{"type":"ping"}')
    frames = []
    while True:
        frame = await receive_json(ws)
        if frame == {"type": "pong"}:
            return frames
        frames.append(frame)


async def notify_token(h: Harness, session_id: str) -> dict[str, Any]:
    return await h.notify(session_id, "Claude stopped.")


async def reply(h: Harness, message_id: int, text: str, chat: str = CHAT) -> dict[str, Any]:
    """A Telegram reply to a bot message, delivered through the real webhook."""
    update = h.fake.make_message(chat, text, reply_to=message_id)
    resp = await h.webhook(update)
    assert resp.status == 200, await resp.text()
    return update


async def tick(h: Harness) -> None:
    await h.app[keys.MAINTENANCE].tick()


async def only_row(h: Harness) -> dict[str, Any]:
    rows = await h.commands()
    assert len(rows) == 1, rows
    return rows[0]


async def sql(h: Harness, query: str, *params: Any) -> list[tuple[Any, ...]]:
    def job(conn: Any) -> list[tuple[Any, ...]]:
        with closing(conn.execute(query, params)) as cur:
            return [tuple(r) for r in cur.fetchall()]

    return await h.db.read(job)


class RawAgent:
    """A WebSocket agent on a bare asyncio stream: it never reacts to anything on its own
    (no automatic close on EOF), so the server side of the socket can be broken deterministically.
    """

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    @classmethod
    async def connect(cls, h: Harness, machine_id: str) -> RawAgent:
        url = h.client.make_url("/")
        reader, writer = await asyncio.open_connection(url.host, url.port)
        key = base64.b64encode(os.urandom(16)).decode()
        writer.write(
            (
                f"GET /ws?machineId={machine_id} HTTP/1.1\r\n"
                f"Host: {url.host}:{url.port}\r\n"
                "Upgrade: websocket\r\nConnection: Upgrade\r\n"
                f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n"
                f"Sec-WebSocket-Protocol: ccr, {API_KEY}\r\n\r\n"
            ).encode()
        )
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        assert head.startswith(b"HTTP/1.1 101"), head
        return cls(reader, writer)

    async def receive_json(self) -> dict[str, Any]:
        first, second = await asyncio.wait_for(self.reader.readexactly(2), 5)
        assert first == 0x81, first  # FIN + text; the server sends small unfragmented frames
        length = second & 0x7F
        if length == 126:
            length = int.from_bytes(await self.reader.readexactly(2), "big")
        elif length == 127:
            length = int.from_bytes(await self.reader.readexactly(8), "big")
        return json.loads(await asyncio.wait_for(self.reader.readexactly(length), 5))

    def close(self) -> None:
        self.writer.transport.abort()
