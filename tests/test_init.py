"""``ccr-box init``: guided setup of a server machine and of an agent machine.

Non-interactive runs call ``main`` in a worker thread (the fake Telegram and the server run on the
test's loop). Interactive runs are real ``python -m ccr_box`` child processes whose prompts are
answered through a stdin pipe as they appear on stdout.
"""

from __future__ import annotations

import asyncio
import os
import socket
import stat
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from ccr_box.cli import main
from ccr_box.config import Config, load
from ccr_box.config_file import update_file, write_initial
from tests.conftest import API_KEY, CHAT, Harness
from tests.fake_telegram import FakeTelegram
from tests.helpers_proc import OWN_PREFIXES, REPO_ROOT, clean_env

GROUP = "-100777"
SENDER = "31337"


@pytest.fixture(autouse=True)
def clean_environ(monkeypatch: pytest.MonkeyPatch) -> Iterator[pytest.MonkeyPatch]:
    """No ccr-box variable of the developer's shell leaks into in-process ``main``."""
    for name in list(os.environ):
        if name.startswith(OWN_PREFIXES):
            monkeypatch.delenv(name)
    yield monkeypatch


@pytest.fixture
def cfg(tmp_path: Path) -> Path:
    return tmp_path / "conf" / "config.toml"


def secret_file(tmp_path: Path, value: str, name: str = "secret.txt") -> str:
    path = tmp_path / name
    path.write_text(value + "\n", encoding="utf-8")
    return str(path)


async def run_init(cfg: Path, *args: str) -> int:
    return await asyncio.to_thread(main, ["--config", str(cfg), "init", *args])


def server_flags(fake: FakeTelegram, tmp_path: Path) -> list[str]:
    token = secret_file(tmp_path, fake.token, "token.txt")
    return ["--non-interactive", "--bot-token-file", token, "--api-base", fake.base_url]


