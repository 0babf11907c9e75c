"""Helpers for the WebSocket tests: a raw RFC 6455 client, direct enqueue, small waits."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import secrets
import struct
from typing import Any

from aiohttp import WSMsgType

from ccr_box.db import queue as q
from ccr_box.db import updates as updates_db
from ccr_box.server import texts
from ccr_box.server.hub import AgentConnection
from tests.conftest import API_KEY, CHAT, Harness

OP_TEXT, OP_BINARY, OP_CLOSE, OP_PING, OP_PONG = 0x1, 0x2, 0x8, 0x9, 0xA


def masked_frame(opcode: int, payload: bytes) -> bytes:
    """One final client frame (RFC 6455 §5.2: clients mask), any length, built by hand."""
    mask = secrets.token_bytes(4)
    n = len(payload)
    if n < 126:
        head = struct.pack("!BB", 0x80 | opcode, 0x80 | n)
    elif n < 1 << 16:
        head = struct.pack("!BBH", 0x80 | opcode, 0x80 | 126, n)
    else:
        head = struct.pack("!BBQ", 0x80 | opcode, 0x80 | 127, n)
    return head + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


class RawWS:
    """One HTTP/1.1 request on a bare TCP socket: lets a test see the exact response head and
    send frames aiohttp's client would refuse to build (e.g. a close frame without a code)."""

    def __init__(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, head: bytes
    ) -> None:
        self.reader, self.writer, self.head = reader, writer, head
        lines = head.decode("latin-1").split("\r\n")
        self.status = int(lines[0].split(" ")[1])
        self.headers: list[tuple[str, str]] = []
        for line in lines[1:]:
            if line:
                name, _, value = line.partition(":")
                self.headers.append((name.strip().lower(), value.strip()))
        self.body = b""

    def header_values(self, name: str) -> list[str]:
        return [v for n, v in self.headers if n == name.lower()]

    @classmethod
    async def open(
        cls,
        harness: Harness,
        target: str,
        headers: list[tuple[str, str]] | None = None,
        *,
        upgrade: str | None = "websocket",
    ) -> RawWS:
        host, port = harness.client.server.host, harness.client.server.port
        reader, writer = await asyncio.open_connection(host, port)
        lines = [f"GET {target} HTTP/1.1", f"Host: {host}:{port}"]
        if upgrade is not None:
            key = base64.b64encode(os.urandom(16)).decode()
            lines += [
                f"Upgrade: {upgrade}",
                "Connection: Upgrade",
                f"Sec-WebSocket-Key: {key}",
                "Sec-WebSocket-Version: 13",
            ]
        lines += [f"{n}: {v}" for n, v in headers or []]
        writer.write(("\r\n".join(lines) + "\r\n\r\n").encode("utf-8"))
        await writer.drain()
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        raw = cls(reader, writer, head[:-4])
        if raw.status != 101:
            length = int((raw.header_values("content-length") or ["0"])[0])
            raw.body = await asyncio.wait_for(reader.readexactly(length), 5)
        return raw

    async def send_frame(self, opcode: int, payload: bytes) -> None:
        self.writer.write(masked_frame(opcode, payload))
        await self.writer.drain()

    async def read_frame(self, timeout: float = 5.0) -> tuple[int, bytes]:
        async def read() -> tuple[int, bytes]:
            b0, b1 = await self.reader.readexactly(2)
            n = b1 & 0x7F
            if n == 126:
                (n,) = struct.unpack("!H", await self.reader.readexactly(2))
            elif n == 127:
                (n,) = struct.unpack("!Q", await self.reader.readexactly(8))
            assert not b1 & 0x80, "server frames are never masked"
            return b0 & 0x0F, await self.reader.readexactly(n)

        return await asyncio.wait_for(read(), timeout)

    async def close(self) -> None:
        self.writer.close()
        try:
            await self.writer.wait_closed()
        except ConnectionError:
            pass


def protocol_header(value: str) -> list[tuple[str, str]]:
    return [("Sec-WebSocket-Protocol", value)]


CCR_PROTOCOL = protocol_header(f"ccr, {API_KEY}")


async def receive_json(ws: Any, timeout: float = 5.0) -> dict[str, Any]:
    msg = await ws.receive(timeout=timeout)
    assert msg.type == WSMsgType.TEXT, msg
    return json.loads(msg.data)


async def connect_booted(harness: Harness, machine_id: str, **kw: Any) -> Any:
    """Connect like a CCR agent and consume the boot frame."""
    ws = await harness.connect(machine_id, **kw)
    boot = await receive_json(ws)
    assert boot["type"] == "boot", boot
    await sync(ws)  # the connect-time flush has finished (frames are read only after it)
    return ws


async def sync(ws: Any) -> None:
    """Ping and expect the very next frame to be the pong: every earlier frame has been handled
    (the server processes one connection's frames in order) and nothing else was sent."""
    await ws.send_str('{"type":"ping"}')
    msg = await ws.receive(timeout=5)
    assert msg.type == WSMsgType.TEXT and msg.data == '{"type":"pong"}', msg


async def enqueue(
    harness: Harness,
    machine_id: str,
    commands: list[str],
    *,
    session_id: str | None = "sess-1",
    chat_id: str = CHAT,
    command_ids: list[str] | None = None,
    flush: bool = True,
) -> list[str]:
    """Insert rows as §6.2 would (one transaction), then flush the machine like enqueue does."""
    ids = command_ids or [secrets.token_hex(16) for _ in commands]
    now = harness.clock.now_ms()

    def job(db: Any) -> None:
        for command_id, command in zip(ids, commands, strict=True):
            q.enqueue(
                db,
                q.NewCommand(
                    command_id=command_id,
                    machine_id=machine_id,
                    session_id=session_id,
                    command=command,
                    chat_id=chat_id,
                ),
                now,
            )

    await harness.db.write(job)
    if flush:
        await harness.hub.flush(machine_id)
    return ids


async def machine_history(harness: Harness, machine_id: str) -> dict[str, Any] | None:
    rows = await harness.db.read(updates_db.list_machines)
    return next((r for r in rows if r["machine_id"] == machine_id), None)


def current_connection(harness: Harness, machine_id: str) -> AgentConnection:
    """The hub's connection object for ``machine_id`` (take it before the connection closes)."""
    return harness.hub.connected()[machine_id]


async def disconnected(harness: Harness, conn: AgentConnection, code: int) -> dict[str, Any]:
    """Wait until the server finished with ``conn`` (closed, detached, recorded); check the
    recorded close code and return the machine's presence history row."""
    await asyncio.wait_for(conn.finished.wait(), 5)
    history = await machine_history(harness, conn.machine_id)
    assert history is not None and history["last_close_code"] == code, history
    return history


async def barrier(harness: Harness) -> None:
    """A later observable Telegram text: after it arrives, earlier texts would have arrived too."""
    fake = harness.fake
    before = fake.messages_to(CHAT).count(texts.HELP)
    resp = await harness.webhook(fake.make_message(CHAT, "/help"))
    assert resp.status == 200
    await fake.wait_for(lambda: fake.messages_to(CHAT).count(texts.HELP) == before + 1)


async def admin_machines(harness: Harness) -> list[dict[str, Any]]:
    resp = await harness.client.get("/admin/machines", headers=harness.auth())
    assert resp.status == 200
    return await resp.json()
