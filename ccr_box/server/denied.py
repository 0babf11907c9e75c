"""Updates from chats or users that are not allowed: never answered, but reported.

The person setting ccr-box up usually meets this first ("I wrote to my bot and nothing happens"),
so the log line and the console event carry the exact config line that would allow the sender.
Reports are limited to one per chat and user per minute, so a stranger cannot flood the log.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from typing import Any

from ccr_box import limits
from ccr_box.clock import Clock
from ccr_box.config import Config
from ccr_box.config_file import assignment
from ccr_box.server.events import EventBus, preview
from ccr_box.server.state import ConfigRef
from ccr_box.wire import clip

log = logging.getLogger("ccr_box.pipeline")

REPORT_EVERY_MS = limits.MINUTE_MS
_MAX_REMEMBERED = 1000
_MAX_REPORTS_PER_MINUTE = 20
_ENV = {"allowed_chat_ids": "ALLOWED_CHAT_IDS", "allowed_user_ids": "ALLOWED_USER_IDS"}


def allow_hint(
    config: Config, chat_id: str, user_id: str | None, env: Mapping[str, str]
) -> tuple[str, str]:
    """``(key, how)``: the setting that denies this sender and the exact change that allows it.

    ``how`` is a config-file line (``allowed_chat_ids = ["4242", "555"]`` under ``[telegram]``),
    or an environment assignment when that variable overrides the file.
    """
    tg = config.telegram
    if chat_id not in tg.allowed_chat_ids:
        key, values = "allowed_chat_ids", (*tg.allowed_chat_ids, chat_id)
    else:
        key, values = "allowed_user_ids", (*tg.allowed_user_ids, user_id or "")
    values = tuple(v for v in values if v)
    variable = _ENV[key]
    if env.get(variable, "") != "":
        return key, f"{variable}={','.join(values)} (the environment overrides the config file)"
    where = f" in {config.path}" if config.path else ""
    return key, f"under [telegram]{where}: {assignment(key, list(values))}"


def describe_chat(update: dict[str, Any]) -> dict[str, Any]:
    """Who wrote: chat type/title/username and the sender's name, from a message or callback."""
    message = update.get("message")
    callback = update.get("callback_query")
    source = message if isinstance(message, dict) else None
    sender = source.get("from") if source else None
    if source is None and isinstance(callback, dict):
        source = callback.get("message") if isinstance(callback.get("message"), dict) else None
        sender = callback.get("from")
    chat = source.get("chat") if isinstance(source, dict) else None
    chat = chat if isinstance(chat, dict) else {}
    sender = sender if isinstance(sender, dict) else {}
    out = {
        "chatType": chat.get("type"),
        "chatTitle": chat.get("title"),
        "chatUsername": chat.get("username"),
        "fromName": " ".join(
            str(sender[k]) for k in ("first_name", "last_name") if isinstance(sender.get(k), str)
        )
        or None,
        "fromUsername": sender.get("username"),
    }
    text = message.get("text") if isinstance(message, dict) else None
    if isinstance(text, str):
        out["text"] = preview(text)
    return {k: v for k, v in out.items() if isinstance(v, str) and v}


class DeniedReporter:
    def __init__(
        self,
        config: ConfigRef,
        events: EventBus,
        clock: Clock,
        env: Mapping[str, str] | None = None,
    ) -> None:
        self._config = config
        self._events = events
        self._clock = clock
        self._env = env
        self._last: dict[tuple[str, str | None], int] = {}

    def report(self, chat_id: str | None, user_id: str | None, update: dict[str, Any]) -> bool:
        """Log and publish ``telegram.denied`` unless this sender was reported a minute ago."""
        if chat_id is None:
            log.info("update %s without a chat ignored", clip(update.get("update_id")))
            return False
        now = self._clock.now_ms()
        last = self._last.get((chat_id, user_id))
        if last is not None and now - last < REPORT_EVERY_MS:
            return False
        # Many different senders within a minute (a leaked webhook secret, a spammed group):
        # a few reports say it all.
        recent = [t for t in self._last.values() if now - t < REPORT_EVERY_MS]
        if len(recent) >= _MAX_REPORTS_PER_MINUTE:
            return False
        if len(self._last) >= _MAX_REMEMBERED:
            self._last.clear()
        self._last[chat_id, user_id] = now
        env = os.environ if self._env is None else self._env
        key, how = allow_hint(self._config.current, chat_id, user_id, env)
        who = describe_chat(update)
        named = who.get("chatTitle") or who.get("chatUsername") or who.get("fromName") or "?"
        log.warning(
            "ignored a message from %s %s (%s, user %s): not in telegram.%s. To allow it, set %s",
            clip(who.get("chatType", "chat"), 20),
            clip(chat_id, 40),
            clip(named, 60),
            clip(user_id or "?", 40),
            key,
            clip(how, 300),
        )
        self._events.publish(
            "telegram.denied",
            chatId=clip(chat_id, 40),
            userId=clip(user_id, 40) if user_id else None,
            key=key,
            allowWith=clip(how, 300),
            **{k: preview(v) for k, v in who.items()},
        )
        return True
