"""WebSocket application frames (contract §4): encode, decode and validate. No I/O.

Inbound frames decode to small dataclasses; anything malformed decodes to ``None`` (the server
drops it silently, §4.4). Outbound frames are compact JSON objects.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from ccr_box import limits
from ccr_box.wire import BadJson, decode_json


@dataclass(frozen=True)
class Ping:
    pass


@dataclass(frozen=True)
class Pong:
    pass


@dataclass(frozen=True)
class Boot:
    boot_id: str


@dataclass(frozen=True)
class Ack:
    command_id: str


@dataclass(frozen=True)
class CommandResult:
    success: bool
    chat_id: str | None
    error: str | None
    command_id: str | None
    session_id: str | None


@dataclass(frozen=True)
class Command:
    command_id: str
    session_id: str
    command: str
    chat_id: str


@dataclass(frozen=True)
class Unknown:
    type: Any


Frame = Ping | Pong | Boot | Ack | CommandResult | Command | Unknown


def encode(obj: dict[str, Any]) -> str:
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False)


PONG = encode({"type": "pong"})
PING = encode({"type": "ping"})


def boot(boot_id: str) -> str:
    return encode({"type": "boot", "bootId": boot_id})


def command_frame(row: dict[str, Any]) -> str:
    """The frame for a ``command_queue`` row (§4.2); never carries ``media``."""
    kind = row.get("command_type") or "execute"
    if kind == "launch":
        body = {
            "type": "launch",
            "commandId": row["command_id"],
            "directory": row.get("directory") or "",
            "prompt": row["command"],
            "chatId": row["chat_id"],
        }
    elif kind == "kill":
        body = {
            "type": "kill",
            "commandId": row["command_id"],
            "sessionId": row["session_id"],
            "chatId": row["chat_id"],
        }
    else:
        body = {
            "type": "command",
            "commandId": row["command_id"],
            "sessionId": row["session_id"],
            "command": row["command"],
            "chatId": row["chat_id"],
        }
    return encode(body)


def chat_id_text(value: Any) -> str | None:
    """Chat ids are decimal strings; JSON integers convert exactly. Others: None."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return str(value)
    if isinstance(value, str) and value:
        return value
    return None


def _command_id(value: Any) -> str | None:
    if isinstance(value, str) and 1 <= len(value) <= limits.MAX_FRAME_COMMAND_ID:
        return value
    return None


def decode(payload: str | bytes) -> Frame | None:
    """Parse one inbound frame; None for anything the receiver must drop silently."""
    if isinstance(payload, bytes):
        if len(payload) > limits.MAX_WS_FRAME_BYTES:
            return None
        try:  # binary frames are UTF-8 (§4.4): no BOM sniffing, no UTF-16/32
            payload = payload.decode("utf-8")
        except UnicodeDecodeError:
            return None
    elif len(payload) > limits.MAX_WS_FRAME_BYTES // 4 and (
        len(payload.encode("utf-8", "surrogatepass")) > limits.MAX_WS_FRAME_BYTES
    ):
        return None
    try:
        # Not UTF-8, too deep, lone surrogates, NaN: dropped like any malformed frame (§4.4).
        data = decode_json(payload)
    except BadJson:
        return None
    if not isinstance(data, dict):
        return None
    kind = data.get("type")
    if kind == "ping":
        return Ping()
    if kind == "pong":
        return Pong()
    if kind == "boot":
        boot_id = data.get("bootId")
        return Boot(boot_id) if isinstance(boot_id, str) else None
    if kind == "ack":
        command_id = _command_id(data.get("commandId"))
        return Ack(command_id) if command_id else None
    if kind == "commandResult":
        return _command_result(data)
    if kind == "command":
        return _command(data)
    return Unknown(kind)


def _command_result(data: dict[str, Any]) -> CommandResult | None:
    success = data.get("success")
    if not isinstance(success, bool):
        return None
    # An empty chatId / commandId counts as absent, so a failure report is not lost over it.
    chat_id = None
    if data.get("chatId") not in (None, ""):
        chat_id = chat_id_text(data["chatId"])
        if chat_id is None:
            return None
    command_id = None
    if data.get("commandId") not in (None, ""):
        command_id = _command_id(data["commandId"])
        if command_id is None:
            return None
    error = data.get("error")
    session_id = data.get("sessionId")
    return CommandResult(
        success=success,
        chat_id=chat_id,
        error=error if isinstance(error, str) else None,
        command_id=command_id,
        session_id=session_id if isinstance(session_id, str) else None,
    )


def _command(data: dict[str, Any]) -> Command | None:
    command_id = _command_id(data.get("commandId"))
    session_id, command = data.get("sessionId"), data.get("command")
    chat_id = chat_id_text(data.get("chatId"))
    if command_id is None or chat_id is None:
        return None
    if not isinstance(session_id, str) or not isinstance(command, str):
        return None
    return Command(command_id, session_id, command, chat_id)
