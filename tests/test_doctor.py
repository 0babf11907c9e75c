"""``ccr-box doctor`` on a good set-up and on broken ones.

Everything is real: a running ccr-box server (127.0.0.1, port 0) with its SQLite database, the fake
Telegram, an agent's WebSocket connection, tmux from PATH, Claude Code's settings.json in a
temporary HOME. ``main`` runs in a worker thread so the servers keep serving on the test's loop.
"""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from ccr_box.agent import settings
from ccr_box.cli import main
from ccr_box.config_file import write_initial
from tests.conftest import API_KEY, CHAT, Harness
from tests.fake_telegram import FakeTelegram
from tests.helpers_proc import OWN_PREFIXES

MACHINE = "doc-box"


@pytest.fixture(autouse=True)
def clean_environ(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[pytest.MonkeyPatch]:
    for name in list(os.environ):
        if name.startswith(OWN_PREFIXES):
            monkeypatch.delenv(name)
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))  # Claude Code's user settings live here
    yield monkeypatch


def install_hooks() -> None:
    settings.install(settings.settings_path("user"))


def write_config(path: Path, server: Harness | None, fake: FakeTelegram, **values: Any) -> Path:
    port = server.client.server.port if server else 9
    base: dict[tuple[str, str], Any] = {
        ("server", "api_key"): API_KEY,
        ("server", "port"): port,
        ("server", "data_dir"): str(server.db.path.parent) if server else str(path.parent / "d"),
        ("telegram", "bot_token"): fake.token,
        ("telegram", "api_base"): fake.base_url,
        ("telegram", "allowed_chat_ids"): [int(CHAT)],
        ("agent", "server_url"): f"http://127.0.0.1:{port}",
        ("agent", "machine_id"): MACHINE,
        ("agent", "chat_id"): CHAT,
    }
    for key, value in values.items():
        section, name = key.split("__")
        base[(section, name)] = value
    write_initial(path, base)
    return path


async def doctor(cfg: Path, *args: str) -> int:
    return await asyncio.to_thread(main, ["--config", str(cfg), "doctor", *args])


def lines_marked(out: str, mark: str) -> list[str]:
    return [line.strip() for line in out.splitlines() if line.strip().startswith(mark)]


async def test_a_good_setup_passes_every_check(
    server: Harness, fake_telegram: FakeTelegram, tmp_path: Path, capsys
) -> None:
    cfg = write_config(tmp_path / "config.toml", server, fake_telegram)
    install_hooks()
    ws = await server.connect(MACHINE)
    await ws.receive_json()  # boot: the agent is connected
    code = await doctor(cfg)
    out, err = capsys.readouterr()
    assert code == 0, out
    assert "(server + agent)" in out
    for name in ("config", "bot", "chats", "webhook", "database", "server", "reach", "tmux"):
        assert any(line.split()[1] == name for line in lines_marked(out, "✓")), (name, out)
    assert "token works: @ccrbox_test_bot" in out
    assert f"the agent of {MACHINE} is connected" in out
    assert "All good." in out
    assert not lines_marked(out, "✗") and not lines_marked(out, "!")
    assert fake_telegram.token not in out + err and API_KEY not in out + err

    # --json says the same, machine-readably.
    assert await doctor(cfg, "--json") == 0
    body = json.loads(capsys.readouterr().out)
    assert body["ok"] is True and body["roles"] == ["server", "agent"]
    assert {c["level"] for c in body["checks"]} == {"ok"}
    await ws.close()


async def test_missing_and_invalid_config_exit_2_with_the_fix(tmp_path: Path, capsys) -> None:
    missing = tmp_path / "nope.toml"
    assert await doctor(missing) == 2
    out = capsys.readouterr().out
    assert "does not exist" in out and "fix: ccr-box init" in out

    bad = tmp_path / "bad.toml"
    bad.write_text('[telegram]\nmode = "pull"\n')
    assert await doctor(bad) == 2
    assert "telegram.mode: must be 'polling' or 'webhook'" in capsys.readouterr().out