def mode_of(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def loaded(path: Path) -> Config:
    return load(path, env={})


def written(path: Path) -> bool:
    return path.exists()


def text_of(path: Path) -> str:
    return path.read_text()


def append_line(path: Path, line: str) -> None:
    path.write_text(path.read_text() + line + "\n")


# --- server machine, non-interactive -------------------------------------------------------------


async def test_server_init_writes_a_private_working_config_and_a_rerun_keeps_secrets_and_comments(
    fake_telegram: FakeTelegram, tmp_path: Path, cfg: Path, capsys, clean_environ
) -> None:
    fake = fake_telegram
    code = await run_init(cfg, *server_flags(fake, tmp_path), "--chat-id", CHAT)
    out, err = capsys.readouterr()
    assert code == 0, err
    assert mode_of(cfg) == 0o600
    config = loaded(cfg)
    tg = config.telegram
    assert (tg.bot_token, tg.allowed_chat_ids, tg.mode) == (fake.token, (CHAT,), "polling")
    assert tg.api_base == fake.base_url
    assert all(len(s) >= 20 for s in (config.server.api_key, tg.webhook_secret))
    assert tg.webhook_path_secret
    # An agent on the same machine is pointed at this server.
    assert (config.agent.server_url, config.agent.chat_id) == ("http://127.0.0.1:8787", CHAT)
    assert "Bot @ccrbox_test_bot OK" in out
    assert "ccr-box is set up on" in fake.messages_to(CHAT)[0]
    assert "ccr-box up" in out and "--chat-id 4242" in out
    assert fake.token not in out + err and config.server.api_key not in out + err

    # Re-run on the same file: new token source (env), new chat; secrets and comments stay.
    append_line(cfg, "# my own note")
    os.chmod(cfg, 0o644)
    clean_environ.setenv("TELEGRAM_BOT_TOKEN", fake.token)
    args = ["--non-interactive", "--api-base", fake.base_url, "--chat-id", "777"]
    assert await run_init(cfg, *args, "--no-test-message") == 0
    out, err = capsys.readouterr()
    again = loaded(cfg)
    assert again.server.api_key == config.server.api_key
    assert again.telegram.webhook_secret == tg.webhook_secret
    assert again.telegram.webhook_path_secret == tg.webhook_path_secret
    assert again.telegram.allowed_chat_ids == ("777",)
    assert again.agent.chat_id == CHAT  # already set: init leaves it alone
    text = text_of(cfg)
    assert "# my own note" in text and "# Log verbosity" in text
    assert mode_of(cfg) == 0o600
    assert len(fake.sent) == 1  # --no-test-message
    assert fake.token not in out + err


async def test_find_chat_deletes_a_webhook_takes_the_first_message_and_confirms_it(
    fake_telegram: FakeTelegram, tmp_path: Path, cfg: Path, capsys
) -> None:
    fake = fake_telegram
    fake.webhook = {"url": "https://old.example.com/hook", "secret_token": None}
    update = fake.push_update(fake.make_message(GROUP, "hello bot", from_id=SENDER))
    code = await run_init(cfg, *server_flags(fake, tmp_path), "--find-chat", "--wait", "10")
    out, err = capsys.readouterr()
    assert code == 0, err
    config = loaded(cfg)
    assert config.telegram.allowed_chat_ids == (GROUP,)
    assert config.telegram.allowed_user_ids == ()  # non-interactive: only with --user-id
    assert f"--user-id {SENDER}" in out and "Webhook deleted" in out
    assert fake.webhook is None
    assert fake.calls_of("deleteWebhook")[0]["drop_pending_updates"] is False
    # The setup message is confirmed: a server starting now does not answer it.
    assert fake.updates == []
    assert fake.calls_of("getUpdates")[-1]["offset"] == update["update_id"] + 1


async def test_find_chat_without_any_message_fails_clearly_and_writes_nothing(
    fake_telegram: FakeTelegram, tmp_path: Path, cfg: Path, capsys
) -> None:
    code = await run_init(cfg, *server_flags(fake_telegram, tmp_path), "--find-chat", "--wait", "0")
    _, err = capsys.readouterr()
    assert code == 1
    assert "no message reached @ccrbox_test_bot within 0 s" in err
    assert not written(cfg)


async def test_find_chat_while_another_program_polls_says_to_stop_it(
    fake_telegram: FakeTelegram, tmp_path: Path, cfg: Path, capsys
) -> None:
    fake_telegram.fail_next("getUpdates", 409)  # "terminated by other getUpdates request"
    code = await run_init(cfg, *server_flags(fake_telegram, tmp_path), "--find-chat")
    _, err = capsys.readouterr()
    assert code == 1
    assert "another program is reading this bot's messages" in err and "stop it" in err
    assert not written(cfg)


async def test_webhook_mode_registers_the_webhook_with_the_files_secrets(
    fake_telegram: FakeTelegram, tmp_path: Path, cfg: Path, capsys
) -> None:
    fake = fake_telegram
    args = ["--chat-id", CHAT, "--mode", "webhook", "--webhook-url", "https://ccr.example.com/"]
    assert await run_init(cfg, *server_flags(fake, tmp_path), *args) == 0
    out, _ = capsys.readouterr()
    tg = loaded(cfg).telegram
    assert tg.mode == "webhook"
    assert fake.webhook == {
        "url": f"https://ccr.example.com/webhook/telegram/{tg.webhook_path_secret}",
        "secret_token": tg.webhook_secret,
        "allowed_updates": ["message", "callback_query"],
    }
    assert "--server-url https://ccr.example.com" in out
    assert tg.webhook_path_secret not in out and tg.webhook_secret not in out


async def test_http_webhook_url_is_refused(
    fake_telegram: FakeTelegram, tmp_path: Path, cfg: Path, capsys
) -> None:
    args = ["--chat-id", CHAT, "--mode", "webhook", "--webhook-url", "http://ccr.example.com"]
    assert await run_init(cfg, *server_flags(fake_telegram, tmp_path), *args) == 2
    _, err = capsys.readouterr()
    assert "--webhook-url must start with https://" in err
    assert fake_telegram.calls_of("setWebhook") == [] and not written(cfg)


async def test_polling_mode_deletes_a_registered_webhook_keeping_pending_updates(
    fake_telegram: FakeTelegram, tmp_path: Path, cfg: Path, capsys
) -> None:
    fake = fake_telegram
    fake.webhook = {"url": "https://old.example.com/hook/s3cret", "secret_token": None}
    args = ["--chat-id", CHAT, "--mode", "polling", "--no-test-message"]
    assert await run_init(cfg, *server_flags(fake, tmp_path), *args) == 0
    out, _ = capsys.readouterr()
    assert fake.webhook is None
    assert fake.calls_of("deleteWebhook") == [{"drop_pending_updates": False}]
    assert "old.example.com" in out and "s3cret" not in out
    assert loaded(cfg).telegram.mode == "polling"


async def test_a_missing_answer_exits_2_naming_the_flag(
    fake_telegram: FakeTelegram, tmp_path: Path, cfg: Path, capsys
) -> None:
    no_token = ["--non-interactive", "--api-base", fake_telegram.base_url, "--chat-id", CHAT]
    assert await run_init(cfg, *no_token) == 2
    assert "TELEGRAM_BOT_TOKEN or pass --bot-token-file" in capsys.readouterr().err
    assert await run_init(cfg, *server_flags(fake_telegram, tmp_path)) == 2
    assert "pass --chat-id ID, or --find-chat" in capsys.readouterr().err
    assert await run_init(cfg, "--agent", "--non-interactive") == 2
    assert "--server-url" in capsys.readouterr().err
    assert not written(cfg)


async def test_a_wrong_token_fails_in_plain_words_without_showing_it(
    fake_telegram: FakeTelegram, tmp_path: Path, cfg: Path, capsys
) -> None:
    token = secret_file(tmp_path, "999:not-the-token")
    args = ["--non-interactive", "--bot-token-file", token, "--api-base", fake_telegram.base_url]
    assert await run_init(cfg, *args, "--chat-id", CHAT) == 1
    out, err = capsys.readouterr()
    assert "Telegram does not know this bot token" in err
    assert "not-the-token" not in out + err and not written(cfg)


async def test_a_failed_test_message_is_a_warning(
    fake_telegram: FakeTelegram, tmp_path: Path, cfg: Path, capsys
) -> None:
    fake_telegram.fail_next("sendMessage", 400)
    assert await run_init(cfg, *server_flags(fake_telegram, tmp_path), "--chat-id", CHAT) == 0
    out, _ = capsys.readouterr()
    assert "Warning: the test message to chat 4242 was not delivered" in out
    assert "chat not found" in out and loaded(cfg).telegram.allowed_chat_ids == (CHAT,)


# --- without a bot: console only -----------------------------------------------------------------


def assert_console_only(cfg: Path, out: str) -> Config:
    """A private, valid file with generated secrets and Telegram off; the mode explained."""
    assert mode_of(cfg) == 0o600
    config = loaded(cfg)
    assert config.telegram.bot_token == "" and config.telegram.allowed_chat_ids == ()
    assert all(len(s) >= 20 for s in (config.server.api_key, config.telegram.webhook_secret))
    assert config.telegram.webhook_path_secret
    assert config.agent.server_url == "http://127.0.0.1:8787"  # an agent here just works
    assert "Telegram is off: no bot token. Everything else works" in out
    assert f"run `ccr-box init` again or set telegram.bot_token in {cfg}" in out
    assert "Start the server:   ccr-box up" in out
    assert config.server.api_key not in out
    return config


async def test_no_telegram_writes_a_console_only_config_and_exits_0(
    fake_telegram: FakeTelegram, cfg: Path, capsys
) -> None:
    assert await run_init(cfg, "--non-interactive", "--no-telegram") == 0
    out, err = capsys.readouterr()
    assert err == ""
    assert_console_only(cfg, out)
    assert "--chat-id" not in out  # no chat to pass to the agents' init
    assert fake_telegram.calls == []  # no Bot API call at all


async def test_no_telegram_with_a_telegram_answer_is_a_usage_error(
    fake_telegram: FakeTelegram, tmp_path: Path, cfg: Path, capsys
) -> None:
    assert await run_init(cfg, *server_flags(fake_telegram, tmp_path), "--no-telegram") == 2
    assert "--no-telegram cannot be combined with --bot-token-file" in capsys.readouterr().err
    assert await run_init(cfg, "--no-telegram", "--chat-id", CHAT) == 2
    assert "--no-telegram cannot be combined with --chat-id" in capsys.readouterr().err
    assert not written(cfg)


async def test_no_telegram_on_a_file_with_a_bot_leaves_telegram_alone(
    fake_telegram: FakeTelegram, tmp_path: Path, cfg: Path, capsys
) -> None:
    assert await run_init(cfg, *server_flags(fake_telegram, tmp_path), "--chat-id", CHAT) == 0
    before = loaded(cfg)
    capsys.readouterr()
    assert await run_init(cfg, "--no-telegram", "--port", "9000") == 0
    out, _ = capsys.readouterr()
    after = loaded(cfg)
    assert after.telegram == before.telegram and after.server.port == 9000
    assert "Telegram settings left as they are" in out and "Telegram is off" not in out


async def test_without_a_token_the_error_names_no_telegram(
    fake_telegram: FakeTelegram, cfg: Path, capsys
) -> None:
    assert await run_init(cfg, "--non-interactive", "--chat-id", CHAT) == 2
    assert "or --no-telegram to set up the console only" in capsys.readouterr().err
    assert not written(cfg)


# --- agent machine -------------------------------------------------------------------------------


def agent_args(tmp_path: Path, url: str, key: str) -> list[str]:
    key_file = secret_file(tmp_path, key, "key.txt")
    return ["--agent", "--non-interactive", "--server-url", url, "--api-key-file", key_file]


async def test_agent_init_writes_the_agent_settings_and_checks_the_server(
    server: Harness, tmp_path: Path, cfg: Path, capsys
) -> None:
    url = server.url("/").rstrip("/")
    args = agent_args(tmp_path, url + "/", API_KEY)
    assert await run_init(cfg, *args, "--machine-id", "box-1", "--chat-id", CHAT) == 0
    out, err = capsys.readouterr()
    agent = loaded(cfg).agent
    assert (agent.server_url, agent.api_key, agent.machine_id) == (url, API_KEY, "box-1")
    assert agent.chat_id == CHAT and mode_of(cfg) == 0o600
    assert "is up" in out and "API key accepted" in out and "ccr-box hooks install" in out
    assert API_KEY not in out + err


async def test_agent_init_with_a_wrong_key_warns_but_writes(
    server: Harness, tmp_path: Path, cfg: Path, capsys
) -> None:
    url = server.url("/").rstrip("/")
    assert await run_init(cfg, *agent_args(tmp_path, url, "wrong-key_123")) == 0
    out, _ = capsys.readouterr()
    assert "the API key is wrong" in out and "wrong-key_123" not in out
    assert loaded(cfg).agent.api_key == "wrong-key_123"
    assert "agent.chat_id is empty" in out  # no --chat-id: said, not silently broken


async def test_agent_init_says_when_the_server_cannot_be_reached(
    tmp_path: Path, cfg: Path, capsys
) -> None:
    with socket.socket() as closed:  # bound, never listening: connections are refused
        closed.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{closed.getsockname()[1]}"
        assert await run_init(cfg, *agent_args(tmp_path, url, API_KEY)) == 0
    out, _ = capsys.readouterr()
    assert f"cannot reach {url}" in out and "ccr-box up" in out
    assert loaded(cfg).agent.server_url == url


# --- interactive, through real prompts -----------------------------------------------------------


class Dialog:
    """A ``ccr-box init`` child process answered through its stdin as its prompts appear."""

    def __init__(self, process: asyncio.subprocess.Process) -> None:
        self.process = process
        self.out = ""
        self.err = ""
        self._seen = 0
        self._changed = asyncio.Event()
        self._readers = [
            asyncio.create_task(self._read(process.stdout, "out")),
            asyncio.create_task(self._read(process.stderr, "err")),
        ]

    @classmethod
    async def start(cls, cfg: Path, *args: str) -> Dialog:
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "ccr_box",
            "--config",
            str(cfg),
            "init",
            *args,
            env=clean_env(),
            cwd=str(REPO_ROOT),
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        return cls(process)

    async def _read(self, stream: asyncio.StreamReader | None, name: str) -> None:
        assert stream is not None
        while chunk := await stream.read(4096):
            setattr(self, name, getattr(self, name) + chunk.decode("utf-8", "replace"))
            self._changed.set()
        self._changed.set()

    async def expect(self, text: str, timeout: float = 15.0) -> None:
        """Wait until ``text`` appears on stdout after what earlier expectations consumed."""

        async def scan() -> None:
            while (found := self.out.find(text, self._seen)) < 0:
                if self.process.returncode is not None and all(t.done() for t in self._readers):
                    raise AssertionError(f"init ended before {text!r}:\n{self.out}\n{self.err}")
                self._changed.clear()
                await self._changed.wait()
            self._seen = found + len(text)

        try:
            await asyncio.wait_for(scan(), timeout)
        except TimeoutError:
            raise AssertionError(
                f"no {text!r} within {timeout} s:\n{self.out}\n{self.err}"
            ) from None

    async def answer(self, line: str) -> None:
        assert self.process.stdin is not None
        self.process.stdin.write(line.encode() + b"\n")
        await self.process.stdin.drain()

    async def exit_code(self, timeout: float = 15.0) -> int:
        code = await asyncio.wait_for(self.process.wait(), timeout)
        await asyncio.gather(*self._readers)
        return code

    async def kill(self) -> None:
        if self.process.returncode is None:
            self.process.kill()
        await self.process.wait()
        await asyncio.gather(*self._readers, return_exceptions=True)


@pytest.fixture
async def dialogs() -> AsyncIterator[list[Dialog]]:
    started: list[Dialog] = []
    yield started
    for dialog in started:
        await dialog.kill()


async def test_interactive_server_init_asks_again_after_a_wrong_token_and_finds_the_chat(
    fake_telegram: FakeTelegram, cfg: Path, dialogs: list[Dialog]
) -> None:
    fake = fake_telegram
    d = await Dialog.start(cfg, "--api-base", fake.base_url)
    dialogs.append(d)
    await d.expect("/newbot")
    await d.expect("Paste the token @BotFather gave you")
    await d.answer("999:wrong-token")
    await d.expect("That token does not work: Telegram does not know this bot token")
    await d.expect("Paste the token @BotFather gave you")
    await d.answer(fake.token)
    await d.expect("Bot @ccrbox_test_bot OK")
    await d.expect("Waiting...")
    update = fake.push_update(fake.make_message(CHAT, "hi"))
    await d.expect("Use chat 4242 (private, @tester)? [Y/n]")
    await d.answer("y")
    await d.expect("Add another chat? [y/N]")
    await d.answer("")
    await d.expect("Choose 1 or 2 [1]:")
    await d.answer("")
    await d.expect("Will agents on other machines connect directly")
    await d.answer("y")
    assert await d.exit_code() == 0, d.err
    config = loaded(cfg)
    assert config.telegram.bot_token == fake.token
    assert config.telegram.allowed_chat_ids == (CHAT,)
    assert (config.telegram.mode, config.server.host) == ("polling", "0.0.0.0")
    assert (
        fake.updates == [] and fake.calls_of("getUpdates")[-1]["offset"] == update["update_id"] + 1
    )
    assert "ccr-box is set up on" in fake.messages_to(CHAT)[0]
    assert f"--server-url http://{socket.gethostname()}:8787 --chat-id 4242" in d.out
    for secret in (fake.token, "wrong-token", config.server.api_key):
        assert secret not in d.out + d.err


async def test_interactive_rerun_keeps_the_token_and_sets_up_a_group_and_a_webhook(
    fake_telegram: FakeTelegram, tmp_path: Path, cfg: Path, dialogs: list[Dialog]
) -> None:
    fake = fake_telegram
    assert await run_init(cfg, *server_flags(fake, tmp_path), "--chat-id", CHAT) == 0
    before = loaded(cfg)
    d = await Dialog.start(cfg, "--api-base", fake.base_url, "--no-test-message")
    dialogs.append(d)
    await d.expect(f"Updating {cfg}")
    await d.expect("Enter keeps the current one")
    await d.answer("")
    await d.expect("Bot @ccrbox_test_bot OK")
    await d.expect("Allowed chats now: 4242. Keep them? [Y/n]")
    await d.answer("n")
    await d.expect("Waiting...")
    fake.push_update(fake.make_message(GROUP, "here", from_id=SENDER))
    await d.expect(f'Use chat {GROUP} (supergroup, "ccr-box test group")? [Y/n]')
    await d.answer("")
    await d.expect("Allow only @tester (user id 31337)")
    await d.answer("y")
    await d.expect("Add another chat?")
    await d.answer("n")
    await d.expect("Choose 1 or 2")
    await d.answer("2")
    await d.expect("Public https:// address of this server")
    await d.answer("http://ccr.example.com")
    await d.expect("That address must start with https://")
    await d.answer("https://ccr.example.com")
    await d.expect("Webhook registered")
    await d.expect("Will agents on other machines connect directly")
    await d.answer("n")
    assert await d.exit_code() == 0, d.err
    after = loaded(cfg)
    tg = after.telegram
    assert tg.bot_token == fake.token and tg.mode == "webhook"
    assert (tg.allowed_chat_ids, tg.allowed_user_ids) == ((GROUP,), (SENDER,))
    assert (tg.webhook_secret, after.server.api_key) == (
        before.telegram.webhook_secret,
        before.server.api_key,
    )
    assert fake.webhook is not None and fake.webhook["secret_token"] == tg.webhook_secret
    assert fake.token not in d.out + d.err


async def test_interactive_empty_token_answer_skips_telegram_and_exits_0(
    fake_telegram: FakeTelegram, cfg: Path, dialogs: list[Dialog]
) -> None:
    """The README's `ccr-box init && ccr-box up` goes on to the server without a bot."""
    d = await Dialog.start(cfg, "--api-base", fake_telegram.base_url)
    dialogs.append(d)
    await d.expect("No bot at hand? Press Enter")
    await d.expect("Paste the token @BotFather gave you (hidden); Enter skips Telegram:")
    await d.answer("")
    await d.expect("Will agents on other machines connect directly")
    await d.answer("n")
    assert await d.exit_code() == 0, d.err
    assert_console_only(cfg, d.out)
    assert "A token is needed" not in d.out
    assert fake_telegram.calls == []


async def test_token_from_stdin_with_flags_needs_no_prompt(
    fake_telegram: FakeTelegram, cfg: Path, dialogs: list[Dialog]
) -> None:
    """stdin is not a terminal and the flags answer everything: non-interactive is implied."""
    fake = fake_telegram
    args = ["--bot-token-file", "-", "--chat-id", CHAT, "--api-base", fake.base_url]
    d = await Dialog.start(cfg, *args, "--no-test-message")
    dialogs.append(d)
    await d.answer(fake.token)
    assert await d.exit_code() == 0, d.err
    assert loaded(cfg).telegram.bot_token == fake.token
    assert "[Y/n]" not in d.out and "[y/N]" not in d.out  # nothing was asked
    assert fake.token not in d.out + d.err


# --- update_file ---------------------------------------------------------------------------------


def test_update_file_rewrites_through_a_symlink_keeps_the_rest_and_leaves_no_temp_file(
    tmp_path: Path,
) -> None:
    real = tmp_path / "real.toml"
    write_initial(real)
    link = tmp_path / "link.toml"
    link.symlink_to(real)
    before = load(real, env={})
    update_file(link, {("telegram", "allowed_chat_ids"): [4242], ("server", "port"): 9000})
    assert link.is_symlink() and stat.S_IMODE(real.stat().st_mode) == 0o600
    after = load(real, env={})
    assert (after.telegram.allowed_chat_ids, after.server.port) == ((CHAT,), 9000)
    assert after.server.api_key == before.server.api_key
    assert "# TCP port" in real.read_text()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["link.toml", "real.toml"]
