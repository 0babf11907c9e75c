"""Helpers for the chaos suites (tests/test_chaos_server.py, tests/test_chaos_agents.py).

Everything here drives real processes and real sockets on 127.0.0.1:

- :class:`Changes`: one "something happened" signal; waits are on conditions, never on time.
- :class:`ServerCluster`: a real ``ccr-box up`` child that is SIGKILLed and started again on the
  same data dir (port 0, so each generation has a new URL: clients ask the cluster where it is).
- :class:`RawClient` / :class:`ModelAgent`: an agent speaking the wire protocol (§4) over a bare
  socket, so it can abort the TCP connection, close cleanly, be replaced, vanish before acking.
  It behaves as a correct agent must (§11.2): it stores ("types") each new ``commandId`` once and
  acks every command frame; what it records is what the server delivered.
- :class:`ShellRecorder`: a fast inject command for real ``ccr-box agent`` processes (a tiny
  ``sh`` script: one fork instead of a Python start per command).
- :func:`read_db`: the server's database, read-only, after the server has stopped.

Kill moments, session choices, reply forms and chaos actions come from one ``random.Random``
seeded by :func:`chaos_seed` (``CCR_BOX_CHAOS_SEED`` to replay a run).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import random
import re
import signal
import sqlite3
import struct
import time
from collections import Counter, defaultdict
from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import aiohttp

from ccr_box.db import database_path
from tests.conftest import API_KEY, CHAT, PATH_SECRET, WEBHOOK_SECRET
from tests.figures import soak
from tests.helpers_proc import Proc, clean_env
from tests.helpers_ws import masked_frame

SEED_ENV = "CCR_BOX_CHAOS_SEED"
# A command text is "c<seq> <sessionId>" (optionally followed by words): seq is unique per run.
COMMAND_TEXT = re.compile(r"^c(\d+) (\S+)")
AUTH = {"Authorization": f"Bearer {API_KEY}"}

OP_TEXT, OP_CLOSE, OP_PING, OP_PONG = 0x1, 0x8, 0x9, 0xA


def chaos_seed() -> int:
    """The run's seed: ``CCR_BOX_CHAOS_SEED`` when set, else a fresh one; printed either way."""
    raw = os.environ.get(SEED_ENV, "").strip()
    seed = int(raw) if raw else random.SystemRandom().randrange(1 << 32)
    print(f"chaos seed {seed} (replay: {SEED_ENV}={seed}{' CCR_BOX_SOAK=1' if soak() else ''})")
    return seed


def parse_seq(text: str) -> tuple[int, str] | None:
    match = COMMAND_TEXT.match(text)
    return (int(match.group(1)), match.group(2)) if match else None


class Changes:
    """A broadcast signal: ``notify()`` wakes every ``wait_for`` so it re-checks its predicate."""

    def __init__(self) -> None:
        self._event = asyncio.Event()

    def notify(self) -> None:
        self._event.set()
        self._event = asyncio.Event()

    async def wait_for(self, predicate: Callable[[], Any], timeout: float, what: str) -> None:
        try:
            async with asyncio.timeout(timeout):
                while not predicate():
                    await self._event.wait()
        except TimeoutError:
            raise AssertionError(f"{what}: not reached within {timeout:g}s") from None


@contextlib.asynccontextmanager
async def within(seconds: float, state: Callable[[], Any]) -> AsyncIterator[None]:
    """A bounded phase of a run; running out of time fails with the run's state, not a bare
    ``TimeoutError``."""
    try:
        async with asyncio.timeout(seconds):
            yield
    except TimeoutError:
        raise AssertionError(f"not finished within {seconds:g}s; state: {state()}") from None


