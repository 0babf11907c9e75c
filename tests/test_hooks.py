"""Claude Code hooks (contract §11.4): ``ccr-box hook <event>`` run as a real child process.

Each hook gets a payload shaped like the ones Claude Code writes on stdin (SessionStart, Stop,
Notification, SessionEnd) and talks to a real in-process server whose Telegram is the fake Bot
API. A hook must print nothing on stdout, always exit 0, keep a notification locally when the
server is down (the agent sends it later), and never talk to Telegram itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shlex
import shutil
import socket
import subprocess
import sys
import tempfile
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from ccr_box.agent.hooks import hook_timeout
from ccr_box.agent.inject import make_injector
from ccr_box.agent.notify import (
    FALLBACK_BODY,
    MAX_BODY_CHARS,
    NEEDS_INPUT,
    STOP,
    TRANSCRIPT_TAIL_BYTES,
    clip_body,
    last_assistant_text,
    notification_text,
    short_cwd,
)
from ccr_box.agent.runner import Agent, AgentSettings
from ccr_box.agent.store import AGENT_DB, AgentStore, AsyncStore
from tests.conftest import API_KEY, CHAT, Harness
from tests.helpers_proc import REPO_ROOT, clean_env
from tests.helpers_wait import until

MACHINE = "devbox-1"
CWD = "/home/dev/work/api-server"
LABEL = "api-server"
PANE = "%3"
TMUX = "/tmp/tmux-0/default,1234,0"
SID_A = "3f2a9c1e-7b4d-4e8a-9c2f-1a2b3c4d5e6f"
SID_B = "8d1e4f2a-0c3b-4a5d-8e6f-7a8b9c0d1e2f"
SID_C = "c0ffee00-1111-4222-8333-444455556666"
FOOTER = f"\n\n📂 work/api-server · 🖥 {MACHINE}\n↩️ Reply to this message to answer"


def transcript_path(session_id: str, cwd: str = CWD) -> str:
    return f"/home/dev/.claude/projects/{cwd.replace('/', '-')}/{session_id}.jsonl"


# --- payloads as Claude Code writes them on the hook's stdin -------------------------------------


def common(event: str, session_id: str, cwd: str = CWD) -> dict[str, Any]:
    return {
        "session_id": session_id,
        "transcript_path": transcript_path(session_id, cwd),
        "cwd": cwd,
        "permission_mode": "default",
        "hook_event_name": event,
    }


def session_start(session_id: str, cwd: str = CWD, source: str = "startup") -> dict[str, Any]:
    return {**common("SessionStart", session_id, cwd), "source": source, "model": "claude-opus-4-5"}


def stop(session_id: str, message: str | None = None, **extra: Any) -> dict[str, Any]:
    payload = {**common("Stop", session_id), "stop_hook_active": False, **extra}
    if message is not None:
        payload["last_assistant_message"] = message
    return payload


def notification(session_id: str, kind: str, message: str, title: str = "") -> dict[str, Any]:
    payload = {**common("Notification", session_id), "message": message, "notification_type": kind}
    if title:
        payload["title"] = title
    return payload


def session_end(session_id: str, reason: str = "prompt_input_exit") -> dict[str, Any]:
    return {**common("SessionEnd", session_id), "reason": reason}


# --- a realistic transcript (JSONL, one entry per line) -------------------------------------------


def entry(kind: str, content: Any, n: int, session_id: str = SID_A, **extra: Any) -> dict:
    message: dict[str, Any] = {"role": kind, "content": content}
    if kind == "assistant":
        message = {
            "id": f"msg_01{n:022d}",
            "type": "message",
            "role": "assistant",
            "model": "claude-opus-4-5-20251101",
            "content": content,
            "stop_reason": None,
            "stop_sequence": None,
            "usage": {"input_tokens": 4, "output_tokens": 120, "cache_read_input_tokens": 14000},
        }
    return {
        "parentUuid": f"uuid-{n - 1}" if n > 1 else None,
        "isSidechain": False,
        "userType": "external",
        "cwd": CWD,
        "sessionId": session_id,
        "version": "2.1.50",
        "gitBranch": "main",
        "type": kind,
        "message": message,
        "uuid": f"uuid-{n}",
        "timestamp": f"2026-03-01T10:00:{n:02d}.000Z",
        **({"requestId": f"req_{n:024d}"} if kind == "assistant" else {}),
        **extra,
    }


FINAL_TEXT = "Fixed: `parse_date` now accepts ISO weeks.\n\nAll 42 tests pass."


def write_transcript(path: Path, session_id: str = SID_A) -> Path:
    lines = [
        {"type": "summary", "summary": "Fix date parsing", "leafUuid": "uuid-9"},
        entry("user", "the date tests fail, can you fix them?", 1, session_id),
        entry("assistant", [{"type": "thinking", "thinking": "Look first.", "signature": "x"}], 2),
        entry("assistant", [{"type": "text", "text": "Let me run the tests first."}], 3),
        entry(
            "assistant",
            [
                {
                    "type": "tool_use",
                    "id": "toolu_01A",
                    "name": "Bash",
                    "input": {"command": "pytest -q tests/test_dates.py"},
                }
            ],
            4,
        ),
        entry(
            "user",
            [{"type": "tool_result", "tool_use_id": "toolu_01A", "content": "1 failed, 41 passed"}],
            5,
            toolUseResult={"stdout": "1 failed, 41 passed", "stderr": "", "interrupted": False},
        ),
        entry("assistant", [{"type": "text", "text": FINAL_TEXT}], 6),
        # A sub-agent's turn logged in the same file must not be taken for the answer.
        entry("assistant", [{"type": "text", "text": "sub-agent chatter"}], 7, isSidechain=True),
        entry(
            "assistant",
            [{"type": "tool_use", "id": "toolu_01B", "name": "TodoWrite", "input": {"todos": []}}],
            8,
        ),
        {"type": "system", "subtype": "stop_hook_summary", "content": "", "uuid": "uuid-9"},
    ]
    path.write_text("".join(json.dumps(line) + "\n" for line in lines), encoding="utf-8")
    return path


# --- running the hook ---------------------------------------------------------------------------


@dataclass
class HookRun:
    returncode: int
    stdout: bytes
    stderr: str


async def run_hook(
    event: str | None,
    payload: Any,
    env: dict[str, str],
    *,
    raw: bytes | None = None,
    timeout: float = 15.0,
) -> HookRun:
    """``python -m ccr_box hook [event]`` with ``payload`` on stdin; asserts exit 0, no stdout."""
    data = raw if raw is not None else json.dumps(payload).encode()
    argv = [sys.executable, "-m", "ccr_box", "hook", *([event] if event else [])]
    proc = await asyncio.create_subprocess_exec(
        *argv,
        env=env,
        cwd=str(REPO_ROOT),
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(data), timeout)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    run = HookRun(proc.returncode, out, err.decode("utf-8", "replace"))
    assert run.returncode == 0, run
    assert run.stdout == b"", run  # SessionStart stdout would enter Claude's context
    return run


def closed_port_url() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}"


class Machine:
    """One machine's hook environment and its local agent store."""

    def __init__(self, server: Harness, data_dir: Path) -> None:
        self.server = server
        self.data_dir = data_dir
        self.url = server.url("").rstrip("/")

    def env(self, **overrides: str | None) -> dict[str, str]:
        base = clean_env(
            CCR_WORKER_URL=self.url,
            CCR_API_KEY=API_KEY,
            CCR_MACHINE_ID=MACHINE,
            CCR_CHAT_ID=CHAT,
            CCR_BOX_DATA_DIR=str(self.data_dir),
            CCR_BOX_CONFIG=str(self.data_dir.parent / "missing.toml"),
            TMUX_PANE=PANE,
            TMUX=TMUX,
        )
        for key, value in overrides.items():
            if value is None:
                base.pop(key, None)
            else:
                base[key] = value
        return base

    async def hook(self, event: str | None, payload: Any, **env: str | None) -> HookRun:
        return await run_hook(event, payload, self.env(**env))

    def store(self) -> AgentStore:
        return AgentStore.in_dir(self.data_dir)

    def local_sessions(self) -> list[dict[str, Any]]:
        store = self.store()
        try:
            return [
                {k: s[k] for k in ("session_id", "pane", "tmux_socket", "cwd", "label")}
                for s in store.sessions()
            ]
        finally:
            store.close()

    def pending(self) -> list[dict[str, Any]]:
        store = self.store()
        try:
            return store.pending_notifications()
        finally:
            store.close()

    def log(self) -> str:
        path = self.data_dir / "hooks.log"
        return path.read_text(encoding="utf-8") if path.exists() else ""

    async def server_sessions(self) -> list[dict[str, Any]]:
        resp = await self.server.client.get("/sessions", headers=Harness.auth())
        assert resp.status == 200
        return [
            {k: row[k] for k in ("session_id", "machine_id", "label")} for row in await resp.json()
        ]


