"""Live config reload (file watch and SIGHUP) and reports of chats that are not allowed."""

from __future__ import annotations

import asyncio
import logging
import signal
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from ccr_box.config import load
from ccr_box.config_file import set_values, write_initial
from ccr_box.server import keys
from ccr_box.server.app import Options
from ccr_box.server.denied import allow_hint
from ccr_box.server.reload import merge_live
from tests.conftest import API_KEY, CHAT, OTHER_CHAT, PATH_SECRET, WEBHOOK_SECRET, Harness
from tests.fake_telegram import FakeTelegram
from tests.helpers_proc import Proc, clean_env

TIMEOUT = 10.0
HOOK = f"/webhook/telegram/{PATH_SECRET}"


def write_config(path: Path, fake: FakeTelegram, data_dir: Path, **telegram: Any) -> None:
    values = {
        ("server", "api_key"): API_KEY,
        ("server", "data_dir"): str(data_dir),
        ("telegram", "bot_token"): fake.token,
        ("telegram", "mode"): "webhook",
        ("telegram", "api_base"): fake.base_url,
        ("telegram", "webhook_secret"): WEBHOOK_SECRET,
        ("telegram", "webhook_path_secret"): PATH_SECRET,
        ("telegram", "allowed_chat_ids"): [CHAT],
    }
    values.update({("telegram", k): v for k, v in telegram.items()})
    if path.exists():
        path.write_text(set_values(path.read_text(), values))
    else:
        write_initial(path, values)


def edit(path: Path, **telegram: Any) -> None:
    path.write_text(set_values(path.read_text(), {("telegram", k): v for k, v in telegram.items()}))


@pytest.fixture
async def live(tmp_path: Path, fake_telegram: FakeTelegram, start_server) -> Harness:
    path = tmp_path / "config.toml"
    write_config(path, fake_telegram, tmp_path / "data")
    config = load(path, env={})
    # The watch loop is not started; tests call check() so nothing depends on timing.
    return await start_server(
        config=config, options=Options(maintenance=False, telegram_inbound=False)
    )


def reloader(server: Harness):
    reloader = server.app[keys.RELOADER]
    assert reloader is not None
    return reloader


async def answered(server: Harness, chat: str) -> bool:
    """Send ``/sessions`` from ``chat``; True when the bot answered it (the pipeline routed it)."""
    before = len(server.fake.messages_to(chat))
    resp = await server.webhook(server.fake.make_message(chat, "/sessions"), path=HOOK)
    assert resp.status == 200
    await server.app[keys.NOTIFIER].drain()
    return server.fake.messages_to(chat)[before:] == ["No live sessions in this chat."]


async def test_newly_allowed_chat_is_routed_and_removed_chat_dropped(
    live: Harness, tmp_path: Path
) -> None:
    assert await answered(live, CHAT) is True
    assert await answered(live, OTHER_CHAT) is False

    edit(tmp_path / "config.toml", allowed_chat_ids=[OTHER_CHAT])
    assert reloader(live).check() is True
    assert live.app[keys.CONFIG].current.telegram.allowed_chat_ids == (OTHER_CHAT,)

    assert await answered(live, OTHER_CHAT) is True
    assert await answered(live, CHAT) is False  # a removed chat is never answered