async def poll_until(predicate: Callable[[], Any], timeout: float, what: str) -> Any:
    """For states only a file shows (an agent's inbox, an inject log): re-check every 20 ms."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if loop.time() > deadline:
            raise AssertionError(f"{what}: not reached within {timeout:g}s")
        await asyncio.sleep(0.02)


# --- the server -----------------------------------------------------------------------------------


def server_env(tmp_path: Path, fake: Any, mode: str) -> dict[str, str]:
    return clean_env(
        CCR_BOX_CONFIG=str(tmp_path / "config.toml"),
        CCR_BOX_DATA_DIR=str(tmp_path / "data"),
        CCR_API_KEY=API_KEY,
        TELEGRAM_BOT_TOKEN=fake.token,
        TELEGRAM_API_BASE=fake.base_url,
        TELEGRAM_MODE=mode,
        TELEGRAM_WEBHOOK_SECRET=WEBHOOK_SECRET,
        TELEGRAM_WEBHOOK_PATH_SECRET=PATH_SECRET,
        ALLOWED_CHAT_IDS=CHAT,
    )


class ServerCluster:
    """One ``ccr-box up`` at a time on one data dir. ``gen`` counts starts; ``base`` is None while
    the server is down, so a client that lost its connection knows whether to wait for the next
    generation (the cluster marks itself down *before* it sends SIGKILL)."""

    def __init__(self, procs: list[Proc], env: dict[str, str], changes: Changes) -> None:
        self.procs = procs
        self.env = env
        self.changes = changes
        self.proc: Proc | None = None
        self.base: str | None = None
        self.gen = 0
        self.kills = 0
        self.data_dir = Path(env["CCR_BOX_DATA_DIR"])

    async def start(self) -> str:
        proc = await Proc.start("up", "--headless", "--port", "0", env=self.env)
        self.procs.append(proc)
        port = await proc.listening_port(timeout=30)
        self.proc = proc
        self.base = f"http://127.0.0.1:{port}"
        self.gen += 1
        self.changes.notify()
        return self.base

    async def kill(self) -> None:
        proc = self.proc
        assert proc is not None
        self.base = None
        self.changes.notify()
        proc.send_signal(signal.SIGKILL)
        assert await proc.wait_exit(30) == -signal.SIGKILL
        self.kills += 1

    async def stop(self) -> None:
        """SIGTERM: a clean shutdown (exit 0), so the database can be read afterwards."""
        proc = self.proc
        assert proc is not None
        self.base = None
        self.changes.notify()
        proc.send_signal(signal.SIGTERM)
        code = await proc.wait_exit(30)
        assert code == 0, proc.stderr[-3000:]

    def is_up(self, gen: int) -> bool:
        return self.base is not None and self.gen == gen

    async def wait_up(self, after: int | None = None, timeout: float = 60.0) -> tuple[int, str]:
        """(gen, base) of a running server newer than generation ``after``."""

        def ready() -> bool:
            return self.base is not None and (after is None or self.gen > after)

        await self.changes.wait_for(ready, timeout, f"a server generation after {after}")
        assert self.base is not None
        return self.gen, self.base

    def stderr(self) -> str:
        return "\n".join(p.stderr for p in self.procs)


async def post_json(http: aiohttp.ClientSession, url: str, body: Any) -> tuple[int, Any]:
    async with http.post(url, data=json.dumps(body), headers=AUTH) as resp:
        return resp.status, await resp.json(content_type=None)


@dataclass(frozen=True)
class Session:
    """A Claude Code session as the server knows it, with the notification the user replies to."""

    session_id: str
    machine_id: str
    message_id: int
    token: str


async def open_session(
    http: aiohttp.ClientSession, base: str, session_id: str, machine_id: str, *, register: bool
) -> Session:
    if register:
        status, body = await post_json(
            http, f"{base}/sessions/register", {"sessionId": session_id, "machineId": machine_id}
        )
        assert status == 200, body
    status, sent = await post_json(
        http,
        f"{base}/notifications/send",
        {"sessionId": session_id, "chatId": CHAT, "text": f"{session_id} stopped. Reply?"},
    )
    assert status == 200 and sent["ok"] is True, sent
    return Session(session_id, machine_id, sent["messageId"], sent["token"])


def make_update(
    fake: Any, session: Session, seq: int, form: str, suffix: str = ""
) -> dict[str, Any]:
    """The user's reply: to the notification (``reply``) or as ``/cmd TOKEN text`` (``cmd``)."""
    text = f"c{seq} {session.session_id}{suffix}"
    if form == "cmd":
        return fake.make_message(CHAT, f"/cmd {session.token} {text}")
    return fake.make_message(CHAT, text, reply_to=session.message_id)


async def webhook_post(http: aiohttp.ClientSession, base: str, update: dict[str, Any]) -> int:
    async with http.post(
        f"{base}/webhook/telegram/{PATH_SECRET}",
        data=json.dumps(update),
        headers={"X-Telegram-Bot-Api-Secret-Token": WEBHOOK_SECRET},
    ) as resp:
        await resp.read()
        return resp.status


