"""The Telegram inbound pipeline shared by webhook and long polling (contract §7.2-§7.6).

``process(update)`` decides and commits in one ``BEGIN IMMEDIATE`` job (dedup row, enqueue, session
touch); it returns once that is durable. User-facing texts, callback answers and the flush happen
after the commit and never undo it.
"""

from __future__ import annotations

import logging
import re
import secrets
import sqlite3
from dataclasses import dataclass, field
from typing import Any

from ccr_box.clock import Clock
from ccr_box.db import Database
from ccr_box.db import queue as q
from ccr_box.db import sessions as sessions_db
from ccr_box.db import updates as updates_db
from ccr_box.protocol import chat_id_text
from ccr_box.server import texts
from ccr_box.server.denied import DeniedReporter
from ccr_box.server.enqueue import EnqueueRefused, enqueue_for_session
from ccr_box.server.events import EventBus, preview
from ccr_box.server.hub import Hub
from ccr_box.server.notifier import Notifier
from ccr_box.server.state import ConfigRef, TelegramStatus
from ccr_box.wire import positive_int64

log = logging.getLogger("ccr_box.pipeline")

BOT_COMMAND = re.compile(r"^/([A-Za-z0-9_]{1,32})(@[A-Za-z0-9_]+)?(\s|$)")
CMD_FORM = re.compile(r"^/cmd(@\S+)?\s+(\S+)\s+([\s\S]+)$", re.IGNORECASE)
BUTTON_ACTIONS = {"continue": "", "yes": "y", "no": "n", "exit": "/exit"}

_NO_ANSWER = object()


class Duplicate(Exception):
    """A concurrent delivery of the same update committed first."""


@dataclass
class Outcome:
    """What to do after the commit."""

    texts: list[str] = field(default_factory=list)
    answer: Any = _NO_ANSWER  # callback answer text (None = empty answer)
    enqueued_machine: str | None = None
    target: str | None = None
    claimed: list[dict[str, Any]] = field(default_factory=list)  # rows to send after commit
    queued: q.NewCommand | None = None  # the enqueued row (for the event)
    denied: bool = False  # from a chat or user that is not allowed: reported, never answered


@dataclass
class Context:
    update_id: int | None
    chat_id: str | None
    user_id: str | None
    message: dict[str, Any] | None
    callback: dict[str, Any] | None
    thread_id: int | None
    online: frozenset[str] = frozenset()  # connected machines when the update arrived

    @property
    def chat(self) -> str:
        """The chat id of an allowed update (the allowlist let nothing without one through)."""
        if self.chat_id is None:
            raise ValueError("update has no chat")
        return self.chat_id


