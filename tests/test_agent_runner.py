"""The machine agent in process (contract §11.1-§11.3): a real ``Agent`` against a real ccr-box
server (or a fake server playing its role frame by frame), a real SQLite inbox, a real tmux pane or
a recording inject command.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import os
import shutil
import sys
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from ccr_box.agent.executor import UNKNOWN_SESSION
from ccr_box.agent.inject import TmuxInjector
from ccr_box.agent.notify import interrupted_text
from ccr_box.agent.runner import AgentSettings, ws_url
from ccr_box.agent.store import INTERRUPTED, AgentStore
from tests.conftest import API_KEY, CHAT, Harness, make_config
from tests.fake_telegram import FakeTelegram
from tests.helpers_agent import (
    Agents,
    DeafServer,
    Recorder,
    ServerRunner,
    Sleeper,
    TmuxPane,
    bind,
    command_frame,
    fake_server,
    read_inbox,
    registered,
    reply,
    wait_row,
)
from tests.helpers_wait import until

MACHINE = "box-1"


@pytest.fixture
async def agents(tmp_path: Path) -> AsyncIterator[Agents]:
    factory = Agents(tmp_path / "agents")
    yield factory
    await factory.close()


@pytest.fixture
def recorder(tmp_path: Path) -> Iterator[Recorder]:
    rec = Recorder(tmp_path / "rec")
    yield rec
    rec.kill_leftovers()


@pytest.fixture
def agent_dir(tmp_path: Path) -> Path:
    return tmp_path / "agent-data"


async def connected_with_session(
    server: Harness, agents: Agents, injector, agent_dir: Path, *sessions: str, **kw
):
    """Bind local sessions, start the agent, wait until it re-registered them on the server."""
    for i, sid in enumerate(sessions):
        bind(agent_dir, sid, pane=f"%{i + 1}", label=f"proj-{sid}")
    run = await agents.start(server.url(""), injector, data_dir=agent_dir, **kw)
    for sid in sessions:
        await until(lambda sid=sid: registered(server, sid, MACHINE), f"{sid} registered")
    return run


# --- end to end ---------------------------------------------------------------------------------


@pytest.mark.skipif(shutil.which("tmux") is None, reason="tmux is not installed")
async def test_reply_travels_from_telegram_to_the_tmux_pane(
    server: Harness, agents: Agents, agent_dir: Path, tmp_path: Path
) -> None:
    socket_dir = tempfile.mkdtemp(prefix="ccragent", dir="/tmp")  # unix socket paths are short
    pane = await TmuxPane.start(socket_dir, tmp_path)
    try:
        bind(agent_dir, "sess-1", pane=pane.id, socket_path=pane.socket, label="api")
        injector = TmuxInjector(enter_delay_ms=100, clear_delay_ms=10)
        run = await agents.start(server.url(""), injector, data_dir=agent_dir)
        await until(lambda: registered(server, "sess-1", MACHINE), "re-registered on open")
        resp = await server.client.get("/sessions", headers=server.auth())
        assert [(r["session_id"], r["machine_id"], r["label"]) for r in await resp.json()] == [
            ("sess-1", MACHINE, "api")
        ]

        sent = await server.notify("sess-1", "Claude stopped. Continue?")
        await reply(server, sent["messageId"], "run the tests, then commit")
        await until(lambda: pane.lines() == ["run the tests, then commit"], "typed in pane")

        row = await wait_row(server, "run the tests, then commit", lambda r: r["result"] == "ok")
        assert row["status"] == "acked" and row["acked_at"] is not None
        assert row["result_error"] is None and row["session_id"] == "sess-1"
        # Marked sent once the server's pong confirmed it processed the result.
        await until(lambda: run.inbox()[row["command_id"]]["result_sent"] == 1, "confirmed")
        inbox = run.inbox()[row["command_id"]]
        assert (inbox["status"], inbox["error"]) == ("done", None)
        assert (inbox["session_id"], inbox["chat_id"], inbox["kind"]) == ("sess-1", CHAT, "command")
        assert json.loads(inbox["payload"])["command"] == "run the tests, then commit"
        # A success produces no chat message: only the notification went out.
        assert server.fake.messages_to(CHAT) == ["Claude stopped. Continue?"]
    finally:
        pane.kill()
        shutil.rmtree(socket_dir, ignore_errors=True)


# --- durable inbox: duplicates, validation (§11.2) ----------------------------------------------


async def test_duplicate_command_frame_is_acked_again_and_never_executed_again(
    agents: Agents, recorder: Recorder, agent_dir: Path
) -> None:
    bind(agent_dir, "sess-1")
    async with fake_server() as fake:
        run = await agents.start(fake.url, recorder.injector(), data_dir=agent_dir)
        conn = await fake.connection(0)
        cid = "c" * 32
        frame = command_frame(cid, "sess-1", "only once")
        await conn.send(frame)
        await conn.send(frame)  # the server re-sends before it saw the ack
        await conn.wait_for(lambda got: sum(f["type"] == "ack" for f in got) == 2)
        await conn.wait_for(lambda got: any(f["type"] == "commandResult" for f in got))
        await conn.send(frame)  # and again after it ran
        await conn.wait_for(lambda got: sum(f["type"] == "ack" for f in got) == 3)
        # A ping after everything: its pong-order barrier is the agent's own ping; use a marker
        # command instead so "nothing else ran" is exact.
        await conn.send(command_frame("d" * 32, "sess-1", "marker"))
        await recorder.wait_typed("marker")
        await conn.wait_for(lambda got: sum(f["type"] == "commandResult" for f in got) == 2)

        assert recorder.begun() == ["only once", "marker"]
        assert recorder.typed("sess-1") == ["only once", "marker"]
        frames = [f for f in conn.received if f["type"] != "ping"]
        assert frames[:2] == [{"type": "ack", "commandId": cid}] * 2
        results = [f for f in frames if f["type"] == "commandResult"]
        assert results == [
            {
                "type": "commandResult",
                "commandId": cid,
                "sessionId": "sess-1",
                "success": True,
                "error": None,
                "chatId": CHAT,
            },
            {
                "type": "commandResult",
                "commandId": "d" * 32,
                "sessionId": "sess-1",
                "success": True,
                "error": None,
                "chatId": CHAT,
            },
        ]
        assert [f for f in frames if f["type"] == "ack"] == [
            {"type": "ack", "commandId": cid}
        ] * 3 + [{"type": "ack", "commandId": "d" * 32}]
        inbox = await until(
            lambda: all(r["result_sent"] for r in run.inbox().values()) and run.inbox(),
            "every result marked sent",
        )
        assert sorted(inbox) == [cid, "d" * 32]
        assert inbox[cid]["status"] == "done"


@pytest.mark.parametrize(
    "frame",
    [
        {"type": "command", "sessionId": "sess-1", "command": "x", "chatId": CHAT},
        {"type": "command", "commandId": "", "sessionId": "sess-1", "command": "x", "chatId": CHAT},
        {
            "type": "command",
            "commandId": "a" * 65,
            "sessionId": "s",
            "command": "x",
            "chatId": CHAT,
        },
        {"type": "command", "commandId": 7, "sessionId": "sess-1", "command": "x", "chatId": CHAT},
        {"type": "command", "commandId": "bad1", "command": "x", "chatId": CHAT},
        {"type": "command", "commandId": "bad2", "sessionId": 5, "command": "x", "chatId": CHAT},
        {"type": "command", "commandId": "bad3", "sessionId": "sess-1", "chatId": CHAT},
        {
            "type": "command",
            "commandId": "bad4",
            "sessionId": "sess-1",
            "command": None,
            "chatId": 1,
        },
        {"type": "command", "commandId": "bad5", "sessionId": "sess-1", "command": "x"},
        {
            "type": "command",
            "commandId": "bad6",
            "sessionId": "sess-1",
            "command": "x",
            "chatId": [],
        },
        {"type": "command", "commandId": "bad7", "sessionId": "s", "command": "x", "chatId": True},
        {"type": "kill", "commandId": "bad8", "sessionId": "sess-1"},
        {"type": "launch", "directory": "/tmp", "prompt": "p", "chatId": CHAT},
    ],
)
async def test_malformed_command_frames_are_dropped_without_ack(
    agents: Agents, recorder: Recorder, agent_dir: Path, frame: dict
) -> None:
    bind(agent_dir, "sess-1")
    async with fake_server() as fake:
        run = await agents.start(fake.url, recorder.injector(), data_dir=agent_dir)
        conn = await fake.connection(0)
        await conn.send(frame)
        await conn.send({"type": "command"})
        for raw in ('"just a string"', "[1, 2]", "not json", '{"type": "command"'):
            await conn.ws.send_str(raw)
        # A valid command after the bad one: once it is acked and typed, the bad one was handled.
        ok = command_frame("e" * 64, "sess-1", "valid", chat_id=int(CHAT))
        await conn.send(ok)
        await conn.wait_for(lambda got: any(f["type"] == "commandResult" for f in got))
        assert [f for f in conn.received if f["type"] == "ack"] == [
            {"type": "ack", "commandId": "e" * 64}
        ]
        assert recorder.begun() == ["valid"]
        assert list(run.inbox()) == ["e" * 64]
        assert run.inbox()["e" * 64]["chat_id"] == CHAT  # a numeric chatId is kept as text


async def test_ack_is_sent_only_after_the_row_is_on_disk(
    agents: Agents, recorder: Recorder, agent_dir: Path
) -> None:
    bind(agent_dir, "sess-1")
    seen_at_ack: list[dict | None] = []
    async with fake_server() as fake:

        def on_frame(frame: dict) -> None:  # runs in the fake server the moment the ack arrives
            if frame["type"] == "ack":
                seen_at_ack.append(read_inbox(agent_dir).get(frame["commandId"]))

        fake.on_frame = on_frame
        await agents.start(fake.url, recorder.injector(), data_dir=agent_dir)
        conn = await fake.connection(0)
        await conn.send(command_frame("f" * 32, "sess-1", "wait:g1 stored first"))
        await conn.wait_for(lambda got: any(f["type"] == "ack" for f in got))
        recorder.open_gate("g1")
        await conn.wait_for(lambda got: any(f["type"] == "commandResult" for f in got))
    assert len(seen_at_ack) == 1 and seen_at_ack[0] is not None
    assert seen_at_ack[0]["command_id"] == "f" * 32
    assert seen_at_ack[0]["status"] in ("received", "executing")


# --- execution (§11.3) ---------------------------------------------------------------------------


async def test_one_command_at_a_time_per_session_sessions_in_parallel(
    server: Harness, agents: Agents, recorder: Recorder, agent_dir: Path
) -> None:
    await connected_with_session(server, agents, recorder.injector(), agent_dir, "sa", "sb")
    note_a = await server.notify("sa", "A stopped")
    note_b = await server.notify("sb", "B stopped")
    await reply(server, note_a["messageId"], "wait:a1 A first")
    await recorder.wait_begun("wait:a1 A first")
    await reply(server, note_a["messageId"], "A second")
    await reply(server, note_a["messageId"], "A third")
    await reply(server, note_b["messageId"], "B only")
    # B runs while A's first command is still being typed: sessions are independent.
    await recorder.wait_typed("B only")
    # A's later commands are stored and acked, but wait for the first one.
    for text in ("A second", "A third"):
        await wait_row(server, text, lambda r: r["status"] == "acked")
    assert recorder.begun("sa") == ["wait:a1 A first"]
    assert recorder.typed("sa") == []

    recorder.open_gate("a1")
    await wait_row(server, "A third", lambda r: r["result"] == "ok")
    events = [(e["ev"], e["text"]) for e in recorder.events() if e["sid"] == "sa"]
    assert events == [
        ("begin", "wait:a1 A first"),
        ("end", "wait:a1 A first"),
        ("begin", "A second"),
        ("end", "A second"),
        ("begin", "A third"),
        ("end", "A third"),
    ]
    assert recorder.typed("sb") == ["B only"]
    rows = await server.commands()
    assert sorted((r["command"], r["status"], r["result"]) for r in rows) == [
        ("A second", "acked", "ok"),
        ("A third", "acked", "ok"),
        ("B only", "acked", "ok"),
        ("wait:a1 A first", "acked", "ok"),
    ]


async def test_unknown_session_fails_and_the_chat_is_told(
    server: Harness, agents: Agents, recorder: Recorder, agent_dir: Path
) -> None:
    await connected_with_session(server, agents, recorder.injector(), agent_dir, "known")
    await server.register("ghost", MACHINE, "old")  # the server knows it, this machine does not
    sent = await server.notify("ghost", "ghost stopped")
    await reply(server, sent["messageId"], "hello ghost")
    row = await wait_row(server, "hello ghost", lambda r: r["result"] is not None)
    assert (row["status"], row["result"], row["result_error"]) == (
        "acked",
        "failed",
        UNKNOWN_SESSION,
    )
    assert UNKNOWN_SESSION == "Session not found. Wait for a new notification."
    fake = server.fake
    expected = "Command failed: Session not found. Wait for a new notification."
    await fake.wait_for(lambda: expected in fake.messages_to(CHAT))
    assert recorder.begun() == []


async def test_injection_failure_is_reported_with_its_error(
    server: Harness, agents: Agents, recorder: Recorder, agent_dir: Path
) -> None:
    run = await connected_with_session(server, agents, recorder.injector(), agent_dir, "s1")
    sent = await server.notify("s1", "stopped")
    await reply(server, sent["messageId"], "fail:now")
    row = await wait_row(server, "fail:now", lambda r: r["result"] is not None)
    error = f"inject command '{os.path.basename(sys.executable)}' failed (exit code 3): boom"
    assert (row["result"], row["result_error"]) == ("failed", error)
    fake = server.fake
    await fake.wait_for(lambda: f"Command failed: {error}" in fake.messages_to(CHAT))
    await until(lambda: run.inbox()[row["command_id"]]["result_sent"] == 1, "confirmed")
    inbox = run.inbox()[row["command_id"]]
    assert (inbox["status"], inbox["error"]) == ("failed", error)
    # The session keeps working after a failure.
    await reply(server, sent["messageId"], "next one")
    await wait_row(server, "next one", lambda r: r["result"] == "ok")
    assert recorder.typed("s1") == ["next one"]


async def test_launch_and_kill_frames_are_acked_and_reported_unsupported(
    start_server, fake_telegram: FakeTelegram, agents: Agents, recorder: Recorder, tmp_path: Path
) -> None:
    config = make_config(tmp_path / "data", fake_telegram)
    config = dataclasses.replace(
        config, server=dataclasses.replace(config.server, enable_launch=True)
    )
    server = await start_server(config=config)
    agent_dir = tmp_path / "agent-data"
    run = await connected_with_session(server, agents, recorder.injector(), agent_dir, "s1")
    fake = server.fake
    for text in ("/launch box-1 /srv/app write the docs", "/kill s1"):
        resp = await server.webhook(fake.make_message(CHAT, text))
        assert resp.status == 200
    launch = await wait_row(server, "write the docs", lambda r: r["result"] is not None)
    kill = await wait_row(server, "", lambda r: r["result"] is not None)
    assert (launch["command_type"], launch["status"], launch["result"], launch["result_error"]) == (
        "launch",
        "acked",
        "failed",
        "launch is not supported by this agent",
    )
    assert (kill["command_type"], kill["status"], kill["result"], kill["result_error"]) == (
        "kill",
        "acked",
        "failed",
        "kill is not supported by this agent",
    )
    for kind in ("launch", "kill"):
        text = f"Command failed: {kind} is not supported by this agent"
        await fake.wait_for(lambda text=text: text in fake.messages_to(CHAT))
    inbox = run.inbox()
    assert (inbox[launch["command_id"]]["kind"], inbox[launch["command_id"]]["status"]) == (
        "launch",
        "failed",
    )
    assert inbox[kill["command_id"]]["session_id"] == "s1"
    assert recorder.begun() == []


# --- connection: results kept while disconnected, server restart, backoff (§11.1, §11.2) ---------


@pytest.fixture
async def restartable(tmp_path: Path, fake_telegram: FakeTelegram) -> AsyncIterator[ServerRunner]:
    """A real server that can go away and come back on the same port and data dir."""
    runner = ServerRunner(make_config(tmp_path / "data", fake_telegram), fake_telegram)
    yield runner
    await runner.close()


async def boot_id(harness: Harness) -> str:
    resp = await harness.client.get("/admin/status", headers=harness.auth())
    return (await resp.json())["bootId"]


async def test_result_produced_while_disconnected_is_sent_after_reconnect(
    restartable: ServerRunner,
    agents: Agents,
    recorder: Recorder,
    agent_dir: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="ccr_box.agent")
    server = await restartable.start()
    sleeper = Sleeper(free=False)
    run = await connected_with_session(
        server, agents, recorder.injector(), agent_dir, "s1", sleeper=sleeper
    )
    sent = await server.notify("s1", "stopped")
    await reply(server, sent["messageId"], "wait:g1 slow typing")
    row = await wait_row(server, "wait:g1 slow typing", lambda r: r["status"] == "acked")
    await recorder.wait_begun("wait:g1 slow typing")

    await restartable.stop()  # the server goes away while the command is being typed
    await sleeper.wait_count(1)
    assert sleeper.delays == [0.75]  # boot had reset the backoff: 1 s × U(0.5, 1) with U = 0.75
    assert "disconnected: code=1001 reason='Server shutting down'" in caplog.text
    recorder.open_gate("g1")
    await recorder.wait_typed("wait:g1 slow typing")
    inbox = await until(
        lambda: run.inbox()[row["command_id"]]["status"] == "done" and run.inbox(),
        "the command done in the inbox",
    )
    assert inbox[row["command_id"]]["result_sent"] == 0  # kept for the next connection

    server = await restartable.start()
    await sleeper.allow(1)
    row = await wait_row(server, "wait:g1 slow typing", lambda r: r["result"] is not None)
    assert (row["status"], row["result"], row["result_error"]) == ("acked", "ok", None)
    await until(lambda: run.inbox()[row["command_id"]]["result_sent"] == 1, "marked sent")
    assert recorder.begun() == ["wait:g1 slow typing"]


async def test_server_restart_new_boot_id_logged_and_queued_commands_arrive(
    restartable: ServerRunner,
    agents: Agents,
    recorder: Recorder,
    agent_dir: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="ccr_box.agent")
    server = await restartable.start()
    first_boot = await boot_id(server)
    sleeper = Sleeper(free=False)
    run = await connected_with_session(
        server, agents, recorder.injector(), agent_dir, "s1", sleeper=sleeper
    )
    await until(lambda: run.agent.boot_id == first_boot, "first boot seen")
    sent = await server.notify("s1", "stopped")

    await restartable.stop()
    await sleeper.wait_count(1)
    server = await restartable.start()  # same data dir: sessions and message mappings survive
    second_boot = await boot_id(server)
    assert second_boot != first_boot
    fake = server.fake
    await reply(server, sent["messageId"], "queued while away 1")
    await reply(server, sent["messageId"], "queued while away 2")
    await fake.wait_for(
        lambda: fake.messages_to(CHAT).count("Command queued - proj-s1 is offline.") == 2
    )
    rows = await server.commands()
    assert [r["status"] for r in rows] == ["pending", "pending"]

    await sleeper.allow(1)
    for text in ("queued while away 1", "queued while away 2"):
        await wait_row(server, text, lambda r: r["result"] == "ok")
    assert recorder.typed("s1") == ["queued while away 1", "queued while away 2"]
    assert run.agent.boot_id == second_boot
    assert f"server boot {first_boot}" in caplog.text
    assert f"server boot {second_boot} (server restarted)" in caplog.text
    assert f"server boot {first_boot} (server restarted)" not in caplog.text


async def test_reconnect_backoff_doubles_to_the_cap_and_resets_after_boot(
    restartable: ServerRunner,
    agents: Agents,
    recorder: Recorder,
    agent_dir: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="ccr_box.agent")
    sleeper = Sleeper(free=False)
    # Nothing listens yet: every attempt fails with "connection refused".
    run = await agents.start(restartable.url, recorder.injector(), sleeper=sleeper)
    await sleeper.wait_count(1)
    await sleeper.allow(6)
    delays = await sleeper.wait_count(7)
    # d = 1, 2, 4, 8, 16, 30 (cap), 30 seconds, each × U(0.5, 1.0) = 0.75 here.
    assert delays == [0.75, 1.5, 3.0, 6.0, 12.0, 22.5, 22.5]
    assert caplog.text.count(f"cannot connect to {restartable.url}: ClientConnectorError") == 7

    server = await restartable.start()
    await sleeper.allow(1)
    await until(lambda: run.agent.boot_id is not None, "boot received")
    await restartable.stop()  # a dropped connection after boot waits 1 s × U again
    delays = await sleeper.wait_count(8)
    assert delays[7] == 0.75
    assert server is not None


async def test_backoff_resets_after_pong_and_grows_for_connections_without_boot_or_pong(
    agents: Agents, recorder: Recorder
) -> None:
    sleeper = Sleeper(free=False)
    async with fake_server(boot=None, answer_pings=False) as fake:
        await agents.start(fake.url, recorder.injector(), sleeper=sleeper, ping_interval_s=0.02)
        for n in range(3):  # accepted, then dropped before any boot or pong: d keeps doubling
            conn = await fake.connection(n)
            await conn.wait_for(lambda got: {"type": "ping"} in got)
            await conn.ws.close(code=1011, message=b"bye")
            await sleeper.wait_count(n + 1)
            await sleeper.allow(1)
        assert sleeper.delays == [0.75, 1.5, 3.0]
        fake.answer_pings = True  # the next connection receives a pong (still no boot)
        conn = await fake.connection(3)
        await conn.wait_for(lambda got: {"type": "ping"} in got)
        await conn.ws.close(code=1011, message=b"bye")
        await sleeper.wait_count(4)
        assert sleeper.delays == [0.75, 1.5, 3.0, 0.75]


async def test_replaced_connection_waits_thirty_seconds_with_jitter(
    server: Harness,
    agents: Agents,
    recorder: Recorder,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="ccr_box.agent")
    sleeper = Sleeper(free=False)
    run = await agents.start(server.url(""), recorder.injector(), sleeper=sleeper, rand=lambda: 0.2)
    await until(lambda: run.agent.boot_id is not None, "boot received")
    other = await server.connect(MACHINE)  # a second agent with the same machineId
    delays = await sleeper.wait_count(1)
    assert delays == [30 * (0.5 + 0.5 * 0.2)]  # 18 s, not the 1 s × U reconnect delay
    assert f"another agent uses machineId {MACHINE}" in caplog.text
    assert "disconnected: code=4000 reason='Replaced by new connection'" in caplog.text
    assert MACHINE in server.hub.connected()
    await other.close()


async def test_no_pong_closes_with_4001_heartbeat_timeout_and_reconnects(
    agents: Agents, recorder: Recorder, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="ccr_box.agent")
    sleeper = Sleeper(free=False)
    async with fake_server(answer_pings=False) as fake:
        run = await agents.start(
            fake.url, recorder.injector(), sleeper=sleeper, ping_interval_s=0.05, pong_timeout_s=0.3
        )
        conn = await fake.connection(0)
        await asyncio.wait_for(conn.ended.wait(), 5)
        assert conn.close == (4001, "heartbeat-timeout")
        assert all(f == {"type": "ping"} for f in conn.received)
        # It waited out the pong timeout, pinging every 50 ms meanwhile (no wall-clock check:
        # the pings sent are the agent's own measure of the time that passed).
        assert len(conn.received) >= 4
        assert await sleeper.wait_count(1) == [0.75]  # boot had reset the backoff
        assert "disconnected: code=4001 reason='heartbeat-timeout'" in caplog.text
        await sleeper.allow(1)
        await fake.connection(1)  # and it reconnects
        assert run.agent is not None


async def test_pongs_keep_the_connection_alive(agents: Agents, recorder: Recorder) -> None:
    async with fake_server(answer_pings=True) as fake:
        await agents.start(fake.url, recorder.injector(), ping_interval_s=0.03, pong_timeout_s=0.15)
        conn = await fake.connection(0)
        # 20 pings = 0.6 s, four times the pong timeout: still the same open connection.
        await conn.wait_for(lambda got: len(got) >= 20)
        assert not conn.ended.is_set() and len(fake.conns) == 1


async def test_connection_url_subprotocols_and_defaults(agents: Agents, recorder: Recorder) -> None:
    async with fake_server() as fake:
        await agents.start(fake.url, recorder.injector(), machine_id="my-Box-7")
        conn = await fake.connection(0)
        assert conn.query == {"machineId": "my-Box-7"}
        assert [p.strip() for p in conn.protocols.split(",")] == ["ccr", API_KEY]
    settings = AgentSettings(server_url="http://h", api_key="k", machine_id="m")
    assert (settings.ping_interval_s, settings.pong_timeout_s, settings.reconnect_cap_s) == (
        30.0,
        90.0,
        30.0,
    )
    assert (settings.close_timeout_s, settings.replaced_wait_s) == (5.0, 30.0)
    assert ws_url("http://host:8787", "box") == "ws://host:8787/ws?machineId=box"
    assert ws_url("https://host/", "a b/c") == "wss://host/ws?machineId=a%20b%2Fc"


# --- process start: replay received rows, report interrupted ones (§11.2) ------------------------


async def test_restart_runs_received_commands_and_reports_the_interrupted_one(
    server: Harness, agents: Agents, recorder: Recorder, agent_dir: Path
) -> None:
    first = await connected_with_session(server, agents, recorder.injector(), agent_dir, "s1")
    sent = await server.notify("s1", "stopped")
    await reply(server, sent["messageId"], "wait:never being typed")
    await recorder.wait_begun("wait:never being typed")
    for text in ("then this", "and this"):
        await reply(server, sent["messageId"], text)
        await wait_row(server, text, lambda r: r["status"] == "acked")
    await first.stop()  # the agent stops while typing: the row stays `executing`
    by_text = {json.loads(r["payload"])["command"]: r for r in read_inbox(agent_dir).values()}
    assert {t: r["status"] for t, r in by_text.items()} == {
        "wait:never being typed": "executing",
        "then this": "received",
        "and this": "received",
    }

    await agents.start(server.url(""), recorder.injector(), data_dir=agent_dir)
    for text in ("then this", "and this"):
        await wait_row(server, text, lambda r: r["result"] == "ok")
    row = await wait_row(server, "wait:never being typed", lambda r: r["result"] is not None)
    assert (row["result"], row["result_error"]) == ("failed", INTERRUPTED)
    assert INTERRUPTED == "interrupted by agent restart (not re-run)"
    fake = server.fake
    await fake.wait_for(
        lambda: (
            "Command failed: interrupted by agent restart (not re-run)" in fake.messages_to(CHAT)
        )
    )
    notice = interrupted_text("wait:never being typed", MACHINE)
    await fake.wait_for(lambda: notice in fake.messages_to(CHAT))
    assert "may not have been delivered" in notice and "wait:never being typed" in notice
    assert recorder.begun() == ["wait:never being typed", "then this", "and this"]
    assert recorder.typed() == ["then this", "and this"]
    await until(
        lambda: read_inbox(agent_dir)[row["command_id"]]["result_sent"] == 1,
        "the interrupted result marked sent",
    )
    inbox = read_inbox(agent_dir)[row["command_id"]]
    assert (inbox["status"], inbox["error"]) == ("failed", INTERRUPTED)

    # The notice is a normal notification: replying to it sends the text again.
    notice_id = next(m["message_id"] for m in fake.sent if m.get("text") == notice)
    await reply(server, notice_id, "resent by the user")
    await wait_row(server, "resent by the user", lambda r: r["result"] == "ok")
    assert recorder.typed() == ["then this", "and this", "resent by the user"]


async def test_interrupted_notice_reaches_the_user_when_the_server_forgot_the_session(
    server: Harness, agents: Agents, recorder: Recorder, agent_dir: Path
) -> None:
    """The server lost its sessions (new data dir, retention): the notice re-registers first."""
    bind(agent_dir, "s9", label="proj")
    store = AgentStore.in_dir(agent_dir)
    store.receive("9" * 32, "command", "s9", CHAT, command_frame("9" * 32, "s9", "lost words"))
    store.set_status("9" * 32, "executing")
    store.close()
    await agents.start(server.url(""), recorder.injector(), data_dir=agent_dir)
    fake = server.fake
    notice = interrupted_text("lost words", MACHINE)
    await fake.wait_for(lambda: notice in fake.messages_to(CHAT))
    await fake.wait_for(
        lambda: (
            "Command failed: interrupted by agent restart (not re-run)" in fake.messages_to(CHAT)
        )
    )
    assert recorder.begun() == []


async def test_stored_notifications_are_retried_while_connected(
    server: Harness, agents: Agents, recorder: Recorder, agent_dir: Path
) -> None:
    run = await connected_with_session(
        server, agents, recorder.injector(), agent_dir, "s1", notification_retry_s=0.05
    )
    # A hook could not reach the server a moment ago and left its notification in the store.
    store = AgentStore.in_dir(agent_dir)
    body = {"sessionId": "s1", "chatId": CHAT, "text": "kept by a hook"}
    store.keep_notification("s1", body, "ServerUnavailable")
    store.close()
    fake = server.fake
    await fake.wait_for(lambda: "kept by a hook" in fake.messages_to(CHAT))
    await until(lambda: not AgentStore.in_dir(agent_dir).pending_notifications(), "dropped")
    assert fake.messages_to(CHAT).count("kept by a hook") == 1
    assert run.agent.connected.is_set()


async def test_a_result_counts_as_sent_only_once_the_server_answered_the_ping_after_it(
    agents: Agents, recorder: Recorder, agent_dir: Path
) -> None:
    """A result written to a connection that dies before the server read it is sent again."""
    bind(agent_dir, "s1")
    async with fake_server(answer_pings=False) as fake:
        run = await agents.start(fake.url, recorder.injector(), data_dir=agent_dir)
        conn = await fake.connection(0)
        cid = "7" * 32
        await conn.send(command_frame(cid, "s1", "confirm me"))
        got = await conn.wait_for(lambda got: got[-2:] == [result_ok(cid), {"type": "ping"}])
        assert got[0] == {"type": "ack", "commandId": cid}
        assert run.inbox()[cid]["result_sent"] == 0  # no pong: not confirmed
        fake.answer_pings = True
        await conn.ws.close(code=1012, message=b"restart")  # the server went away unconfirmed
        conn2 = await fake.connection(1)
        await conn2.wait_for(lambda got: result_ok(cid) in got)
        await until(lambda: run.inbox()[cid]["result_sent"] == 1, "confirmed")
        assert recorder.begun() == ["confirm me"]


def result_ok(cid: str, sid: str = "s1") -> dict:
    return {
        "type": "commandResult",
        "commandId": cid,
        "sessionId": sid,
        "success": True,
        "error": None,
        "chatId": CHAT,
    }


async def test_heartbeat_close_that_never_completes_drops_the_socket(
    agents: Agents, recorder: Recorder
) -> None:
    """The server neither pongs nor answers the 4001 close: the socket is dropped after the close
    timeout and the agent moves on to reconnecting."""
    sleeper = Sleeper(free=False)
    async with DeafServer() as deaf:
        await agents.start(
            deaf.url,
            recorder.injector(),
            sleeper=sleeper,
            ping_interval_s=0.05,
            pong_timeout_s=0.2,
            close_timeout_s=0.3,
        )
        await asyncio.wait_for(deaf.dropped.wait(), 5)
        assert deaf.opened_at is not None and deaf.dropped_at is not None
        closes = [p for op, p in deaf.frames if op == 0x8]
        assert closes == [(4001).to_bytes(2, "big") + b"heartbeat-timeout"]
        assert {p for op, p in deaf.frames if op == 0x1} == {b'{"type":"ping"}'}
        assert 0.5 <= deaf.dropped_at - deaf.opened_at < 3.0  # 0.2 s no pong + 0.3 s close wait
        assert await sleeper.wait_count(1) == [0.75]
