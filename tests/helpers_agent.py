"""Helpers for the agent tests: a recording inject command, a restartable server, agent runs, a fake
WebSocket server that plays the server's role frame by frame, and bounded polling.

The recording inject command (``RECORDER``) is what ``CommandInjector`` runs: it appends one JSON line
``{"ev": "begin"|"end", "sid", "text", "pid"}`` when it starts and when it finishes typing. A text
``wait:<gate> ...`` blocks until the file ``<gates>/<gate>`` exists (the test opens the gate), a text
``fail:...`` exits 3 with ``boom`` on stderr. So "typed" = an ``end`` line, "started" = a ``begin`` line.
"""

from __future__ import annotations

import ast
import asyncio
import base64
import contextlib
import hashlib
import json
import os
import shlex
import signal
import socket
import sqlite3
import subprocess
import sys
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiohttp import WSMsgType, web
from aiohttp.test_utils import TestClient, TestServer

from ccr_box.agent.inject import CommandInjector
from ccr_box.agent.runner import Agent, AgentSettings
from ccr_box.agent.store import AGENT_DB, AgentStore, AsyncStore
from ccr_box.clock import ManualClock
from ccr_box.config import Config
from ccr_box.server.app import Options, make_app
from tests.conftest import API_KEY, CHAT, Harness
from tests.helpers_wait import until

RECORDER = r"""
import json, os, sys, time
out, gates = sys.argv[1], sys.argv[2]
text = sys.stdin.read()
sid = os.environ.get("CCR_SESSION_ID", "")

def record(ev):
    line = json.dumps({"ev": ev, "sid": sid, "text": text, "pid": os.getpid()}) + "\n"
    with open(out, "a", encoding="utf-8") as f:
        f.write(line)

record("begin")
if text.startswith("wait:"):
    gate = os.path.join(gates, text[5:].split()[0])
    deadline = time.monotonic() + 20
    while not os.path.exists(gate):
        if time.monotonic() > deadline:
            sys.exit(9)
        time.sleep(0.005)
if "fail:" in text:
    sys.stderr.write("boom")
    sys.exit(3)
record("end")
"""


class Recorder:
    """The recording inject command and what it saw."""

    def __init__(self, root: Path) -> None:
        root.mkdir(parents=True, exist_ok=True)
        self.script = root / "recorder.py"
        self.script.write_text(RECORDER)
        self.out = root / "typed.jsonl"
        self.gates = root / "gates"
        self.gates.mkdir(exist_ok=True)

    @property
    def argv(self) -> list[str]:
        return [sys.executable, str(self.script), str(self.out), str(self.gates)]

    def injector(self) -> CommandInjector:
        return CommandInjector(self.argv)

    def events(self) -> list[dict[str, Any]]:
        if not self.out.exists():
            return []
        return [json.loads(x) for x in self.out.read_text(encoding="utf-8").splitlines()]

    def begun(self, sid: str | None = None) -> list[str]:
        return [e["text"] for e in self.events() if e["ev"] == "begin" and sid in (None, e["sid"])]

    def typed(self, sid: str | None = None) -> list[str]:
        return [e["text"] for e in self.events() if e["ev"] == "end" and sid in (None, e["sid"])]

    def open_gate(self, name: str) -> None:
        (self.gates / name).touch()

    async def wait_begun(self, text: str, timeout: float = 5.0) -> dict[str, Any]:
        def found():
            return next(
                (e for e in self.events() if e["ev"] == "begin" and e["text"] == text), None
            )

        return await until(found, f"injection of {text!r} started", timeout=timeout)

    async def wait_typed(self, text: str, timeout: float = 5.0) -> None:
        await until(lambda: text in self.typed(), f"{text!r} typed", timeout=timeout)

    def kill_leftovers(self) -> None:
        """Inject commands orphaned by a SIGKILLed agent (they run in their own session)."""
        ended = {e["pid"] for e in self.events() if e["ev"] == "end"}
        for event in self.events():
            if event["ev"] == "begin" and event["pid"] not in ended:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(event["pid"], signal.SIGKILL)


