"""The whole ccr-box loop on one machine, in a few seconds, with a fake Telegram.

    .venv/bin/python scripts/demo.py        (from the repo root; needs tmux)

What it does: starts a fake Telegram Bot API (tests/fake_telegram.py), a real ``ccr-box up``
server long-polling it, a private tmux server whose pane runs a stand-in for Claude Code, and a
real ``ccr-box agent``. It installs the Claude Code hooks into a throw-away project, fires the
SessionStart and Stop hooks the way Claude Code would, and shows the notification Telegram
receives. Then it replies to that notification like a phone would and shows the reply arriving
in the pane. Everything lives in a temp dir (HOME included: your ~/.claude is never touched) and
is removed at the end. Exit code 0 = the loop works, 1 = it does not (with the reason).
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import json
import secrets
import shlex
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import aiohttp

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.fake_telegram import FakeTelegram  # noqa: E402
from tests.helpers_proc import Proc, clean_env  # noqa: E402

CHAT = "424242"
REPLY = "yes, run them"
LAST_MESSAGE = "I refactored the parser. Shall I run the tests?"
TIMEOUT_S = 60
STAND_IN = """\
while True:
    try:
        line = input("claude-stand-in> ")
    except EOFError:
        break
    print(f"got: {line}", flush=True)
"""


def step(number: int, title: str) -> None:
    print(f"\n== {number}. {title}", flush=True)


def indent(text: str) -> str:
    return "\n".join(f"    {line}" for line in text.rstrip("\n").splitlines())


async def run(*argv: str, env: dict[str, str] | None = None, stdin: str = "", cwd=None) -> str:
    """Run a short command to completion; its stdout. A non-zero exit is an error."""
    proc = await asyncio.create_subprocess_exec(
        *argv,
        env=env,
        cwd=cwd,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(stdin.encode()), 15)
    except BaseException:  # timeout or Ctrl-C: leave no child behind writing into the temp dir
        if proc.returncode is None:
            proc.kill()
        await proc.wait()
        raise
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(argv[:4])} failed ({proc.returncode}): {err.decode()}")
    return out.decode()


async def wait_until(what: str, check: Callable[[], object], within: float = 20) -> object:
    """Poll ``check`` (plain or async) until it gives something truthy; that value."""
    print(f"   waiting for {what} ...", end="", flush=True)
    start = time.monotonic()
    while time.monotonic() - start < within:
        value = check()
        if inspect.isawaitable(value):
            value = await value
        if value:
            print(f" ok ({time.monotonic() - start:.1f} s)", flush=True)
            return value
        await asyncio.sleep(0.1)
    print(" timed out", flush=True)
    raise RuntimeError(f"timed out after {within:g} s waiting for {what}")


async def demo(tmp: Path, procs: list[Proc], fake: FakeTelegram) -> None:
    step(1, "Fake Telegram Bot API (tests/fake_telegram.py), in this process")
    await fake.start()
    print(f"   {fake.base_url}  (bot token {fake.token})")
    api_key = secrets.token_urlsafe(24)
    home, project = tmp / "home", tmp / "project" / "myapp"
    project.mkdir(parents=True)
    home.mkdir()
    base = {k: v for k, v in clean_env(HOME=str(home)).items() if k not in ("TMUX", "TMUX_PANE")}
    base["PYTHONPATH"] = str(REPO)

    step(2, "ccr-box server: `python -m ccr_box up --headless --port 0` (first run)")
    server_env = dict(
        base,
        CCR_BOX_CONFIG=str(tmp / "config.toml"),  # missing: `up` writes a fresh one
        CCR_BOX_DATA_DIR=str(tmp / "server"),
        TELEGRAM_BOT_TOKEN=fake.token,
        TELEGRAM_API_BASE=fake.base_url,
        TELEGRAM_MODE="polling",  # the server long-polls getUpdates: no public URL needed
        ALLOWED_CHAT_IDS=CHAT,
        CCR_API_KEY=api_key,
    )
    server = await Proc.start("up", "--headless", "--port", "0", env=server_env)
    procs.append(server)
    port = await server.listening_port()
    url = f"http://127.0.0.1:{port}"
    print(indent("\n".join(server.lines)))

    step(3, "Private tmux server; its pane runs a stand-in for Claude Code")
    sock = str(tmp / "tmux.sock")
    (tmp / "stand_in.py").write_text(STAND_IN)
    tmux = ("tmux", "-S", sock)
    pane = await run(
        *tmux, "new-session", "-d", "-P", "-F", "#{pane_id}", "-s", "demo", "-x", "100", "-y",
        "20", "-c", str(project), shlex.join([sys.executable, str(tmp / "stand_in.py")]), env=base,
    )  # fmt: skip
    pane = pane.strip()
    tmux_pid = (await run(*tmux, "display-message", "-p", "#{pid}", env=base)).strip()

    async def screen() -> str:
        return await run(*tmux, "capture-pane", "-p", "-t", pane, env=base)

    await wait_until("the stand-in's prompt", lambda: _has(screen, "claude-stand-in>"))
    print(f"   pane {pane} on socket {sock}")

    step(4, "Claude Code hooks: `ccr-box hooks install --scope project` (HOME is the temp dir)")
    cli = (sys.executable, "-m", "ccr_box")
    print(indent(await run(*cli, "hooks", "install", "--scope", "project", env=base, cwd=project)))
    print("   $ ccr-box hooks status --scope project")
    print(indent(await run(*cli, "hooks", "status", "--scope", "project", env=base, cwd=project)))

    step(5, "Machine agent: `python -m ccr_box agent` (machine demo-box)")
    agent_env = dict(
        base,
        CCR_WORKER_URL=url,
        CCR_API_KEY=api_key,
        CCR_MACHINE_ID="demo-box",
        CCR_CHAT_ID=CHAT,
        CCR_BOX_DATA_DIR=str(tmp / "agent"),
        CCR_BOX_CONFIG=str(tmp / "agent-missing.toml"),
    )
    procs.append(await Proc.start("agent", env=agent_env))
    http = aiohttp.ClientSession(headers={"X-API-Key": api_key})
    try:

        async def admin(path: str) -> list[dict]:
            async with http.get(url + path) as response:
                return await response.json()

        async def connected() -> bool:
            machines = await admin("/admin/machines")
            return any(m["machineId"] == "demo-box" and m["connected"] for m in machines)

        await wait_until("demo-box to connect to the server", connected)

        step(6, "Claude Code fires its hooks (simulated): SessionStart, then Stop")
        session_id = "3f9c2a7e-5b1d-4c8e-9a6f-0d2e4b7c1a95"
        hook_env = dict(agent_env, TMUX_PANE=pane, TMUX=f"{sock},{tmux_pid},0")
        common = {
            "session_id": session_id,
            "transcript_path": str(home / ".claude" / "projects" / f"{session_id}.jsonl"),
            "cwd": str(project),
        }
        payloads = [
            ("SessionStart", {**common, "source": "startup"}),
            ("Stop", {**common, "last_assistant_message": LAST_MESSAGE, "stop_hook_active": False}),
        ]
        for event, payload in payloads:
            payload = {**payload, "hook_event_name": event}
            print(f"   $ ccr-box hook {event}   <<< {json.dumps(payload)}")
            await run(*cli, "hook", event, env=hook_env, stdin=json.dumps(payload), cwd=project)

        step(7, "The notification reaches (fake) Telegram")
        await wait_until("sendMessage at the fake Telegram", lambda: fake.sent)
        note = fake.sent[0]
        print(f"   sendMessage to chat {note['chat_id']}, message_id {note['message_id']}:")
        print(indent(note["text"]))

        step(8, f"Reply to it from the phone: {REPLY!r}")
        fake.push_update(fake.make_message(CHAT, REPLY, reply_to=note["message_id"]))
        print("   update queued for the server's getUpdates long poll")

        step(9, "The reply is typed into the pane")
        await wait_until(f"'got: {REPLY}' in the pane", lambda: _has(screen, f"got: {REPLY}"))
        print(indent(await screen()))

        async def done() -> dict | None:
            rows = await admin("/admin/commands?limit=1")
            row = rows[0] if rows else {}
            return row if row.get("status") == "acked" and row.get("result") == "ok" else None

        row = await wait_until("the command row to be acked with result ok", done)
        print("   GET /admin/commands (newest row):")
        keys = ("command_id", "machine_id", "session_id", "command", "status", "attempts")
        print(indent(json.dumps({k: row[k] for k in (*keys, "result", "result_error")}, indent=2)))
        print(f"   Telegram received {len(fake.sent)} message(s) in total (success sends no more)")
    finally:
        await http.close()


async def _has(screen: Callable[[], Awaitable[str]], text: str) -> bool:
    return text in await screen()


async def stop(procs: list[Proc]) -> None:
    for proc in reversed(procs):
        proc.send_signal(signal.SIGTERM)
        try:
            await proc.wait_exit(10)
        except TimeoutError:
            await proc.stop()


async def main() -> int:
    if shutil.which("tmux") is None:
        print("demo: tmux is needed (apt install tmux / brew install tmux)", file=sys.stderr)
        return 1
    tmp = Path(tempfile.mkdtemp(prefix="ccr-demo-", dir="/tmp"))  # short: tmux socket path
    procs: list[Proc] = []
    fake = FakeTelegram()
    try:
        async with asyncio.timeout(TIMEOUT_S):
            await demo(tmp, procs, fake)
    except Exception as exc:
        reason = f"timed out after {TIMEOUT_S} s" if isinstance(exc, TimeoutError) else exc
        print(f"\nDEMO FAILED: {reason}", file=sys.stderr)
        for name, proc in zip(("server", "agent"), procs, strict=False):
            print(
                f"--- {name} stderr (last 20 lines)", *proc.lines[-20:], sep="\n", file=sys.stderr
            )
        print(
            "--- texts sent to Telegram", *(m["text"] for m in fake.sent), sep="\n", file=sys.stderr
        )
        hooks_log = tmp / "agent" / "hooks.log"
        if hooks_log.exists():
            print("--- hooks.log", hooks_log.read_text()[-3000:], sep="\n", file=sys.stderr)
        return 1
    finally:
        print("\n== Cleaning up", flush=True)
        await stop(procs)
        await fake.close()
        with contextlib.suppress(Exception):  # no tmux server yet, or already gone
            await run("tmux", "-S", str(tmp / "tmux.sock"), "kill-server")
        shutil.rmtree(tmp, ignore_errors=True)
    print("\nDEMO OK: notification out to Telegram, reply typed into the Claude Code pane.")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(asyncio.run(main()))
    except KeyboardInterrupt:
        print("\ndemo: interrupted (cleaned up)", file=sys.stderr)
        sys.exit(1)
