"""``GET /ws?machineId=`` — the machine agents' WebSocket (contract §3.2, §4)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re

from aiohttp import WSCloseCode, WSMessage, WSMsgType, web

from ccr_box import limits, protocol
from ccr_box.server import keys
from ccr_box.server.auth import Handler, header_key_ok, subprotocol_items, subprotocol_key_ok
from ccr_box.server.http import json_error, text_response
from ccr_box.server.hub import AgentConnection, Hub
from ccr_box.wire import clip

log = logging.getLogger("ccr_box.ws")

MACHINE_ID = re.compile(limits.MACHINE_ID_PATTERN)
# Close codes a peer may not put on the wire; echo 1000 instead.
_RESERVED_CODES = {0, 1004, 1005, 1006, 1015}


def make_ws_handler(
    idle_timeout_s: float = limits.WS_IDLE_TIMEOUT_S,
) -> Handler[web.StreamResponse]:
    async def ws_handler(request: web.Request) -> web.StreamResponse:
        if "websocket" not in request.headers.get("Upgrade", "").lower():
            return json_error(426, "WebSocket upgrade required")
        machine_id = request.query.get("machineId", "")
        if not MACHINE_ID.fullmatch(machine_id):
            return text_response(400, "Invalid machine ID")
        api_key = request.app[keys.CONFIG].current.server.api_key
        if not (subprotocol_key_ok(request, api_key) or header_key_ok(request, api_key)):
            return text_response(401, "Unauthorized")

        offered = subprotocol_items(request)
        ws = web.WebSocketResponse(
            # Echo exactly "ccr" when offered, never the key; nothing when nothing was offered.
            protocols=("ccr",) if "ccr" in offered else (),
            autoclose=False,
            # aiohttp refuses an uncompressed frame of exactly max_msg_size (>=) but accepts a
            # decompressed message of that size (>): allow one byte more and enforce "over 1 MiB
            # closes with 1009" in the read loop, the same for both (§4.4).
            max_msg_size=limits.MAX_WS_TRANSPORT_BYTES + 1,
        )
        try:
            await ws.prepare(request)
        except ConnectionError:  # the agent left during the handshake: nothing to clean up
            log.info("machine %s left during the WebSocket handshake", machine_id)
            # A plain response for aiohttp to finish with (it cannot be written either, quietly).
            return text_response(400, "Connection lost")
        hub = request.app[keys.HUB]
        clock = request.app[keys.CLOCK]
        conn = AgentConnection(machine_id=machine_id, ws=ws, connected_at=clock.now_ms())
        log.info("machine connected machine=%s conn=%d", machine_id, conn.conn_id)
        code, reason, by = None, "", "server"
        try:
            await hub.attach(conn)
            code, reason, by = await _read_loop(request, conn, idle_timeout_s)
        except ConnectionError:  # the peer vanished mid-send: an ordinary disconnect
            code, reason, by = code or WSCloseCode.ABNORMAL_CLOSURE, "connection lost", "network"
        except Exception as exc:
            # Our failure, not the agent's (e.g. the presence write on a full disk). After the 101
            # no HTTP answer may be written: close with 1011 so the agent reconnects later; its
            # commands stay queued.
            log.error("connection of %s failed: %s: %s", machine_id, type(exc).__name__, exc)
            code, reason, by = WSCloseCode.INTERNAL_ERROR, "Internal error", "server"
            if not ws.closed:
                with contextlib.suppress(ConnectionError):
                    await ws.close(code=code, message=b"Internal error")
        except asyncio.CancelledError:
            code = code or WSCloseCode.ABNORMAL_CLOSURE
            reason, by = reason or "connection lost", "network"
            if not ws.closed:
                with contextlib.suppress(ConnectionError):
                    await ws.close(code=WSCloseCode.GOING_AWAY, message=b"Server shutting down")
            raise
        finally:
            if conn.server_close is not None:  # replaced or shut down by the hub
                (code, reason), by = conn.server_close, "server"
            elif ws.close_code is not None and code is None:
                code = ws.close_code
            await hub.detach(conn, code, reason, by)  # sets conn.finished once recorded
        return ws

    return ws_handler


async def _read_loop(
    request: web.Request, conn: AgentConnection, idle_timeout_s: float
) -> tuple[int | None, str, str]:
    """Read frames until the connection ends; return (close code, reason, who closed)."""
    ws = conn.ws
    hub = request.app[keys.HUB]
    conn.reader = asyncio.current_task()
    while True:
        if conn.close_requested.is_set():  # replacement or shutdown (hub)
            code, reason = conn.server_close or (WSCloseCode.OK, "")
            await ws.close(code=code, message=reason.encode("utf-8")[:123])
            # aiohttp records the peer's answering close code, or 1006 when none came in time.
            conn.close_answered = ws.close_code != WSCloseCode.ABNORMAL_CLOSURE
            return code, reason, "server"
        conn.receiving = True
        try:
            msg = await ws.receive(timeout=idle_timeout_s)
        except TimeoutError:
            await ws.close(code=4002, message=b"Idle timeout")
            return 4002, "Idle timeout", "server"
        except asyncio.CancelledError:
            # The hub interrupts a pending receive to close with a handshake (see
            # AgentConnection.request_close); any other cancellation goes on up. A frame that
            # arrived in that same instant is lost with the connection: its command is re-sent
            # on the next one, as for any close.
            task = asyncio.current_task()
            if conn.close_requested.is_set() and task is not None and task.uncancel() == 0:
                continue
            raise
        finally:
            conn.receiving = False
        outcome = await _on_message(hub, conn, msg)
        if outcome is not None:
            return outcome


async def _on_message(
    hub: Hub, conn: AgentConnection, msg: WSMessage
) -> tuple[int | None, str, str] | None:
    """Handle one received message; return (code, reason, who) when the connection ended."""
    ws = conn.ws
    if msg.type in (WSMsgType.TEXT, WSMsgType.BINARY) and _over_transport_limit(msg.data):
        await ws.close(code=WSCloseCode.MESSAGE_TOO_BIG, message=b"Message too big")
        return WSCloseCode.MESSAGE_TOO_BIG, "Message too big", "server"
    if msg.type in (WSMsgType.TEXT, WSMsgType.BINARY):
        await _handle_frame(hub, conn, msg.data)
        return None
    if msg.type == WSMsgType.CLOSE:
        # Reciprocate the peer's own code and reason so it sees a clean close (§4.5).
        code = msg.data if isinstance(msg.data, int) and msg.data not in _RESERVED_CODES else 1000
        reason = msg.extra or ""
        await ws.close(code=code, message=reason.encode("utf-8")[:123])
        return code, reason, "agent"
    if msg.type == WSMsgType.ERROR:
        # e.g. a frame over the 1 MiB transport cap: aiohttp has closed with 1009.
        return ws.close_code, f"error: {type(msg.data).__name__}", "server"
    return ws.close_code, "closed", "server"  # CLOSED / CLOSING: the peer vanished


def _over_transport_limit(data: str | bytes) -> bool:
    limit = limits.MAX_WS_TRANSPORT_BYTES
    if isinstance(data, bytes):
        return len(data) > limit
    return len(data) > limit // 4 and len(data.encode("utf-8", "surrogatepass")) > limit


async def _handle_frame(hub: Hub, conn: AgentConnection, payload: str | bytes) -> None:
    frame = protocol.decode(payload)
    if frame is None:
        if log.isEnabledFor(logging.DEBUG):  # clip() reads the whole frame: only when shown
            log.debug("dropped a malformed frame from %s: %s", conn.machine_id, clip(payload))
        return
    if isinstance(frame, protocol.Ping):
        await conn.settle()
        await conn.send(protocol.PONG)
    elif isinstance(frame, protocol.Ack):
        conn.spawn(hub.on_ack(conn, frame.command_id))
    elif isinstance(frame, protocol.CommandResult):
        conn.spawn(hub.on_result(conn, frame))
    else:
        kind = clip(getattr(frame, "type", frame))
        log.debug("ignored frame type %s from %s", kind, conn.machine_id)