@pytest.fixture
def machine(server: Harness, tmp_path: Path) -> Machine:
    return Machine(server, tmp_path / "agent")


def local(session_id: str, pane: str = PANE, sock: str | None = "/tmp/tmux-0/default") -> dict:
    return {"session_id": session_id, "pane": pane, "tmux_socket": sock, "cwd": CWD, "label": LABEL}


@contextlib.asynccontextmanager
async def running_agent(machine: Machine, injector=None, **settings_kw: Any):
    settings = AgentSettings(
        server_url=machine.url, api_key=API_KEY, machine_id=MACHINE, chat_id=CHAT, **settings_kw
    )
    store = await AsyncStore(machine.data_dir / AGENT_DB).open()
    agent = Agent(settings, store, injector or make_injector("", 100))
    task = asyncio.create_task(agent.run())
    try:
        yield agent, store
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await store.close()


# --- SessionStart ---------------------------------------------------------------------------------


async def test_session_start_registers_and_binds_the_pane(machine: Machine) -> None:
    run = await machine.hook("SessionStart", session_start(SID_A))
    assert run.stderr == ""
    assert await machine.server_sessions() == [
        {"session_id": SID_A, "machine_id": MACHINE, "label": LABEL}
    ]
    assert machine.local_sessions() == [local(SID_A)]
    assert f"session {SID_A} bound to pane %3" in machine.log()


