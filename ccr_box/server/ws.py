"""``GET /ws?machineId=`` — the machine agents' WebSocket (contract §3.2, §4)."""

from __future__ import annotations

import asyncio
import logging
import re

from aiohttp import WSCloseCode, WSMsgType, web

from ccr_box import limits, protocol
from ccr_box.server import keys
from ccr_box.server.auth import header_key_ok, subprotocol_items, subprotocol_key_ok
from ccr_box.server.http import json_error, text_response
from ccr_box.server.hub import AgentConnection

log = logging.getLogger("ccr_box.ws")

MACHINE_ID = re.compile(limits.MACHINE_ID_PATTERN)
# Close codes a peer may not put on the wire; echo 1000 instead.
_RESERVED_CODES = {0, 1004, 1005, 1006, 1015}


def make_ws_handler(idle_timeout_s: float = limits.WS_IDLE_TIMEOUT_S):
    async def ws_handler(request: web.Request) -> web.StreamResponse:
        if "websocket" not in request.headers.get("Upgrade", "").lower():
            return json_error(426, "WebSocket upgrade required")
        machine_id = request.query.get("machineId", "")
        if not MACHINE_ID.fullmatch(machine_id):
            return text_response(400, "Invalid machine ID")
        api_key = request.app[keys.CONFIG].current.server.api_key
        if not (subprotocol_key_ok(request, api_key) or header_key_ok(request, api_key)):
            return text_response(401, "Unauthorized")

        offered = subprotocol_items(request.headers.get("Sec-WebSocket-Protocol"))
        ws = web.WebSocketResponse(
            # Echo exactly "ccr" when offered, never the key; nothing when nothing was offered.
            protocols=("ccr",) if "ccr" in offered else (),
            autoclose=False,
            max_msg_size=limits.MAX_WS_TRANSPORT_BYTES,
        )
        await ws.prepare(request)
        hub = request.app[keys.HUB]
        clock = request.app[keys.CLOCK]
        conn = AgentConnection(machine_id=machine_id, ws=ws, connected_at=clock.now_ms())
        log.info("machine connected machine=%s conn=%d", machine_id, conn.conn_id)
        code, reason, by = None, "", "server"
        try:
            await hub.attach(conn)
            code, reason, by = await _read_loop(request, conn, idle_timeout_s)
        except (ConnectionError, asyncio.CancelledError):
            code = code or WSCloseCode.ABNORMAL_CLOSURE
            reason, by = reason or "connection lost", "network"
            if not ws.closed:
                await ws.close(code=WSCloseCode.GOING_AWAY, message=b"Server shutting down")
            raise
        finally:
            if ws.close_code is not None and code is None:
                code = ws.close_code
            await hub.detach(conn, code, reason, by)
        return ws

    return ws_handler


async def _read_loop(
    request: web.Request, conn: AgentConnection, idle_timeout_s: float
) -> tuple[int | None, str, str]:
    """Read frames until the connection ends; return (close code, reason, who closed)."""
    ws = conn.ws
    hub = request.app[keys.HUB]
    clock = request.app[keys.CLOCK]
    while True:
        try:
            msg = await ws.receive(timeout=idle_timeout_s)
        except TimeoutError:
            await ws.close(code=4002, message=b"Idle timeout")
            return 4002, "Idle timeout", "server"
        conn.last_frame_at = clock.now_ms()
        if msg.type == WSMsgType.TEXT:
            await _handle_frame(hub, conn, msg.data)
        elif msg.type == WSMsgType.BINARY:
            await _handle_frame(hub, conn, msg.data)
        elif msg.type == WSMsgType.CLOSE:
            # Reciprocate the peer's own code and reason so it sees a clean close (§4.5).
            code = (
                msg.data if isinstance(msg.data, int) and msg.data not in _RESERVED_CODES else 1000
            )
            reason = msg.extra or ""
            await ws.close(code=code, message=reason.encode("utf-8")[:123])
            return code, reason, "agent"
        elif msg.type == WSMsgType.ERROR:
            # e.g. a frame over the 1 MiB transport cap: aiohttp has closed with 1009.
            return ws.close_code, f"error: {type(msg.data).__name__}", "server"
        else:  # CLOSED / CLOSING: the server closed it (replacement, shutdown) or the peer vanished
            return ws.close_code, "closed", "server"


async def _handle_frame(hub, conn: AgentConnection, payload: str | bytes) -> None:
    frame = protocol.decode(payload)
    if frame is None:
        log.debug("dropped a malformed frame from %s", conn.machine_id)
        return
    if isinstance(frame, protocol.Ping):
        await conn.send(protocol.PONG)
    elif isinstance(frame, protocol.Ack):
        await hub.on_ack(conn, frame.command_id)
    elif isinstance(frame, protocol.CommandResult):
        await hub.on_result(conn, frame)
    else:
        log.debug("ignored frame type %r from %s", getattr(frame, "type", frame), conn.machine_id)