def free_port() -> int:
    """A port nothing listens on (bound and released; the agent gets connection refused)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ServerRunner:
    """A real ccr-box app that can be stopped and started again on the same port and data dir,
    so a running agent sees a server restart at the URL it knows."""

    def __init__(self, config: Config, fake: Any, port: int | None = None) -> None:
        self.config = config
        self.fake = fake
        self.clock = ManualClock()
        self.port = port or free_port()
        self.harness: Harness | None = None
        self._clients: list[TestClient] = []

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self) -> Harness:
        app = make_app(
            self.config,
            clock=self.clock,
            options=Options(maintenance=False, telegram_inbound=False),
        )
        client = TestClient(TestServer(app, host="127.0.0.1", port=self.port))
        await client.start_server()
        self._clients.append(client)
        self.harness = Harness(client, self.fake, self.clock)
        return self.harness

    async def stop(self) -> None:
        if self.harness is not None:
            await self.harness.client.close()
            self.harness = None

    async def close(self) -> None:
        for client in self._clients:
            await client.close()


class Sleeper:
    """An injectable ``sleep`` for the agent's reconnect waits: records each delay, then waits for a
    permit from the test (``allow``) — or passes at once while ``free`` is set."""

    def __init__(self, free: bool = True) -> None:
        self.delays: list[float] = []
        self.free = free
        self._permits = 0
        self._changed = asyncio.Condition()

    async def __call__(self, delay: float) -> None:
        async with self._changed:
            self.delays.append(delay)
            self._changed.notify_all()
            await self._changed.wait_for(lambda: self.free or self._permits > 0)
            if not self.free:
                self._permits -= 1
        await asyncio.sleep(0)

    async def allow(self, n: int = 1) -> None:
        async with self._changed:
            self._permits += n
            self._changed.notify_all()

    async def release(self) -> None:
        async with self._changed:
            self.free = True
            self._changed.notify_all()

    async def wait_count(self, n: int, timeout: float = 5.0) -> list[float]:
        async def enough() -> None:
            async with self._changed:
                await self._changed.wait_for(lambda: len(self.delays) >= n)

        await asyncio.wait_for(enough(), timeout)
        return self.delays


@dataclass
class AgentRun:
    agent: Agent
    store: AsyncStore
    task: asyncio.Task[None]
    data_dir: Path
    sleeper: Sleeper

    def inbox(self) -> dict[str, dict[str, Any]]:
        """The agent's inbox rows by commandId, read from its SQLite file."""
        return read_inbox(self.data_dir)

    async def stop(self) -> None:
        if not self.task.done():
            self.task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self.task
        await self.store.close()


def read_inbox(data_dir: Path) -> dict[str, dict[str, Any]]:
    path = data_dir / AGENT_DB
    if not path.exists():
        return {}
    conn = sqlite3.connect(str(path), timeout=5)
    conn.row_factory = sqlite3.Row
    try:
        return {r["command_id"]: dict(r) for r in conn.execute("SELECT * FROM inbox")}
    finally:
        conn.close()


def bind(
    data_dir: Path,
    session_id: str,
    pane: str = "%1",
    socket_path: str | None = None,
    label: str | None = None,
) -> None:
    """A local session record, as the SessionStart hook writes it."""
    store = AgentStore.in_dir(data_dir)
    try:
        store.bind_session(session_id, pane, socket_path, "/home/u/proj", label)
    finally:
        store.close()


@dataclass
class Agents:
    """Factory of in-process agents; everything started is stopped at teardown."""

    root: Path
    runs: list[AgentRun] = field(default_factory=list)

    async def start(
        self,
        url: str,
        injector: Any,
        *,
        machine_id: str = "box-1",
        data_dir: Path | None = None,
        sleeper: Sleeper | None = None,
        rand: Callable[[], float] = lambda: 0.5,
        **settings: Any,
    ) -> AgentRun:
        data_dir = data_dir or self.root / f"agent{len(self.runs)}"
        store = await AsyncStore(data_dir / AGENT_DB).open()
        sleeper = sleeper or Sleeper()
        agent = Agent(
            AgentSettings(server_url=url, api_key=API_KEY, machine_id=machine_id, **settings),
            store,
            injector,
            sleep=sleeper,
            rand=rand,
        )
        run = AgentRun(agent, store, asyncio.create_task(agent.run()), data_dir, sleeper)
        self.runs.append(run)
        return run

    async def close(self) -> None:
        for run in reversed(self.runs):
            await run.stop()


async def registered(harness: Harness, session_id: str, machine_id: str) -> bool:
    resp = await harness.client.get("/sessions", headers=harness.auth())
    rows = await resp.json()
    return any(r["session_id"] == session_id and r["machine_id"] == machine_id for r in rows)


async def reply(harness: Harness, message_id: int, text: str) -> None:
    """The user replies to a notification in Telegram (webhook update)."""
    fake = harness.fake
    resp = await harness.webhook(fake.make_message(CHAT, text, reply_to=message_id))
    assert resp.status == 200, await resp.text()


async def rows_by_text(harness: Harness) -> dict[str, dict[str, Any]]:
    return {r["command"]: r for r in await harness.commands()}