async def test_bad_token_and_no_chats_fail_and_a_loose_file_mode_warns(
    fake_telegram: FakeTelegram, tmp_path: Path, capsys
) -> None:
    cfg = write_config(
        tmp_path / "config.toml",
        None,
        fake_telegram,
        telegram__bot_token="111:not-the-token",
        telegram__allowed_chat_ids=[],
    )
    os.chmod(cfg, 0o644)
    assert await doctor(cfg, "--server") == 1
    out = capsys.readouterr().out
    failed = "\n".join(lines_marked(out, "✗"))
    assert "bot" in failed and "Telegram does not know this bot token" in failed
    assert "allowed_chat_ids is empty" in failed
    assert "readable by others (mode 0644)" in out and "chmod 600" in out
    assert "111:not-the-token" not in out
    assert "(server)" in out and "tmux" not in out  # --server: no agent checks


async def test_a_webhook_in_polling_mode_and_a_missing_webhook_in_webhook_mode_fail(
    fake_telegram: FakeTelegram, tmp_path: Path, capsys
) -> None:
    fake_telegram.webhook = {"url": "https://old.example.com/webhook/telegram", "secret_token": "s"}
    cfg = write_config(tmp_path / "polling.toml", None, fake_telegram)
    assert await doctor(cfg, "--server") == 1
    out = capsys.readouterr().out
    assert "✗ webhook" in out and "a webhook to old.example.com is registered" in out
    assert "fix: ccr-box telegram webhook delete" in out

    fake_telegram.webhook = None
    cfg = write_config(tmp_path / "webhook.toml", None, fake_telegram, telegram__mode="webhook")
    assert await doctor(cfg, "--server") == 1
    out = capsys.readouterr().out
    assert "✗ webhook   webhook mode, but no webhook is registered" in out
    assert "ccr-box telegram webhook set --url" in out


async def test_a_corrupt_database_fails_and_no_server_is_a_warning(
    fake_telegram: FakeTelegram, tmp_path: Path, capsys
) -> None:
    data = tmp_path / "d"
    data.mkdir()
    (data / "ccr-box.sqlite3").write_bytes(b"this is not a database" * 100)
    cfg = write_config(tmp_path / "config.toml", None, fake_telegram)
    assert await doctor(cfg, "--server") == 1
    out = capsys.readouterr().out
    assert "✗ database" in out
    assert "! server" in out and "no server answers at http://127.0.0.1:9" in out
    assert (data / "ccr-box.sqlite3").read_bytes() == b"this is not a database" * 100


async def test_agent_side_problems_wrong_key_no_tmux_no_hooks_no_agent(
    server: Harness,
    fake_telegram: FakeTelegram,
    tmp_path: Path,
    capsys,
    clean_environ: pytest.MonkeyPatch,
) -> None:
    cfg = write_config(tmp_path / "config.toml", server, fake_telegram, agent__api_key="wrong-key")
    empty = tmp_path / "bin"
    empty.mkdir()
    clean_environ.setenv("PATH", str(empty))  # no tmux here
    assert await doctor(cfg, "--agent") == 1
    out = capsys.readouterr().out
    failed = "\n".join(lines_marked(out, "✗"))
    assert "refuses the API key" in failed
    assert "tmux is not installed" in failed
    assert "hooks" in failed and "fix: ccr-box hooks install" in out
    assert "wrong-key" not in out

    # Right key, hooks installed, tmux back: only the missing agent connection is left (a warning).
    clean_environ.undo()
    clean_environ.setenv("HOME", str(tmp_path / "home"))
    for name in list(os.environ):
        if name.startswith(OWN_PREFIXES):
            clean_environ.delenv(name)
    install_hooks()
    cfg = write_config(tmp_path / "good.toml", server, fake_telegram)
    assert await doctor(cfg, "--agent") == 0
    out = capsys.readouterr().out
    assert lines_marked(out, "!") == [
        f"! reach   no agent of {MACHINE} is connected: replies to it wait in the queue"
    ]
    assert "1 warning. Nothing is broken." in out


async def test_an_unreachable_server_fails_on_the_agent_side(
    fake_telegram: FakeTelegram, tmp_path: Path, capsys
) -> None:
    install_hooks()
    cfg = write_config(tmp_path / "config.toml", None, fake_telegram)
    assert await doctor(cfg, "--agent") == 1
    out = capsys.readouterr().out
    assert "✗ reach" in out and "cannot reach http://127.0.0.1:9" in out