CONNECTION_ERRORS = (aiohttp.ClientError, OSError, asyncio.IncompleteReadError, TimeoutError)


@dataclass
class Stats:
    answered: int = 0
    post_errors: int = 0  # connection refused/reset while a server was being killed
    unexpected_errors: int = 0  # ... while the server was up
    non_200: Counter[int] = field(default_factory=Counter)
    reposts: int = 0
    twins: int = 0
    startup_kills: int = 0


async def deliver(
    http: aiohttp.ClientSession,
    cluster: ServerCluster,
    update: dict[str, Any],
    stats: Stats,
    *,
    twin: bool = False,
) -> None:
    """POST ``update`` until a server answers 200, as Telegram does. A running server that
    keeps refusing it (500: rolled back) fails the test instead of being retried forever."""
    after: int | None = None
    refused = 0
    while True:
        gen, base = await cluster.wait_up(after=after)
        copies = 2 if twin else 1
        outcomes = await asyncio.gather(
            *(webhook_post(http, base, update) for _ in range(copies)), return_exceptions=True
        )
        for outcome in outcomes:
            if isinstance(outcome, BaseException) and not isinstance(outcome, CONNECTION_ERRORS):
                raise outcome
        if 200 in outcomes:
            return
        for outcome in outcomes:
            if isinstance(outcome, int):
                stats.non_200[outcome] += 1
                refused += cluster.is_up(gen)
            else:
                stats.post_errors += 1
                stats.unexpected_errors += cluster.is_up(gen)
        if refused >= 20:
            raise AssertionError(
                f"update {update['update_id']} answered {outcomes} again and again: {stats}"
            )
        after = None if cluster.is_up(gen) else gen


async def wait_queues_empty(http: aiohttp.ClientSession, base: str, timeout: float) -> None:
    """Every command acked (§6.8 /admin/machines: nothing pending or sent)."""
    deadline = time.monotonic() + timeout
    while True:
        async with http.get(f"{base}/admin/machines", headers=AUTH) as resp:
            rows = await resp.json()
        if all(r["pending"] + r["sent"] == 0 for r in rows):
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"commands still unacked after {timeout:g}s: {rows}")
        await asyncio.sleep(0.02)


# --- a wire-level agent ----------------------------------------------------------------------------


class HandshakeRefused(ConnectionError):
    pass


