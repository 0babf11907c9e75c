"""The self-starting maintenance loop (contract §6.7, §9).

Every second: dead-letter due rows, flush every connected machine, send due outbox chunks.
Every minute (and at start): retention deletes. ``tick()`` is public so tests drive it with a
manual clock instead of waiting.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
from functools import partial
from typing import Any

from ccr_box import limits
from ccr_box.clock import Clock
from ccr_box.db import Database
from ccr_box.db import outbox as outbox_db
from ccr_box.db import queue as q
from ccr_box.db import sessions as sessions_db
from ccr_box.db import updates as updates_db
from ccr_box.server import texts
from ccr_box.server.events import EventBus, preview
from ccr_box.server.hub import Hub
from ccr_box.server.notifier import Notifier
from ccr_box.server.outbox import OutboxSender
from ccr_box.server.state import ConfigRef

log = logging.getLogger("ccr_box.maintenance")


class Maintenance:
    def __init__(
        self,
        db: Database,
        clock: Clock,
        config: ConfigRef,
        hub: Hub,
        notifier: Notifier,
        outbox: OutboxSender,
        events: EventBus | None = None,
    ) -> None:
        self._db = db
        self._events = events or EventBus(clock)
        self._clock = clock
        self._config = config
        self._hub = hub
        self._notifier = notifier
        self._outbox = outbox
        self._last_retention: int | None = None

    async def tick(self) -> None:
        """One pass. Each step's failure is logged and does not stop the others."""
        now = self._clock.now_ms()
        for step in (self.dead_letter, self._hub.flush_all, self._outbox.send_due):
            try:
                await step()
            except Exception:
                log.exception("maintenance step %s failed", getattr(step, "__name__", step))
        if self._last_retention is None or now - self._last_retention >= limits.RETENTION_EVERY_MS:
            self._last_retention = now
            try:
                await self.retention()
            except Exception:
                log.exception("retention pass failed")

    async def dead_letter(self) -> list[dict[str, Any]]:
        now = self._clock.now_ms()
        rows = await self._db.write(lambda db: q.dead_letter_due(db, now))
        for row in rows:
            session = None
            session_id = row.get("session_id")
            if session_id:
                session = await self._db.read(partial(sessions_db.get, session_id=session_id))
            log.warning(
                "command %s for %s is dead (%s)",
                row["command_id"],
                row["machine_id"],
                row["dead_reason"],
            )
            self._events.publish(
                "command.dead",
                commandId=row["command_id"],
                machineId=row["machine_id"],
                sessionId=row["session_id"],
                reason=row["dead_reason"],
                text=preview(row["command"]),
            )
            self._notifier.send_text(
                row["chat_id"],
                texts.dead_letter(
                    texts.target(session, row["machine_id"]), row["dead_reason"], row["command"]
                ),
            )
        return rows

    async def retention(self) -> None:
        now = self._clock.now_ms()
        ttl_ms = self._config.current.server.session_ttl_days * limits.DAY_MS

        def job(db: sqlite3.Connection) -> None:
            updates_db.delete_older_than(db, now - limits.SEEN_UPDATES_TTL_MS)
            q.delete_finished(db, now)
            sessions_db.delete_expired(db, now - ttl_ms)
            outbox_db.delete_finished(db, now)

        await self._db.write(job)

    async def run(self, interval_s: float = limits.MAINTENANCE_TICK_S) -> None:
        """Tick forever; a tick never overlaps the next (they run in this one task)."""
        while True:
            started = asyncio.get_running_loop().time()
            await self.tick()
            elapsed = asyncio.get_running_loop().time() - started
            await asyncio.sleep(max(interval_s - elapsed, 0.0))