async def test_without_tmux_pane_nothing_is_registered(machine: Machine) -> None:
    await machine.hook("SessionStart", session_start(SID_A), TMUX_PANE=None, TMUX=None)
    assert await machine.server_sessions() == []
    assert machine.local_sessions() == []
    assert f"session {SID_A} is not in tmux ($TMUX_PANE unset); not registered" in machine.log()


async def test_sessions_starting_together_on_a_fresh_machine(machine: Machine) -> None:
    # e.g. tmux-resurrect restoring several `claude --resume` panes: every hook opens the new store.
    ids = [f"{SID_C[:-2]}{n:02d}" for n in range(6)]
    await asyncio.gather(
        *(
            machine.hook("SessionStart", session_start(sid), TMUX_PANE=f"%{n}")
            for n, sid in enumerate(ids)
        )
    )
    assert sorted(s["session_id"] for s in await machine.server_sessions()) == ids
    assert sorted((s["session_id"], s["pane"]) for s in machine.local_sessions()) == [
        (sid, f"%{n}") for n, sid in enumerate(ids)
    ]
    assert "Traceback" not in machine.log()


async def test_a_new_session_on_the_same_pane_displaces_the_old_one(machine: Machine) -> None:
    other_socket = "/tmp/tmux-0/work,999,0"
    await machine.hook("SessionStart", session_start(SID_A))
    # The same pane id on another tmux server is another pane: not displaced.
    await machine.hook("SessionStart", session_start(SID_C), TMUX=other_socket)
    await machine.hook("SessionStart", session_start(SID_A, source="compact"))  # same session again
    assert {s["session_id"] for s in await machine.server_sessions()} == {SID_A, SID_C}

    await machine.hook("SessionStart", session_start(SID_B, source="clear"))  # /clear: new id
    assert sorted(s["session_id"] for s in await machine.server_sessions()) == sorted(
        [SID_B, SID_C]
    )
    assert sorted(machine.local_sessions(), key=lambda s: s["session_id"]) == [
        local(SID_B),
        local(SID_C, sock="/tmp/tmux-0/work"),
    ]


# --- Stop ----------------------------------------------------------------------------------------


async def test_stop_sends_the_contract_text_through_the_server(machine: Machine) -> None:
    fake = machine.server.fake
    await machine.hook("SessionStart", session_start(SID_A))
    body = "Done. I renamed `load()` to `load_config()` and updated 3 callers."
    run = await machine.hook("Stop", stop(SID_A, body))
    assert run.stderr == ""
    await fake.wait_for(lambda: len(fake.sent) == 1)
    sent = fake.sent[0]
    assert sent["text"] == f"🤖 Stop: {LABEL}\n\n{body}{FOOTER}"
    assert str(sent["chat_id"]) == CHAT
    assert "parse_mode" not in sent
    assert [name for name, _ in fake.calls] == ["sendMessage"]  # only the server's one call

    # The server sent it: it stored the mapping, so a reply routes to the session.
    resp = await machine.server.webhook(fake.make_message(CHAT, "ok", reply_to=sent["message_id"]))
    assert resp.status == 200
    rows = await machine.server.commands()
    assert [(r["session_id"], r["machine_id"], r["command"]) for r in rows] == [
        (SID_A, MACHINE, "ok")
    ]


async def test_stop_without_event_argument_uses_hook_event_name(machine: Machine) -> None:
    fake = machine.server.fake
    await machine.hook(None, session_start(SID_A))
    await machine.hook(None, stop(SID_A, "From the payload's event name."))
    await fake.wait_for(lambda: len(fake.sent) == 1)
    assert fake.sent[0]["text"] == f"{STOP}: {LABEL}\n\nFrom the payload's event name.{FOOTER}"


async def test_stop_falls_back_to_the_transcript(machine: Machine, tmp_path: Path) -> None:
    fake = machine.server.fake
    path = write_transcript(tmp_path / f"{SID_A}.jsonl")
    await machine.hook("SessionStart", session_start(SID_A))
    # An older Claude Code: no last_assistant_message; an empty one counts as absent too.
    await machine.hook("Stop", stop(SID_A, transcript_path=str(path)))
    await machine.hook("Stop", stop(SID_A, "  ", transcript_path=str(path)))
    await fake.wait_for(lambda: len(fake.sent) == 2)
    expected = f"🤖 Stop: {LABEL}\n\n{FINAL_TEXT}{FOOTER}"
    assert [m["text"] for m in fake.sent] == [expected, expected]


