"""``/sessions``, ``/sessions/register``, ``/sessions/unregister`` (contract §2.3)."""

from __future__ import annotations

import logging
import re

from aiohttp import web

from ccr_box import limits
from ccr_box.db import sessions as sessions_db
from ccr_box.server import keys
from ccr_box.server.http import is_nonempty_str, json_error, json_response, read_json_object
from ccr_box.textutil import utf16_len

log = logging.getLogger("ccr_box.sessions")

MACHINE_ID = re.compile(limits.MACHINE_ID_PATTERN)


async def list_sessions(request: web.Request) -> web.Response:
    rows = await request.app[keys.DB].read(sessions_db.list_all)
    return json_response(rows)


async def register(request: web.Request) -> web.Response:
    body = await read_json_object(request)
    if isinstance(body, web.Response):
        return body
    session_id, machine_id = body.get("sessionId"), body.get("machineId")
    if not (is_nonempty_str(session_id) and is_nonempty_str(machine_id)):
        return json_error(400, "sessionId and machineId required")
    for name, value in (("sessionId", session_id), ("machineId", machine_id)):
        if utf16_len(value) > limits.MAX_REGISTER_FIELD:
            return json_error(400, f"{name} too long")
    label = body.get("label")
    if label is not None and not isinstance(label, str):
        return json_error(400, "label must be a string")
    if label is not None and utf16_len(label) > limits.MAX_REGISTER_FIELD:
        return json_error(400, "label too long")
    if not MACHINE_ID.fullmatch(machine_id):
        log.warning(
            "session %s registered for machineId %r, which can never connect to /ws "
            "(letters, digits and '-' only, at most 64); its commands will go dead",
            session_id,
            machine_id,
        )
    now = request.app[keys.CLOCK].now_ms()
    ok = await request.app[keys.DB].write(
        lambda db: sessions_db.upsert(
            db, session_id, machine_id, label, now, max_sessions=limits.MAX_SESSIONS
        )
    )
    if not ok:
        return json_error(429, "Session limit reached")
    request.app[keys.EVENTS].publish(
        "session.registered", sessionId=session_id, machineId=machine_id, label=label
    )
    return json_response({"ok": True, "sessionId": session_id, "machineId": machine_id})


async def unregister(request: web.Request) -> web.Response:
    body = await read_json_object(request)
    if isinstance(body, web.Response):
        return body
    session_id = body.get("sessionId")
    if not is_nonempty_str(session_id):
        return json_error(400, "sessionId required")
    existed = await request.app[keys.DB].write(lambda db: sessions_db.delete(db, session_id))
    request.app[keys.EVENTS].publish(
        "session.unregistered", sessionId=session_id, existed=bool(existed)
    )
    return json_response({"ok": True})
