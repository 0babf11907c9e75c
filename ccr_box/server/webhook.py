"""``POST /webhook/telegram[/<suffix>]`` — transport checks, then the shared pipeline (§7.1)."""

from __future__ import annotations

import logging

from aiohttp import web

from ccr_box.server import keys
from ccr_box.server.auth import secret_equals
from ccr_box.server.http import BodyTooLarge, parse_object, read_body, text_response
from ccr_box.wire import BadJson

log = logging.getLogger("ccr_box.webhook")


async def webhook_handler(request: web.Request) -> web.StreamResponse:
    tg = request.app[keys.CONFIG].current.telegram
    if not secret_equals(request.headers.get("X-Telegram-Bot-Api-Secret-Token"), tg.webhook_secret):
        return text_response(401, "Unauthorized")
    if tg.webhook_path_secret:
        suffix = request.match_info.get("suffix")
        if suffix is None or not secret_equals(suffix, tg.webhook_path_secret):
            return text_response(401, "Unauthorized")
    try:
        update = parse_object(await read_body(request))
    except BodyTooLarge:
        return text_response(413, "Request body too large")
    except BadJson:
        return text_response(400, "Invalid JSON")
    try:
        await request.app[keys.PIPELINE].process(update)
    except Exception:
        # Rolled back: Telegram re-delivers the update later.
        log.exception("webhook update %s failed; answered 500", update.get("update_id"))
        return text_response(500, "Internal server error")
    return text_response(200, "ok")
