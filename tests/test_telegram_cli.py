"""``ccr-box telegram me|test|webhook set|delete|info`` against the fake Bot API server.

``main`` runs in a worker thread while the fake Telegram serves on the test's loop; every check is
on what the fake received or on what the command printed.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from ccr_box.cli import main
from ccr_box.config import load
from ccr_box.config_file import write_initial
from tests.conftest import CHAT
from tests.fake_telegram import FakeTelegram
from tests.helpers_proc import OWN_PREFIXES


@pytest.fixture(autouse=True)
def clean_environ(monkeypatch: pytest.MonkeyPatch) -> Iterator[pytest.MonkeyPatch]:
    for name in list(os.environ):
        if name.startswith(OWN_PREFIXES):
            monkeypatch.delenv(name)
    yield monkeypatch


def write_config(tmp_path: Path, fake: FakeTelegram | None, **telegram: Any) -> Path:
    path = tmp_path / "config.toml"
    values: dict[tuple[str, str], Any] = {
        ("telegram", "bot_token"): fake.token if fake else "",
        ("telegram", "api_base"): fake.base_url if fake else "http://127.0.0.1:9",
        ("telegram", "allowed_chat_ids"): [int(CHAT)],
    }
    values.update({("telegram", key): value for key, value in telegram.items()})
    write_initial(path, values)
    return path


async def telegram(cfg: Path, *args: str) -> int:
    return await asyncio.to_thread(main, ["--config", str(cfg), "telegram", *args])


def secrets(cfg: Path) -> list[str]:
    tg = load(cfg, env={}).telegram
    return [s for s in (tg.bot_token, tg.webhook_secret, tg.webhook_path_secret) if s]


async def test_me_names_the_bot_and_never_prints_the_token(
    fake_telegram: FakeTelegram, tmp_path: Path, capsys
) -> None:
    cfg = write_config(tmp_path, fake_telegram)
    assert await telegram(cfg, "me") == 0
    out, err = capsys.readouterr()
    assert "@ccrbox_test_bot" in out and "id 123456" in out
    assert "allowed chats: 4242" in out
    assert fake_telegram.token not in out + err


async def test_a_wrong_token_is_explained_in_plain_words(
    fake_telegram: FakeTelegram, tmp_path: Path, capsys
) -> None:
    cfg = write_config(tmp_path, fake_telegram, bot_token="999:wrong-token")
    assert await telegram(cfg, "me") == 1
    _, err = capsys.readouterr()
    assert "Telegram does not know this bot token" in err
    assert "999:wrong-token" not in err


async def test_an_unreachable_telegram_is_explained(tmp_path: Path, capsys) -> None:
    fake = FakeTelegram()
    await fake.start()
    base = fake.base_url
    await fake.close()  # nothing listens there any more
    cfg = write_config(tmp_path, None, bot_token="1:abc", api_base=base)
    assert await telegram(cfg, "webhook", "info") == 1
    _, err = capsys.readouterr()
    assert "could not be reached" in err and "1:abc" not in err


async def test_no_token_is_a_config_problem(tmp_path: Path, capsys) -> None:
    cfg = write_config(tmp_path, None)
    assert await telegram(cfg, "me") == 2
    assert "no bot token configured" in capsys.readouterr().err


async def test_webhook_set_uses_the_configured_secrets_and_allowed_updates(
    fake_telegram: FakeTelegram, tmp_path: Path, capsys
) -> None:
    cfg = write_config(tmp_path, fake_telegram, mode="webhook")
    tg = load(cfg, env={}).telegram
    assert await telegram(cfg, "webhook", "set", "--url", "https://ccr.example.com/") == 0
    out, err = capsys.readouterr()
    assert fake_telegram.webhook == {
        "url": f"https://ccr.example.com/webhook/telegram/{tg.webhook_path_secret}",
        "secret_token": tg.webhook_secret,
        "allowed_updates": ["message", "callback_query"],
    }
    assert "https://ccr.example.com/webhook/telegram/<webhook_path_secret>" in out
    assert not any(secret in out + err for secret in secrets(cfg))
    assert "telegram.mode is" not in out  # already webhook mode: no note

    # info now agrees with the config.
    assert await telegram(cfg, "webhook", "info") == 0
    out, _ = capsys.readouterr()
    assert "✓ webhook registered" in out and "✗" not in out
    assert tg.webhook_path_secret not in out


async def test_webhook_set_refuses_plain_http_and_notes_polling_mode(
    fake_telegram: FakeTelegram, tmp_path: Path, capsys
) -> None:
    cfg = write_config(tmp_path, fake_telegram)  # polling
    assert await telegram(cfg, "webhook", "set", "--url", "http://ccr.example.com") == 2
    assert "https://" in capsys.readouterr().err
    assert fake_telegram.calls_of("setWebhook") == []

    assert await telegram(cfg, "webhook", "set", "--url", "https://ccr.example.com") == 0
    assert 'telegram.mode is "polling"' in capsys.readouterr().out
    # ...and info reports the conflict with polling mode, exit 1.
    assert await telegram(cfg, "webhook", "info") == 1
    out, _ = capsys.readouterr()
    assert "✗ a webhook to ccr.example.com is registered" in out
    assert "ccr-box telegram webhook delete" in out


async def test_telegram_refusing_the_url_is_shown_in_plain_words(
    fake_telegram: FakeTelegram, tmp_path: Path, capsys
) -> None:
    cfg = write_config(tmp_path, fake_telegram, mode="webhook")
    fake_telegram.fail_next(
        "setWebhook", 400, description="Bad Request: bad webhook: Failed to resolve host"
    )
    assert await telegram(cfg, "webhook", "set", "--url", "https://nowhere.example") == 1
    err = capsys.readouterr().err
    assert "Telegram cannot use that webhook URL" in err and "Failed to resolve host" in err


async def test_webhook_delete_keeps_pending_updates_unless_asked(
    fake_telegram: FakeTelegram, tmp_path: Path, capsys
) -> None:
    cfg = write_config(tmp_path, fake_telegram, mode="webhook")
    assert await telegram(cfg, "webhook", "set", "--url", "https://ccr.example.com") == 0
    fake_telegram.push_update(fake_telegram.make_message(CHAT, "hello"))
    assert await telegram(cfg, "webhook", "delete") == 0
    out = capsys.readouterr().out
    assert fake_telegram.webhook is None and len(fake_telegram.updates) == 1
    assert "kept for polling" in out and 'set mode = "polling"' in out

    assert await telegram(cfg, "webhook", "delete", "--drop-pending-updates") == 0
    assert fake_telegram.updates == []


async def test_webhook_info_in_webhook_mode_reports_missing_wrong_and_failing_webhooks(
    fake_telegram: FakeTelegram, tmp_path: Path, capsys
) -> None:
    cfg = write_config(tmp_path, fake_telegram, mode="webhook")
    assert await telegram(cfg, "webhook", "info") == 1
    assert "✗ webhook mode, but no webhook is registered" in capsys.readouterr().out

    # Registered by hand without the path secret: the server would answer 404.
    fake_telegram.webhook = {"url": "https://ccr.example.com/webhook/telegram", "secret_token": "x"}
    assert await telegram(cfg, "webhook", "info") == 1
    assert "does not end in /webhook/telegram/<webhook_path_secret>" in capsys.readouterr().out

    # Right URL, but Telegram's deliveries fail: a warning, not a failure.
    assert await telegram(cfg, "webhook", "set", "--url", "https://ccr.example.com") == 0
    capsys.readouterr()
    fake_telegram.webhook_last_error = (int(time.time()) - 30, "Connection refused")
    assert await telegram(cfg, "webhook", "info", "--json") == 0
    out, err = capsys.readouterr()
    info = json.loads(out)
    assert info["url"].endswith("/webhook/telegram/<webhook_path_secret>")
    assert "! Telegram's last delivery to the webhook failed" in err and "Connection refused" in err


async def test_test_message_goes_to_every_allowed_chat_and_reports_each(
    fake_telegram: FakeTelegram, tmp_path: Path, capsys
) -> None:
    cfg = write_config(tmp_path, fake_telegram, allowed_chat_ids=[int(CHAT), -100777])
    fake_telegram.fail_next("sendMessage", 403)  # the first chat blocked the bot
    assert await telegram(cfg, "test", "--text", "ping from the test") == 1
    out = capsys.readouterr().out
    assert f"✗ chat {CHAT}: the user blocked the bot" in out
    assert "✓ chat -100777: sent" in out
    assert fake_telegram.messages_to("-100777") == ["ping from the test"]

    assert await telegram(cfg, "test", "--chat-id", CHAT) == 0
    assert "Test message from ccr-box" in fake_telegram.messages_to(CHAT)[0]


async def test_test_message_never_goes_to_a_chat_that_is_not_allowed(
    fake_telegram: FakeTelegram, tmp_path: Path, capsys
) -> None:
    cfg = write_config(tmp_path, fake_telegram)
    assert await telegram(cfg, "test", "--chat-id", "555") == 2
    err = capsys.readouterr().err
    assert "allowed_chat_ids = [4242, 555]" in err
    assert fake_telegram.sent == []

    empty = write_config(tmp_path / "empty", fake_telegram, allowed_chat_ids=[])
    assert await telegram(empty, "test") == 2
    assert "no allowed chats" in capsys.readouterr().err
    assert fake_telegram.sent == []


async def test_without_an_action_the_usage_is_shown(tmp_path: Path, capsys) -> None:
    cfg = write_config(tmp_path, None)
    assert await telegram(cfg) == 2
    assert await telegram(cfg, "webhook") == 2
    assert "ccr-box telegram webhook --help" in capsys.readouterr().err