class RawClient:
    """A WebSocket client on a bare socket (RFC 6455, client frames masked)."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.close_sent = False

    @classmethod
    async def open(cls, base: str, machine_id: str, timeout: float = 10.0) -> RawClient:
        url = urlsplit(base)
        assert url.hostname is not None and url.port is not None
        reader, writer = await asyncio.wait_for(
            asyncio.open_connection(url.hostname, url.port), timeout
        )
        key = base64.b64encode(os.urandom(16)).decode()
        head = (
            f"GET /ws?machineId={machine_id} HTTP/1.1\r\nHost: {url.netloc}\r\n"
            "Upgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n"
            f"Sec-WebSocket-Protocol: ccr, {API_KEY}\r\n\r\n"
        )
        client = cls(reader, writer)
        try:
            writer.write(head.encode())
            answer = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout)
        except BaseException:
            client.abort()
            raise
        status = answer.split(b" ", 2)[1]
        if status != b"101":
            client.abort()
            raise HandshakeRefused(f"upgrade answered {status.decode()}")
        return client

    async def recv(self) -> tuple[int, bytes]:
        b0, b1 = await self.reader.readexactly(2)
        n = b1 & 0x7F
        if n == 126:
            (n,) = struct.unpack("!H", await self.reader.readexactly(2))
        elif n == 127:
            (n,) = struct.unpack("!Q", await self.reader.readexactly(8))
        assert not b1 & 0x80, "server frames are never masked"
        assert b0 & 0x80, "the server never fragments frames"
        return b0 & 0x0F, await self.reader.readexactly(n)

    def send(self, opcode: int, payload: bytes) -> None:
        self.writer.write(masked_frame(opcode, payload))

    def send_json(self, frame: dict[str, Any]) -> None:
        self.send(OP_TEXT, json.dumps(frame, separators=(",", ":")).encode())

    def send_close(self, code: int, reason: str = "") -> None:
        if not self.close_sent:
            self.close_sent = True
            self.send(OP_CLOSE, struct.pack("!H", code) + reason.encode())

    def abort(self) -> None:
        """Drop the TCP connection without a close frame (a crashed or unplugged agent)."""
        self.writer.transport.abort()


@dataclass
class Receipt:
    machine_id: str
    conn_no: int
    command_id: str
    session_id: str
    command: str


@dataclass(eq=False)
class Link:
    """One connection of a :class:`ModelAgent` and how it ended."""

    client: RawClient
    no: int
    gen: int
    task: asyncio.Task[Any] | None = None
    ended: tuple[str, int | None, str] | None = None  # ("close"|"eof", code, reason)
    drop_before_ack: bool = False


@dataclass
class AgentStats:
    connections: int = 0
    connect_failures: int = 0
    unexpected_drops: int = 0  # a connection lost while its server generation was still up
    unexpected_connect_failures: int = 0  # ... or refused
    aborts: int = 0
    clean_closes: int = 0
    replacements: int = 0
    offline_spells: int = 0
    drops_before_ack: int = 0
    boot_not_first: int = 0
    close_codes: Counter[Any] = field(default_factory=Counter)


class ModelAgent:
    """A correct agent (§11.2) at the wire level. Chaos actions: ``abort``, ``close``,
    ``replace``, ``offline`` (seconds), ``drop_before_ack`` — queued with :meth:`act`."""

    def __init__(self, machine_id: str, cluster: ServerCluster, changes: Changes) -> None:
        self.machine_id = machine_id
        self.cluster = cluster
        self.changes = changes
        self.receipts: list[Receipt] = []
        self.typed: dict[str, Receipt] = {}  # first receipt by commandId: the one "typed"
        self.typed_order: dict[str, list[int]] = defaultdict(list)  # session -> seqs, typed order
        self.ids_by_seq: dict[int, set[str]] = defaultdict(set)
        self.stats = AgentStats()
        self.link: Link | None = None
        self._actions: list[tuple[str, float, asyncio.Future[None]]] = []
        self._action_ready = asyncio.Event()
        self._links = 0
        self.task: asyncio.Task[None] | None = None

    # -- control ----------------------------------------------------------------------------------

    def start(self) -> None:
        self.task = asyncio.create_task(self._run(), name=f"model-agent-{self.machine_id}")

    async def stop(self) -> None:
        if self.task is not None:
            self.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.task
        if self.link is not None:
            self.link.client.abort()
            if self.link.task is not None:
                self.link.task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await self.link.task

    async def act(self, kind: str, seconds: float = 0.0) -> None:
        """Run a chaos action on the agent's connection; returns once it is done."""
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._actions.append((kind, seconds, done))
        self._action_ready.set()
        await done

    def connected(self) -> bool:
        return self.link is not None and self.link.ended is None

    def distinct(self) -> int:
        return len(self.typed)

    # -- connection loop --------------------------------------------------------------------------

    async def _run(self) -> None:
        link = await self._connect(after=None)
        while True:
            waiter = asyncio.create_task(self._action_ready.wait())
            assert link.task is not None
            await asyncio.wait({link.task, waiter}, return_when=asyncio.FIRST_COMPLETED)
            waiter.cancel()
            if not self._actions:  # the connection ended by itself
                if link.drop_before_ack:
                    link = await self._connect(after=None)  # our own doing: back at once
                elif self.cluster.is_up(link.gen):
                    self.stats.unexpected_drops += 1
                    link = await self._connect(after=None)
                else:
                    link = await self._connect(after=link.gen)
                continue
            self._action_ready.clear()
            kind, seconds, done = self._actions.pop(0)
            if self._actions:
                self._action_ready.set()
            try:
                link = await self._do(link, kind, seconds)
            except BaseException as exc:
                done.set_exception(exc)
                raise
            done.set_result(None)

    async def _do(self, link: Link, kind: str, seconds: float) -> Link:
        assert link.task is not None
        if link.ended is not None:  # lost it on our own meanwhile; the action still applies
            await link.task
            link = await self._connect(after=None if self.cluster.is_up(link.gen) else link.gen)
        if kind == "abort":
            self.stats.aborts += 1
            link.client.abort()
            await link.task
        elif kind in ("close", "offline"):
            self.stats.clean_closes += kind == "close"
            link.client.send_close(1000)
            await link.task
            assert link.ended is not None and link.ended[:2] == ("close", 1000), link.ended
            if kind == "offline":
                self.stats.offline_spells += 1
                await asyncio.sleep(seconds)  # chaos timing: away for a while
        elif kind == "replace":
            self.stats.replacements += 1
            new = await self._connect(after=None)
            await link.task
            # The server closed the old connection with 4000 (§4.1 step 2, §4.5).
            assert link.ended is not None and link.ended[:2] == ("close", 4000), link.ended
            assert link.ended[2] == "Replaced by new connection", link.ended
            return new
        elif kind == "drop_before_ack":
            self.stats.drops_before_ack += 1
            link.drop_before_ack = True
            return link
        else:
            raise ValueError(kind)
        return await self._connect(after=None)

    async def _connect(self, after: int | None) -> Link:
        """Connect to the current server (newer than ``after``), retrying while it is down."""
        while True:
            gen, base = await self.cluster.wait_up(after=after)
            try:
                client = await RawClient.open(base, self.machine_id)
                op, payload = await asyncio.wait_for(client.recv(), 10)
            except CONNECTION_ERRORS:
                self.stats.connect_failures += 1
                if not self.cluster.is_up(gen):
                    after = gen  # killed meanwhile: wait for the next one
                    continue
                self.stats.unexpected_connect_failures += 1
                if self.stats.unexpected_connect_failures > 100:
                    raise AssertionError(
                        f"{self.machine_id}: a running server refuses it"
                    ) from None
                after = None
                continue
            if op != OP_TEXT or json.loads(payload).get("type") != "boot":
                self.stats.boot_not_first += 1
            self._links += 1
            self.stats.connections += 1
            link = Link(client, self._links, gen)
            self.link = link
            link.task = asyncio.create_task(self._serve(link))
            self.changes.notify()
            return link

    async def _serve(self, link: Link) -> None:
        client = link.client
        try:
            while True:
                op, payload = await client.recv()
                if op == OP_CLOSE:
                    code = struct.unpack("!H", payload[:2])[0] if len(payload) >= 2 else None
                    reason = payload[2:].decode("utf-8", "replace")
                    client.send_close(code or 1000)  # reciprocate, then the server drops TCP
                    link.ended = ("close", code, reason)
                    self.stats.close_codes[code] += 1
                    return
                if op == OP_PING:
                    client.send(OP_PONG, payload)
                elif op == OP_TEXT:
                    frame = json.loads(payload)
                    if frame.get("type") == "command" and self._on_command(link, frame):
                        return
        except (*CONNECTION_ERRORS, ConnectionError):
            link.ended = ("eof", None, "")
            self.stats.close_codes["eof"] += 1
        finally:
            if link.ended is None:
                link.ended = ("eof", None, "")
            with contextlib.suppress(Exception):
                client.writer.close()
            self.changes.notify()

    def _on_command(self, link: Link, frame: dict[str, Any]) -> bool:
        """Store (type) a new commandId once, ack every frame. True when the link was dropped."""
        receipt = Receipt(
            self.machine_id, link.no, frame["commandId"], frame["sessionId"], frame["command"]
        )
        self.receipts.append(receipt)
        if receipt.command_id not in self.typed:
            self.typed[receipt.command_id] = receipt
            parsed = parse_seq(receipt.command)
            assert parsed is not None, receipt
            self.typed_order[receipt.session_id].append(parsed[0])
            self.ids_by_seq[parsed[0]].add(receipt.command_id)
        self.changes.notify()
        if link.drop_before_ack:  # stored, then gone before the ack: the server must re-send
            link.client.abort()
            link.ended = ("eof", None, "dropped before ack")
            return True
        if link.client.close_sent:  # no data frame may follow our close frame
            return False
        link.client.send_json({"type": "ack", "commandId": receipt.command_id})
        return False


