"""``ccr-box machines|sessions|commands|retry|reassign|unregister`` against the real server (§6.8)."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from ccr_box import limits
from ccr_box.cli import main
from ccr_box.client.admin import AdminClient, default_target
from ccr_box.client.errors import ServerRefused, ServerUnavailable
from ccr_box.clock import ManualClock
from ccr_box.config import AgentConfig, Config, ServerConfig
from ccr_box.db import queue as q
from ccr_box.server import keys
from tests.conftest import API_KEY, CHAT, Harness
from tests.helpers_db import command_row
from tests.helpers_proc import OWN_PREFIXES

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(autouse=True)
def cli_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[pytest.MonkeyPatch]:
    """No ccr-box variable of the developer's shell leaks in; no config file; a wide terminal."""
    for name in list(os.environ):
        if name.startswith(OWN_PREFIXES) or name in ("FORCE_COLOR", "NO_COLOR", "TTY_COMPATIBLE"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("CCR_BOX_CONFIG", str(tmp_path / "absent.toml"))
    monkeypatch.setenv("CCR_API_KEY", API_KEY)
    monkeypatch.setenv("COLUMNS", "250")
    yield monkeypatch


@pytest.fixture
def cli(capsys: pytest.CaptureFixture[str]):
    """``await cli(*argv) -> (exit code, stdout, stderr)``; main() runs its own loop, so a thread."""

    async def run(*argv: str) -> tuple[int, str, str]:
        capsys.readouterr()
        code = await asyncio.to_thread(main, list(argv))
        out, err = capsys.readouterr()
        return code, out, err

    return run


def base(server: Harness) -> str:
    return server.url("").rstrip("/")


async def api(server: Harness, path: str) -> Any:
    resp = await server.client.get(path, headers=server.auth())
    assert resp.status == 200, await resp.text()
    return await resp.json()


async def enqueue(server: Harness, command_id: str, machine_id: str, session_id: str) -> None:
    cmd = q.NewCommand(command_id, machine_id, session_id, f"text of {command_id}", CHAT)
    now = server.clock.now_ms()
    await server.db.write(lambda c: q.enqueue(c, cmd, now))


async def make_dead(server: Harness, command_id: str, machine_id: str, session_id: str) -> None:
    """A command that expired undelivered, moved to ``dead`` by the maintenance loop."""
    await enqueue(server, command_id, machine_id, session_id)
    server.clock.advance(limits.COMMAND_EXPIRY_MS)
    await server.app[keys.MAINTENANCE].tick()
    assert (await command_row(server, command_id))["status"] == "dead"


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# -- --json: exactly the API's data ---------------------------------------------------------------


async def test_json_outputs_equal_the_api(server: Harness, cli) -> None:
    await make_dead(server, "c-dead", "box-a", "s1")
    await server.register("s1", "box-a", "first")
    await server.register("s2", "box-b", None)
    await enqueue(server, "c-1", "box-a", "s1")
    await enqueue(server, "c-2", "box-b", "s2")
    ws = await server.connect("box-b")
    try:
        for argv, path in (
            (["machines"], "/admin/machines"),
            (["sessions"], "/sessions"),
            (["commands"], "/admin/commands"),
            (["commands", "--status", "dead"], "/admin/commands?status=dead"),
            (["commands", "--machine", "box-a"], "/admin/commands?machineId=box-a"),
            (["commands", "--limit", "1"], "/admin/commands?limit=1"),
        ):
            expected = await api(server, path)
            code, out, err = await cli(*argv, "--json", "--url", base(server))
            assert (code, err) == (0, ""), argv
            assert json.loads(out) == expected, argv
            assert out == json.dumps(expected, indent=2) + "\n", argv
    finally:
        await ws.close()
    machines = json.loads((await cli("machines", "--json", "--url", base(server)))[1])
    assert [(m["machineId"], m["pending"], m["dead"]) for m in machines] == [
        ("box-a", 1, 1),
        ("box-b", 0, 0),  # c-2 went out when box-b connected
    ]


async def test_empty_lists(server: Harness, cli) -> None:
    assert await cli("sessions", "--json", "--url", base(server)) == (0, "[]\n", "")
    assert await cli("sessions", "--url", base(server)) == (0, "(none)\n", "")


# -- actions --------------------------------------------------------------------------------------


async def test_retry_turns_a_dead_command_pending(server: Harness, cli) -> None:
    await make_dead(server, "c-dead", "box-a", "s1")
    code, out, err = await cli("retry", "c-dead", "--url", base(server))
    assert (code, out, err) == (0, "Command c-dead queued again.\n", "")
    revived = await command_row(server, "c-dead")
    assert (revived["status"], revived["attempts"], revived["dead_reason"]) == ("pending", 0, None)


async def test_retry_refusals_print_the_server_error(server: Harness, cli) -> None:
    await enqueue(server, "c-1", "box-a", "s1")
    assert await cli("retry", "c-1", "--url", base(server)) == (
        1,
        "",
        "ccr-box: Command is not dead\n",
    )
    assert await cli("retry", "nope", "--url", base(server)) == (
        1,
        "",
        "ccr-box: Command not found\n",
    )
    assert (await command_row(server, "c-1"))["status"] == "pending"


async def test_reassign_moves_the_command(server: Harness, cli) -> None:
    await server.register("s1", "box-a")
    await server.register("s2", "box-b")
    await enqueue(server, "c-1", "box-a", "s1")
    code, out, err = await cli("reassign", "c-1", "--session", "s2", "--url", base(server))
    assert (code, out, err) == (0, "Command c-1 moved to session s2.\n", "")
    moved = await command_row(server, "c-1")
    assert (moved["session_id"], moved["machine_id"], moved["status"]) == (
        "s2",
        "box-b",
        "pending",
    )
    assert await cli("reassign", "c-1", "--session", "ghost", "--url", base(server)) == (
        1,
        "",
        "ccr-box: Session not found\n",
    )


async def test_unregister_removes_the_session(server: Harness, cli) -> None:
    await server.register("s1", "box-a")
    await server.register("s2", "box-a")
    code, out, err = await cli("unregister", "s1", "--url", base(server))
    assert (code, out, err) == (0, "Session s1 removed.\n", "")
    assert [s["session_id"] for s in await api(server, "/sessions")] == ["s2"]


# -- errors ---------------------------------------------------------------------------------------


async def test_wrong_key_is_unauthorized(server: Harness, cli, cli_env) -> None:
    cli_env.setenv("CCR_API_KEY", "wrong-key")
    assert await cli("machines", "--url", base(server)) == (1, "", "ccr-box: Unauthorized\n")


async def test_missing_key_is_a_config_error(server: Harness, cli, cli_env) -> None:
    cli_env.delenv("CCR_API_KEY")
    code, out, err = await cli("machines", "--url", base(server))
    assert (code, out) == (2, "")
    assert err == (
        "ccr-box: config error: agent.api_key (CCR_API_KEY): "
        "is required: the server's server.api_key\n"
    )


async def test_server_down_names_the_url_not_the_key(cli) -> None:
    url = f"http://127.0.0.1:{closed_port()}"
    code, out, err = await cli("sessions", "--url", url)
    assert (code, out) == (1, "")
    assert err == (
        f"ccr-box: cannot reach the ccr-box server at {url}: "
        "connection refused (is `ccr-box up` running there?)\n"
    )
    assert API_KEY not in err


async def test_not_a_ccr_box_answer(server: Harness, cli) -> None:
    url = server.fake.base_url.rstrip("/")  # a server that is not ccr-box (the fake Telegram)
    assert await cli("machines", "--url", url) == (
        1,
        "",
        f"ccr-box: {url} answered HTTP 404 Not Found\n",
    )


async def test_bad_url_and_bad_limit_are_usage_errors(cli, capsys) -> None:
    assert await cli("machines", "--url", "ftp://x") == (
        2,
        "",
        "ccr-box: config error: --url: must be an http:// or https:// URL\n",
    )
    capsys.readouterr()
    with pytest.raises(SystemExit) as exc:
        await asyncio.to_thread(main, ["commands", "--limit", "501"])
    assert exc.value.code == 2
    assert "must be an integer from 1 to 500, got '501'" in capsys.readouterr().err


async def test_zero_config_on_the_server_machine(server: Harness, cli, cli_env, tmp_path) -> None:
    """No --url and no CCR_API_KEY: the [server] section of the config file is enough."""
    cli_env.delenv("CCR_API_KEY")
    port = int(base(server).rsplit(":", 1)[1])
    config = tmp_path / "config.toml"
    config.write_text(f'[server]\nport = {port}\napi_key = "{API_KEY}"\n', encoding="utf-8")
    await server.register("s1", "box-a", "from config")
    code, out, err = await cli("--config", str(config), "sessions", "--json")
    assert (code, err) == (0, "")
    assert json.loads(out) == await api(server, "/sessions")


# -- human output ---------------------------------------------------------------------------------


async def test_labels_are_printed_literally(start_server, cli) -> None:
    server = await start_server(clock=ManualClock(int(time.time() * 1000) - 180_000))
    await server.register("s1", "box-a", "[bold red]x[/] \x1b[31mred\x1b[0m")
    code, out, err = await cli("sessions", "--url", base(server))
    assert (code, err) == (0, "")
    assert "[bold red]x[/] \ufffd[31mred\ufffd[0m" in out
    assert "\x1b" not in out
    assert "box-a" in out and "s1" in out and "3m ago" in out


async def test_dead_commands_are_highlighted(server: Harness, cli, cli_env) -> None:
    cli_env.setenv("FORCE_COLOR", "1")
    await make_dead(server, "c-dead", "box-a", "s1")
    await enqueue(server, "c-live", "box-a", "s1")
    await enqueue(server, "c-markup", "box-a", "s1")
    await server.db.write(
        lambda c: c.execute(
            "UPDATE command_queue SET command = '[bold]loud[/bold]' WHERE command_id = 'c-markup'"
        )
    )
    code, out, err = await cli("commands", "--url", base(server))
    assert (code, err) == (0, "")
    lines = {
        name: line for line in out.splitlines() for name in ("c-dead", "c-live") if name in line
    }
    assert "\x1b[31m" in lines["c-dead"] or "\x1b[1;31m" in lines["c-dead"]
    assert "31m" not in lines["c-live"]
    assert "[bold]loud[/bold]" in out


def test_age() -> None:
    from ccr_box.client.present import age

    now = 1_700_000_000_000
    assert age(None, now) == ""
    assert age(now - 2_000, now) == "just now"
    assert age(now - 42_000, now) == "42s ago"
    assert age(now - 3 * 60_000 - 59_000, now) == "3m ago"
    assert age(now - 5 * 3_600_000, now) == "5h ago"
    assert age(now - 3 * 86_400_000, now) == "3d ago"
    assert age(now + 120_000, now) == "in 2m"


# -- the client itself ----------------------------------------------------------------------------


async def test_client_methods(server: Harness) -> None:
    await server.register("s1", "box-a", "lab")
    await make_dead(server, "c-dead", "box-a", "s1")
    async with AdminClient(base(server) + "/", API_KEY) as admin:
        assert list(await admin.status()) == ["bootId", "startedAt", "telegram"]
        assert await admin.sessions() == await api(server, "/sessions")
        assert [c["command_id"] for c in await admin.commands(status="dead")] == ["c-dead"]
        assert await admin.commands(machine_id="other") == []
        assert await admin.retry("c-dead") == {"ok": True}
        with pytest.raises(ServerRefused) as refused:
            await admin.retry("c-dead")
        assert (refused.value.status, refused.value.error) == (409, "Command is not dead")
        assert str(refused.value) == "Command is not dead"
        assert await admin.unregister("s1") == {"ok": True}
    async with AdminClient(base(server), "bad") as admin:
        with pytest.raises(ServerRefused) as unauthorized:
            await admin.machines()
        assert (unauthorized.value.status, str(unauthorized.value)) == (401, "Unauthorized")
    async with AdminClient(f"http://127.0.0.1:{closed_port()}", API_KEY) as admin:
        with pytest.raises(ServerUnavailable):
            await admin.machines()
    assert API_KEY not in repr(AdminClient(base(server), API_KEY))


def test_default_target() -> None:
    server = ServerConfig(host="0.0.0.0", port=9000, api_key="srv-key")
    assert default_target(Config(server=server)) == ("http://127.0.0.1:9000", "srv-key")
    assert default_target(Config(server=ServerConfig(host="::", port=1))) == ("http://[::1]:1", "")
    assert default_target(Config(server=ServerConfig(host="box.lan", port=2))) == (
        "http://box.lan:2",
        "",
    )
    agent = AgentConfig(server_url="https://ccr.example/", api_key="agent-key")
    assert default_target(Config(server=server, agent=agent)) == (
        "https://ccr.example",
        "agent-key",
    )


def test_client_does_not_import_textual() -> None:
    code = (
        "import sys, ccr_box.client.admin, ccr_box.client.events, ccr_box.admin_cli, ccr_box.cli;"
        "print(sorted(m for m in sys.modules if m == 'textual' or m.startswith('textual.')))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True
    )
    assert done.stdout == "[]\n"
