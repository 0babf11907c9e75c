"""Network faults between agents and the server (issue 11, fault suite).

A TCP proxy (:mod:`tests.tcp_proxy`) sits between the agents and a real in-process server and breaks
the connections on purpose: resets and plain closes, cuts after N bytes (half a frame, in either
direction) and freezes (half-open: both ends keep a socket that carries nothing). The agents are raw
aiohttp WebSocket clients speaking the CCR frames, and the real ccr-box agent runner.

Checked after each storm: every Telegram reply became exactly one command; every command was acked
and reached its agent; none was lost and none was executed twice as a new command (a re-delivery of
the same ``commandId`` is fine, the agent de-duplicates it); the server noticed half-open agents by
its idle timeout (4002) and the agent by its pong timeout; no ERROR reached the log.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import WSMsgType

from ccr_box import limits
from ccr_box.server import keys
from ccr_box.server.app import Options
from tests.conftest import API_KEY, CHAT, Harness
from tests.figures import record
from tests.helpers_agent import Agents, Recorder, bind
from tests.tcp_proxy import DOWN, UP, Link, TcpProxy

IDLE_S = 0.6  # the server's idle timeout (contract: 120 s)
NET = Options(maintenance=False, telegram_inbound=False, idle_timeout_s=IDLE_S)
IDLE_CLOSE = b"\x0f\xa2Idle timeout"  # close code 4002 + reason, as the server puts it on the wire
TIMEOUT = 5.0


# -- observation ---------------------------------------------------------------------------------


class Events:
    """The server's event bus as a list, with a wait that wakes on every new event."""

    def __init__(self, harness: Harness) -> None:
        self.items: list[dict[str, Any]] = []
        self._changed = asyncio.Event()
        harness.app[keys.EVENTS].add_listener(self._on_event)

    def _on_event(self, event: dict[str, Any]) -> None:
        self.items.append(event)
        self._changed.set()
        self._changed = asyncio.Event()

    def of(self, kind: str, **match: Any) -> list[dict[str, Any]]:
        return [
            e["data"]
            for e in self.items
            if e["kind"] == kind and all(e["data"].get(k) == v for k, v in match.items())
        ]

    async def wait_for(self, predicate: Callable[[], bool], timeout: float = TIMEOUT) -> None:
        try:
            async with asyncio.timeout(timeout):
                while not predicate():
                    await self._changed.wait()
        except TimeoutError:
            kinds = [(e["kind"], e["data"]) for e in self.items[-15:]]
            raise AssertionError(
                f"event condition not met within {timeout}s; last: {kinds}"
            ) from None


def errors_in(caplog: pytest.LogCaptureFixture) -> list[str]:
    """Every ERROR (or worse) record, and any record that carries a traceback."""
    return [
        f"{r.name}: {r.getMessage()}"
        for r in caplog.records
        if r.levelno >= logging.ERROR or r.exc_info is not None
    ]


# -- a CCR agent reduced to its wire behaviour -----------------------------------------------------


