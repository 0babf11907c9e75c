"""Per-session FIFO execution of inbox commands (contract §11.3).

One worker per session types that session's commands one at a time, so two quick replies never
interleave keystrokes; different sessions run in parallel.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from ccr_box.agent.inject import Injector, Target
from ccr_box.agent.store import AgentStore, AsyncStore
from ccr_box.errors import InjectionError

log = logging.getLogger("ccr_box.agent.executor")

UNKNOWN_SESSION = "Session not found. Wait for a new notification."

ResultCallback = Callable[[dict[str, Any]], Awaitable[None]]


class Executor:
    def __init__(self, store: AsyncStore, injector: Injector, on_result: ResultCallback) -> None:
        self._store = store
        self._injector = injector
        self._on_result = on_result
        self._queues: dict[str, asyncio.Queue[dict[str, Any]]] = {}
        self._workers: dict[str, asyncio.Task[None]] = {}

    def submit(self, row: dict[str, Any]) -> None:
        """Queue an inbox row (status ``received``) behind its session's earlier commands."""
        key = row.get("session_id") or f"-{row['command_id']}"  # launch/kill have no session
        queue = self._queues.get(key)
        if queue is None:
            queue = self._queues[key] = asyncio.Queue()
            self._workers[key] = asyncio.create_task(self._work(key, queue), name=f"exec-{key}")
        queue.put_nowait(row)

    async def _work(self, key: str, queue: asyncio.Queue[dict[str, Any]]) -> None:
        while True:
            row = await queue.get()
            try:
                await self.execute(row)
            except Exception:
                log.exception("executing %s failed unexpectedly", row["command_id"])
            finally:
                queue.task_done()
            if queue.empty():  # idle sessions do not keep a task alive
                del self._queues[key]
                del self._workers[key]
                return

    async def execute(self, row: dict[str, Any]) -> None:
        command_id = row["command_id"]
        if row.get("kind", "command") != "command":
            await self._finish(row, f"{row['kind']} is not supported by this agent")
            return
        session = await self._store.run(AgentStore.session, row["session_id"])
        if session is None:
            await self._finish(row, UNKNOWN_SESSION)
            return
        text = json.loads(row["payload"]).get("command", "")
        # Committed before typing: after a crash this row is never typed again (§11.2).
        await self._store.run(AgentStore.set_status, command_id, "executing")
        target = Target(
            pane=session["pane"], tmux_socket=session["tmux_socket"], session_id=row["session_id"]
        )
        try:
            await self._injector.inject(target, text)
        except InjectionError as exc:
            await self._finish(row, str(exc))
        except Exception as exc:
            log.exception("injector crashed on %s", command_id)
            await self._finish(row, f"internal error while typing: {type(exc).__name__}")
        else:
            await self._finish(row, None)

    async def _finish(self, row: dict[str, Any], error: str | None) -> None:
        status = "done" if error is None else "failed"
        await self._store.run(AgentStore.set_status, row["command_id"], status, error)
        if error is None:
            log.info("command %s typed into session %s", row["command_id"], row["session_id"])
        else:
            log.warning("command %s failed: %s", row["command_id"], error)
        await self._on_result({**row, "status": status, "error": error})

    async def close(self) -> None:
        for task in self._workers.values():
            task.cancel()
        await asyncio.gather(*self._workers.values(), return_exceptions=True)
        self._workers.clear()
        self._queues.clear()