async def wait_row(
    harness: Harness, text: str, predicate: Callable[[dict[str, Any]], bool], timeout: float = 5.0
) -> dict[str, Any]:
    async def check() -> dict[str, Any] | None:
        row = (await rows_by_text(harness)).get(text)
        return row if row is not None and predicate(row) else None

    return await until(check, f"server row {text!r}", timeout=timeout)


# --- a fake server: the server's role on /ws, frame by frame ------------------------------------


@dataclass
class FakeConn:
    ws: web.WebSocketResponse
    query: dict[str, str]
    protocols: str
    received: list[Any] = field(default_factory=list)  # parsed JSON frames from the agent
    close: tuple[int | None, str] | None = None  # (code, reason) the agent closed with
    ended: asyncio.Event = field(default_factory=asyncio.Event)
    arrived: asyncio.Event = field(default_factory=asyncio.Event)

    async def send(self, frame: dict[str, Any]) -> None:
        await self.ws.send_str(json.dumps(frame, separators=(",", ":")))

    async def wait_for(
        self, predicate: Callable[[list[Any]], Any], timeout: float = 5.0
    ) -> list[Any]:
        async def scan() -> list[Any]:
            while not predicate(self.received):
                self.arrived.clear()
                if self.ended.is_set():
                    raise AssertionError(f"connection ended; frames: {self.received}")
                await self.arrived.wait()
            return self.received

        return await asyncio.wait_for(scan(), timeout)


class FakeServer:
    """Plays ccr-box's server for one agent: accepts /ws, lets the test send frames, records what
    the agent sends and how it closes; answers the HTTP routes the agent calls with 200."""

    def __init__(self, *, boot: str | None = "0badf00d", answer_pings: bool = True) -> None:
        self.boot = boot
        self.answer_pings = answer_pings
        self.refuse = 0  # answer the next N upgrades with 503
        self.on_frame: Callable[[dict[str, Any]], None] | None = None  # runs as a frame arrives
        self.conns: list[FakeConn] = []
        self.http: list[tuple[str, Any]] = []
        self._new_conn = asyncio.Condition()
        app = web.Application()
        app.router.add_get("/ws", self._ws)
        app.router.add_post("/sessions/register", self._http)
        app.router.add_post("/notifications/send", self._http)
        self.client = TestClient(TestServer(app, host="127.0.0.1", port=0))

    @property
    def url(self) -> str:
        return str(self.client.make_url("")).rstrip("/")

    async def __aenter__(self) -> FakeServer:
        await self.client.start_server()
        return self

    async def __aexit__(self, *exc: object) -> None:
        for conn in self.conns:
            if not conn.ws.closed:
                await conn.ws.close(code=1001, message=b"Server shutting down")
        await self.client.close()

    async def _http(self, request: web.Request) -> web.Response:
        self.http.append((request.path, await request.json()))
        return web.json_response({"ok": True, "messageId": 1, "token": "t"})

    async def _ws(self, request: web.Request) -> web.StreamResponse:
        if self.refuse > 0:
            self.refuse -= 1
            return web.Response(status=503, text="down")
        ws = web.WebSocketResponse(protocols=("ccr",))
        await ws.prepare(request)
        conn = FakeConn(ws, dict(request.query), request.headers.get("Sec-WebSocket-Protocol", ""))
        async with self._new_conn:
            self.conns.append(conn)
            self._new_conn.notify_all()
        if self.boot is not None:
            await conn.send({"type": "boot", "bootId": self.boot})
        try:
            while True:
                msg = await ws.receive()
                if msg.type == WSMsgType.TEXT:
                    frame = json.loads(msg.data)
                    if self.on_frame is not None:
                        self.on_frame(frame)
                    conn.received.append(frame)
                    conn.arrived.set()
                    if frame.get("type") == "ping" and self.answer_pings:
                        await ws.send_str('{"type":"pong"}')
                elif msg.type == WSMsgType.CLOSE:
                    conn.close = (msg.data, msg.extra or "")
                    break
                else:  # CLOSING / CLOSED / ERROR: the agent vanished without a close frame
                    conn.close = (None, msg.type.name)
                    break
        finally:
            conn.ended.set()
            conn.arrived.set()
        return ws

    async def connection(self, n: int, timeout: float = 5.0) -> FakeConn:
        """The n-th connection (0-based), waiting for it to arrive."""

        async def wait() -> FakeConn:
            async with self._new_conn:
                await self._new_conn.wait_for(lambda: len(self.conns) > n)
                return self.conns[n]

        return await asyncio.wait_for(wait(), timeout)