async def test_stop_with_neither_says_task_completed(machine: Machine, tmp_path: Path) -> None:
    fake = machine.server.fake
    await machine.hook("SessionStart", session_start(SID_A))
    await machine.hook("Stop", stop(SID_A, transcript_path=str(tmp_path / "gone.jsonl")))
    await fake.wait_for(lambda: len(fake.sent) == 1)
    assert fake.sent[0]["text"] == f"🤖 Stop: {LABEL}\n\nTask completed{FOOTER}"


async def test_stop_after_the_server_forgot_the_session(machine: Machine) -> None:
    fake = machine.server.fake
    await machine.hook("SessionStart", session_start(SID_A))
    resp = await machine.server.post("/sessions/unregister", {"sessionId": SID_A})
    assert resp.status == 200
    assert await machine.server_sessions() == []

    await machine.hook("Stop", stop(SID_A, "Still here."))  # 404 -> register again, retry once
    await fake.wait_for(lambda: len(fake.sent) == 1)
    assert fake.sent[0]["text"] == f"🤖 Stop: {LABEL}\n\nStill here.{FOOTER}"
    assert await machine.server_sessions() == [
        {"session_id": SID_A, "machine_id": MACHINE, "label": LABEL}
    ]
    assert machine.pending() == []


# --- Notification --------------------------------------------------------------------------------


async def test_notification_prompts_need_input_idle_is_ignored(machine: Machine) -> None:
    fake = machine.server.fake
    await machine.hook("SessionStart", session_start(SID_A))
    idle = notification(SID_A, "idle_prompt", "Claude is waiting for your input")
    other = notification(SID_A, "auth_success", "Logged in")
    await machine.hook("Notification", idle)
    await machine.hook("Notification", other)
    # Each hook waits for the server's answer, so a send would already have happened.
    assert fake.sent == []

    permission = notification(
        SID_A, "permission_prompt", "Claude needs your permission to use Bash", "Permission needed"
    )
    elicitation = notification(
        SID_A, "elicitation_dialog", 'MCP server "github" asks: which repository?'
    )
    await machine.hook("Notification", permission)
    await machine.hook("Notification", elicitation)
    await fake.wait_for(lambda: len(fake.sent) == 2)
    assert [m["text"] for m in fake.sent] == [
        f"❓ Needs input: {LABEL}\n\nClaude needs your permission to use Bash{FOOTER}",
        f'❓ Needs input: {LABEL}\n\nMCP server "github" asks: which repository?{FOOTER}',
    ]


# --- SessionEnd ----------------------------------------------------------------------------------


async def test_session_end_unregisters_and_forgets(machine: Machine) -> None:
    await machine.hook("SessionStart", session_start(SID_A))
    await machine.hook("SessionStart", session_start(SID_C), TMUX_PANE="%4")
    assert len(await machine.server_sessions()) == 2

    await machine.hook("SessionEnd", session_end(SID_A))
    assert await machine.server_sessions() == [
        {"session_id": SID_C, "machine_id": MACHINE, "label": LABEL}
    ]
    assert [s["session_id"] for s in machine.local_sessions()] == [SID_C]


# --- never break Claude Code ----------------------------------------------------------------------


async def test_hook_always_exits_zero_and_prints_nothing(machine: Machine, tmp_path: Path) -> None:
    a_file = tmp_path / "not-a-dir"
    a_file.write_text("x")
    env = machine.env()
    cases = [
        run_hook("Stop", None, env, raw=b"\xff\xfe{not json"),
        run_hook("Stop", None, {**env, "PYTHONIOENCODING": "utf-8"}, raw=b'{"a": "\xff"}'),
        run_hook("Stop", None, env, raw=b""),
        run_hook("SessionStart", None, env, raw=b"[1, 2]"),
        run_hook("SessionStart", None, env, raw=b'{"session_id": 7, "cwd": null}'),
        run_hook("PreToolUse", {**common("PreToolUse", SID_A), "tool_name": "Bash"}, env),
        run_hook(None, {"session_id": SID_A}, env),  # no event anywhere
        run_hook("Stop", stop(SID_A, "x"), machine.env(CCR_MACHINE_ID="not a valid id!")),
        run_hook("Stop", stop(SID_A, "x"), machine.env(CCR_BOX_DATA_DIR=str(a_file))),
        run_hook("Stop", stop(SID_A, "x"), machine.env(CCR_WORKER_URL=None, CCR_API_KEY=None)),
    ]
    runs = await asyncio.gather(*cases)
    assert all(r.returncode == 0 and r.stdout == b"" for r in runs)
    assert [r.stderr for r in runs[:7]] == [""] * 7
    assert runs[7].stderr.startswith("ccr-box hook: ")
    assert "CCR_MACHINE_ID" in runs[7].stderr or "machine_id" in runs[7].stderr
    assert runs[8].stderr.startswith("ccr-box hook: ")
    assert "Traceback" not in "".join(r.stderr for r in runs)
    assert machine.server.fake.sent == []
    assert await machine.server_sessions() == []
    log = machine.log()
    assert "hook Stop: input is not JSON" in log
    assert "hook SessionStart: input is not a JSON object; ignored" in log
    assert "SessionStart hook without a session_id; ignored" in log
    assert "ignoring hook event 'PreToolUse'" in log
    assert "Traceback" not in log


