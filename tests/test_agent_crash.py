"""``ccr-box agent`` as a real child process, SIGKILLed at various points of a stream of commands
(contract §11.2, §6.9): nothing is typed twice, nothing is lost silently.

The server is a real in-process ccr-box (fake Telegram, webhook mode); the agent runs
``python -m ccr_box agent`` with ``CCR_BOX_INJECT_COMMAND`` = the recording inject command of
``tests.helpers_agent`` (which can be held on a gate file to SIGKILL the agent mid-typing).
"""

from __future__ import annotations

import json
import shlex
import signal
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from ccr_box.agent.notify import interrupted_text
from ccr_box.agent.store import INTERRUPTED
from ccr_box.config import default_machine_id
from tests.conftest import API_KEY, CHAT, Harness, make_config
from tests.fake_telegram import FakeTelegram
from tests.helpers_agent import (
    Recorder,
    ServerRunner,
    bind,
    read_inbox,
    registered,
    reply,
    rows_by_text,
    wait_row,
)
from tests.helpers_proc import Proc, clean_env, run_ccr_box
from tests.helpers_wait import until

MACHINE = "crash-agent"
FAILED_INTERRUPTED = "Command failed: interrupted by agent restart (not re-run)"


@pytest.fixture
def recorder(tmp_path: Path) -> Iterator[Recorder]:
    rec = Recorder(tmp_path / "rec")
    yield rec
    rec.kill_leftovers()


@pytest.fixture
def agent_dir(tmp_path: Path) -> Path:
    return tmp_path / "agent-data"


def agent_env(tmp_path: Path, url: str, agent_dir: Path, recorder: Recorder, **extra: str):
    values = {
        "CCR_WORKER_URL": url.rstrip("/"),
        "CCR_API_KEY": API_KEY,
        "CCR_MACHINE_ID": MACHINE,
        "CCR_BOX_DATA_DIR": str(agent_dir),
        "CCR_BOX_CONFIG": str(tmp_path / "no-such-config.toml"),
        "CCR_BOX_INJECT_COMMAND": shlex.join(recorder.argv),
        **extra,
    }
    return clean_env(**{k: v for k, v in values.items() if v})


async def start_agent(procs: list[Proc], env: dict[str, str]) -> Proc:
    proc = await Proc.start("agent", env=env)
    procs.append(proc)
    await proc.wait_line("connected to ")
    return proc


async def sigkill(proc: Proc, recorder: Recorder) -> None:
    proc.send_signal(signal.SIGKILL)
    assert await proc.wait_exit() == -signal.SIGKILL
    # The inject command runs in its own session and would survive the agent: a real tmux
    # send-keys would have been cut short too.
    recorder.kill_leftovers()


def texts_by_status(agent_dir: Path) -> dict[str, str]:
    return {
        json.loads(r["payload"])["command"]: r["status"] for r in read_inbox(agent_dir).values()
    }


async def test_sigkill_while_typing_and_before_typing(
    server: Harness, procs: list[Proc], recorder: Recorder, agent_dir: Path, tmp_path: Path
) -> None:
    """(a) acked but not yet executed -> runs once after the restart; (b) being typed (row
    `executing`) -> never re-run, reported to the user with its text."""
    bind(agent_dir, "s1", label="proj")
    env = agent_env(tmp_path, server.url(""), agent_dir, recorder)
    agent = await start_agent(procs, env)
    await until(lambda: registered(server, "s1", MACHINE), "registered")
    sent = await server.notify("s1", "stopped")
    await reply(server, sent["messageId"], "wait:g1 half typed")
    await recorder.wait_begun("wait:g1 half typed")
    for text in ("acked then killed 1", "acked then killed 2"):
        await reply(server, sent["messageId"], text)
        await wait_row(server, text, lambda r: r["status"] == "acked")

    await sigkill(agent, recorder)
    assert texts_by_status(agent_dir) == {
        "wait:g1 half typed": "executing",
        "acked then killed 1": "received",
        "acked then killed 2": "received",
    }

    agent = await start_agent(procs, env)
    for text in ("acked then killed 1", "acked then killed 2"):
        row = await wait_row(server, text, lambda r: r["result"] is not None)
        assert (row["result"], row["result_error"]) == ("ok", None)
    row = await wait_row(server, "wait:g1 half typed", lambda r: r["result"] is not None)
    assert (row["status"], row["result"], row["result_error"]) == ("acked", "failed", INTERRUPTED)
    fake = server.fake
    notice = interrupted_text("wait:g1 half typed", MACHINE)
    await fake.wait_for(lambda: notice in fake.messages_to(CHAT))
    await fake.wait_for(lambda: FAILED_INTERRUPTED in fake.messages_to(CHAT))
    assert "may not have been delivered" in notice
    assert recorder.begun() == ["wait:g1 half typed", "acked then killed 1", "acked then killed 2"]
    assert recorder.typed() == ["acked then killed 1", "acked then killed 2"]
    assert "was being typed when the agent stopped; not re-run" in agent.stderr
    assert "Traceback" not in agent.stderr
    await until(
        lambda: (
            texts_by_status(agent_dir)
            == {
                "wait:g1 half typed": "failed",
                "acked then killed 1": "done",
                "acked then killed 2": "done",
            }
        ),
        "inbox final states",
    )
    assert fake.messages_to(CHAT).count(FAILED_INTERRUPTED) == 1
    assert fake.messages_to(CHAT).count(notice) == 1