class Pipeline:
    def __init__(
        self,
        db: Database,
        clock: Clock,
        config: ConfigRef,
        hub: Hub,
        notifier: Notifier,
        telegram_status: TelegramStatus,
        events: EventBus | None = None,
    ) -> None:
        self._db = db
        self._events = events or EventBus(clock)
        self._denied = DeniedReporter(config, self._events, clock)
        self._clock = clock
        self._config = config
        self._hub = hub
        self._notifier = notifier
        self._status = telegram_status

    async def process(self, update: dict[str, Any]) -> None:
        """Handle one update. Raises only for internal errors (the update was rolled back)."""
        ctx = _context(update)
        now = self._clock.now_ms()
        # The job runs later, in the writer's next batch, and only sees the database: it gets a
        # snapshot of presence taken now, not the hub.
        ctx.online = frozenset(self._hub.connected())

        def job(db: sqlite3.Connection) -> Outcome:
            if ctx.update_id is not None and not updates_db.record(db, ctx.update_id, now):
                raise Duplicate
            outcome = self._decide(db, ctx, now)
            machine_id = outcome.enqueued_machine
            if machine_id is not None and machine_id in ctx.online:
                # The flush (§6.2) claims in this same commit; frames go out right after it.
                outcome.claimed = q.claim_due(db, machine_id, now)
            return outcome

        try:
            outcome = await self._db.write(job)
        except Duplicate:
            return
        if outcome.denied:
            self._denied.report(ctx.chat_id, ctx.user_id, update)
        self._after_commit(ctx, outcome)
        if outcome.queued is not None:
            cmd = outcome.queued
            self._events.publish(
                "command.queued",
                commandId=cmd.command_id,
                machineId=cmd.machine_id,
                sessionId=cmd.session_id,
                source="telegram",
                commandType=cmd.command_type,
                chatId=cmd.chat_id,
                text=preview(cmd.command),
            )
        if outcome.enqueued_machine is not None:
            await self._deliver_or_notice(ctx, outcome, now)

    # -- decisions (inside the outcome transaction) --------------------------------------------

    def _decide(self, db: sqlite3.Connection, ctx: Context, now: int) -> Outcome:
        if not self._allowed(ctx):
            answer = None if ctx.callback is not None else _NO_ANSWER
            return Outcome(answer=answer, denied=ctx.message is not None or answer is None)
        if ctx.message is not None:
            return self._message(db, ctx, now)
        if ctx.callback is not None:
            return self._callback(db, ctx, now)
        return Outcome()  # other update types: recorded, silent

    def _allowed(self, ctx: Context) -> bool:
        tg = self._config.current.telegram
        if ctx.chat_id is None or ctx.chat_id not in tg.allowed_chat_ids:
            return False
        return not tg.allowed_user_ids or ctx.user_id in tg.allowed_user_ids

    def _message(self, db: sqlite3.Connection, ctx: Context, now: int) -> Outcome:
        message = ctx.message or {}
        text = message.get("text")
        if not isinstance(text, str):
            reply_id = _reply_id(message)
            if reply_id is not None and sessions_db.session_for_reply(db, ctx.chat, reply_id):
                return Outcome(texts=[texts.ONLY_TEXT])
            return Outcome()
        match = BOT_COMMAND.match(text)
        if match:
            return self._bot_command(db, ctx, text, match, now)
        command = text[1:] if text.startswith("//") else text
        return self._route(db, ctx, command, None, now)

    def _bot_command(
        self, db: sqlite3.Connection, ctx: Context, text: str, match: re.Match[str], now: int
    ) -> Outcome:
        name = match.group(1)
        suffix = match.group(2)
        username = self._status.username
        if suffix and username and suffix[1:].lower() != username.lower():
            return Outcome()  # addressed to another bot in a group
        lowered = name.lower()
        if lowered == "cmd":
            form = CMD_FORM.match(text)
            if not form:
                return Outcome(texts=[texts.NO_SESSION])
            return self._route(db, ctx, form.group(3), form.group(2), now)
        if lowered in ("help", "start"):
            return Outcome(texts=[texts.HELP])
        if lowered == "sessions":
            rows = sessions_db.live_in_chat(db, ctx.chat)
            online = set(ctx.online)
            return Outcome(texts=[texts.live_sessions(rows, online, now)])
        if lowered in ("launch", "kill") and self._config.current.server.enable_launch:
            return self._launch_or_kill(db, ctx, lowered, text[match.end() :], now)
        return Outcome(texts=[texts.unknown_command(name)])

    def _route(
        self, db: sqlite3.Connection, ctx: Context, command: str, token: str | None, now: int
    ) -> Outcome:
        session_id = None
        reply_id = _reply_id(ctx.message or {})
        if reply_id is not None:
            session_id = sessions_db.session_for_reply(db, ctx.chat, reply_id)
        if session_id is None and token is None and reply_id is not None:
            # A notification whose Telegram answer was lost has no mapping (its message_id never
            # arrived), but Telegram echoes its buttons in reply_to_message: their cmd:<token>
            # names the session as well as a mapping would (§8.2: both copies route).
            token = _button_token(ctx.message or {})
        if session_id is None and token is not None:
            session_id = sessions_db.session_for_token(db, token, ctx.chat)
        if session_id is None:
            return Outcome(texts=[texts.NO_SESSION])
        return self._enqueue_execute(db, ctx, session_id, command, now)

    def _enqueue_execute(
        self, db: sqlite3.Connection, ctx: Context, session_id: str, command: str, now: int
    ) -> Outcome:
        try:
            queued = enqueue_for_session(
                db, session_id, command, ctx.chat, now, update_id=ctx.update_id
            )
        except EnqueueRefused as refused:
            return Outcome(texts=[refused.text])
        return Outcome(
            enqueued_machine=queued.command.machine_id, target=queued.target, queued=queued.command
        )

    def _callback(self, db: sqlite3.Connection, ctx: Context, now: int) -> Outcome:
        data = (ctx.callback or {}).get("data")
        if not isinstance(data, str) or not data.startswith("cmd:"):
            return Outcome(answer=None)
        parts = data.split(":")
        if len(parts) < 3 or ctx.chat_id is None:
            return Outcome(answer=texts.SESSION_EXPIRED)
        token, action = parts[1], ":".join(parts[2:])
        session_id = sessions_db.session_for_token(db, token, ctx.chat) if token else None
        if session_id is None:
            return Outcome(answer=texts.SESSION_EXPIRED)
        command = BUTTON_ACTIONS.get(action, action)
        outcome = self._enqueue_execute(db, ctx, session_id, command, now)
        # Errors are answered with their own text and also sent to the chat (CCR Worker).
        outcome.answer = outcome.texts[0] if outcome.texts else texts.COMMAND_SENT
        return outcome

    def _launch_or_kill(
        self, db: sqlite3.Connection, ctx: Context, name: str, args: str, now: int
    ) -> Outcome:
        words = args.split(maxsplit=2 if name == "launch" else 1)
        if name == "launch":
            if len(words) < 3:
                return Outcome(texts=["Usage: /launch <machineId> <directory> <prompt>"])
            machine_id, directory, prompt = words
            if machine_id not in ctx.online:
                return Outcome(texts=[texts.not_connected(machine_id)])
            cmd = q.NewCommand(
                command_id=secrets.token_hex(16),
                machine_id=machine_id,
                session_id=None,
                command=prompt,
                chat_id=ctx.chat_id or "",
                command_type="launch",
                directory=directory,
                update_id=ctx.update_id,
            )
            reply = texts.launching(machine_id, directory)
        else:
            if not words:
                return Outcome(texts=["Usage: /kill <sessionId>"])
            session_id = words[0]
            session = sessions_db.get(db, session_id)
            if session is None:
                return Outcome(texts=[texts.kill_unknown(session_id)])
            machine_id = session["machine_id"]
            if machine_id not in ctx.online:
                return Outcome(texts=[texts.not_connected(machine_id)])
            cmd = q.NewCommand(
                command_id=secrets.token_hex(16),
                machine_id=machine_id,
                session_id=session_id,
                command="",
                chat_id=ctx.chat_id or "",
                command_type="kill",
                update_id=ctx.update_id,
            )
            reply = texts.killing(session_id, machine_id)
        q.enqueue(db, cmd, now)
        return Outcome(texts=[reply], enqueued_machine=machine_id, target=machine_id, queued=cmd)

    # -- after commit --------------------------------------------------------------------------

    def _after_commit(self, ctx: Context, outcome: Outcome) -> None:
        if ctx.callback is not None and outcome.answer is not _NO_ANSWER:
            self._notifier.answer_callback(ctx.callback.get("id"), outcome.answer)
        for text in outcome.texts:
            self._notifier.send_text(ctx.chat_id, text, thread_id=ctx.thread_id)

    async def _deliver_or_notice(self, ctx: Context, outcome: Outcome, now: int) -> None:
        machine_id = outcome.enqueued_machine
        assert machine_id is not None
        if machine_id in ctx.online:
            try:
                await self._hub.deliver(machine_id, outcome.claimed, now)
            except Exception:  # never undoes the commit; the maintenance tick re-sends
                log.exception("delivery after enqueue failed for %s", machine_id)
        else:
            self._notifier.send_text(
                ctx.chat_id,
                texts.queued_offline(outcome.target or machine_id),
                thread_id=ctx.thread_id,
            )