async def test_invalid_edit_keeps_previous_config_and_publishes_event(
    live: Harness, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "config.toml"
    before = live.app[keys.CONFIG].current
    path.write_text(path.read_text().replace("[telegram]", "[telegram]\nallowed_chat_idz = [1]"))
    with caplog.at_level(logging.ERROR, logger="ccr_box.config"):
        assert reloader(live).check() is False
    assert live.app[keys.CONFIG].current is before
    line = next(r.getMessage() for r in caplog.records if "reload rejected" in r.getMessage())
    assert "telegram.allowed_chat_idz" in line and "did you mean 'allowed_chat_ids'" in line
    assert "previous config stays in force" in line
    event = live.app[keys.EVENTS].recent()[-1]
    assert event["kind"] == "config.rejected"
    assert "allowed_chat_idz" in event["data"]["error"]

    assert await answered(live, CHAT) is True


async def test_same_content_is_not_reloaded_but_sighup_request_is(
    live: Harness, tmp_path: Path
) -> None:
    assert reloader(live).check() is False  # unchanged since start
    reloader(live).request()
    assert reloader(live).check() is False  # reloaded, but nothing the server uses changed
    edit(tmp_path / "config.toml", allowed_user_ids=["77"])
    assert reloader(live).check() is True
    assert live.app[keys.CONFIG].current.telegram.allowed_user_ids == ("77",)


async def test_restart_only_keys_keep_running_values(live: Harness, tmp_path: Path) -> None:
    running = live.app[keys.CONFIG].current
    path = tmp_path / "config.toml"
    path.write_text(
        set_values(
            path.read_text(),
            {("server", "port"): 1, ("server", "session_ttl_days"): 3},
        )
    )
    assert reloader(live).check() is True
    now = live.app[keys.CONFIG].current
    assert now.server.port == running.server.port
    assert now.server.session_ttl_days == 3
    event = live.app[keys.EVENTS].recent()[-1]
    assert event["kind"] == "config.reloaded"
    assert event["data"]["changed"] == ["server.session_ttl_days"]
    assert event["data"]["needsRestart"] == ["server.port"]


async def test_new_api_key_is_checked_per_request(live: Harness, tmp_path: Path) -> None:
    path = tmp_path / "config.toml"
    path.write_text(set_values(path.read_text(), {("server", "api_key"): "rotated-key"}))
    assert reloader(live).check() is True
    old = await live.client.get("/sessions", headers={"Authorization": f"Bearer {API_KEY}"})
    new = await live.client.get("/sessions", headers={"Authorization": "Bearer rotated-key"})
    assert (old.status, new.status) == (401, 200)


async def test_watcher_applies_an_edit_without_being_asked(
    tmp_path: Path, fake_telegram: FakeTelegram, start_server
) -> None:
    path = tmp_path / "config.toml"
    write_config(path, fake_telegram, tmp_path / "data")
    server = await start_server(
        config=load(path, env={}),
        options=Options(maintenance=False, telegram_inbound=False, config_watch_interval_s=0.01),
    )
    events = server.app[keys.EVENTS]
    async with events.subscribe() as queue:
        edit(path, allowed_chat_ids=[CHAT, OTHER_CHAT])
        event = await asyncio.wait_for(queue.get(), TIMEOUT)
    assert event["kind"] == "config.reloaded"
    assert server.app[keys.CONFIG].current.telegram.allowed_chat_ids == (CHAT, OTHER_CHAT)


# -- chats that are not allowed ---------------------------------------------------------------


async def test_denied_chat_is_logged_with_the_line_that_allows_it(
    live: Harness, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    update = live.fake.make_message(OTHER_CHAT, "hello bot")
    with caplog.at_level(logging.WARNING, logger="ccr_box.pipeline"):
        await live.webhook(update, path=HOOK)
        await live.webhook(
            live.fake.make_message(OTHER_CHAT, "again"), path=HOOK
        )  # within a minute
    lines = [r.getMessage() for r in caplog.records if "ignored a message" in r.getMessage()]
    assert len(lines) == 1
    wanted = f'allowed_chat_ids = ["{CHAT}", "{OTHER_CHAT}"]'
    path = tmp_path / "config.toml"
    assert lines[0].endswith(f"under [telegram] in {path}: {wanted}")
    assert "'hello bot'" not in lines[0]  # message text stays out of the log
    denied = [e for e in live.app[keys.EVENTS].recent() if e["kind"] == "telegram.denied"]
    assert len(denied) == 1
    data = denied[0]["data"]
    assert data["chatId"] == OTHER_CHAT and data["text"] == "hello bot"
    assert data["allowWith"].endswith(wanted)
    # The suggested line, pasted into the file in place of the old one, allows exactly that chat.
    path.write_text(path.read_text().replace(f'allowed_chat_ids = ["{CHAT}"]', wanted))
    assert load(path, env={}).telegram.allowed_chat_ids == (CHAT, OTHER_CHAT)
    assert live.fake.messages_to(OTHER_CHAT) == []  # never answered


def test_allow_hint_for_users_and_environment(tmp_path: Path) -> None:
    config = load_plain(tmp_path, allowed_chat_ids=[CHAT], allowed_user_ids=["1"])
    key, how = allow_hint(config, CHAT, "2", {})
    assert key == "allowed_user_ids"
    assert how.endswith('plain.toml: allowed_user_ids = ["1", "2"]')
    key, how = allow_hint(config, "555", "2", {"ALLOWED_CHAT_IDS": CHAT})
    assert how.startswith(f"ALLOWED_CHAT_IDS={CHAT},555 ")


def load_plain(tmp_path: Path, **telegram: Any):
    path = tmp_path / "plain.toml"
    write_initial(path, {("telegram", k): v for k, v in telegram.items()})
    return load(path, env={})


def test_merge_live_keeps_restart_keys(tmp_path: Path) -> None:
    old = load_plain(tmp_path, mode="polling", allowed_chat_ids=["1"])
    (tmp_path / "plain.toml").unlink()
    new = load_plain(tmp_path, mode="webhook", allowed_chat_ids=["2"])
    merged = merge_live(old, new)
    assert merged.telegram.mode == "polling" and merged.telegram.allowed_chat_ids == ("2",)


# -- a real process: SIGHUP -------------------------------------------------------------------


async def test_sighup_reloads_a_running_server(
    tmp_path: Path, fake_telegram: FakeTelegram, procs: list[Proc]
) -> None:
    path = tmp_path / "config.toml"
    write_config(path, fake_telegram, tmp_path / "data")
    env = clean_env(CCR_BOX_CONFIG=str(path))
    proc = await Proc.start("up", "--headless", "--port", "0", env=env)
    procs.append(proc)
    port = await proc.listening_port()
    # Same content as before: only SIGHUP can trigger this reload (the watcher sees no change).
    proc.process.send_signal(signal.SIGHUP)
    await proc.wait_line("config reloaded: nothing the server uses changed", timeout=TIMEOUT)
    path.write_text(path.read_text().replace("[telegram]", "[telegram]\nbogus = 1"))
    proc.process.send_signal(signal.SIGHUP)
    await proc.wait_line("config reload rejected: telegram.bogus: unknown key", timeout=TIMEOUT)
    edit(path, allowed_chat_ids=[OTHER_CHAT])  # rewrites the file (still has the bogus line)
    path.write_text(path.read_text().replace("bogus = 1\n", ""))
    await proc.wait_line("config reloaded: telegram.allowed_chat_ids", timeout=TIMEOUT)
    async with aiohttp.ClientSession() as http:
        update = fake_telegram.make_message(OTHER_CHAT, "/sessions")
        async with http.post(
            f"http://127.0.0.1:{port}/webhook/telegram/{PATH_SECRET}",
            json=update,
            headers={"X-Telegram-Bot-Api-Secret-Token": WEBHOOK_SECRET},
        ) as resp:
            assert resp.status == 200
    await fake_telegram.wait_for(lambda: bool(fake_telegram.messages_to(OTHER_CHAT)), TIMEOUT)
    assert fake_telegram.messages_to(OTHER_CHAT) == ["No live sessions in this chat."]
