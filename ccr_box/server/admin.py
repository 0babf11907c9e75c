"""``/admin/...`` — the operator API the console and CLI use (contract §6.8)."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from ccr_box.db import queue as q
from ccr_box.db import sessions as sessions_db
from ccr_box.db import updates as updates_db
from ccr_box.server import keys
from ccr_box.server.http import is_nonempty_str, json_error, json_response, read_json_object

MAX_LIMIT = 500


async def machines(request: web.Request) -> web.Response:
    db, hub = request.app[keys.DB], request.app[keys.HUB]

    def job(c: Any) -> tuple[list[dict[str, Any]], dict[str, dict[str, int]]]:
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
    raw_limit = request.query.get("limit") or None  # empty = default, like status/machineId
    limit = 100
    if raw_limit is not None:
        # isascii: str.isdigit() also accepts "²", which int() refuses (was a 500).
        if (
            not (raw_limit.isascii() and raw_limit.isdigit())
            or not 1 <= int(raw_limit) <= MAX_LIMIT
        ):
            return json_error(400, "Invalid limit")
        limit = int(raw_limit)
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

    def job(c: Any) -> str:
        row = q.get(c, command_id)
        if row is None:
            raise _Refused(404, "Command not found")
        if row["status"] != "dead":
            raise _Refused(409, "Command is not dead")
        q.revive(c, command_id, now)
        return row["machine_id"]

    return await _apply(request, job)


async def reassign(request: web.Request) -> web.Response:
    body = await read_json_object(request)
    if isinstance(body, web.Response):
        return body
    session_id = body.get("sessionId")
    if not is_nonempty_str(session_id):
        return json_error(400, "sessionId required")
    command_id = request.match_info["command_id"]
    now = request.app[keys.CLOCK].now_ms()

    def job(c: Any) -> str:
        row = q.get(c, command_id)
        if row is None:
            raise _Refused(404, "Command not found")
        session = sessions_db.get(c, session_id)
        if session is None:
            raise _Refused(404, "Session not found")
        if row["status"] not in ("pending", "dead"):
            raise _Refused(409, "Command is not pending or dead")
        q.revive(c, command_id, now, session_id=session_id, machine_id=session["machine_id"])
        return session["machine_id"]

    return await _apply(request, job)


async def _apply(request: web.Request, job: Any) -> web.Response:
    try:
        machine_id = await request.app[keys.DB].write(job)
    except _Refused as refused:
        return json_error(refused.status, refused.error)
    hub = request.app[keys.HUB]
    if hub.is_connected(machine_id):
        await hub.flush(machine_id)
    return json_response({"ok": True})


async def status(request: web.Request) -> web.Response:
    state = request.app[keys.STATE]
    tg = state.telegram
    return json_response(
        {
            "bootId": state.boot_id,
            "startedAt": state.started_at,
            "telegram": {"mode": tg.mode, "state": tg.state, "lastError": tg.last_error},
        }
    )