@pytest.fixture
async def restartable(tmp_path: Path, fake_telegram: FakeTelegram) -> AsyncIterator[ServerRunner]:
    runner = ServerRunner(make_config(tmp_path / "data", fake_telegram), fake_telegram)
    yield runner
    await runner.close()


async def test_sigkill_after_done_before_the_result_was_sent(
    restartable: ServerRunner,
    procs: list[Proc],
    recorder: Recorder,
    agent_dir: Path,
    tmp_path: Path,
) -> None:
    """(c) done/failed while the server is away, SIGKILL, restart: the results arrive."""
    server = await restartable.start()
    bind(agent_dir, "s1", pane="%1", label="one")
    bind(agent_dir, "s2", pane="%2", label="two")
    env = agent_env(tmp_path, restartable.url, agent_dir, recorder)
    agent = await start_agent(procs, env)
    for sid in ("s1", "s2"):
        await until(lambda sid=sid: registered(server, sid, MACHINE), f"{sid} registered")
    ok_note = await server.notify("s1", "one stopped")
    fail_note = await server.notify("s2", "two stopped")
    await reply(server, ok_note["messageId"], "wait:c1 finishes offline")
    await reply(server, fail_note["messageId"], "wait:c2 fail: fails offline")
    for text in ("wait:c1 finishes offline", "wait:c2 fail: fails offline"):
        await recorder.wait_begun(text)
        await wait_row(server, text, lambda r: r["status"] == "acked")

    await restartable.stop()
    await agent.wait_line("disconnected: code=1001 reason='Server shutting down'")
    recorder.open_gate("c1")
    recorder.open_gate("c2")
    await recorder.wait_typed("wait:c1 finishes offline")
    await until(
        lambda: (
            texts_by_status(agent_dir)
            == {"wait:c1 finishes offline": "done", "wait:c2 fail: fails offline": "failed"}
        ),
        "done and failed while disconnected",
    )
    assert [r["result_sent"] for r in read_inbox(agent_dir).values()] == [0, 0]
    await sigkill(agent, recorder)

    server = await restartable.start()
    agent = await start_agent(procs, env)
    done = await wait_row(server, "wait:c1 finishes offline", lambda r: r["result"] is not None)
    assert (done["result"], done["result_error"]) == ("ok", None)
    failed = await wait_row(
        server, "wait:c2 fail: fails offline", lambda r: r["result"] is not None
    )
    assert failed["result"] == "failed"
    assert failed["result_error"].endswith("failed (exit code 3): boom")
    fake = server.fake
    await fake.wait_for(
        lambda: f"Command failed: {failed['result_error']}" in fake.messages_to(CHAT)
    )
    await until(
        lambda: all(r["result_sent"] == 1 for r in read_inbox(agent_dir).values()),
        "every result marked sent",
    )
    assert sorted(recorder.begun()) == ["wait:c1 finishes offline", "wait:c2 fail: fails offline"]
    assert recorder.typed() == ["wait:c1 finishes offline"]
    assert FAILED_INTERRUPTED not in fake.messages_to(CHAT)


