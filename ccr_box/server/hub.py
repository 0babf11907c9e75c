"""Live agent connections and the per-machine flush (contract §4.1, §4.6, §6.3-§6.5).

A machine is *connected* exactly when the hub holds a current, open connection for it. Flushes of
one machine are serialised by that machine's lock, so a row is never sent twice by overlapping
flushes; no lock is shared between machines.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import sqlite3
import time
from collections.abc import Coroutine
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from ccr_box import limits, protocol
from ccr_box.clock import Clock
from ccr_box.db import Database
from ccr_box.db import queue as q
from ccr_box.db import sessions as sessions_db
from ccr_box.db import updates as updates_db
from ccr_box.server import texts
from ccr_box.server.events import EventBus, preview
from ccr_box.server.notifier import Notifier

log = logging.getLogger("ccr_box.hub")

_ids = itertools.count(1)
NOT_READING = (4003, "Not reading")  # recorded when an agent's socket stayed full (see send)
CLOSE_WAIT_S = 5.0  # how long a replacement/shutdown close waits for the old handler
_CLOSE_ANSWERS: dict[bool | None, str] = {
    True: " (agent answered the close)",
    False: " (agent never answered the close)",
}


@dataclass(eq=False)
class AgentConnection:
    machine_id: str
    ws: web.WebSocketResponse
    connected_at: int
    conn_id: int = field(default_factory=lambda: next(_ids))
    opened_monotonic: float = field(default_factory=time.monotonic)
    # (code, reason) when the server itself closed it (replacement, shutdown): what detach records.
    server_close: tuple[int, str] | None = None
    # The hub asks the connection's own handler to close it (so the close handshake completes:
    # aiohttp drops the TCP connection unanswered when close() races a pending receive()).
    close_requested: asyncio.Event = field(default_factory=asyncio.Event)
    finished: asyncio.Event = field(default_factory=asyncio.Event)  # detached and recorded
    # ack/commandResult handling runs beside the read loop so a burst of acks shares one group
    # commit; a ping waits for them, so a pong still means "every earlier frame is processed".
    frame_tasks: set[asyncio.Task[None]] = field(default_factory=set)
    booted: asyncio.Event = field(default_factory=asyncio.Event)  # boot sent: commands may follow
    reader: asyncio.Task[Any] | None = None  # the handler task reading this socket
    receiving: bool = False  # the reader is parked in ws.receive()
    # A frame that cannot be handed to the socket within this long means the agent stopped
    # reading (suspended, wedged); the hub sets it from Hub.send_timeout_s on attach.
    send_timeout_s: float = limits.WS_SEND_TIMEOUT_S
    stalled: bool = False  # a send timed out: the connection is being dropped
    # After a server-initiated close: whether the agent answered with its close frame (False: it
    # was half-open, or the close timed out).
    close_answered: bool | None = None

    def request_close(self) -> None:
        """Ask the reader to close with a handshake; wake it if it is waiting for a frame.

        (Closing from another task while receive() is pending makes aiohttp drop the TCP
        connection without a close frame.)
        """
        self.close_requested.set()
        if self.receiving and self.reader is not None:
            self.reader.cancel()

    def spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(coro)
        self.frame_tasks.add(task)
        task.add_done_callback(self.frame_tasks.discard)
        task.add_done_callback(_log_frame_failure)

    async def settle(self) -> None:
        """Wait until every frame received so far has been handled."""
        while self.frame_tasks:
            await asyncio.gather(*self.frame_tasks, return_exceptions=True)

    @property
    def open(self) -> bool:
        return not self.ws.closed and not self.stalled

    async def send(self, text: str) -> None:
        """Send one frame; ConnectionError when closed or when the agent stopped reading.

        An agent that reads nothing (a stopped process keeps its TCP connection) fills the
        socket, after which a plain send waits forever -- and with it the maintenance tick, a
        webhook or the polling loop. So a send that waits longer than ``send_timeout_s`` drops
        the connection instead; unacknowledged rows are re-sent on the next one (§6.1).
        """
        if not self.open:
            raise ConnectionError("connection is closed")
        try:
            # (a timeout scope, not wait_for: no extra task, so frames keep their order)
            async with asyncio.timeout(self.send_timeout_s):
                await self.ws.send_str(text)
        except TimeoutError:
            self.stalled = True
            if self.server_close is None:
                self.server_close = NOT_READING
            self.request_close()
            log.warning(
                "machine %s read nothing for %g s; dropping its connection",
                self.machine_id,
                self.send_timeout_s,
            )
            raise ConnectionError("agent stopped reading") from None

    def age_s(self) -> float:
        return time.monotonic() - self.opened_monotonic


class Hub:
    def __init__(
        self,
        db: Database,
        clock: Clock,
        notifier: Notifier,
        boot_id: str,
        events: EventBus | None = None,
    ) -> None:
        self._db = db
        self._events = events or EventBus(clock)
        self._clock = clock
        self._notifier = notifier
        self.boot_id = boot_id
        self._current: dict[str, AgentConnection] = {}
        self._closing: set[asyncio.Task[None]] = set()  # background closes and flush passes
        self.send_timeout_s = limits.WS_SEND_TIMEOUT_S  # see AgentConnection.send

    # -- presence -----------------------------------------------------------------------------

    def is_connected(self, machine_id: str) -> bool:
        conn = self._current.get(machine_id)
        return conn is not None and conn.open

    def connected(self) -> dict[str, AgentConnection]:
        return {m: c for m, c in self._current.items() if c.open}

    async def attach(self, conn: AgentConnection) -> None:
        """Make ``conn`` current, replace an older one, re-arm sent rows, boot, flush (§4.1)."""
        conn.send_timeout_s = self.send_timeout_s
        old = self._current.get(conn.machine_id)
        self._current[conn.machine_id] = conn
        if old is not None and old is not conn:
            # In the background: a half-open old socket must not delay the new one.
            self._background(_close_quietly(old, 4000, "Replaced by new connection"))
        now = self._clock.now_ms()

        def job(db: sqlite3.Connection) -> None:
            q.requeue_sent(db, conn.machine_id, now)
            updates_db.machine_connected(db, conn.machine_id, now)

        await self._db.write(job, durable=False)
        self._events.publish("machine.connected", machineId=conn.machine_id)
        await conn.send(protocol.boot(self.boot_id))
        conn.booted.set()  # deliver() waits for this: no command ever precedes boot
        await self.flush(conn.machine_id)

    async def detach(self, conn: AgentConnection, code: int | None, reason: str, by: str) -> None:
        """Forget ``conn`` unless a newer connection already replaced it."""
        if self._current.get(conn.machine_id) is conn:
            del self._current[conn.machine_id]
        log.info(
            "machine disconnected machine=%s code=%s reason=%r closed_by=%s age=%.1fs%s",
            conn.machine_id,
            code,
            reason,
            by,
            conn.age_s(),
            _CLOSE_ANSWERS.get(conn.close_answered, ""),
        )
        now = self._clock.now_ms()
        # Shielded: the handler task is often being cancelled right now (the transport just
        # closed); the presence record must still be written.
        record = asyncio.ensure_future(
            self._db.write(
                lambda db: updates_db.machine_disconnected(db, conn.machine_id, now, code, reason),
                durable=False,
            )
        )
        record.add_done_callback(_log_record_failure)
        record.add_done_callback(
            lambda _: self._events.publish(
                "machine.disconnected", machineId=conn.machine_id, code=code, reason=reason
            )
        )
        record.add_done_callback(lambda _: conn.finished.set())
        with contextlib.suppress(Exception):  # logged by the callback
            await asyncio.shield(record)

    async def close_all(self, code: int, reason: str) -> None:
        conns = list(self._current.values())
        await asyncio.gather(*(_close_quietly(c, code, reason) for c in conns))

    async def disconnect(self, machine_id: str, code: int = 1000, reason: str = "") -> bool:
        conn = self._current.get(machine_id)
        if conn is None:
            return False
        await _close_quietly(conn, code, reason)
        return True

    # -- sending ------------------------------------------------------------------------------
    # Rows are *claimed* (selected and marked sent, §6.3) inside write jobs, which the single
    # writer runs one after another: two flushes can never claim the same row. The enqueue and
    # ack transactions claim in the same commit, so a reply costs one commit and its ack one more.

    async def flush(self, machine_id: str) -> int:
        """Claim and send the machine's due rows, at most one batch (§6.3). Returns rows sent."""
        if not self.is_connected(machine_id):
            return 0
        now = self._clock.now_ms()
        rows = await self._db.write(lambda db: q.claim_due(db, machine_id, now), durable=False)
        return await self.deliver(machine_id, rows, now)

    async def deliver(self, machine_id: str, rows: list[dict[str, Any]], now: int) -> int:
        """Send claimed rows on the machine's current connection; undo the claim of failures."""
        if not rows:
            return 0
        conn = self._current.get(machine_id)
        if conn is not None and not conn.booted.is_set():
            # The machine's connection is in its connect sequence (§4.1), so these rows were
            # claimed before it re-armed the machine's sent rows: they are pending again and its
            # connect flush sends them, oldest first. Sending them here, right after its boot,
            # would put them ahead of older rows that flush re-sends (per-session order).
            # (A claim committed after the re-arm is answered after it, when boot has been sent.)
            return 0
        failed: list[tuple[dict[str, Any], str]] = []
        for row in rows:
            try:
                if conn is None:
                    raise ConnectionError("machine disconnected")
                await conn.send(protocol.command_frame(row))
            except Exception as exc:  # the transport raised: backoff (§6.4)
                failed.append((row, f"{type(exc).__name__}: {exc}"[:200]))
        failed_ids = {row["command_id"] for row, _ in failed}
        sent_ids = [row["command_id"] for row in rows if row["command_id"] not in failed_ids]
        if sent_ids:
            self._events.publish("command.sent", machineId=machine_id, commandIds=sent_ids)
        if failed:
            log.warning("send to %s failed for %d command(s)", machine_id, len(failed))

            def undo(db: sqlite3.Connection) -> None:
                for row, error in failed:
                    q.unclaim_failed(db, row, error, now)

            await self._db.write(undo, durable=False)
        return len(rows) - len(failed)

    async def flush_all(self) -> None:
        for machine_id in list(self.connected()):
            await self.flush(machine_id)

    async def settled(self) -> None:
        """Wait until no background close is running (tests, shutdown)."""
        while self._closing:
            await asyncio.gather(*list(self._closing), return_exceptions=True)

    def _background(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(coro)
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)

    # -- frames from agents -------------------------------------------------------------------

    async def on_ack(self, conn: AgentConnection, command_id: str) -> None:
        now = self._clock.now_ms()
        machine_id = conn.machine_id
        # Decided now: the job runs later, in the writer's next batch, and only sees the database.
        live = self.is_connected(machine_id)

        def job(db: sqlite3.Connection) -> tuple[dict[str, Any] | None, list[dict[str, Any]]]:
            before = q.acknowledge(db, command_id, machine_id, now)
            if before is None:
                return None, []
            return before, q.claim_due(db, machine_id, now) if live else []  # the flush (§4.3)

        before, claimed = await self._db.write(job, durable=False)
        if before is None:
            log.debug("ack for unknown command %s from %s", command_id, machine_id)
            return
        if before["status"] != "acked":
            self._events.publish("command.acked", commandId=command_id, machineId=machine_id)
        if before["status"] == "dead":
            await self._tell_reached(before)
        await self.deliver(machine_id, claimed, now)

    async def on_result(self, conn: AgentConnection, result: protocol.CommandResult) -> None:
        now = self._clock.now_ms()
        machine_id = conn.machine_id
        live = self.is_connected(machine_id)
        row: dict[str, Any] | None = None
        claimed: list[dict[str, Any]] = []
        if result.command_id is not None:
            command_id = result.command_id

            def job(
                db: sqlite3.Connection,
            ) -> tuple[dict[str, Any] | None, bool, list[dict[str, Any]]]:
                before = q.acknowledge(db, command_id, machine_id, now)
                if before is None:
                    return None, False, []
                stored = q.store_result(db, command_id, result.success, result.error, now)
                return before, stored, q.claim_due(db, machine_id, now) if live else []

            row, first, claimed = await self._db.write(job, durable=False)
            if row is not None and row["status"] != "acked":
                self._events.publish("command.acked", commandId=command_id, machineId=machine_id)
            if row is not None and first:
                self._events.publish(
                    "command.result",
                    commandId=command_id,
                    machineId=machine_id,
                    result="ok" if result.success else "failed",
                    error=preview(result.error),
                )
            if row is not None and not first:
                await self.deliver(machine_id, claimed, now)
                return  # a second result for the same row: ignored, no second message
        if row is None:  # no commandId (older agents) or an unknown one: still shown
            self._events.publish(
                "command.result",
                commandId=result.command_id,
                machineId=machine_id,
                result="ok" if result.success else "failed",
                error=preview(result.error),
            )
        if row is not None and row["status"] == "dead":
            await self._tell_reached(row)
        if result.success is False:
            chat_id = row["chat_id"] if row is not None else result.chat_id
            self._notifier.send_text(chat_id, texts.command_failed(result.error))
        await self.deliver(machine_id, claimed, now)

    async def _tell_reached(self, row: dict[str, Any]) -> None:
        session = None
        if row.get("session_id"):
            session = await self._db.read(lambda db: sessions_db.get(db, row["session_id"]))
        self._notifier.send_text(
            row["chat_id"], texts.reached_after_all(texts.target(session, row["machine_id"]))
        )


def _log_frame_failure(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.error("handling a frame failed", exc_info=task.exception())


def _log_record_failure(task: asyncio.Future[None]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.error("could not record a disconnect", exc_info=task.exception())


async def _close_quietly(conn: AgentConnection, code: int, reason: str) -> None:
    """Have the connection's handler close it with ``code``/``reason``; wait until it is done."""
    if conn.server_close is None and not conn.ws.closed:
        conn.server_close = (code, reason)
    conn.request_close()
    try:
        await asyncio.wait_for(conn.finished.wait(), CLOSE_WAIT_S)
    except TimeoutError:
        log.debug("closing %s: handler still busy", conn.machine_id)