class RawAgent:
    """What the CCR daemons do on ``/ws``: subprotocols ``["ccr", key]``, ack every ``command``
    frame, execute each ``commandId`` once; reconnecting is left to the test. Keep-alive uses
    protocol-level pings (they count as frames for the server's idle timeout); application
    ``ping``/``pong`` is kept for :meth:`sync`."""

    def __init__(self, http: aiohttp.ClientSession, base_url: str, machine_id: str) -> None:
        self.http = http
        self.url = f"{base_url}/ws?machineId={machine_id}"
        self.machine_id = machine_id
        self.deliveries: Counter[str] = Counter()  # commandId -> command frames received
        self.executed: dict[str, str] = {}  # commandId -> text, at its first delivery
        self.closes: list[tuple[str, Any, Any]] = []  # how each connection ended
        self.connections = 0
        self.ended = True
        self._ws: aiohttp.ClientWebSocketResponse | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._pings = self._pongs = self._boots = 0
        self._changed = asyncio.Condition()

    async def connect(self) -> None:
        ws = await asyncio.wait_for(
            self.http.ws_connect(
                self.url,
                protocols=("ccr", API_KEY),
                timeout=aiohttp.ClientWSTimeout(ws_close=1.0),
            ),
            TIMEOUT,
        )
        self.connections += 1
        self._ws, self.ended = ws, False
        self._pings = self._pongs = self._boots = 0
        self._tasks = [asyncio.create_task(self._read(ws)), asyncio.create_task(self._beat(ws))]
        await self.wait_for(lambda: self._boots > 0 or self.ended)
        assert self._boots == 1, self.closes

    async def _read(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        try:
            while True:
                msg = await ws.receive()
                if msg.type is not WSMsgType.TEXT:
                    self.closes.append((msg.type.name, msg.data, msg.extra))
                    return
                frame = json.loads(msg.data)
                kind = frame.get("type")
                if kind == "boot":
                    self._boots += 1
                elif kind == "pong":
                    self._pongs += 1
                elif kind == "command":
                    command_id = frame["commandId"]
                    self.deliveries[command_id] += 1
                    self.executed.setdefault(command_id, frame["command"])
                    with contextlib.suppress(ConnectionError, RuntimeError):
                        await ws.send_str(json.dumps({"type": "ack", "commandId": command_id}))
                async with self._changed:
                    self._changed.notify_all()
        except Exception as exc:  # a reset surfaces as an exception on some paths
            self.closes.append(("exception", type(exc).__name__, None))
        finally:
            self.ended = True
            async with self._changed:
                self._changed.notify_all()

    async def _beat(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        """Protocol-level ping every 0.1 s (the CCR daemons ping every 30 s)."""
        while not ws.closed:
            await asyncio.sleep(0.1)  # a timer, not a wait for a condition
            try:
                await ws.ping()
            except (ConnectionError, RuntimeError):
                return

    async def wait_for(self, predicate: Callable[[], bool], timeout: float = TIMEOUT) -> None:
        async def check() -> None:
            async with self._changed:
                await self._changed.wait_for(predicate)

        await asyncio.wait_for(check(), timeout)

    async def sync(self) -> bool:
        """Ping and wait for its pong: every frame the server sent before it has been read and
        acked. False when the connection ended first."""
        if self._ws is None or self.ended:
            return False
        self._pings += 1
        n = self._pings
        try:
            await self._ws.send_str('{"type":"ping"}')
        except (ConnectionError, RuntimeError):
            return False
        await self.wait_for(lambda: self._pongs >= n or self.ended)
        return self._pongs >= n

    async def wait_ended(self) -> None:
        await self.wait_for(lambda: self.ended)

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._ws is not None and not self._ws.closed:
            await self._ws.close()


async def quiesce(agents: list[RawAgent]) -> None:
    """Ping-sync every connected agent until a whole round brings no new delivery."""
    while True:
        before = sum(sum(a.deliveries.values()) for a in agents)
        for agent in agents:
            await agent.sync()
        if sum(sum(a.deliveries.values()) for a in agents) == before:
            return


async def converge(
    h: Harness, agents: list[RawAgent], reconnect: Callable[[], Awaitable[None]]
) -> int:
    """Drive the queue until every command is acked; returns how long that took on the manual
    clock. Only time moves the queue on its own (a failed send's backoff, the 60 s re-send of an
    unacked ``sent`` row), so jump straight to the next due row and run a maintenance tick."""
    waited = 0
    for _ in range(20):
        await reconnect()  # a connection lost meanwhile (a slow machine): as agents do
        await quiesce(agents)
        rows = await h.commands()
        unacked = [r for r in rows if r["status"] != "acked"]
        if not unacked:
            return waited
        step = max(min(r["next_retry_at"] for r in unacked) - h.clock.now_ms(), 0)
        h.clock.advance(step)
        waited += step
        async with asyncio.timeout(TIMEOUT):
            await h.app[keys.MAINTENANCE].tick()
    raise AssertionError(f"commands never acked: {[(r['command'], r['status']) for r in unacked]}")


def resent_at_once(waited_ms: int) -> None:
    """A reconnect re-sends unacked commands at once (§4.1 step 3): at most a failed send's
    backoff (§6.4) is waited, never the 60 s re-send timer of a ``sent`` row."""
    assert waited_ms < limits.RESEND_INTERVAL_MS, waited_ms


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


# -- raw CCR agents -----------------------------------------------------------------------------


async def test_resets_mid_frame_cuts_and_half_open_lose_and_duplicate_nothing(
    start_server, http: aiohttp.ClientSession, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    h = await start_server(options=NET)
    events = Events(h)
    machines = ("m1", "m2")
    mids: dict[str, int] = {}
    for machine in machines:
        await h.register(f"s-{machine}", machine)
        mids[machine] = (await h.notify(f"s-{machine}", f"hello {machine}"))["messageId"]
    sent: dict[str, list[str]] = {m: [] for m in machines}
    numbers = itertools.count(1)
    faults: Counter[str] = Counter()

    async def reply(machine: str) -> None:
        text = f"{machine} command {next(numbers)}"
        sent[machine].append(text)
        update = h.fake.make_message(CHAT, text, reply_to=mids[machine])
        resp = await h.webhook(update)
        assert resp.status == 200, await resp.text()

    async def reply_all() -> None:
        for machine in machines:
            await reply(machine)

    async with TcpProxy(h.client.server.port) as proxy:
        agents = {m: RawAgent(http, proxy.url, m) for m in machines}
        everyone = list(agents.values())

        links: dict[str, Link] = {}  # each agent's current connection through the proxy

        async def reconnect() -> None:
            for machine, agent in agents.items():
                if agent.ended:
                    await agent.connect()
                    links[machine] = proxy.newest  # connects are one at a time

        try:
            await reconnect()
            await reply_all()
            await converge(h, everyone, reconnect)

            # 1-2. Every connection reset (RST), then closed (FIN); replies race the server's
            # noticing: sent into a dead socket, or queued as offline.
            for how in ("rst", "fin"):
                assert proxy.cut(how) == 2
                faults[f"cut_{how}"] += 2
                await reply_all()
                for agent in everyone:
                    await agent.wait_ended()
                await reply_all()
                proxy.refuse()  # the first reconnect finds the way blocked
                with pytest.raises((aiohttp.ClientError, ConnectionError)):
                    await agents["m1"].connect()
                proxy.refuse(False)
                await reconnect()
                resent_at_once(await converge(h, everyone, reconnect))

            # 3-4. A command frame cut after a few bytes (reset / close): the agent reads half a
            # frame, then the connection ends.
            for nbytes, how in ((9, "rst"), (40, "fin")):
                tripped = proxy.cut_after(nbytes, DOWN, how, link=links["m1"])
                await reply("m1")
                await asyncio.wait_for(tripped.wait(), TIMEOUT)
                faults["mid_frame_down"] += 1
                await agents["m1"].wait_ended()
                await reply_all()
                await reconnect()
                resent_at_once(await converge(h, everyone, reconnect))

            # 5-6. The agent's ack cut after a few bytes: the server reads half a frame.
            for nbytes, how in ((3, "rst"), (20, "fin")):
                tripped = proxy.cut_after(nbytes, UP, how, link=links["m2"])
                await reply("m2")
                await asyncio.wait_for(tripped.wait(), TIMEOUT)
                faults["mid_frame_up"] += 1
                await agents["m2"].wait_ended()
                await reply_all()
                await reconnect()
                resent_at_once(await converge(h, everyone, reconnect))

            # A reconnect cut in the middle of its handshake: the upgrade request (the server
            # reads half a request), then the 101 answer (the server has accepted, the agent
            # reads half an answer).
            for nbytes, direction in ((40, UP), (30, DOWN)):
                assert proxy.cut("rst") == 2
                faults["cut_rst"] += 2
                for agent in everyone:
                    await agent.wait_ended()
                tripped = proxy.cut_after(nbytes, direction, "rst")
                # aiohttp may retry a GET whose fresh connection broke: the attempt fails or
                # succeeds on a second connection; either way the server saw half a handshake.
                with contextlib.suppress(aiohttp.ClientError, ConnectionError):
                    await agents["m1"].connect()
                    links["m1"] = proxy.newest
                await asyncio.wait_for(tripped.wait(), TIMEOUT)
                faults["mid_handshake"] += 1
                await reply_all()
                await reconnect()
                resent_at_once(await converge(h, everyone, reconnect))

            # 7. Half-open: nothing moves, nothing closes. Commands go into the void; the
            # server's idle timeout closes both connections (the close frames are on the wire,
            # held by the frozen proxy) and later replies wait as offline.
            proxy.freeze()
            faults["freeze"] += 2
            await reply_all()
            await proxy.wait_held(lambda p: p.held(DOWN).count(IDLE_CLOSE) == 2, IDLE_S + TIMEOUT)
            assert not any(h.hub.is_connected(m) for m in machines)
            await reply_all()
            proxy.resume()
            for agent in everyone:
                await agent.wait_ended()
            await reconnect()
            resent_at_once(await converge(h, everyone, reconnect))
            rows = await h.commands()
        finally:
            for agent in everyone:
                await agent.stop()

    # Every reply is one command, acked, executed once by the machine it was meant for.
    assert len(rows) == sum(len(texts) for texts in sent.values())
    assert len({r["update_id"] for r in rows}) == len(rows)
    lost, duplicates = 0, 0
    for machine, agent in agents.items():
        mine = {r["command_id"]: r["command"] for r in rows if r["machine_id"] == machine}
        assert sorted(mine.values()) == sorted(sent[machine])
        assert agent.executed == mine  # same ids, same texts: nothing missing, nothing extra
        lost += len(set(mine) - set(agent.executed))
        duplicates += len(agent.executed) - len(set(agent.executed.values()))
    assert lost == 0 and duplicates == 0
    # The half-open connections were closed by the server's idle timeout.
    for machine in machines:
        closes = {
            (d["code"], d["reason"]) for d in events.of("machine.disconnected", machineId=machine)
        }
        assert (4002, "Idle timeout") in closes, closes
        assert ("CLOSE", 4002, "Idle timeout") in agents[machine].closes, agents[machine].closes
    assert errors_in(caplog) == []
    redelivered = sum(sum(a.deliveries.values()) - len(a.executed) for a in everyone)
    record(
        "net_faults",
        cuts=faults["cut_rst"] + faults["cut_fin"],
        mid_frame_cuts=faults["mid_frame_down"] + faults["mid_frame_up"],
        mid_handshake_cuts=faults["mid_handshake"],
        freezes=faults["freeze"],
        commands=len(rows),
        redelivered_same_id=redelivered,
        lost=lost,
        duplicates=duplicates,
    )


# -- the real ccr-box agent ----------------------------------------------------------------------

MACHINE = "box-1"
# The agent's keep-alive compressed like the server's idle timeout (contract: 30 s / 90 s).
AGENT_TIMING = {
    "ping_interval_s": 0.1,
    "pong_timeout_s": IDLE_S,
    "close_timeout_s": 0.2,
    "handshake_timeout_s": IDLE_S,
}


class FastClock:
    """The wall clock running ``speed`` times faster: the server's own timers (a failed send's
    1 s backoff, the 60 s re-send) pass in milliseconds, in the order they would in production,
    while its maintenance loop ticks every few milliseconds."""

    def __init__(self, speed: int = 50) -> None:
        self.speed = speed
        self._t0 = time.monotonic()

    def now_ms(self) -> int:
        return 1_700_000_000_000 + int((time.monotonic() - self._t0) * 1000 * self.speed)


class LogWatch(logging.Handler):
    """Log records of ``ccr_box`` as they happen, with a wait that wakes on each new one."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []
        self._loop = asyncio.get_running_loop()
        self._changed = asyncio.Event()

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)
        self._loop.call_soon_threadsafe(self._wake)

    def _wake(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()

    def count(self, logger: str, text: str) -> int:
        return sum(1 for r in self.records if r.name == logger and text in r.getMessage())

    async def wait_for(self, predicate: Callable[[], bool], timeout: float = TIMEOUT) -> None:
        try:
            async with asyncio.timeout(timeout):
                while not predicate():
                    await self._changed.wait()
        except TimeoutError:
            raise AssertionError(f"log condition not met within {timeout}s") from None


@pytest.fixture
async def logwatch() -> AsyncIterator[LogWatch]:
    watch = LogWatch()
    logger = logging.getLogger("ccr_box")
    logger.addHandler(watch)
    try:
        yield watch
    finally:
        logger.removeHandler(watch)


@pytest.fixture
def recorder(tmp_path: Path) -> Iterator[Recorder]:
    rec = Recorder(tmp_path / "rec")
    yield rec
    rec.kill_leftovers()


@pytest.fixture
async def agents(tmp_path: Path) -> AsyncIterator[Agents]:
    factory = Agents(tmp_path / "agents")
    yield factory
    await factory.close()


async def test_agent_runner_types_each_command_once_through_cuts_and_half_open(
    start_server,
    tmp_path: Path,
    agents: Agents,
    recorder: Recorder,
    logwatch: LogWatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO)
    options = Options(
        maintenance=True, maintenance_interval_s=0.01, telegram_inbound=False, idle_timeout_s=IDLE_S
    )
    h = await start_server(clock=FastClock(), options=options)
    events = Events(h)
    await h.register("sess-1", MACHINE)
    mid = (await h.notify("sess-1", "Claude stopped. Continue?"))["messageId"]
    agent_dir = tmp_path / "agent-data"
    bind(agent_dir, "sess-1", label="proj")
    texts: list[str] = []
    faults: Counter[str] = Counter()

    async def reply() -> None:
        text = f"typed {len(texts) + 1}"
        texts.append(text)
        resp = await h.webhook(h.fake.make_message(CHAT, text, reply_to=mid))
        assert resp.status == 200, await resp.text()

    def results() -> int:
        return len(events.of("command.result", machineId=MACHINE, result="ok"))

    async def all_typed() -> None:
        """Each reply typed and its result reported (the agent reports after typing)."""
        await events.wait_for(lambda: results() >= len(texts), timeout=3 * TIMEOUT)

    async with TcpProxy(h.client.server.port) as proxy:
        run = await agents.start(
            proxy.url,
            recorder.injector(),
            machine_id=MACHINE,
            data_dir=agent_dir,
            **AGENT_TIMING,
        )
        await reply()
        await all_typed()

        # Reset with the next commands on their way: some go into the dead socket.
        proxy.cut("rst")
        faults["cuts"] += 1
        await reply()
        await reply()
        await all_typed()

        # Half a frame each way, then the connection ends.
        for direction in (DOWN, UP):
            tripped = proxy.cut_after(5, direction, "rst")
            await reply()
            await asyncio.wait_for(tripped.wait(), TIMEOUT)
            faults["mid_frame_cuts"] += 1
            await all_typed()

        # Half-open: the server's idle timeout and the agent's pong timeout each notice it
        # while nothing moves; a command sent meanwhile is typed after the network returns.
        pong_timeouts = logwatch.count("ccr_box.agent", "no pong for")
        proxy.freeze()
        faults["freezes"] += 1
        await reply()
        await proxy.wait_held(lambda p: IDLE_CLOSE in p.held(DOWN), IDLE_S + TIMEOUT)
        await logwatch.wait_for(
            lambda: logwatch.count("ccr_box.agent", "no pong for") > pong_timeouts
        )
        proxy.resume()
        await all_typed()
        await reply()  # and the line is healthy again
        await all_typed()
        inbox = run.inbox()
        await run.stop()

    rows = await h.commands()
    assert sorted(r["command"] for r in rows) == sorted(texts)
    assert all(r["status"] == "acked" and r["result"] == "ok" for r in rows), rows
    # Typed exactly once each, whatever was re-delivered.
    typed = Counter(recorder.typed("sess-1"))
    assert typed == Counter(texts), typed
    assert {cid: row["status"] for cid, row in inbox.items()} == {
        r["command_id"]: "done" for r in rows
    }
    assert (4002, "Idle timeout") in {
        (d["code"], d["reason"]) for d in events.of("machine.disconnected", machineId=MACHINE)
    }
    assert errors_in(caplog) == []
    record(
        "net_faults",
        agent="ccr-box",
        cuts=faults["cuts"],
        mid_frame_cuts=faults["mid_frame_cuts"],
        freezes=faults["freezes"],
        commands=len(rows),
        connections=proxy.accepted,
        lost=len(set(texts) - set(typed)),
        duplicates=sum(n - 1 for n in typed.values()),
    )