async def test_server_down_keeps_the_notification_for_the_agent(machine: Machine) -> None:
    fake = machine.server.fake
    down = {"CCR_WORKER_URL": closed_port_url()}
    await machine.hook("SessionStart", session_start(SID_A), **down)
    await machine.hook("Stop", stop(SID_A, "Built while you were away."), **down)
    ask = notification(SID_A, "permission_prompt", "Claude needs your permission to use Edit")
    await machine.hook("Notification", ask, **down)
    await machine.hook("SessionEnd", session_end(SID_C), **down)
    assert machine.local_sessions() == [local(SID_A)]
    pending = machine.pending()
    stop_text = f"🤖 Stop: {LABEL}\n\nBuilt while you were away.{FOOTER}"
    ask_text = f"❓ Needs input: {LABEL}\n\nClaude needs your permission to use Edit{FOOTER}"
    assert [p["body"] for p in pending] == [
        {"sessionId": SID_A, "chatId": CHAT, "text": stop_text},
        {"sessionId": SID_A, "chatId": CHAT, "text": ask_text},
    ]
    assert fake.sent == []

    # The agent re-registers the session on open and sends what the hooks kept, in order.
    async with running_agent(machine):
        await fake.wait_for(lambda: len(fake.sent) == 2)
        await until(lambda: machine.pending() == [], "the kept notifications sent by the agent")
    assert [m["text"] for m in fake.sent] == [stop_text, ask_text]
    assert await machine.server_sessions() == [
        {"session_id": SID_A, "machine_id": MACHINE, "label": LABEL}
    ]
    resp = await machine.server.webhook(
        fake.make_message(CHAT, "approve", reply_to=fake.sent[1]["message_id"])
    )
    assert resp.status == 200
    assert [r["session_id"] for r in await machine.server.commands()] == [SID_A]


async def test_a_notification_kept_while_the_agent_is_connected_is_sent(machine: Machine) -> None:
    fake = machine.server.fake
    await machine.hook("SessionStart", session_start(SID_A))
    async with running_agent(machine, notification_retry_s=0.1) as (agent, _store):
        await asyncio.wait_for(agent.connected.wait(), 5)
        # A network blip between this hook and the server; the agent's connection stays up.
        await machine.hook("Stop", stop(SID_A, "Kept."), CCR_WORKER_URL=closed_port_url())
        assert "notification kept for the agent to send" in machine.log()
        await fake.wait_for(lambda: len(fake.sent) == 1, timeout=2)
        await until(lambda: machine.pending() == [], "the kept notification sent by the agent")
    assert fake.sent[0]["text"] == f"🤖 Stop: {LABEL}\n\nKept.{FOOTER}"


@dataclass
class HangingServer:
    """A TCP server that accepts connections and never answers: every request to it times out."""

    url: str = ""
    connections: int = 0  # accepted so far: one per call a hook attempted


