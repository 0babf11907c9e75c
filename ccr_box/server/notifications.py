"""``POST /notifications/send`` (contract §8): token authority, splitting, durable outbox."""

from __future__ import annotations

import base64
import json
import logging
import re
import secrets
import sqlite3
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from ccr_box import limits
from ccr_box.db import outbox as outbox_db
from ccr_box.db import sessions as sessions_db
from ccr_box.errors import TelegramPermanentError, TelegramTransientError
from ccr_box.protocol import chat_id_text
from ccr_box.server import keys
from ccr_box.server.events import preview
from ccr_box.server.http import is_nonempty_str, json_error, json_response, read_json_object
from ccr_box.telegram import TelegramRateLimitedError
from ccr_box.textutil import Chunk, split_message

log = logging.getLogger("ccr_box.notifications")

TOKEN = re.compile(limits.TOKEN_PATTERN)


class TokenMismatch(Exception):
    pass


def button_token(reply_markup: dict[str, Any] | None) -> str | None:
    """The token of the first ``cmd:<token>:...`` button, rows and buttons in order (§8.4)."""
    rows = reply_markup.get("inline_keyboard") if isinstance(reply_markup, dict) else None
    if not isinstance(rows, list):
        return None
    for row in rows:
        for button in row if isinstance(row, list) else ():
            data = button.get("callback_data") if isinstance(button, dict) else None
            if isinstance(data, str):
                parts = data.split(":")
                if len(parts) >= 3 and parts[0] == "cmd" and parts[1]:
                    return parts[1]
    return None


def choose_token(requested: str | None, reply_markup: dict[str, Any] | None) -> str:
    from_button = button_token(reply_markup)
    if requested is not None:
        if from_button is not None and from_button != requested:
            raise TokenMismatch
        return requested
    if from_button is not None:
        return from_button
    return base64.urlsafe_b64encode(secrets.token_bytes(12)).rstrip(b"=").decode("ascii")


@dataclass
class Request:
    session_id: str
    chat_id: str
    text: str
    reply_markup: dict[str, Any] | None
    token: str | None
    entities: list[Any] | None


def _validate(body: dict[str, Any]) -> Request | web.Response:
    session_id, text = body.get("sessionId"), body.get("text")
    raw_chat = body.get("chatId")
    chat_id = chat_id_text(raw_chat) if isinstance(raw_chat, (str, int)) else None
    if not (is_nonempty_str(session_id) and is_nonempty_str(text) and chat_id is not None):
        return json_error(400, "sessionId, chatId, and text required")
    reply_markup = body.get("replyMarkup")
    if reply_markup is not None and not isinstance(reply_markup, dict):
        return json_error(400, "replyMarkup must be an object")
    token = body.get("token")
    if token is not None and not (isinstance(token, str) and TOKEN.fullmatch(token)):
        return json_error(400, "Invalid token")
    entities = body.get("entities")
    if entities is not None and not isinstance(entities, list):
        return json_error(400, "entities must be an array")
    return Request(session_id, chat_id, text, reply_markup, token, entities)


