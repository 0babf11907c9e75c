"""Background delivery of queued notification chunks (contract §8.2 durable outbox)."""

from __future__ import annotations

import json
import logging
import sqlite3
from typing import Any

from ccr_box import limits
from ccr_box.clock import Clock
from ccr_box.db import Database
from ccr_box.db import outbox as outbox_db
from ccr_box.db import sessions as sessions_db
from ccr_box.errors import TelegramPermanentError, TelegramTransientError
from ccr_box.server.state import ConfigRef
from ccr_box.telegram import TelegramAPI, TelegramRateLimitedError

log = logging.getLogger("ccr_box.outbox")


class OutboxSender:
    def __init__(
        self, db: Database, telegram: TelegramAPI, clock: Clock, config: ConfigRef
    ) -> None:
        self._db = db
        self._telegram = telegram
        self._clock = clock
        self._config = config

    async def send_due(self) -> int:
        """Send every due chunk in order; returns how many Telegram accepted."""
        if not self._telegram.enabled:
            return 0
        rows = await self._db.read(lambda c: outbox_db.due(c, self._clock.now_ms()))
        blocked: set[str] = set()  # notifications with a chunk that failed this round
        delivered = 0
        for row in rows:
            if row["notification_id"] in blocked:
                continue
            outcome = await self._send_one(row)
            if outcome == "sent":
                delivered += 1
            elif outcome == "failed":
                blocked.add(row["notification_id"])
            else:
                # Telegram is unreachable or rate limiting: the other notifications would fail
                # the same way (each after up to a full call timeout), and this runs inside the
                # maintenance tick, so stop the round and try again when rows are due.
                break
        return delivered

    async def _send_one(self, row: dict[str, Any]) -> str:
        """``sent``, ``failed`` (permanently) or ``retry`` (transient, rescheduled)."""
        if row["chat_id"] not in self._config.current.telegram.allowed_chat_ids:
            await self._db.write(
                lambda c: outbox_db.mark_failed(c, row["notification_id"], "chat no longer allowed")
            )
            return "failed"
        fields: dict[str, Any] = {}
        if row["entities"]:
            fields["entities"] = json.loads(row["entities"])
        if row["reply_markup"]:
            fields["reply_markup"] = json.loads(row["reply_markup"])
        try:
            # wait_budget_s=0: a 429 is not slept out here (that would stall the maintenance
            # tick); the row is rescheduled for when Telegram said to come back.
            message = await self._telegram.send_message(
                row["chat_id"], row["text"], wait_budget_s=0.0, **fields
            )
        except TelegramPermanentError as exc:
            error = str(exc)
            log.warning(
                "Telegram refused queued notification %s: %s", row["notification_id"], error
            )
            await self._db.write(lambda c: outbox_db.mark_failed(c, row["notification_id"], error))
            return "failed"
        except TelegramTransientError as exc:
            error, retry_at = (
                str(exc),
                self._clock.now_ms() + limits.send_backoff_ms(row["attempts"]),
            )
            if isinstance(exc, TelegramRateLimitedError):
                retry_at = max(retry_at, self._clock.now_ms() + int(exc.retry_after * 1000))
            await self._db.write(lambda c: outbox_db.mark_retry(c, row["id"], error, retry_at))
            return "retry"
        now = self._clock.now_ms()
        message_id = self._telegram.message_id_of(message)

        def job(c: sqlite3.Connection) -> None:
            outbox_db.mark_sent(c, row["id"], message_id, now)
            if message_id is not None:
                sessions_db.map_messages(
                    c, [(row["chat_id"], message_id, row["session_id"], row["token"])], now
                )

        await self._db.write(job)
        return "sent"
