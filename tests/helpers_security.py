"""Helpers for the security suites: raw HTTP over a bare socket, database snapshots, route lists."""

from __future__ import annotations

import asyncio
import base64
import os
import re
from contextlib import closing
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from ccr_box.server import keys
from ccr_box.server.app import Options
from ccr_box.server.throttle import ThrottlePolicy
from tests.conftest import CHAT, Harness

TIMEOUT = 5.0
# The throttle answers 429 after ten 401s from 127.0.0.1; the credential matrices want every 401.
NO_BLOCKING = Options(
    maintenance=False, telegram_inbound=False, auth_throttle=ThrottlePolicy(free_failures=10**9)
)
CONCURRENCY = 32
# Routes that authenticate with something other than the API key, or not at all (contract §2.2).
OPEN_PATHS = frozenset({"/health", "/ready", "/openapi.json"})
WEBHOOK_PREFIX = "/webhook/telegram"
_PARAM = re.compile(r"\{(\w+)(?::[^}]*)?\}")


@dataclass
class RawResponse:
    status: int
    head: bytes
    body: bytes

    def header(self, name: str) -> str | None:
        for line in self.head.split(b"\r\n")[1:]:
            key, _, value = line.partition(b":")
            if key.strip().lower() == name.lower().encode():
                return value.strip().decode("latin-1")
        return None


async def raw_request(
    host: str,
    port: int,
    method: str,
    target: str,
    headers: list[bytes] | None = None,
    body: bytes | None = None,
    *,
    upgrade: bool = False,
    timeout: float = TIMEOUT,
) -> RawResponse:
    """One request on a fresh connection, header lines sent byte for byte as given.

    aiohttp's client refuses to send some of these (non-ASCII bytes, odd spacing), so this writes
    the request itself. With ``upgrade`` the request is a WebSocket handshake; a 101 answer's
    connection is dropped right after its head.
    """
    reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), timeout)
    try:
        lines = [f"{method} {target} HTTP/1.1".encode(), f"Host: {host}:{port}".encode()]
        if upgrade:
            key = base64.b64encode(os.urandom(16))
            lines += [
                b"Upgrade: websocket",
                b"Connection: Upgrade",
                b"Sec-WebSocket-Key: " + key,
                b"Sec-WebSocket-Version: 13",
            ]
        else:
            lines.append(b"Connection: close")
        lines += headers or []
        if body is not None:
            lines.append(f"Content-Length: {len(body)}".encode())
        writer.write(b"\r\n".join(lines) + b"\r\n\r\n" + (body or b""))
        await writer.drain()
        head = (await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout))[:-4]
        status = int(head.split(b" ", 2)[1])
        response = RawResponse(status, head, b"")
        if status != 101:
            length = int(response.header("Content-Length") or "0")
            response.body = await asyncio.wait_for(reader.readexactly(length), timeout)
        return response
    finally:
        writer.close()
        try:
            await writer.wait_closed()
        except (ConnectionError, OSError):
            pass


def server_address(harness: Harness) -> tuple[str, int]:
    server = harness.client.server
    assert server.host is not None and server.port is not None
    return server.host, server.port


async def snapshot(harness: Harness) -> dict[str, list[str]]:
    """Every row of every table (read-only connection), plus the schema version."""

    def job(conn: Any) -> dict[str, list[str]]:
        with closing(
            conn.execute("SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name")
        ) as cur:
            tables = [row[0] for row in cur.fetchall()]
        out: dict[str, list[str]] = {}
        for table in tables:
            with closing(conn.execute(f'SELECT * FROM "{table}"')) as cur:
                out[table] = sorted(repr(tuple(row)) for row in cur.fetchall())
        with closing(conn.execute("PRAGMA user_version")) as cur:
            out["<user_version>"] = [repr(cur.fetchone()[0])]
        return out

    return await harness.db.read(job)


def keyed_routes(app: web.Application, *, metrics_public: bool) -> list[tuple[str, str]]:
    """(method, canonical path) of every route the API key protects, from the live router."""
    found: set[tuple[str, str]] = set()
    for route in app.router.routes():
        path = route.resource.canonical if route.resource is not None else ""
        if path in OPEN_PATHS or path.startswith(WEBHOOK_PREFIX):
            continue
        if path == "/metrics" and metrics_public:
            continue
        if route.method == "HEAD":  # aiohttp's automatic HEAD twin of a GET
            continue
        found.add((route.method, path))
    return sorted(found)


def fill(path: str, values: dict[str, str]) -> str:
    """A concrete path for a route pattern: known parameters from ``values``, others ``x``."""
    return _PARAM.sub(lambda m: values.get(m.group(1), "x"), path)


async def seed(start_server: Any) -> Harness:
    """A server (throttle out of the way) whose every table holds rows."""
    h = await start_server(options=NO_BLOCKING)
    await h.register("s1", "m1", "label")
    note = await h.notify("s1", "hello")
    await h.webhook(h.fake.make_message(CHAT, "queued while offline", reply_to=note["messageId"]))
    await h.app[keys.NOTIFIER].drain()  # the offline notice went out
    h.fake.drop_connections_for("sendMessage")
    assert (await h.notify("s1", "kept in the outbox")).get("queued") is True  # outbox row

    def kill_one(db: Any) -> None:
        db.execute("UPDATE command_queue SET status = 'dead', dead_at = 1, dead_reason = 'expired'")

    await h.db.write(kill_one)
    return h


async def gather_limited(jobs: list[Any], limit: int = CONCURRENCY) -> list[RawResponse]:
    """Run raw requests ``limit`` at a time; a request that fails outright becomes status 0."""
    gate = asyncio.Semaphore(limit)

    async def run(job: Any) -> RawResponse:
        async with gate:
            try:
                return await job
            except (OSError, TimeoutError, asyncio.IncompleteReadError) as exc:
                return RawResponse(0, b"", repr(exc).encode())  # reported by the assertions

    return await asyncio.gather(*(run(job) for job in jobs))