@contextlib.asynccontextmanager
async def hanging_server() -> AsyncIterator[HangingServer]:
    hanging = HangingServer()
    held: list[asyncio.StreamWriter] = []

    async def hold(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        hanging.connections += 1
        held.append(writer)

    srv = await asyncio.start_server(hold, "127.0.0.1", 0)
    hanging.url = f"http://127.0.0.1:{srv.sockets[0].getsockname()[1]}"
    try:
        yield hanging
    finally:
        for writer in held:
            writer.close()
        srv.close()
        await srv.wait_closed()


# Small enough that waiting it out costs the suite nothing, large enough to connect in.
HANG_TIMEOUT_S = "0.5"


def log_lines(machine: Machine, text: str) -> list[str]:
    return [line for line in machine.log().splitlines() if text in line]


async def test_a_hanging_server_costs_each_hook_one_timeout(
    server: Harness, tmp_path: Path
) -> None:
    """Against a server that never answers, each hook makes one call, gives up when its timeout
    (``CCR_BOX_HOOK_TIMEOUT_S``, tiny here) expires, makes no further call and still exits 0 with
    nothing on stdout; what it could not tell the server is kept for the agent."""
    start_m, stop_m, end_m = (Machine(server, tmp_path / name) for name in ("a", "b", "c"))
    await start_m.hook("SessionStart", session_start(SID_A))
    await end_m.hook("SessionStart", session_start(SID_C))
    async with (
        hanging_server() as start_srv,
        hanging_server() as stop_srv,
        hanging_server() as end_srv,
    ):

        def hang(srv: HangingServer) -> dict[str, str]:
            return {"CCR_WORKER_URL": srv.url, "CCR_BOX_HOOK_TIMEOUT_S": HANG_TIMEOUT_S}

        runs = await asyncio.gather(
            # Displacing SID_A: its unregister times out, then no register is attempted.
            start_m.hook("SessionStart", session_start(SID_B, source="clear"), **hang(start_srv)),
            # A session new to this machine: its register times out, then no notify.
            stop_m.hook("Stop", stop(SID_A, "Waiting for a slow server."), **hang(stop_srv)),
            end_m.hook("SessionEnd", session_end(SID_C), **hang(end_srv)),
        )
        servers = (start_srv, stop_srv, end_srv)
        await until(lambda: all(srv.connections for srv in servers), "each hook's one call")
        assert [srv.connections for srv in servers] == [1, 1, 1]  # never a second attempt
    assert [run.stderr for run in runs] == ["", "", ""]  # exit 0, no stdout: checked by run_hook

    # Each gave up once, on its timeout (a refused connection would read differently).
    gave_up = log_lines(start_m, "server unreachable")
    assert len(gave_up) == 1 and "Timeout" in gave_up[0], gave_up
    assert f"the agent registers {SID_B} later" in gave_up[0]
    assert start_m.local_sessions() == [local(SID_B)]

    gave_up = log_lines(stop_m, "server unreachable")
    assert len(gave_up) == 2, gave_up  # the register that timed out, the notify not attempted
    assert "Timeout" in gave_up[0] and f"the agent registers {SID_A} later" in gave_up[0]
    assert "notification kept for the agent to send" in gave_up[1]
    assert [p["body"]["text"] for p in stop_m.pending()] == [
        f"🤖 Stop: {LABEL}\n\nWaiting for a slow server.{FOOTER}"
    ]

    gave_up = log_lines(end_m, "failed")
    assert len(gave_up) == 1 and f"unregister {SID_C} failed" in gave_up[0], gave_up
    assert "Timeout" in gave_up[0]
    assert end_m.local_sessions() == []  # forgotten before the network call
    assert server.fake.sent == []


def test_the_hook_timeout_knob() -> None:
    assert (hook_timeout("Stop", {}).total, hook_timeout("SessionEnd", {}).total) == (3, 1)
    knob = {"CCR_BOX_HOOK_TIMEOUT_S": "0.25"}
    assert (hook_timeout("Stop", knob).total, hook_timeout("SessionEnd", knob).total) == (
        0.25,
        0.25,
    )
    assert hook_timeout("SessionStart", knob).connect == 0.25
    slow = {"CCR_BOX_HOOK_TIMEOUT_S": "10"}
    assert (hook_timeout("Stop", slow).total, hook_timeout("SessionEnd", slow).total) == (10, 1)
    for bad in ("", "soon", "0", "-1", "nan", "inf", "61"):
        assert hook_timeout("Notification", {"CCR_BOX_HOOK_TIMEOUT_S": bad}).total == 3, bad


async def test_stop_binds_a_session_that_missed_session_start(machine: Machine) -> None:
    fake = machine.server.fake
    # Hooks installed while Claude Code was running, or the agent's store was wiped.
    await machine.hook("Stop", stop(SID_A, "Late but routable."))
    await fake.wait_for(lambda: len(fake.sent) == 1)
    assert fake.sent[0]["text"] == f"🤖 Stop: {LABEL}\n\nLate but routable.{FOOTER}"
    assert machine.local_sessions() == [local(SID_A)]
    assert await machine.server_sessions() == [
        {"session_id": SID_A, "machine_id": MACHINE, "label": LABEL}
    ]
    # Outside tmux there is still nothing to type into: no binding, no notification.
    await machine.hook("Stop", stop(SID_B, "nowhere"), TMUX_PANE=None, TMUX=None)
    # A late Stop of an ended session never takes the pane from the session living there now.
    await machine.hook("Stop", stop(SID_C, "from the past"))
    assert machine.local_sessions() == [local(SID_A)]
    assert [s["session_id"] for s in await machine.server_sessions()] == [SID_A]
    log = machine.log()
    assert "server refused the notification for " + SID_B in log
    assert f"pane %3 belongs to another session; {SID_C} not bound" in log
    assert "server refused the notification for " + SID_C in log
    assert len(fake.sent) == 1


async def test_a_huge_last_message_is_clipped_not_lost(machine: Machine) -> None:
    fake = machine.server.fake
    await machine.hook("SessionStart", session_start(SID_A))
    body = "开始" + "问" * 200_000 + "\n\nShall I continue?"  # > 1 MiB as JSON: 413 unclipped
    await machine.hook("Stop", stop(SID_A, body))
    await fake.wait_for(lambda: len(fake.sent) >= 8)
    text = "".join(m["text"] for m in fake.sent)
    omitted = len(body) - MAX_BODY_CHARS
    expected_body = clip_body(body)
    assert expected_body.startswith("开始问")
    assert f"\n\n[… {omitted} characters omitted …]\n\n" in expected_body
    assert text == f"🤖 Stop: {LABEL}\n\n{expected_body}{FOOTER}"
    assert fake.sent[-1]["text"].endswith(f"Shall I continue?{FOOTER}")


async def test_secrets_never_reach_hooks_log(machine: Machine) -> None:
    await machine.hook("SessionStart", session_start(SID_A), CCR_BOX_LOG_LEVEL="debug")
    await machine.hook("Stop", stop(SID_A, "x"), CCR_BOX_LOG_LEVEL="debug")
    down = {"CCR_WORKER_URL": closed_port_url(), "CCR_BOX_LOG_LEVEL": "debug"}
    await machine.hook("Stop", stop(SID_A, "y"), **down)
    await machine.hook("SessionStart", session_start(SID_B), CCR_API_KEY="wrong-key_123456789")
    log = machine.log()
    assert "kept for the agent to send" in log
    assert "server answered 401: Unauthorized" in log
    assert API_KEY not in log and "wrong-key_123456789" not in log
    assert machine.server.fake.token not in log


# --- notify.py units ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("cwd", "short"),
    [
        ("/home/dev/work/api-server", "work/api-server"),
        ("/home/dev/work/api-server/", "work/api-server"),
        ("/srv", "srv"),
        ("/", "/"),
        ("~/code/app", "code/app"),
        ("relative/dir/x", "dir/x"),
        ("", "?"),
        (None, "?"),
    ],
)
def test_short_cwd(cwd: str | None, short: str) -> None:
    assert short_cwd(cwd) == short


