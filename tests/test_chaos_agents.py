"""Chaos: agents killed and dropped at random moments (contract §4.1, §4.5, §6.9, §11.2), with a
real ``ccr-box up`` and real ``ccr-box agent`` processes.

While replies stream in through the webhook (one poster per session):

- two real ``ccr-box agent`` processes, each typing two sessions' commands through the inject
  command (:class:`tests.helpers_chaos.ShellRecorder` logs what began and what was typed), are
  SIGKILLed at seeded moments — some of them while a command is being typed, some again right
  after the restart marked an interrupted command failed — and restarted after a short spell; the
  orphaned inject commands are killed with them;
- two wire-level agents (:class:`tests.helpers_chaos.ModelAgent`, two sessions each) abort their
  TCP connection, close it cleanly, get replaced by a second connection with the same machineId
  (the server closes the old one with 4000), vanish right after storing a command but before
  acking it, and go offline for spells while commands queue up.

Afterwards: nothing was typed twice; every command was either typed exactly once, or it was
interrupted by a kill and the chat got both the agent's notice with its text and the server's
``Command failed: interrupted by agent restart (not re-run)``; the wire-level agents got every
command, each under one ``commandId``, in order; the database holds one acked row per update.

``CCR_BOX_CHAOS_SEED`` replays a run; ``CCR_BOX_SOAK=1`` runs the long version. The tests at
the end reduce what earlier runs found to deterministic reproductions.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import shlex
import signal
import socket
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from ccr_box.agent.notify import interrupted_text
from ccr_box.agent.store import INTERRUPTED, AgentStore
from ccr_box.db import queue as q
from tests.conftest import API_KEY, CHAT, Harness
from tests.fake_telegram import FakeTelegram
from tests.figures import record, soak
from tests.helpers_agent import bind, read_inbox
from tests.helpers_chaos import (
    AUTH,
    Changes,
    ModelAgent,
    ServerCluster,
    Session,
    ShellRecorder,
    Stats,
    chaos_seed,
    check_delivery,
    deliver,
    first_divergence,
    make_update,
    open_session,
    parse_seq,
    poll_until,
    read_db,
    server_env,
    wait_queues_empty,
    within,
)
from tests.helpers_proc import Proc, clean_env
from tests.helpers_queue import RawAgent, connect_booted, receive_json, sync
from tests.helpers_queue import reply as queue_reply

REAL = ("real-a1", "real-a2")
WIRE = ("wire-b1", "wire-b2")
SESSIONS_PER_MACHINE = 2
FAILED_INTERRUPTED = f"Command failed: {INTERRUPTED}"
WINDOW = 50  # pending + sent per machine before posters wait (the queue cap is 100, §6.2)
SLOW_RATE = 0.1  # real agents' commands that take 0.1 s to type: room for kills mid-typing
WIRE_ACTIONS = ("abort", "close", "replace", "offline", "drop_before_ack")


@dataclass(frozen=True)
class Scale:
    updates: int
    kills_per_agent: int
    actions_per_wire_agent: int
    timeout: float


def scale() -> Scale:
    if soak():
        return Scale(updates=20_000, kills_per_agent=30, actions_per_wire_agent=150, timeout=3600.0)
    # Below the server's 60 s re-send interval: a reply only a re-send would deliver fails.
    return Scale(updates=600, kills_per_agent=5, actions_per_wire_agent=8, timeout=55.0)


class RealAgent:
    """One machine's ``ccr-box agent`` process, killed and started again on the same data dir."""

    def __init__(
        self,
        machine_id: str,
        root: Path,
        base: str,
        procs: list[Proc],
        recorders: list[ShellRecorder],
    ) -> None:
        self.machine_id = machine_id
        self.data_dir = root / machine_id / "data"
        self.recorder = ShellRecorder(root / machine_id / "rec")
        recorders.append(self.recorder)
        self.procs = procs
        self.env = clean_env(
            CCR_WORKER_URL=base,
            CCR_API_KEY=API_KEY,
            CCR_MACHINE_ID=machine_id,
            CCR_BOX_DATA_DIR=str(self.data_dir),
            CCR_BOX_CONFIG=str(root / "no-such-config.toml"),
            CCR_BOX_INJECT_COMMAND=shlex.join(self.recorder.argv),
        )
        self.proc: Proc | None = None
        self.kills = 0
        self.mid_typing = 0
        self.recovery_kills = 0
        self.leftovers = 0

    async def start(self, *, kill_while_recovering: bool = False) -> None:
        proc = await Proc.start("agent", env=self.env)
        self.procs.append(proc)
        self.proc = proc
        if kill_while_recovering:
            # Killed again the moment it has marked an interrupted command failed (§11.2),
            # before it could tell the user about it.
            line = await proc.wait_line(
                lambda text: "not re-run" in text or "connected to " in text, timeout=30
            )
            if "not re-run" in line:
                await self.kill()
                self.recovery_kills += 1
                await self.start()
                return
        await proc.wait_line("connected to ", timeout=30)

    async def kill(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        assert await self.proc.wait_exit(30) == -signal.SIGKILL
        self.kills += 1
        self.leftovers += self.recorder.kill_leftovers()

    async def wait_typing(self, timeout: float) -> bool:
        """Until an inject command of this agent has begun and not ended (bounded)."""
        try:
            await poll_until(lambda: self.recorder.typing(), timeout, "typing")
        except AssertionError:
            return False
        return True


@dataclass
class Chaos:
    kills: list[tuple[str, int, float, bool, float, bool]] = field(default_factory=list)
    actions: list[tuple[str, int, float, str, float]] = field(default_factory=list)


def make_chaos(rng: random.Random, size: Scale) -> Chaos:
    chaos = Chaos()
    for machine in REAL:
        step = size.updates / (size.kills_per_agent + 1)
        for k in range(size.kills_per_agent):
            chaos.kills.append(
                (
                    machine,
                    int((k + 1) * step + rng.uniform(-0.4, 0.4) * step),
                    rng.uniform(0.0, 0.03),  # delay after the threshold
                    rng.random() < 0.5,  # wait for a command being typed
                    rng.uniform(0.0, 0.3),  # time down before the restart
                    rng.random() < 0.4,  # killed again while recovering
                )
            )
    for machine in WIRE:
        step = size.updates / (size.actions_per_wire_agent + 1)
        kinds = [WIRE_ACTIONS[i % len(WIRE_ACTIONS)] for i in range(size.actions_per_wire_agent)]
        rng.shuffle(kinds)
        for k, kind in enumerate(kinds):
            chaos.actions.append(
                (
                    machine,
                    int((k + 1) * step + rng.uniform(-0.4, 0.4) * step),
                    rng.uniform(0.0, 0.03),
                    kind,
                    rng.uniform(0.05, 0.4),  # offline spell
                )
            )
    return chaos


@pytest.fixture
def recorders() -> Iterator[list[ShellRecorder]]:
    """Every inject recorder of a test; inject commands still running at the end are killed."""
    made: list[ShellRecorder] = []
    yield made
    for recorder in made:
        recorder.kill_leftovers()


async def test_agents_killed_and_dropped_nothing_twice_nothing_lost_silently(
    tmp_path: Path, fake_telegram: FakeTelegram, procs: list[Proc], recorders: list[ShellRecorder]
) -> None:
    fake = fake_telegram
    seed = chaos_seed()
    rng = random.Random(seed)
    size = scale()
    started = time.monotonic()
    changes = Changes()
    cluster = ServerCluster(procs, server_env(tmp_path, fake, "webhook"), changes)
    stats = Stats()
    async with contextlib.AsyncExitStack() as stack:  # agents stop even when the run fails
        timeout = aiohttp.ClientTimeout(total=30)
        http = await stack.enter_async_context(aiohttp.ClientSession(timeout=timeout))
        base = await cluster.start()
        real = {m: RealAgent(m, tmp_path / "agents", base, procs, recorders) for m in REAL}
        for agent in real.values():
            for k in range(SESSIONS_PER_MACHINE):
                bind(agent.data_dir, f"{agent.machine_id[-2:]}-s{k}", pane=f"%{k + 1}")
        await asyncio.gather(*(agent.start() for agent in real.values()))
        wire = {m: ModelAgent(m, cluster, changes) for m in WIRE}
        for agent in wire.values():
            agent.start()
            stack.push_async_callback(agent.stop)
        await changes.wait_for(
            lambda: all(a.connected() for a in wire.values()), 30, "wire agents connected"
        )

        async def registered() -> bool:
            async with http.get(f"{base}/sessions", headers=AUTH) as resp:
                return len(await resp.json()) == len(REAL) * SESSIONS_PER_MACHINE

        deadline = time.monotonic() + 30
        while not await registered():  # the agents re-register their sessions on connect
            assert time.monotonic() < deadline, "real agents' sessions not registered"
            await asyncio.sleep(0.02)
        sessions: list[Session] = []
        for machine in (*REAL, *WIRE):
            for k in range(SESSIONS_PER_MACHINE):
                sid = f"{machine[-2:]}-s{k}"
                sessions.append(
                    await open_session(http, base, sid, machine, register=machine in WIRE)
                )

        # The plan: which session each reply goes to, its form, which commands type slowly.
        session_of_seq = [rng.randrange(len(sessions)) for _ in range(size.updates)]
        updates: list[dict[str, Any]] = []
        text_of: dict[int, str] = {}
        owner: dict[int, tuple[str, str]] = {}
        for seq, i in enumerate(session_of_seq):
            form = "cmd" if rng.random() < 0.5 else "reply"
            slow = " slow" if sessions[i].machine_id in REAL and rng.random() < SLOW_RATE else ""
            updates.append(make_update(fake, sessions[i], seq, form, slow))
            text_of[seq] = f"c{seq} {sessions[i].session_id}{slow}"
            owner[seq] = (sessions[i].session_id, sessions[i].machine_id)
        chaos = make_chaos(rng, size)

        # Flow control: pending + sent per machine, from /admin/machines, plus what was
        # accepted since that snapshot was asked for (an overestimate, which is safe).
        accepted: dict[str, list[int]] = {s.session_id: [] for s in sessions}
        accepted_by_machine: Counter[str] = Counter()
        snapshot: dict[str, tuple[int, int]] = {}
        done_posting = asyncio.Event()

        def queued(machine: str) -> int:
            count, mark = snapshot.get(machine, (0, 0))
            return count + accepted_by_machine[machine] - mark

        async def watch_queues() -> None:
            while not done_posting.is_set():
                marks = dict(accepted_by_machine)
                async with http.get(f"{base}/admin/machines", headers=AUTH) as resp:
                    rows = await resp.json()
                for row in rows:
                    mark = marks.get(row["machineId"], 0)
                    snapshot[row["machineId"]] = (row["pending"] + row["sent"], mark)
                changes.notify()
                await asyncio.sleep(0.02)  # the refresh rate of a condition, not a wait

        async def poster(session: Session, seqs: list[int]) -> None:
            for seq in seqs:
                await changes.wait_for(
                    lambda: queued(session.machine_id) < WINDOW,
                    size.timeout,
                    f"{session.machine_id}'s queue draining",
                )
                await deliver(http, cluster, updates[seq], stats)
                accepted[session.session_id].append(seq)
                accepted_by_machine[session.machine_id] += 1
                stats.answered += 1
                changes.notify()

        async def kill_agent(machine, threshold, delay, mid_typing, down, again) -> None:
            agent = real[machine]
            await changes.wait_for(lambda: stats.answered >= threshold, size.timeout, "progress")
            await asyncio.sleep(delay)  # chaos timing
            if mid_typing and await agent.wait_typing(2.0):
                agent.mid_typing += 1
            await agent.kill()
            await asyncio.sleep(down)  # chaos timing: the machine is away for a while
            await agent.start(kill_while_recovering=again)

        async def kills_of(machine: str) -> None:
            for item in chaos.kills:
                if item[0] == machine:
                    await kill_agent(*item)

        async def actions_of(machine: str) -> None:
            for _, threshold, delay, kind, seconds in (a for a in chaos.actions if a[0] == machine):
                await changes.wait_for(
                    lambda t=threshold: stats.answered >= t, size.timeout, "progress"
                )
                await asyncio.sleep(delay)  # chaos timing
                await wire[machine].act(kind, seconds)

        by_session = {s.session_id: [] for s in sessions}
        for seq, i in enumerate(session_of_seq):
            by_session[sessions[i].session_id].append(seq)
        watcher = asyncio.create_task(watch_queues())
        tasks = [asyncio.create_task(poster(s, by_session[s.session_id])) for s in sessions]
        tasks += [asyncio.create_task(kills_of(m)) for m in REAL]
        tasks += [asyncio.create_task(actions_of(m)) for m in WIRE]
        total = Counter(machine for _sid, machine in owner.values())

        def settled() -> bool:
            """Real agents finished every command and the server confirmed every result."""
            for machine, agent in real.items():
                rows = read_inbox(agent.data_dir).values()
                if len(rows) < total[machine]:
                    return False
                if any(r["status"] not in ("done", "failed") or not r["result_sent"] for r in rows):
                    return False
            return True

        try:  # one deadline for the whole run: a reply held back until a re-send fails it
            async with within(size.timeout, lambda: (stats, dict(snapshot))):
                await asyncio.gather(*tasks)
                done_posting.set()
                await watcher
                # Everything settles: wire agents got their commands, real agents finished and
                # reported every command, the server has nothing unacked.
                await changes.wait_for(
                    lambda: all(len(wire[m].ids_by_seq) >= total[m] for m in WIRE),
                    size.timeout,
                    "wire agents received everything",
                )
                await poll_until(settled, size.timeout, "real agents finished, all reported")
                await wait_queues_empty(http, base, size.timeout)
        finally:
            done_posting.set()
            for task in (*tasks, watcher):
                task.cancel()
        await cluster.stop()  # drains the texts still being sent to the chat
        for agent in wire.values():
            await agent.stop()
        for agent in real.values():
            assert agent.proc is not None
            agent.proc.send_signal(signal.SIGTERM)
            await agent.proc.wait_exit(30)

    # --- the database: one acked row per update -------------------------------------------------
    rows = read_db(
        cluster.data_dir,
        "SELECT command_id, machine_id, session_id, command, update_id, status, result,"
        " result_error, attempts, last_error FROM command_queue",
    )
    seq_of_update = {u["update_id"]: seq for seq, u in enumerate(updates)}

    def resent(sid: str) -> list[tuple[str, int, str | None]]:
        """For an order failure: the session's rows that needed more than one send."""
        return [
            (r["command"], r["attempts"], r["last_error"])
            for r in rows
            if r["session_id"] == sid and (r["attempts"] > 1 or r["last_error"])
        ][:20]

    assert len(rows) == size.updates
    assert {r["update_id"] for r in rows} == set(seq_of_update)
    by_seq: dict[int, dict[str, Any]] = {}
    for row in rows:
        seq = seq_of_update[row["update_id"]]
        by_seq[seq] = row
        assert row["command"] == text_of[seq], row
        assert (row["session_id"], row["machine_id"]) == owner[seq], row
        assert row["status"] == "acked", row

    # --- real agents: nothing typed twice, nothing lost without the user being told --------------
    messages = fake.messages_to(CHAT)
    notices = Counter(messages)
    interrupted: list[int] = []
    notices_repeated = 0
    typed_count = 0
    for machine, agent in real.items():
        events = agent.recorder.events()
        begun = Counter(e.text for e in events if e.ev == "begin" and e.text)
        ended = Counter(e.text for e in events if e.ev == "end" and e.text)
        assert max(begun.values(), default=0) <= 1, [t for t, n in begun.items() if n > 1]
        inbox = {r["command_id"]: r for r in read_inbox(agent.data_dir).values()}
        for seq, (_sid, m) in owner.items():
            if m != machine:
                continue
            row = by_seq[seq]
            text = text_of[seq]
            assert row["command_id"] in inbox, (seq, "never reached the agent's inbox")
            if row["result"] == "ok":
                assert ended[text] == 1, (seq, text, "reported typed but not typed once")
                typed_count += 1
            else:
                assert (row["result"], row["result_error"]) == ("failed", INTERRUPTED), row
                notice = interrupted_text(text, machine)
                # At least once (§8.2): a kill after the server took it may send it again.
                assert notices[notice] >= 1, (seq, "interrupted without the notice with its text")
                notices_repeated += notices[notice] - 1
                interrupted.append(seq)
        # Commands that ran did so in the order their replies were accepted.
        for sid in (s.session_id for s in sessions if s.machine_id == machine):
            order = {seq: i for i, seq in enumerate(accepted[sid])}
            ran = [
                parse_seq(e.text)
                for e in events
                if e.ev == "begin" and e.session_id == sid and e.text
            ]
            positions = [order[p[0]] for p in ran if p is not None]
            assert positions == sorted(positions), (
                sid,
                first_divergence(sorted(positions), positions),
                resent(sid),
            )
    assert notices[FAILED_INTERRUPTED] == len(interrupted)

    # --- wire agents: every command, once, in order -----------------------------------------------
    wire_accepted = {s.session_id: accepted[s.session_id] for s in sessions if s.machine_id in WIRE}
    report = check_delivery(
        wire.values(), wire_accepted, {k: v for k, v in owner.items() if v[1] in WIRE}
    )
    assert report.duplicates == [], report.duplicates
    assert report.lost == [], report.lost
    assert report.misrouted == [] and report.unexpected == []
    assert not report.out_of_order, {
        sid: (first_divergence(*pair), resent(sid)) for sid, pair in report.out_of_order.items()
    }
    for agent in wire.values():
        assert agent.stats.unexpected_drops == 0, agent.stats
        assert agent.stats.unexpected_connect_failures == 0, agent.stats
        assert agent.stats.boot_not_first == 0, agent.stats
        seq_ids = agent.ids_by_seq
        for seq, ids in seq_ids.items():
            assert ids == {by_seq[seq]["command_id"]}
    assert not any(m.startswith(("Queue full", "Command not delivered")) for m in messages)
    assert stats.unexpected_errors == 0 and not stats.non_200, stats
    for proc in procs:
        assert "Traceback" not in proc.stderr, proc.stderr[-5000:]
    real_redeliveries = sum(
        "acked again, not executed" in line for proc in procs for line in proc.lines
    )

    kills = sum(a.kills for a in real.values())
    wire_stats = [a.stats for a in wire.values()]
    elapsed = time.monotonic() - started
    figures = {
        "agent_kills": kills,
        "kills_mid_typing": sum(a.mid_typing for a in real.values()),
        "kills_while_recovering": sum(a.recovery_kills for a in real.values()),
        "aborts": sum(s.aborts for s in wire_stats),
        "clean_closes": sum(s.clean_closes for s in wire_stats),
        "replacements": sum(s.replacements for s in wire_stats),
        "offline_spells": sum(s.offline_spells for s in wire_stats),
        "drops_before_ack": sum(s.drops_before_ack for s in wire_stats),
        "updates_answered": stats.answered,
        "commands": len(rows),
        "typed": typed_count + report.commands,
        "interrupted_told": len(interrupted),
        "notices_repeated": notices_repeated,
        "redeliveries": report.redeliveries + real_redeliveries,
        "duplicates": 0,
        "typed_twice": 0,
        "lost": 0,
        "seed": seed,
        "seconds": round(elapsed, 1),
    }
    print("agent chaos:", figures)
    record("agent_kills", **figures)


# --- regression: found by the run above -----------------------------------------------------------


async def test_a_reply_whose_send_failed_is_not_overtaken_after_the_reconnect(
    server: Harness,
) -> None:
    """A send that raises puts its row into backoff (§6.4) while its machine's connection dies;
    the agent reconnects within the backoff. The row must still go out before every later reply
    of its session: the new connection re-arms it together with the ``sent`` rows (§6.1)."""
    await server.register("s1", "m1")
    mid = (await server.notify("s1"))["messageId"]
    agent = await RawAgent.connect(server, "m1")
    assert (await agent.receive_json())["type"] == "boot"
    await queue_reply(server, mid, "one")
    assert (await agent.receive_json())["command"] == "one"  # not acked: re-sent after 60 s
    # Break the server's side of the socket: its next write is lost (the transport closes),
    # every later one raises.
    conn = server.hub.connected()["m1"]
    conn.ws.get_extra_info("socket").shutdown(socket.SHUT_WR)
    server.clock.advance(60_000)
    await queue_reply(server, mid, "two")  # one flush: "one" (re-send) is lost, "two" raises
    two = {r["command"]: r for r in await server.commands()}["two"]
    assert (two["status"], two["attempts"]) == ("pending", 1)
    assert two["next_retry_at"] == server.clock.now_ms() + 1_000
    agent.close()
    await asyncio.wait_for(conn.finished.wait(), 5)  # the server has let the connection go
    await queue_reply(server, mid, "three")  # queued while offline

    ws, frames = await connect_booted(server, "m1")  # within the backoff (manual clock)
    got = [f["command"] for f in frames]
    for f in frames:
        await ws.send_str(json.dumps({"type": "ack", "commandId": f["commandId"]}))
    got += [f["command"] for f in await sync(ws)]
    assert got == ["one", "two", "three"]
    await ws.close()


def pending_notifications(data_dir: Path) -> list[dict[str, Any]]:
    store = AgentStore.in_dir(data_dir)
    try:
        return store.pending_notifications()
    finally:
        store.close()


class BlackHole:
    """Accepts TCP connections and reads requests, never answers: calls to it stay in flight."""

    def __init__(self) -> None:
        self.received = b""
        self.changes = Changes()
        self._server: asyncio.Server | None = None
        self._conns: list[asyncio.StreamWriter] = []

    @property
    def url(self) -> str:
        assert self._server is not None
        return f"http://127.0.0.1:{self._server.sockets[0].getsockname()[1]}"

    async def __aenter__(self) -> BlackHole:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        for writer in self._conns:
            writer.transport.abort()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._conns.append(writer)
        while data := await reader.read(65536):
            self.received += data
            self.changes.notify()


async def test_the_interrupted_notice_survives_a_kill_during_recovery(
    server: Harness, procs: list[Proc], tmp_path: Path, recorders: list[ShellRecorder]
) -> None:
    """Regression (found by the run above): the agent marked a command that was being typed
    ``failed`` at start-up and was killed before its notice reached the server. The row is never
    ``executing`` again, so the notice with the command's text must already be stored with it."""
    url = server.url("").rstrip("/")
    agent = RealAgent("crash-recovery", tmp_path / "agents", url, procs, recorders)
    bind(agent.data_dir, "s1", label="proj")
    store = AgentStore.in_dir(agent.data_dir)
    frame = {"type": "command", "commandId": "7" * 32, "sessionId": "s1", "command": "half typed"}
    store.receive("7" * 32, "command", "s1", CHAT, {**frame, "chatId": CHAT})
    store.set_status("7" * 32, "executing")
    store.close()

    async with BlackHole() as hole:
        agent.env["CCR_WORKER_URL"] = hole.url  # the notice's POST hangs in flight
        proc = await Proc.start("agent", env=agent.env)
        procs.append(proc)
        await proc.wait_line("was being typed when the agent stopped; not re-run")
        await hole.changes.wait_for(
            lambda: b"POST /notifications/send" in hole.received, 10, "the notice in flight"
        )
        proc.send_signal(signal.SIGKILL)
        assert await proc.wait_exit() == -signal.SIGKILL
    assert read_inbox(agent.data_dir)["7" * 32]["status"] == "failed"

    agent.env["CCR_WORKER_URL"] = server.url("").rstrip("/")
    await agent.start()
    fake = server.fake
    notice = interrupted_text("half typed", "crash-recovery")
    await fake.wait_for(lambda: notice in fake.messages_to(CHAT))
    await fake.wait_for(lambda: FAILED_INTERRUPTED in fake.messages_to(CHAT))
    await poll_until(lambda: not pending_notifications(agent.data_dir), 5, "sent and dropped")
    assert fake.messages_to(CHAT).count(notice) == 1
    assert agent.recorder.events() == []  # never typed again


async def test_rows_claimed_for_a_replaced_connection_do_not_jump_the_queue(
    server: Harness,
) -> None:
    """Regression (found by the run above): rows claimed while the old connection was current,
    delivered once the new one is attaching, went out right after its boot, ahead of older rows
    its connect sequence re-sends. The connect sequence re-arms them too (they were ``sent``), so
    the stale delivery must leave them to it."""
    await server.register("s1", "m1")
    mid = (await server.notify("s1"))["messageId"]
    old, _ = await connect_booted(server, "m1")
    await queue_reply(server, mid, "one")  # sent on the old connection, never acked
    assert (await sync(old))[0]["command"] == "one"
    await server.db.write(
        lambda db: q.enqueue(
            db, q.NewCommand("2" * 32, "m1", "s1", "two", CHAT), server.clock.now_ms()
        )
    )
    now = server.clock.now_ms()
    claimed = await server.db.write(lambda db: q.claim_due(db, "m1", now))  # for the old one
    assert [r["command"] for r in claimed] == ["two"]
    first = server.hub.connected()["m1"]

    new = await server.connect("m1")  # replaces the old connection
    for _ in range(10_000):  # attach runs right after the upgrade; a few loop turns at most
        if server.hub.connected().get("m1") not in (None, first):
            break
        await asyncio.sleep(0)
    conn = server.hub.connected()["m1"]
    assert conn is not first and not conn.booted.is_set()  # the window is open
    await server.hub.deliver("m1", claimed, now)  # the stale claim's delivery, in the window
    assert (await receive_json(new))["type"] == "boot"
    frames = [f["command"] for f in await sync(new)]
    assert frames[:2] == ["one", "two"], frames
    await new.close()
    await old.close()