# --- checks ---------------------------------------------------------------------------------------


@dataclass
class DeliveryReport:
    commands: int
    redeliveries: int
    duplicates: list[int]  # seqs that reached an agent under more than one commandId
    lost: list[int]  # accepted seqs no agent got
    unexpected: list[int]  # seqs an agent got that were never accepted
    misrouted: list[int]
    out_of_order: dict[str, tuple[list[int], list[int]]]  # session -> (expected, got)


def check_delivery(
    agents: Iterable[ModelAgent],
    accepted: dict[str, list[int]],
    session_of: dict[int, tuple[str, str]],
) -> DeliveryReport:
    """``accepted``: session -> seqs in the order the server accepted them."""
    agents = list(agents)
    ids_by_seq: dict[int, set[str]] = defaultdict(set)
    typed_order: dict[str, list[int]] = defaultdict(list)
    misrouted: list[int] = []
    receipts = 0
    for agent in agents:
        receipts += len(agent.receipts)
        for seq, ids in agent.ids_by_seq.items():
            ids_by_seq[seq] |= ids
        for sid, seqs in agent.typed_order.items():
            typed_order[sid] += seqs
        for receipt in agent.typed.values():
            parsed = parse_seq(receipt.command)
            assert parsed is not None
            expected = session_of.get(parsed[0])
            if expected != (receipt.session_id, receipt.machine_id) or parsed[1] != (
                receipt.session_id
            ):
                misrouted.append(parsed[0])
    all_accepted = {seq for seqs in accepted.values() for seq in seqs}
    commands = sum(len(ids) for ids in ids_by_seq.values())
    out_of_order = {
        sid: (seqs, typed_order.get(sid, []))
        for sid, seqs in accepted.items()
        if typed_order.get(sid, []) != seqs
    }
    return DeliveryReport(
        commands=commands,
        redeliveries=receipts - commands,
        duplicates=sorted(s for s, ids in ids_by_seq.items() if len(ids) > 1),
        lost=sorted(all_accepted - set(ids_by_seq)),
        unexpected=sorted(set(ids_by_seq) - all_accepted),
        misrouted=sorted(misrouted),
        out_of_order=out_of_order,
    )