def test_clip_body() -> None:
    assert clip_body("short") == "short"
    assert clip_body("x" * MAX_BODY_CHARS) == "x" * MAX_BODY_CHARS
    body = "a" * 10 + "b" * 5 + "c" * 20
    assert clip_body(body, limit=30) == "a" * 10 + "\n\n[… 5 characters omitted …]\n\n" + "c" * 20


def test_notification_text_layout() -> None:
    assert notification_text(STOP, "api", "line 1\nline 2", "/a/b/c", "m-1") == (
        "🤖 Stop: api\n\nline 1\nline 2\n\n📂 b/c · 🖥 m-1\n↩️ Reply to this message to answer"
    )
    assert notification_text(NEEDS_INPUT, "x", "b", None, "m") == (
        "❓ Needs input: x\n\nb\n\n📂 ? · 🖥 m\n↩️ Reply to this message to answer"
    )
    assert FALLBACK_BODY == "Task completed"


def test_last_assistant_text_of_a_realistic_transcript(tmp_path: Path) -> None:
    path = write_transcript(tmp_path / "t.jsonl")
    assert last_assistant_text(str(path)) == FINAL_TEXT
    assert last_assistant_text(None) is None
    assert last_assistant_text(str(tmp_path / "missing.jsonl")) is None
    assert last_assistant_text(str(tmp_path)) is None  # a directory


def test_last_assistant_text_skips_malformed_lines(tmp_path: Path) -> None:
    good = entry("assistant", [{"type": "text", "text": "one"}, {"type": "text", "text": "two"}], 1)
    bad_lines = [
        "not json at all",
        "[1, 2, 3]",
        json.dumps({"type": "assistant"}),
        json.dumps({"type": "assistant", "message": "text"}),
        json.dumps({"type": "assistant", "message": {"content": 42}}),
        json.dumps({"type": "assistant", "message": {"content": [1, None, {"type": "text"}]}}),
        json.dumps({"type": "assistant", "message": {"content": [{"type": "text", "text": 5}]}}),
        json.dumps({"type": "assistant", "message": {"content": "   "}}),
        json.dumps(entry("user", "a later user prompt", 9)),
        "",
        '{"type": "assistant", "message": {"content": [{"type": "text", "text": "cut o',
    ]
    path = tmp_path / "t.jsonl"
    path.write_bytes(
        (json.dumps(good) + "\n" + "\n".join(bad_lines)).encode() + b"\n\xff\xfe\x00garbage\n"
    )
    assert last_assistant_text(str(path)) == "one\ntwo"
    path.write_text(json.dumps({"type": "assistant", "message": {"content": " plain "}}) + "\n")
    assert last_assistant_text(str(path)) == "plain"
    path.write_text("\n".join(bad_lines))
    assert last_assistant_text(str(path)) is None


