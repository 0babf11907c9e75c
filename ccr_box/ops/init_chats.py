"""Which chats may use the bot: from ``--chat-id``, or found by asking the user to message the bot.

Finding a chat reads the bot's updates with short ``getUpdates`` calls. Once the chats are chosen,
the updates read are confirmed (``offset = last + 1``) so the server, when it starts polling, does
not answer the setup messages.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from typing import Any

from ccr_box.errors import CcrBoxError, TelegramError, TelegramPermanentError
from ccr_box.ops.init_common import Bot, InitRun, InitUsageError

_ID = re.compile(r"-?[0-9]+")
_POLL_S = 2  # seconds per getUpdates call: short, so the deadline and Ctrl-C are honoured quickly


def telegram_ids(flag: str, values: list[str]) -> list[str]:
    """Canonical ids from repeated ``flag`` values; a non-id is a usage error."""
    found = []
    for value in values:
        if not _ID.fullmatch(value.strip()):
            raise InitUsageError(f"{flag} {value!r}: not a Telegram id (digits, maybe a '-')")
        found.append(str(int(value.strip())))
    return list(dict.fromkeys(found))


@dataclass(frozen=True)
class SeenChat:
    """A chat a message came from, and who sent it."""

    chat_id: str
    kind: str  # private, group, supergroup, channel
    name: str  # title, @username or first name
    sender_id: str
    sender: str

    @property
    def is_group(self) -> bool:
        return self.kind in ("group", "supergroup")

    @property
    def label(self) -> str:
        return f"{self.chat_id} ({self.kind}, {self.name})"


def _person(user: dict[str, Any]) -> str:
    if user.get("username"):
        return f"@{user['username']}"
    return str(user.get("first_name") or user.get("id", "someone"))


def chat_of(update: dict[str, Any]) -> SeenChat | None:
    """The chat and sender of a message or button press; None for anything else."""
    message = update.get("message")
    sender = message.get("from") if isinstance(message, dict) else None
    query = update.get("callback_query")
    if not isinstance(message, dict) and isinstance(query, dict):
        message, sender = query.get("message"), query.get("from")
    chat = message.get("chat") if isinstance(message, dict) else None
    if not isinstance(chat, dict) or not isinstance(chat.get("id"), int):
        return None
    sender = sender if isinstance(sender, dict) else {}
    kind = str(chat.get("type") or "chat")
    if chat.get("title"):
        name = f'"{chat["title"]}"'
    elif chat.get("username"):
        name = f"@{chat['username']}"
    else:
        name = _person(sender) if kind == "private" and sender else _person(chat)
    return SeenChat(str(chat["id"]), kind, name, str(sender.get("id", "")), _person(sender))


class UpdateReader:
    """Short getUpdates calls; yields each chat once; deals with the two kinds of 409."""

    def __init__(self, run: InitRun, bot: Bot) -> None:
        self._run = run
        self._bot = bot
        self.last_update_id: int | None = None
        self._seen: set[str] = set()

    def new_chats(self, deadline: float) -> list[SeenChat]:
        """Chats not seen before, from one getUpdates call that ends by ``deadline``."""
        timeout = int(max(0.0, min(_POLL_S, deadline - time.monotonic())))
        offset = None if self.last_update_id is None else self.last_update_id + 1
        try:
            updates = self._bot.call("get_updates", offset, timeout=timeout)
        except TelegramPermanentError as exc:
            self._conflict(exc)
            return []
        except TelegramError as exc:
            from ccr_box.ops.telegram_words import explain

            raise CcrBoxError(f"cannot read the bot's messages: {explain(exc)}") from None
        found = []
        for update in updates:
            if isinstance(update.get("update_id"), int):
                self.last_update_id = max(self.last_update_id or 0, update["update_id"])
            chat = chat_of(update)
            if chat is not None and chat.chat_id not in self._seen:
                self._seen.add(chat.chat_id)
                found.append(chat)
        return found

    def _conflict(self, exc: TelegramPermanentError) -> None:
        from ccr_box.ops.telegram_words import explain
        from ccr_box.telegram import is_other_poller_conflict, is_webhook_conflict

        if is_other_poller_conflict(exc):
            raise CcrBoxError(
                "another program is reading this bot's messages (a running `ccr-box up`?): "
                "stop it, then run `ccr-box init` again (or pass --chat-id ID)"
            )
        if not is_webhook_conflict(exc):
            raise CcrBoxError(f"cannot read the bot's messages: {explain(exc)}")
        say = self._run.say
        say("A webhook is registered for this bot: Telegram sends its messages to a URL, so they")
        say("cannot be read here. Deleting it keeps pending messages (init registers it again")
        say("if you choose webhook mode).")
        if self._run.interactive and not self._run.prompter.confirm(
            "Delete the webhook now?", default=True
        ):
            raise CcrBoxError("the webhook stays; pass --chat-id ID to choose the chat instead")
        self._bot.call("delete_webhook", drop_pending_updates=False)
        say("Webhook deleted.")

    def confirm(self) -> None:
        """Mark everything read as handled, so the server does not answer the setup messages."""
        if self.last_update_id is not None:
            try:
                self._bot.call("get_updates", self.last_update_id + 1, timeout=0)
            except TelegramError:
                pass  # harmless: the server will then see the setup messages once


def choose_chats(run: InitRun, bot: Bot, username: str) -> tuple[list[str], list[str] | None]:
    """(allowed chat ids, allowed user ids or None to leave them as they are)."""
    args = run.args
    chats = telegram_ids("--chat-id", args.chat_id)
    users = telegram_ids("--user-id", args.user_id) or None
    if chats and args.find_chat:
        raise InitUsageError("give either --chat-id or --find-chat, not both")
    if chats:
        return chats, users
    existing = list(run.current.telegram.allowed_chat_ids) if run.exists else []
    if not run.interactive:
        if args.find_chat:
            return [_first_chat(run, bot, username).chat_id], users
        if existing:
            return existing, users
        raise InitUsageError(
            "which chat should ccr-box use? pass --chat-id ID, or --find-chat and send the bot "
            "a message"
        )
    if existing and run.prompter.confirm(
        f"Allowed chats now: {', '.join(existing)}. Keep them?", default=True
    ):
        return existing, users
    return _discover(run, bot, username, users or [])


def _first_chat(run: InitRun, bot: Bot, username: str) -> SeenChat:
    reader = UpdateReader(run, bot)
    run.say(f"Waiting up to {run.args.wait:g} s for a message to @{username}...")
    deadline = time.monotonic() + max(0.0, run.args.wait)
    while True:
        found = reader.new_chats(deadline)
        if found:
            chat = found[0]
            run.say(f"Found chat {chat.label}, message from {chat.sender}.")
            if chat.is_group:
                run.say(
                    "It is a group: every member may reply to notifications. To allow only you, "
                    f"run init again with --user-id {chat.sender_id}."
                )
            reader.confirm()
            return chat
        if time.monotonic() >= deadline:
            raise CcrBoxError(
                f"no message reached @{username} within {run.args.wait:g} s: send the bot a "
                "message and run init again (or pass --chat-id ID)"
            )


def _discover(
    run: InitRun, bot: Bot, username: str, users: list[str]
) -> tuple[list[str], list[str] | None]:
    ask = run.prompter
    reader = UpdateReader(run, bot)
    run.say(
        f"Now send any message to @{username} from the chat you want to use (your private chat "
        "with the bot, or a group it is in). Waiting..."
    )
    chosen: list[str] = []
    deadline = time.monotonic() + max(0.0, run.args.wait)
    while True:
        for chat in reader.new_chats(deadline):
            run.say(f"Found chat {chat.label}, message from {chat.sender}.")
            if not ask.confirm(f"Use chat {chat.label}?", default=True):
                run.say("Waiting for another message...")
                continue
            chosen.append(chat.chat_id)
            if (
                chat.is_group
                and chat.sender_id
                and ask.confirm(
                    f"Allow only {chat.sender} (user id {chat.sender_id}) to drive sessions from this "
                    "group? Otherwise every member may",
                    default=True,
                )
            ):
                users.append(chat.sender_id)
            if not ask.confirm("Add another chat?", default=False):
                reader.confirm()
                return chosen, list(dict.fromkeys(users)) or None
            run.say("Send a message from the next chat. Waiting...")
            deadline = time.monotonic() + max(0.0, run.args.wait)
        if time.monotonic() < deadline:
            continue
        if chosen:
            reader.confirm()
            return chosen, list(dict.fromkeys(users)) or None
        typed = ask.ask(
            f"No chat chosen after {run.args.wait:g} s. Type a chat id, or press Enter to "
            "keep waiting"
        )
        if typed and _ID.fullmatch(typed):
            reader.confirm()
            return [str(int(typed))], list(dict.fromkeys(users)) or None
        if typed:
            run.say(f"{typed!r} is not a chat id (digits, maybe a '-').")
        deadline = time.monotonic() + max(0.0, run.args.wait)
