"""``/admin/...`` — the operator API the console and CLI use (contract §6.8)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import sqlite3
from collections.abc import Callable
from typing import Any

from aiohttp import WSMsgType, web

from ccr_box import limits, protocol
from ccr_box.db import outbox as outbox_db
from ccr_box.db import queue as q
from ccr_box.db import sessions as sessions_db
from ccr_box.db import updates as updates_db
from ccr_box.server import events as ev
from ccr_box.server import keys
from ccr_box.server.auth import header_key_ok, subprotocol_items, subprotocol_key_ok
from ccr_box.server.enqueue import EnqueueRefused, enqueue_for_session
from ccr_box.server.http import is_nonempty_str, json_error, json_response, read_json_object
from ccr_box.textutil import utf16_len

log = logging.getLogger("ccr_box.admin")

MAX_LIMIT = 500
MAX_EVENTS_LIMIT = ev.HISTORY
OUTBOX_STATUSES = ("pending", "sent", "failed")
CONSOLE_CHAT = "console"  # chat_id of console commands: never an allowed Telegram chat


async def machines(request: web.Request) -> web.Response:
    db, hub = request.app[keys.DB], request.app[keys.HUB]

    def job(c: sqlite3.Connection) -> tuple[list[dict[str, Any]], dict[str, dict[str, int]]]:
        return updates_db.list_machines(c), q.counts_by_machine(c)

    history, counts = await db.read(job)
    connected = hub.connected()
    known = {row["machine_id"]: row for row in history}
    result = []
    for machine_id in sorted(set(known) | set(counts) | set(connected)):
        conn = connected.get(machine_id)
        row = known.get(machine_id, {})
        count = counts.get(machine_id, {})
        result.append(
            {
                "machineId": machine_id,
                "connected": conn is not None,
                "connectedSince": conn.connected_at if conn else None,
                "lastDisconnectedAt": row.get("last_disconnected_at"),
                "pending": count.get("pending", 0),
                "sent": count.get("sent", 0),
                "dead": count.get("dead", 0),
            }
        )
    return json_response(result)


async def commands(request: web.Request) -> web.Response:
    status = request.query.get("status") or None
    if status is not None and status not in q.STATUSES:
        return json_error(400, "Invalid status")
    limit = _int_param(request, "limit", 100, 1, MAX_LIMIT)
    if limit is None:
        return json_error(400, "Invalid limit")
    machine_id = request.query.get("machineId") or None
    rows = await request.app[keys.DB].read(
        lambda c: q.list_commands(c, status=status, machine_id=machine_id, limit=limit)
    )
    return json_response(rows)


class _Refused(Exception):
    def __init__(self, status: int, error: str) -> None:
        self.status, self.error = status, error


async def retry(request: web.Request) -> web.Response:
    command_id = request.match_info["command_id"]
    now = request.app[keys.CLOCK].now_ms()

    def job(c: sqlite3.Connection) -> str:
        row = q.get(c, command_id)
        if row is None:
            raise _Refused(404, "Command not found")
        if row["status"] != "dead":
            raise _Refused(409, "Command is not dead")
        q.revive(c, command_id, now)
        machine_id: str = row["machine_id"]
        return machine_id

    return await _apply(request, job, "retry", commandId=command_id)


async def reassign(request: web.Request) -> web.Response:
    body = await read_json_object(request)
    if isinstance(body, web.Response):
        return body
    session_id = body.get("sessionId")
    if not is_nonempty_str(session_id):
        return json_error(400, "sessionId required")
    command_id = request.match_info["command_id"]
    now = request.app[keys.CLOCK].now_ms()

    def job(c: sqlite3.Connection) -> str:
        row = q.get(c, command_id)
        if row is None:
            raise _Refused(404, "Command not found")
        session = sessions_db.get(c, session_id)
        if session is None:
            raise _Refused(404, "Session not found")
        if row["status"] not in ("pending", "dead"):
            raise _Refused(409, "Command is not pending or dead")
        machine_id: str = session["machine_id"]
        q.revive(c, command_id, now, session_id=session_id, machine_id=machine_id)
        return machine_id

    return await _apply(request, job, "reassign", commandId=command_id, sessionId=session_id)


async def _apply(
    request: web.Request, job: Callable[[sqlite3.Connection], str], action: str, **params: Any
) -> web.Response:
    try:
        machine_id = await request.app[keys.DB].write(job)
    except _Refused as refused:
        return json_error(refused.status, refused.error)
    request.app[keys.EVENTS].publish(f"action.{action}", **params, machineId=machine_id)
    hub = request.app[keys.HUB]
    if hub.is_connected(machine_id):
        await hub.flush(machine_id)
    return json_response({"ok": True})


async def status(request: web.Request) -> web.Response:
    """``GET /admin/status``; ``telegram.allowedChats`` is the number of allowed chats (the config
    in force, so a live reload shows at once), never the ids."""
    state = request.app[keys.STATE]
    tg = state.telegram
    allowed = len(request.app[keys.CONFIG].current.telegram.allowed_chat_ids)
    return json_response(
        {
            "bootId": state.boot_id,
            "startedAt": state.started_at,
            "telegram": {
                "mode": tg.mode,
                "state": tg.state,
                "lastError": tg.last_error,
                "allowedChats": allowed,
            },
        }
    )


def _int_param(request: web.Request, name: str, default: int, low: int, high: int) -> int | None:
    """A decimal query parameter in [low, high]; empty/absent = default; None when invalid."""
    raw = request.query.get(name) or None  # empty = default, like status/machineId
    if raw is None:
        return default
    # isascii: str.isdigit() also accepts "²", which int() refuses (was a 500).
    if not (raw.isascii() and raw.isdigit()) or not low <= int(raw) <= high:
        return None
    return int(raw)


# -- events ---------------------------------------------------------------------------------------


async def events(request: web.Request) -> web.Response:
    """``GET /admin/events?after=<seq>&limit=`` — kept events with ``seq > after``, oldest first."""
    after = _int_param(request, "after", 0, 0, 2**63 - 1)
    if after is None:
        return json_error(400, "Invalid after")
    limit = _int_param(request, "limit", 200, 1, MAX_EVENTS_LIMIT)
    if limit is None:
        return json_error(400, "Invalid limit")
    return json_response(request.app[keys.EVENTS].recent(after_seq=after, limit=limit))


def _compact(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


async def event_stream(request: web.Request) -> web.StreamResponse:
    """``GET /admin/events/stream?after=<seq>`` — WebSocket: replay, then every new event."""
    api_key = request.app[keys.CONFIG].current.server.api_key
    if not (subprotocol_key_ok(request, api_key) or header_key_ok(request, api_key)):
        return json_error(401, "Unauthorized")
    if "websocket" not in request.headers.get("Upgrade", "").lower():
        return json_error(426, "WebSocket upgrade required")
    after = _int_param(request, "after", 0, 0, 2**63 - 1)
    if after is None:
        return json_error(400, "Invalid after")
    bus = request.app[keys.EVENTS]
    offered = subprotocol_items(request)
    ws = web.WebSocketResponse(
        protocols=("ccr",) if "ccr" in offered else (), max_msg_size=limits.MAX_WS_FRAME_BYTES
    )
    # Subscribe before the replay: nothing published in between is lost (duplicates are skipped).
    async with bus.subscribe() as queue:
        await ws.prepare(request)
        last = after
        for event in bus.recent(after_seq=after, limit=ev.HISTORY):
            await ws.send_str(_compact(event))
            last = event["seq"]
        await _pump(ws, queue, last)
    return ws


async def _pump(ws: web.WebSocketResponse, queue: asyncio.Queue[dict[str, Any]], last: int) -> None:
    """Forward events and answer pings, in this one task, until either side ends."""
    receiver: asyncio.Future[Any] = asyncio.ensure_future(ws.receive())
    getter: asyncio.Future[Any] = asyncio.ensure_future(queue.get())
    close: tuple[int, str] | None = None
    try:
        while close is None and not ws.closed:
            done, _ = await asyncio.wait({receiver, getter}, return_when=asyncio.FIRST_COMPLETED)
            if getter in done:
                event = getter.result()
                if event["kind"] == ev.SHUTDOWN:
                    close = (1001, "Server shutting down")
                elif event["kind"] == ev.OVERFLOW:
                    await ws.send_str(_compact(event))
                    close = (1013, "Too slow: events overflowed")
                else:
                    if event["seq"] > last:
                        await ws.send_str(_compact(event))
                        last = event["seq"]
                    getter = asyncio.ensure_future(queue.get())
            if receiver in done:
                msg = receiver.result()
                if msg.type not in (WSMsgType.TEXT, WSMsgType.BINARY):
                    break  # closed by the peer (answered by autoclose) or the transport
                if _is_ping(msg.data):
                    await ws.send_str('{"type":"pong"}')
                receiver = asyncio.ensure_future(ws.receive())
    except (ConnectionError, RuntimeError) as exc:  # the peer vanished mid-send
        log.debug("event stream ended: %s", exc)
    finally:
        for task in (receiver, getter):
            task.cancel()
            with contextlib.suppress(BaseException):
                await task
    if close is not None and not ws.closed:
        await ws.close(code=close[0], message=close[1].encode("utf-8"))


def _is_ping(data: str | bytes) -> bool:
    return isinstance(protocol.decode(data), protocol.Ping)


# -- more operator actions ------------------------------------------------------------------------


async def retry_dead(request: web.Request) -> web.Response:
    """``POST /admin/machines/{machineId}/retry-dead`` — revive every dead row of the machine."""
    machine_id = request.match_info["machine_id"]
    now = request.app[keys.CLOCK].now_ms()
    ids = await request.app[keys.DB].write(lambda c: q.revive_dead_of_machine(c, machine_id, now))
    request.app[keys.EVENTS].publish(
        "action.retry_dead", machineId=machine_id, retried=len(ids), commandIds=ids
    )
    hub = request.app[keys.HUB]
    if ids and hub.is_connected(machine_id):
        await hub.flush(machine_id)
    return json_response({"ok": True, "retried": len(ids)})


async def move_session(request: web.Request) -> web.Response:
    """``POST /admin/sessions/{sessionId}/move`` ``{"machineId"}``.

    The session's ``pending`` commands follow it (still pending, due now); its ``dead`` ones
    follow it but stay dead (retry them with retry-dead); ``sent``/``acked`` ones stay put.
    """
    body = await read_json_object(request)
    if isinstance(body, web.Response):
        return body
    machine_id = body.get("machineId")
    if not is_nonempty_str(machine_id):
        return json_error(400, "machineId required")
    if utf16_len(machine_id) > limits.MAX_REGISTER_FIELD:
        return json_error(400, "machineId too long")
    session_id = request.match_info["session_id"]
    now = request.app[keys.CLOCK].now_ms()

    def job(c: sqlite3.Connection) -> tuple[str, int, int]:
        session = sessions_db.get(c, session_id)
        if session is None:
            raise _Refused(404, "Session not found")
        sessions_db.move(c, session_id, machine_id, now)
        pending, dead = q.move_session_commands(c, session_id, machine_id, now)
        return session["machine_id"], pending, dead

    try:
        previous, pending, dead = await request.app[keys.DB].write(job)
    except _Refused as refused:
        return json_error(refused.status, refused.error)
    request.app[keys.EVENTS].publish(
        "action.move_session",
        sessionId=session_id,
        machineId=machine_id,
        fromMachineId=previous,
        pendingMoved=pending,
        deadMoved=dead,
    )
    hub = request.app[keys.HUB]
    if pending and hub.is_connected(machine_id):
        await hub.flush(machine_id)
    return json_response(
        {
            "ok": True,
            "sessionId": session_id,
            "machineId": machine_id,
            "pendingMoved": pending,
            "deadMoved": dead,
        }
    )


async def disconnect(request: web.Request) -> web.Response:
    """``POST /admin/machines/{machineId}/disconnect`` — close its socket (1000)."""
    machine_id = request.match_info["machine_id"]
    hub = request.app[keys.HUB]
    done = hub.is_connected(machine_id) and await hub.disconnect(
        machine_id, 1000, "Disconnected by operator"
    )
    request.app[keys.EVENTS].publish("action.disconnect", machineId=machine_id, disconnected=done)
    return json_response({"ok": True, "disconnected": done})


async def send_command(request: web.Request) -> web.Response:
    """``POST /admin/sessions/{sessionId}/commands`` ``{"text"}`` — a reply from the console."""
    body = await read_json_object(request)
    if isinstance(body, web.Response):
        return body
    text = body.get("text")
    if not isinstance(text, str):
        return json_error(400, "text required")
    session_id = request.match_info["session_id"]
    hub = request.app[keys.HUB]
    now = request.app[keys.CLOCK].now_ms()
    online = frozenset(hub.connected())  # taken before the write, as the pipeline does

    def job(c: sqlite3.Connection) -> tuple[q.NewCommand, list[dict[str, Any]]]:
        cmd = enqueue_for_session(c, session_id, text, CONSOLE_CHAT, now).command
        claimed = q.claim_due(c, cmd.machine_id, now) if cmd.machine_id in online else []
        return cmd, claimed

    try:
        cmd, claimed = await request.app[keys.DB].write(job)
    except EnqueueRefused as refused:
        return json_error(refused.status, refused.text)
    queued = cmd.machine_id not in online
    bus = request.app[keys.EVENTS]
    bus.publish(
        "command.queued",
        commandId=cmd.command_id,
        machineId=cmd.machine_id,
        sessionId=session_id,
        source="console",
        commandType=cmd.command_type,
        chatId=CONSOLE_CHAT,
        text=ev.preview(text),
    )
    bus.publish(
        "action.send",
        sessionId=session_id,
        commandId=cmd.command_id,
        machineId=cmd.machine_id,
        queued=queued,
        text=ev.preview(text),
    )
    if not queued:
        try:
            await hub.deliver(cmd.machine_id, claimed, now)
        except Exception:  # never undoes the commit; the maintenance tick re-sends
            log.exception("delivery after a console command failed for %s", cmd.machine_id)
    return json_response({"ok": True, "commandId": cmd.command_id, "queued": queued})


async def outbox(request: web.Request) -> web.Response:
    """``GET /admin/outbox?status=&limit=`` — notification outbox rows, newest first."""
    status = request.query.get("status") or None
    if status is not None and status not in OUTBOX_STATUSES:
        return json_error(400, "Invalid status")
    limit = _int_param(request, "limit", 100, 1, MAX_LIMIT)
    if limit is None:
        return json_error(400, "Invalid limit")
    rows = await request.app[keys.DB].read(
        lambda c: outbox_db.list_rows(c, status=status, limit=limit)
    )
    return json_response(rows)