def test_last_assistant_text_of_a_large_transcript(tmp_path: Path) -> None:
    big_result = "x" * 200_000
    lines = [json.dumps(entry("assistant", [{"type": "text", "text": "too old"}], 1))]
    for n in range(2, 40):  # ~7.6 MB of tool results, more than the scanned tail
        lines.append(
            json.dumps(
                entry(
                    "user", [{"type": "tool_result", "tool_use_id": "t", "content": big_result}], n
                )
            )
        )
    lines.append(json.dumps(entry("assistant", [{"type": "text", "text": "näive ✓ done"}], 40)))
    lines.append(json.dumps(entry("user", [{"type": "tool_result", "content": big_result}], 41)))
    path = tmp_path / "big.jsonl"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    assert path.stat().st_size > 3 * TRANSCRIPT_TAIL_BYTES
    assert last_assistant_text(str(path)) == "näive ✓ done"
    # Only the tail is read: an answer buried before the last 2 MiB is not dug out.
    path.write_text("\n".join(lines[:-2]) + "\n", encoding="utf-8")
    assert last_assistant_text(str(path)) is None


# --- the whole loop with a real tmux pane -------------------------------------------------------

RECORDER = r"""
import json, sys
out = sys.argv[1]
open(out + ".ready", "w").close()
for line in sys.stdin:
    with open(out, "a", encoding="utf-8") as f:
        f.write(json.dumps(line.rstrip("\n")) + "\n")
"""

needs_tmux = pytest.mark.skipif(shutil.which("tmux") is None, reason="tmux is not installed")


@pytest.fixture
def tmux_socket() -> Iterator[str]:
    # Short: unix socket paths are limited to ~108 bytes, pytest's tmp_path can be long.
    directory = tempfile.mkdtemp(prefix="ccrhook", dir="/tmp" if os.path.isdir("/tmp") else None)
    sock = os.path.join(directory, "s")
    yield sock
    subprocess.run(["tmux", "-S", sock, "kill-server"], capture_output=True, check=False)
    shutil.rmtree(directory, ignore_errors=True)


@needs_tmux
async def test_whole_loop_through_a_real_tmux_pane(
    machine: Machine, tmp_path: Path, tmux_socket: str
) -> None:
    fake = machine.server.fake
    recorder = tmp_path / "recorder.py"
    recorder.write_text(RECORDER)
    out = tmp_path / "typed.jsonl"
    argv = [sys.executable, str(recorder), str(out)]  # stands in for Claude Code

    def tmux(*args: str) -> str:
        return subprocess.run(
            ["tmux", "-S", tmux_socket, *args],
            check=True,
            capture_output=True,
            text=True,
            env={k: v for k, v in os.environ.items() if k != "TMUX"},
        ).stdout.strip()

    tmux(
        "-f",
        "/dev/null",
        "new-session",
        "-d",
        "-s",
        "cc",
        "-x",
        "200",
        "-y",
        "50",
        shlex.join(argv),
    )
    pane, pid = tmux("display-message", "-p", "-t", "cc", "#{pane_id} #{pid}").split()
    await until(lambda: Path(f"{out}.ready").exists(), "the recorder ready in the pane")

    def typed() -> list[str]:
        text = out.read_text(encoding="utf-8") if out.exists() else ""
        return [json.loads(line) for line in text.splitlines()]

    in_pane = {"TMUX_PANE": pane, "TMUX": f"{tmux_socket},{pid},0"}
    await machine.hook("SessionStart", session_start(SID_A), **in_pane)
    assert machine.local_sessions() == [local(SID_A, pane=pane, sock=tmux_socket)]
    await machine.hook("Stop", stop(SID_A, "Shall I also run the migrations?"), **in_pane)
    await fake.wait_for(lambda: len(fake.sent) == 1)
    sent = fake.sent[0]
    assert sent["text"] == f"🤖 Stop: {LABEL}\n\nShall I also run the migrations?{FOOTER}"

    reply = "yes, run the migrations too"
    async with running_agent(machine) as (agent, store):
        await asyncio.wait_for(agent.connected.wait(), 5)
        resp = await machine.server.webhook(
            fake.make_message(CHAT, reply, reply_to=sent["message_id"])
        )
        assert resp.status == 200
        await until(typed, "the reply typed into the pane")

        async def reported() -> bool:
            rows = await store.call("list_inbox")
            return [(r["status"], r["result_sent"]) for r in rows] == [("done", 1)]

        await until(reported, "the reply reported done to the server")

    # A sentinel typed now ends the recording: the reply arrived exactly once, nothing else.
    tmux("send-keys", "-t", pane, "-l", "__end__")
    tmux("send-keys", "-t", pane, "Enter")
    await until(lambda: "__end__" in typed(), "the sentinel typed into the pane")
    assert typed() == [reply, "__end__"]
    rows = await machine.server.commands()
    assert [(r["session_id"], r["command"], r["status"]) for r in rows] == [(SID_A, reply, "acked")]