def _context(update: dict[str, Any]) -> Context:
    # Ids beyond SQLite's 64 bits cannot be real Telegram ids: treated as absent, not as errors
    # (an error would make Telegram re-deliver the update forever).
    update_id = positive_int64(update.get("update_id"))
    message = update.get("message") if isinstance(update.get("message"), dict) else None
    callback = (
        update.get("callback_query") if isinstance(update.get("callback_query"), dict) else None
    )
    if message is not None:
        callback = None
    chat_id = user_id = None
    thread_id = None
    source = message
    if callback is not None:
        source = callback.get("message") if isinstance(callback.get("message"), dict) else None
        user_id = _id_of(callback.get("from"))
    if isinstance(source, dict):
        chat_id = _id_of(source.get("chat"))
        if message is not None:
            user_id = _id_of(message.get("from"))
        if source.get("is_topic_message") is True:
            thread_id = positive_int64(source.get("message_thread_id"))
    return Context(update_id, chat_id, user_id, message, callback, thread_id)


def _id_of(obj: object) -> str | None:
    return chat_id_text(obj.get("id")) if isinstance(obj, dict) else None


def _reply_id(message: dict[str, Any]) -> int | None:
    reply = message.get("reply_to_message")
    return positive_int64(reply.get("message_id")) if isinstance(reply, dict) else None


def _button_token(message: dict[str, Any]) -> str | None:
    """The ``cmd:<token>:…`` token of the first button of the message this one replies to."""
    reply = message.get("reply_to_message")
    markup = reply.get("reply_markup") if isinstance(reply, dict) else None
    rows = markup.get("inline_keyboard") if isinstance(markup, dict) else None
    for row in rows if isinstance(rows, list) else []:
        for button in row if isinstance(row, list) else []:
            data = button.get("callback_data") if isinstance(button, dict) else None
            if isinstance(data, str) and data.startswith("cmd:"):
                token = data.split(":")[1]
                return token or None
    return None
