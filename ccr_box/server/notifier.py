"""After-commit Telegram effects: pipeline texts and callback answers.

They run as background tasks (the webhook's 200 does not wait for Telegram) and never undo a commit.
Texts go only to allow-listed chats; a transient failure is retried a few times, then logged.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from ccr_box.errors import TelegramError, TelegramTransientError
from ccr_box.server.state import ConfigRef
from ccr_box.telegram import TelegramAPI
from ccr_box.textutil import split_message

log = logging.getLogger("ccr_box.notifier")

TEXT_RETRIES = 3


class Notifier:
    def __init__(
        self,
        telegram: TelegramAPI,
        config: ConfigRef,
        *,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        retry_delay_s: float = 2.0,
    ) -> None:
        self._telegram = telegram
        self._config = config
        self._sleep = sleep
        # Public so fault tests can shorten it on a running server (attempt n waits n × this).
        self.retry_delay_s = retry_delay_s
        self._tasks: set[asyncio.Task[None]] = set()

    def chat_allowed(self, chat_id: str | None) -> bool:
        return bool(chat_id) and chat_id in self._config.current.telegram.allowed_chat_ids

    def send_text(self, chat_id: str | None, text: str, *, thread_id: int | None = None) -> None:
        """Queue a plain-text message to an allowed chat (dropped with a log line otherwise)."""
        if not self.chat_allowed(chat_id):
            log.info("not sending to chat %s: not in allowed_chat_ids", chat_id)
            return
        if not self._telegram.enabled:
            log.info("Telegram is off; not sending to chat %s: %s", chat_id, text[:80])
            return
        self._spawn(self._send_text(str(chat_id), text, thread_id))

    def answer_callback(self, callback_query_id: Any, text: str | None = None) -> None:
        if not isinstance(callback_query_id, str) or not self._telegram.enabled:
            return
        self._spawn(self._answer(callback_query_id, text))

    async def _send_text(self, chat_id: str, text: str, thread_id: int | None) -> None:
        # Split like notifications (§8.3): a long /sessions list must not exceed 4,096 units.
        for chunk in split_message(text):
            if not await self._send_chunk(chat_id, chunk.text, thread_id):
                return

    async def _send_chunk(self, chat_id: str, text: str, thread_id: int | None) -> bool:
        extra: dict[str, Any] = {}
        if thread_id is not None:
            extra["message_thread_id"] = thread_id
        for attempt in range(1, TEXT_RETRIES + 1):
            try:
                await self._telegram.send_message(chat_id, text, wait_budget_s=None, **extra)
                return True
            except TelegramTransientError as exc:
                if attempt == TEXT_RETRIES:
                    log.warning("giving up on a text to chat %s: %s", chat_id, exc)
                    return False
                await self._sleep(self.retry_delay_s * attempt)
            except TelegramError as exc:
                log.warning("Telegram refused a text to chat %s: %s", chat_id, exc)
                return False
        return False

    async def _answer(self, callback_query_id: str, text: str | None) -> None:
        # §7.5: every callback query is answered, else the button's spinner keeps turning. A
        # transient failure is retried like a text. Telegram refuses answers to queries older
        # than about 15 s, and a second answer after a lost one: such a refusal is only logged.
        for attempt in range(1, TEXT_RETRIES + 1):
            try:
                await self._telegram.answer_callback_query(
                    callback_query_id, text, wait_budget_s=None
                )
                return
            except TelegramTransientError as exc:
                if attempt == TEXT_RETRIES:
                    log.warning("answerCallbackQuery failed, giving up: %s", exc)
                    return
                await self._sleep(self.retry_delay_s * attempt)
            except TelegramError as exc:
                log.warning("answerCallbackQuery failed: %s", exc)
                return

    def _spawn(self, coro: Awaitable[None]) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def drain(self, timeout_s: float = 5.0) -> None:
        """Wait for in-flight sends (shutdown); cancel what is left after ``timeout_s``."""
        if not self._tasks:
            return
        _done, pending = await asyncio.wait(set(self._tasks), timeout=timeout_s)
        for task in pending:
            task.cancel()
        if pending:
            await asyncio.gather(*pending, return_exceptions=True)