async def test_sigkill_at_various_points_of_a_stream_nothing_twice_nothing_lost(
    server: Harness, procs: list[Proc], recorder: Recorder, agent_dir: Path, tmp_path: Path
) -> None:
    bind(agent_dir, "s1", pane="%1", label="one")
    bind(agent_dir, "s2", pane="%2", label="two")
    env = agent_env(tmp_path, server.url(""), agent_dir, recorder)
    agent = await start_agent(procs, env)
    for sid in ("s1", "s2"):
        await until(lambda sid=sid: registered(server, sid, MACHINE), f"{sid} registered")
    notes = {sid: (await server.notify(sid, f"{sid} stopped"))["messageId"] for sid in ("s1", "s2")}

    sent: list[str] = []
    # Kill points: right after sending a burst, after the first ack, after most acks.
    for burst, acks_before_kill in enumerate((0, 1, 5)):
        for i in range(6):
            text = f"burst{burst} cmd{i}"
            await reply(server, notes["s1" if i % 2 == 0 else "s2"], text)
            sent.append(text)

        async def acked(n: int = acks_before_kill, burst: int = burst) -> bool:
            rows = await rows_by_text(server)
            mine = [r for t, r in rows.items() if t.startswith(f"burst{burst} ")]
            return sum(r["status"] == "acked" for r in mine) >= n

        await until(acked, f"{acks_before_kill} acks")
        await sigkill(agent, recorder)
        agent = await start_agent(procs, env)

    async def all_reported() -> dict[str, dict[str, Any]] | None:
        rows = await rows_by_text(server)
        return rows if all(r["result"] is not None for r in rows.values()) else None

    rows = await until(all_reported, "every command has a result", timeout=10)
    assert sorted(rows) == sorted(sent)
    begun = recorder.begun()
    typed = recorder.typed()
    fake = server.fake
    interrupted = [t for t, r in rows.items() if r["result"] == "failed"]
    for text, row in rows.items():
        assert begun.count(text) <= 1, f"{text!r} typed twice: {begun}"  # nothing typed twice
        if row["result"] == "ok":
            assert typed.count(text) == 1, text
        else:  # nothing lost silently: reported as interrupted, with its text
            assert row["result_error"] == INTERRUPTED, row
            notice = interrupted_text(text, MACHINE)
            await fake.wait_for(lambda notice=notice: notice in fake.messages_to(CHAT))
    await fake.wait_for(
        lambda: fake.messages_to(CHAT).count(FAILED_INTERRUPTED) == len(interrupted)
    )
    # Per session, commands that ran did so in the order they were sent. (An inject command
    # started just before the SIGKILL may have read no text at all: it began with "".)
    for sid, parity in (("s1", 0), ("s2", 1)):
        ran = [t for t in recorder.begun(sid) if t]
        assert ran == [t for t in sent if int(t[-1]) % 2 == parity and t in ran]
    assert set(begun) <= {*sent, ""}
    assert "Traceback" not in agent.stderr


# --- configuration ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("missing", "message"),
    [
        (
            "CCR_WORKER_URL",
            "ccr-box: config error: agent.server_url (CCR_WORKER_URL): is required: the server's"
            " base URL, e.g. http://homeserver:8787",
        ),
        (
            "CCR_API_KEY",
            "ccr-box: config error: agent.api_key (CCR_API_KEY): is required: the server's"
            " server.api_key",
        ),
    ],
)
async def test_missing_url_or_key_exits_2_with_a_clear_message(
    tmp_path: Path, recorder: Recorder, missing: str, message: str
) -> None:
    env = agent_env(tmp_path, "http://127.0.0.1:9", tmp_path / "agent", recorder)
    del env[missing]
    proc = await run_ccr_box("agent", env=env)
    assert proc.process.returncode == 2
    assert proc.lines == [message]
    assert proc.stdout == ""


async def test_default_machine_id_is_derived_from_the_host_name(
    server: Harness, procs: list[Proc], recorder: Recorder, agent_dir: Path, tmp_path: Path
) -> None:
    env = agent_env(tmp_path, server.url(""), agent_dir, recorder, CCR_MACHINE_ID="")
    assert "CCR_MACHINE_ID" not in env
    agent = await start_agent(procs, env)
    expected = default_machine_id()
    await until(lambda: expected in server.hub.connected(), "connected under the host name")
    assert f"as {expected}" in await agent.wait_line("connected to ")