def first_divergence(expected: list[int], got: list[int]) -> str:
    for i, (a, b) in enumerate(zip(expected, got, strict=False)):
        if a != b:
            return f"at #{i}: expected {expected[max(0, i - 2) : i + 3]}, got {got[max(0, i - 2) : i + 3]}"
    return f"lengths {len(expected)} vs {len(got)}"


def read_db(data_dir: Path, sql: str, *args: Any) -> list[dict[str, Any]]:
    """Rows of the server's database, opened read-only (the server must have stopped)."""
    path = database_path(data_dir)
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5)
    conn.row_factory = sqlite3.Row
    try:
        return [dict(r) for r in conn.execute(sql, args)]
    finally:
        conn.close()


# --- a fast recording inject command for real agents -----------------------------------------------

RECORDER_SH = r"""t=$(cat)
printf 'begin\t%s\t%s\t%s\n' "$$" "$CCR_SESSION_ID" "$t" >> "$1"
case "$t" in *slow*) sleep 0.1 ;; esac
printf 'end\t%s\t%s\t%s\n' "$$" "$CCR_SESSION_ID" "$t" >> "$1"
"""


@dataclass
class InjectEvent:
    ev: str
    pid: int
    session_id: str
    text: str


class ShellRecorder:
    """``CCR_BOX_INJECT_COMMAND`` for one agent: logs ``begin`` (text read) and ``end`` (typed).

    A text containing ``slow`` takes 0.1 s between the two, a window for kills mid-typing.
    """

    def __init__(self, root: Path) -> None:
        root.mkdir(parents=True, exist_ok=True)
        self.script = root / "inject.sh"
        self.script.write_text(RECORDER_SH)
        self.log = root / "typed.log"
        self._killed: set[tuple[int, int]] = set()

    @property
    def argv(self) -> list[str]:
        return ["/bin/sh", str(self.script), str(self.log)]

    def events(self) -> list[InjectEvent]:
        if not self.log.exists():
            return []
        out = []
        for line in self.log.read_text(encoding="utf-8").splitlines():
            ev, pid, sid, text = line.split("\t", 3)
            out.append(InjectEvent(ev, int(pid), sid, text))
        return out

    def typing(self) -> dict[int, tuple[int, InjectEvent]]:
        """pid -> (index, begin event) of inject commands that began and have not ended."""
        open_: dict[int, tuple[int, InjectEvent]] = {}
        for i, event in enumerate(self.events()):
            if event.ev == "begin":
                open_[event.pid] = (i, event)
            else:
                open_.pop(event.pid, None)
        return {pid: v for pid, v in open_.items() if (pid, v[0]) not in self._killed}

    def kill_leftovers(self) -> int:
        """Inject commands orphaned by a SIGKILLed agent (own session): a real ``tmux
        send-keys`` would have been cut short as well."""
        killed = 0
        for pid, (index, _event) in self.typing().items():
            self._killed.add((pid, index))
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pid, signal.SIGKILL)
                killed += 1
        return killed