async def send_notification(request: web.Request) -> web.Response:
    body = await read_json_object(request)
    if isinstance(body, web.Response):
        return body
    req = _validate(body)
    if isinstance(req, web.Response):
        return req
    app = request.app
    db, now = app[keys.DB], app[keys.CLOCK].now_ms()
    if await db.read(lambda c: sessions_db.get(c, req.session_id)) is None:
        return json_error(404, "Session not found")
    if req.chat_id not in app[keys.CONFIG].current.telegram.allowed_chat_ids:
        return json_error(403, "Chat ID not allowed")
    try:
        token = choose_token(req.token, req.reply_markup)
    except TokenMismatch:
        await db.write(lambda c: sessions_db.touch(c, req.session_id, now))
        return json_error(400, "token does not match replyMarkup")

    # Record before showing: a database that cannot take a write (full or read-only disk) must
    # fail the request before the message reaches the phone, or the daemon's retry shows it
    # twice and a reply to the first copy cannot route. (Not fsynced here: the fsync of the
    # commit after the send, with the message mappings, covers this one too.)
    await db.write(lambda c: sessions_db.touch(c, req.session_id, now), durable=False)
    # Whitespace-only text yields no chunk; send it as is and let Telegram judge it.
    chunks = split_message(req.text, req.entities) or [Chunk(req.text, req.entities)]
    telegram = app[keys.TELEGRAM]
    accepted = 0  # chunks Telegram took, in order
    sent: list[int] = []  # their message ids (an answer without one still counts as accepted)
    failure: TelegramPermanentError | None = None
    transient: TelegramTransientError | None = None
    if telegram.enabled:
        for index, chunk in enumerate(chunks):
            last = index == len(chunks) - 1
            try:
                message = await telegram.send_message(
                    req.chat_id, chunk.text, **_fields(chunk, req, last)
                )
            except TelegramPermanentError as exc:
                failure = exc
                break
            except TelegramTransientError as exc:
                transient = exc
                break
            accepted += 1
            message_id = telegram.message_id_of(message)
            if message_id is not None:
                sent.append(message_id)
    unsent = [] if failure else list(enumerate(chunks))[accepted:]
    retry_at = now
    if transient is not None:
        # The background sender backs off from this failed attempt (and honours a 429's wait).
        delay = limits.send_backoff_ms(0)
        if isinstance(transient, TelegramRateLimitedError):
            delay = max(delay, int(transient.retry_after * 1000))
        retry_at = now + delay

    def job(c: sqlite3.Connection) -> None:  # (the session was touched before the send)
        sessions_db.map_messages(
            c, [(req.chat_id, mid, req.session_id, token) for mid in sent], now
        )
        if unsent:
            outbox_db.add(
                c,
                secrets.token_hex(8),
                req.session_id,
                req.chat_id,
                token,
                [_outbox_row(i, chunk, req, i == len(chunks) - 1) for i, chunk in unsent],
                now,
                next_attempt_at=retry_at,
                first_error=str(transient) if transient is not None else None,
            )

    await db.write(job)
    event = {
        "sessionId": req.session_id,
        "chatId": req.chat_id,
        "token": token,
        "text": preview(req.text),
        "messageId": sent[0] if sent else None,
    }
    if failure is not None:
        app[keys.EVENTS].publish("notification.failed", **event, error=preview(str(failure)))
    elif unsent:
        app[keys.EVENTS].publish("notification.queued", **event, chunksQueued=len(unsent))
    else:
        app[keys.EVENTS].publish("notification.sent", **event)
    if failure is not None:
        log.warning("Telegram refused a notification for session %s: %s", req.session_id, failure)
        return json_response(
            {"error": "Telegram API error", "details": failure.payload}, status=502
        )
    first_id = sent[0] if sent else None
    if unsent:
        why = f"Telegram unavailable: {transient}" if transient else "Telegram is off"
        log.info(
            "notification for session %s queued (%d chunk(s)): %s", req.session_id, len(unsent), why
        )
        return json_response(
            {"ok": True, "queued": True, "messageId": first_id, "token": token}, status=202
        )
    return json_response({"ok": True, "messageId": first_id, "token": token})


def _fields(chunk: Chunk, req: Request, last: bool) -> dict[str, Any]:
    fields: dict[str, Any] = {}
    if chunk.entities:
        fields["entities"] = chunk.entities
    if last and req.reply_markup is not None:
        fields["reply_markup"] = req.reply_markup
    return fields


def _outbox_row(
    seq: int, chunk: Chunk, req: Request, last: bool
) -> tuple[int, str, str | None, str | None]:
    entities = json.dumps(chunk.entities) if chunk.entities else None
    markup = json.dumps(req.reply_markup) if last and req.reply_markup is not None else None
    return seq, chunk.text, entities, markup