@contextlib.asynccontextmanager
async def fake_server(**kw: Any) -> AsyncIterator[FakeServer]:
    async with FakeServer(**kw) as server:
        yield server


def command_frame(command_id: str, session_id: str, command: str, chat_id: Any = CHAT) -> dict:
    return {
        "type": "command",
        "commandId": command_id,
        "sessionId": session_id,
        "command": command,
        "chatId": chat_id,
    }


# --- a real tmux pane on a private socket ---------------------------------------------------------

PANE_READER = r"""
import sys
out = sys.argv[1]
open(out + ".ready", "w").close()
for line in sys.stdin:
    with open(out, "a", encoding="utf-8") as f:
        f.write(repr(line.rstrip("\n")) + "\n")
"""


class TmuxPane:
    """A private tmux server whose only pane runs a line recorder (canonical tty: C-u erases)."""

    def __init__(self, socket_path: str, out: Path) -> None:
        self.socket = socket_path
        self.out = out
        self.id = ""

    def tmux(self, *args: str) -> str:
        return subprocess.run(
            ["tmux", "-S", self.socket, *args], check=True, capture_output=True, text=True
        ).stdout.strip()

    def lines(self) -> list[str]:
        if not self.out.exists():
            return []
        return [ast.literal_eval(x) for x in self.out.read_text(encoding="utf-8").splitlines()]

    @classmethod
    async def start(cls, socket_dir: str, root: Path) -> TmuxPane:
        reader = root / "pane_reader.py"
        reader.write_text(PANE_READER)
        pane = cls(os.path.join(socket_dir, "s"), root / "pane.txt")
        argv = [sys.executable, str(reader), str(pane.out)]
        new_session = ("-f", "/dev/null", "new-session", "-d", "-s", "t", "-x", "200", "-y", "50")
        await asyncio.to_thread(
            subprocess.run,
            ["tmux", "-S", pane.socket, *new_session, shlex.join(argv)],
            check=True,
            env={k: v for k, v in os.environ.items() if k != "TMUX"},
        )
        pane.id = await asyncio.to_thread(
            pane.tmux, "display-message", "-p", "-t", "t", "#{pane_id}"
        )
        await until(lambda: Path(str(pane.out) + ".ready").exists(), "pane ready")
        return pane

    def kill(self) -> None:
        subprocess.run(["tmux", "-S", self.socket, "kill-server"], capture_output=True, check=False)


# --- a bare WebSocket server that accepts, sends boot, and then never answers anything ------------


class DeafServer:
    """Completes the upgrade, sends ``boot``, then only reads: no pong, no close reply. Records the
    agent's frames as (opcode, payload) and when the agent dropped the TCP connection."""

    GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"

    def __init__(self) -> None:
        self.frames: list[tuple[int, bytes]] = []
        self.opened_at: float | None = None
        self.dropped_at: float | None = None
        self.dropped = asyncio.Event()
        self.connections = 0
        self._server: asyncio.Server | None = None

    @property
    def url(self) -> str:
        assert self._server is not None
        port = self._server.sockets[0].getsockname()[1]
        return f"http://127.0.0.1:{port}"

    async def __aenter__(self) -> DeafServer:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        if self.connections > 1:  # only the first connection is observed
            writer.close()
            return
        head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1")
        key = next(
            line.split(":", 1)[1].strip()
            for line in head.split("\r\n")
            if line.lower().startswith("sec-websocket-key:")
        )
        accept = base64.b64encode(hashlib.sha1((key + self.GUID).encode()).digest()).decode()
        writer.write(
            (
                "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                f"Sec-WebSocket-Accept: {accept}\r\nSec-WebSocket-Protocol: ccr\r\n\r\n"
            ).encode()
        )
        boot = b'{"type":"boot","bootId":"deadbeef"}'
        writer.write(bytes([0x81, len(boot)]) + boot)
        await writer.drain()
        self.opened_at = asyncio.get_running_loop().time()
        try:
            while True:
                b0, b1 = await reader.readexactly(2)
                n = b1 & 0x7F
                if n == 126:
                    n = int.from_bytes(await reader.readexactly(2), "big")
                elif n == 127:
                    n = int.from_bytes(await reader.readexactly(8), "big")
                mask = await reader.readexactly(4) if b1 & 0x80 else b"\0\0\0\0"
                data = await reader.readexactly(n)
                payload = bytes(b ^ mask[i % 4] for i, b in enumerate(data))
                self.frames.append((b0 & 0x0F, payload))
        except (asyncio.IncompleteReadError, ConnectionError):
            self.dropped_at = asyncio.get_running_loop().time()
            self.dropped.set()
        finally:
            writer.close()
