"""``ccr-box agent``: the WebSocket client that receives, stores, acks and executes commands.

Contract §11.1 (connection, keep-alive, reconnect) and §11.2 (durable inbox): a command is written
to disk before it is acked, a known ``commandId`` is acked again but never executed again, and
results produced while disconnected are sent after the next connect.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import aiohttp

from ccr_box import protocol
from ccr_box.agent.executor import Executor
from ccr_box.agent.inject import Injector
from ccr_box.agent.relay import Relay
from ccr_box.agent.store import AgentStore, AsyncStore
from ccr_box.backoff import Backoff
from ccr_box.client.agent import ServerAPI

log = logging.getLogger("ccr_box.agent")

REPLACED = 4000
HEARTBEAT_TIMEOUT = 4001


@dataclass(frozen=True)
class AgentSettings:
    server_url: str
    api_key: str
    machine_id: str
    chat_id: str = ""
    ping_interval_s: float = 30.0
    pong_timeout_s: float = 90.0
    close_timeout_s: float = 5.0
    handshake_timeout_s: float = 15.0
    reconnect_cap_s: float = 30.0
    replaced_wait_s: float = 30.0
    notification_retry_s: float = 30.0


def ws_url(server_url: str, machine_id: str) -> str:
    base = server_url.rstrip("/")
    if base.startswith("https://"):
        base = "wss://" + base[len("https://") :]
    elif base.startswith("http://"):
        base = "ws://" + base[len("http://") :]
    return f"{base}/ws?machineId={quote(machine_id, safe='')}"


class Agent:
    def __init__(
        self,
        settings: AgentSettings,
        store: AsyncStore,
        injector: Injector,
        *,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        rand: Callable[[], float] = random.random,
    ) -> None:
        self.settings = settings
        self._store = store
        self._sleep = sleep
        self._rand = rand
        self._backoff = Backoff(1.0, settings.reconnect_cap_s, rand=rand)
        self.executor = Executor(store, injector, self._result_ready)
        self._ws: aiohttp.ClientWebSocketResponse | None = None
        self._relay: Relay | None = None
        self.boot_id: str | None = None
        self.connected = asyncio.Event()  # set while a connection is open (tests, status)
        self._last_pong = 0.0
        self._tasks: set[asyncio.Task[Any]] = set()
        # Per connection: pings sent, pongs received, results sent but not yet confirmed by the
        # pong to the ping sent right after them (ping number, commandId).
        self._pings = 0
        self._pongs = 0
        self._unconfirmed: list[tuple[int, str]] = []

    # -- lifecycle ----------------------------------------------------------------------------

    async def run(self) -> None:
        """Replay the inbox, then stay connected until cancelled."""
        async with aiohttp.ClientSession() as http:
            api = ServerAPI(self.settings.server_url, self.settings.api_key, http)
            self._relay = Relay(api, self._store, self.settings.machine_id)
            try:
                await self.recover()
                while True:
                    cause = await self._connect_once(http)
                    await self._sleep(self._reconnect_delay(cause))
            finally:
                for task in self._tasks:
                    task.cancel()
                await self.executor.close()

    async def recover(self) -> None:
        """Process start (§11.2): run ``received`` rows in order; report ``executing`` ones.

        The notices about interrupted rows are stored together with their failed mark and sent
        from the store (now, and again after every connect until the server took them).
        """
        assert self._relay is not None
        to_run, interrupted = await self._store.run(
            AgentStore.recover, self._relay.interrupted_notice
        )
        for row in interrupted:
            log.warning(
                "command %s was being typed when the agent stopped; not re-run", row["command_id"]
            )
        if interrupted:
            self._spawn(self._relay.send_pending())
        for row in to_run:
            self.executor.submit(row)
        pruned = await self._store.run(AgentStore.prune)
        if pruned:
            log.debug("pruned %d old inbox rows", pruned)

    def _reconnect_delay(self, cause: tuple[int | None, str]) -> float:
        code, _reason = cause
        if code == REPLACED:
            log.warning(
                "another agent uses machineId %s; waiting before reconnecting",
                self.settings.machine_id,
            )
            return self.settings.replaced_wait_s * (0.5 + 0.5 * self._rand())
        return self._backoff.next()

    async def _connect_once(self, http: aiohttp.ClientSession) -> tuple[int | None, str]:
        url = ws_url(self.settings.server_url, self.settings.machine_id)
        try:
            # A server that accepts TCP but never upgrades must not stall reconnecting.
            ws = await asyncio.wait_for(
                http.ws_connect(
                    url,
                    protocols=("ccr", self.settings.api_key),
                    autoping=True,
                    max_msg_size=4 * 1024 * 1024,
                    timeout=aiohttp.ClientWSTimeout(ws_close=self.settings.close_timeout_s),
                ),
                self.settings.handshake_timeout_s,
            )
        except aiohttp.WSServerHandshakeError as exc:
            why = "API key refused" if exc.status == 401 else f"HTTP {exc.status}"
            log.error("cannot connect to %s: %s", self.settings.server_url, why)
            return None, why
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            log.warning("cannot connect to %s: %s", self.settings.server_url, type(exc).__name__)
            return None, type(exc).__name__
        started = time.monotonic()
        log.info("connected to %s as %s", self.settings.server_url, self.settings.machine_id)
        self._ws = ws
        self.connected.set()
        try:
            code, reason = await self._serve(ws)
        finally:
            self._ws = None
            self.connected.clear()
            if not ws.closed:
                await ws.close()
        log.info(
            "disconnected: code=%s reason=%r after %.0fs", code, reason, time.monotonic() - started
        )
        return code, reason

    # -- one connection -----------------------------------------------------------------------

    async def _serve(self, ws: aiohttp.ClientWebSocketResponse) -> tuple[int | None, str]:
        self._last_pong = time.monotonic()  # the pong clock starts at open (§11.1)
        self._pings, self._pongs, self._unconfirmed = 0, 0, []
        expired = asyncio.Event()
        heartbeat = asyncio.create_task(self._heartbeat(ws, expired), name="agent-heartbeat")
        assert self._relay is not None, "run() creates the relay"
        retry = asyncio.create_task(
            self._relay.retry_pending_every(self.settings.notification_retry_s),
            name="agent-notify-retry",
        )
        self._spawn(self._on_open())
        try:
            while True:
                msg = await ws.receive()
                if msg.type in (aiohttp.WSMsgType.TEXT, aiohttp.WSMsgType.BINARY):
                    try:
                        await self._on_frame(ws, msg.data)
                    except Exception:  # e.g. the inbox write failed: no ack, the server re-sends
                        log.exception("handling a frame failed")
                elif msg.type == aiohttp.WSMsgType.CLOSE:  # the server closed (already answered)
                    return msg.data, msg.extra or ""
                elif msg.type == aiohttp.WSMsgType.ERROR:
                    return ws.close_code, f"error: {type(msg.data).__name__}"
                else:  # CLOSING (our own heartbeat close) or CLOSED
                    break
        finally:
            if expired.is_set():  # let the heartbeat finish its 4001 close (bounded by itself)
                await asyncio.wait({heartbeat}, timeout=self.settings.close_timeout_s + 1)
            heartbeat.cancel()
            retry.cancel()
            await asyncio.gather(heartbeat, retry, return_exceptions=True)
        if expired.is_set():
            return HEARTBEAT_TIMEOUT, "heartbeat-timeout"
        return ws.close_code, _close_reason(ws)

    async def _heartbeat(self, ws: aiohttp.ClientWebSocketResponse, expired: asyncio.Event) -> None:
        """Ping every ``ping_interval_s``; no pong for more than ``pong_timeout_s`` -> close 4001.

        Real time on purpose (like the pong clock): the injectable ``sleep`` is for reconnect waits.
        """
        interval, limit = self.settings.ping_interval_s, self.settings.pong_timeout_s
        next_ping = time.monotonic() + interval
        while not ws.closed:
            now = time.monotonic()
            if now - self._last_pong > limit:
                log.warning("no pong for %gs; reconnecting", limit)
                expired.set()
                try:
                    await asyncio.wait_for(
                        ws.close(code=HEARTBEAT_TIMEOUT, message=b"heartbeat-timeout"),
                        self.settings.close_timeout_s,
                    )
                except TimeoutError:
                    pass
                return
            if now >= next_ping:
                next_ping = now + interval
                try:
                    await self._send_ping(ws)
                except (ConnectionError, RuntimeError):
                    return
                continue
            # Wake for the next ping or just after the pong deadline, whichever comes first.
            await asyncio.sleep(min(next_ping, self._last_pong + limit) - now + 0.001)

    async def _on_open(self) -> None:
        """Re-register live local sessions, then send stored results and notifications (§11.1)."""
        assert self._relay is not None
        await self._relay.reregister_sessions()
        await self._send_unsent_results()
        await self._relay.send_pending()
        await self._store.run(AgentStore.prune)  # done/failed rows older than 48 h (also at start)

    async def _on_frame(self, ws: aiohttp.ClientWebSocketResponse, data: str | bytes) -> None:
        frame = protocol.decode(data)
        if isinstance(frame, protocol.Pong):
            self._last_pong = time.monotonic()
            self._backoff.reset()
            self._pongs += 1
            await self._confirm_results()
        elif isinstance(frame, protocol.Boot):
            changed = self.boot_id is not None and frame.boot_id != self.boot_id
            log.info("server boot %s%s", frame.boot_id, " (server restarted)" if changed else "")
            self.boot_id = frame.boot_id
            self._backoff.reset()
        elif isinstance(frame, protocol.Command):
            await self._receive(
                ws, frame.command_id, "command", frame.session_id, frame.chat_id, data
            )
        elif isinstance(frame, protocol.Unknown) and frame.type in ("launch", "kill"):
            raw = json.loads(data)
            command_id, chat_id = raw.get("commandId"), protocol.chat_id_text(raw.get("chatId"))
            if isinstance(command_id, str) and 1 <= len(command_id) <= 64 and chat_id:
                session_id = raw.get("sessionId") if isinstance(raw.get("sessionId"), str) else None
                await self._receive(ws, command_id, frame.type, session_id, chat_id, data)
        else:
            log.debug("ignored frame %r", data[:100])

    async def _receive(
        self,
        ws: aiohttp.ClientWebSocketResponse,
        command_id: str,
        kind: str,
        session_id: str | None,
        chat_id: str,
        data: str | bytes,
    ) -> None:
        payload = json.loads(data)
        is_new = await self._store.run(
            AgentStore.receive, command_id, kind, session_id, chat_id, payload
        )
        # Ack only after the durable write; a duplicate is acked again, never executed again.
        try:
            await ws.send_str(protocol.encode({"type": "ack", "commandId": command_id}))
        except (ConnectionError, RuntimeError):
            log.debug("ack for %s not sent: connection closing", command_id)
        if is_new:
            row = await self._store.run(AgentStore.get, command_id)
            if row is not None:  # always: prune only removes finished rows
                self.executor.submit(row)
        else:
            log.info("duplicate command %s acked again, not executed", command_id)

    # -- results and notifications ------------------------------------------------------------

    async def _result_ready(self, row: dict[str, Any]) -> None:
        ws = self._ws
        if ws is not None and not ws.closed:
            await self._send_result(ws, row)

    async def _send_result(self, ws: aiohttp.ClientWebSocketResponse, row: dict[str, Any]) -> bool:
        frame = {
            "type": "commandResult",
            "commandId": row["command_id"],
            "sessionId": row["session_id"],
            "success": row["status"] == "done",
            "error": row["error"] if row["status"] != "done" else None,
            "chatId": row["chat_id"],
        }
        try:
            await ws.send_str(protocol.encode(frame))
            # The server handles a connection's frames in order, so the pong to this ping proves
            # it processed the result. Until then the result stays unsent (result_sent=0) and is
            # sent again after a reconnect; the server ignores a second result for a command.
            await self._send_ping(ws)
        except (ConnectionError, RuntimeError):
            return False  # kept (result_sent=0) and sent after the next connect
        self._unconfirmed.append((self._pings, row["command_id"]))
        return True

    async def _send_ping(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self._pings += 1  # counted before the write: uncompressed frames leave in call order
        await ws.send_str(protocol.PING)

    async def _confirm_results(self) -> None:
        """The k-th pong answers the k-th ping: results sent before that ping were processed."""
        done = [cid for n, cid in self._unconfirmed if n <= self._pongs]
        self._unconfirmed = [(n, cid) for n, cid in self._unconfirmed if n > self._pongs]
        for command_id in done:
            await self._store.run(AgentStore.mark_result_sent, command_id)

    async def _send_unsent_results(self) -> None:
        for row in await self._store.run(AgentStore.unsent_results):
            ws = self._ws
            if ws is None or ws.closed or not await self._send_result(ws, row):
                return

    def _spawn(self, coro: Awaitable[Any]) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        task.add_done_callback(_log_task_failure)


def _close_reason(ws: aiohttp.ClientWebSocketResponse) -> str:
    exc = ws.exception()
    return f"{type(exc).__name__}" if exc else "closed"


def _log_task_failure(task: asyncio.Task[Any]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.error("agent background task failed", exc_info=task.exception())
