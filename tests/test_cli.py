"""The ``ccr-box`` command line (contract §10.2): first run, ``config show|path``, flags, errors."""

from __future__ import annotations

import json
import os
import signal
import socket
import stat
import sys
import tomllib
from collections.abc import Iterator
from pathlib import Path

import pytest

from ccr_box import __version__
from ccr_box.cli import main
from tests.helpers_proc import OWN_PREFIXES, Proc, clean_env, run_ccr_box

FILE_API_KEY = "file-api-key_Qw3rTy7"
FILE_BOT_TOKEN = "777000:file-bot-token_Zx9"
FILE_WEBHOOK_SECRET = "file-webhook-secret_Pl0"
FILE_PATH_SECRET = "file-path-secret_Mn8"
ENV_API_KEY = "env-api-key_Vb5"

CONFIG_TEXT = f"""
[server]
api_key = "{FILE_API_KEY}"
port = 8111

[telegram]
bot_token = "{FILE_BOT_TOKEN}"
webhook_secret = "{FILE_WEBHOOK_SECRET}"
webhook_path_secret = "{FILE_PATH_SECRET}"
allowed_chat_ids = [4242]
"""


@pytest.fixture
def clean_environ(monkeypatch: pytest.MonkeyPatch) -> Iterator[pytest.MonkeyPatch]:
    """No ccr-box variable of the developer's shell or CI leaks into in-process ``main``."""
    for name in list(os.environ):
        if name.startswith(OWN_PREFIXES):
            monkeypatch.delenv(name)
    yield monkeypatch


@pytest.fixture
def config_file(tmp_path: Path) -> Path:
    path = tmp_path / "config.toml"
    path.write_text(CONFIG_TEXT, encoding="utf-8")
    return path


# --- first run -----------------------------------------------------------------------------------


async def test_first_up_writes_private_config_says_where_and_keeps_running(
    tmp_path: Path, procs: list[Proc]
) -> None:
    path = tmp_path / "fresh" / "nested" / "config.toml"
    env = clean_env(CCR_BOX_CONFIG=str(path), CCR_BOX_DATA_DIR=str(tmp_path / "data"))
    proc = await Proc.start("up", "--headless", "--port", "0", env=env)
    procs.append(proc)
    created = await proc.wait_line("ccr-box: created")
    assert created == f"ccr-box: created {path} with freshly generated secrets (mode 0600)."
    await proc.wait_line("the server is starting now with what it has.")
    at = proc.lines.index(created)
    assert proc.lines[at + 1 : at + 3] == [
        "  Fill in telegram.bot_token and telegram.allowed_chat_ids to turn Telegram on;",
        "  the server is starting now with what it has.",
    ]
    port = await proc.listening_port()  # keeps running: it does not exit after writing
    assert port > 0
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    data = tomllib.loads(path.read_text(encoding="utf-8"))
    api_key = data["server"]["api_key"]
    assert len(api_key) >= 32
    assert len(data["telegram"]["webhook_secret"]) >= 32
    assert len(data["telegram"]["webhook_path_secret"]) >= 24
    # The generated secrets are not printed anywhere.
    assert api_key not in proc.stderr
    assert data["telegram"]["webhook_secret"] not in proc.stderr

    proc.send_signal(signal.SIGTERM)
    assert await proc.wait_exit() == 0
    assert "Traceback" not in proc.stderr

    # Second run: the file is reused, nothing is rewritten.
    again = await Proc.start("up", "--headless", "--port", "0", env=env)
    procs.append(again)
    await again.listening_port()
    assert not any("ccr-box: created" in line for line in again.lines)
    assert tomllib.loads(path.read_text(encoding="utf-8"))["server"]["api_key"] == api_key
    again.send_signal(signal.SIGTERM)
    assert await again.wait_exit() == 0


# --- config show ---------------------------------------------------------------------------------


def test_config_show_redacts_secrets_and_shows_env_overrides(
    clean_environ: pytest.MonkeyPatch, config_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    clean_environ.setenv("CCR_API_KEY", ENV_API_KEY)
    clean_environ.setenv("TELEGRAM_MODE", "webhook")
    clean_environ.setenv("CCR_BOX_PORT", "9911")
    assert main(["--config", str(config_file), "config", "show"]) == 0
    out, err = capsys.readouterr()
    for secret in (
        FILE_API_KEY,
        FILE_BOT_TOKEN,
        FILE_WEBHOOK_SECRET,
        FILE_PATH_SECRET,
        ENV_API_KEY,
    ):
        assert secret not in out
        assert secret not in err
    shown = tomllib.loads(out)
    assert shown["server"]["api_key"] == "<redacted>"
    assert shown["server"]["port"] == 9911  # env wins over the file's 8111
    assert shown["telegram"]["mode"] == "webhook"  # env wins over the default
    assert shown["telegram"]["bot_token"] == "<redacted>"
    assert shown["telegram"]["webhook_secret"] == "<redacted>"
    assert shown["telegram"]["webhook_path_secret"] == "<redacted>"
    assert shown["telegram"]["allowed_chat_ids"] == ["4242"]
    assert shown["agent"]["api_key"] == "<redacted>"
    assert err == (
        "# set by environment variables: server.port, server.api_key, telegram.mode, "
        "agent.api_key\n"
    )


def test_config_show_json_parses(
    clean_environ: pytest.MonkeyPatch, config_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    clean_environ.setenv("CCR_BOX_CONFIG", str(config_file))
    clean_environ.setenv("ALLOWED_CHAT_IDS", " 1, -1002 ,,")
    assert main(["config", "show", "--json"]) == 0
    out, err = capsys.readouterr()
    shown = json.loads(out)
    assert sorted(shown) == ["agent", "server", "telegram"]
    assert shown["server"]["port"] == 8111
    assert shown["server"]["api_key"] == "<redacted>"
    assert shown["telegram"]["allowed_chat_ids"] == ["1", "-1002"]
    assert shown["telegram"]["mode"] == "polling"
    assert FILE_BOT_TOKEN not in out and FILE_API_KEY not in out
    assert err == "# set by environment variables: telegram.allowed_chat_ids\n"


def test_config_show_without_a_file_shows_defaults_and_says_so(
    clean_environ: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = tmp_path / "missing.toml"
    assert main(["--config", str(missing), "config", "show", "--json"]) == 0
    out, err = capsys.readouterr()
    shown = json.loads(out)
    assert shown["server"]["api_key"] == ""  # empty stays visibly empty, not "<redacted>"
    assert shown["server"]["host"] == "127.0.0.1"
    assert shown["server"]["port"] == 8787
    assert shown["telegram"]["mode"] == "polling"
    assert f"# {missing} does not exist yet; `ccr-box up` creates it" in err
    assert not missing.exists()


# --- config path ---------------------------------------------------------------------------------


def test_config_path_honours_flag_then_env_then_default(
    clean_environ: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    flag, env = tmp_path / "flag.toml", tmp_path / "env.toml"
    clean_environ.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg"))
    assert main(["config", "path"]) == 0
    if sys.platform.startswith("linux"):
        assert capsys.readouterr().out == f"{tmp_path / 'xdg' / 'ccr-box' / 'config.toml'}\n"
    else:
        assert capsys.readouterr().out.endswith("config.toml\n")

    clean_environ.setenv("CCR_BOX_CONFIG", str(env))
    assert main(["config", "path"]) == 0
    assert capsys.readouterr().out == f"{env}\n"

    assert main(["--config", str(flag), "config", "path"]) == 0
    assert capsys.readouterr().out == f"{flag}\n"

    clean_environ.setenv("CCR_BOX_CONFIG", "")  # empty counts as unset
    assert main(["config", "path"]) == 0
    assert capsys.readouterr().out.endswith(f"ccr-box{os.sep}config.toml\n")


# --- errors --------------------------------------------------------------------------------------


@pytest.mark.parametrize("command", [["config", "show"], ["up", "--headless", "--port", "0"]])
def test_invalid_config_exits_2_naming_the_key(
    clean_environ: pytest.MonkeyPatch,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    command: list[str],
) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(f'[server]\napi_key = "{FILE_API_KEY}"\n[telegram]\nmode = "pull"\n')
    assert main(["--config", str(path), *command]) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert err == (
        "ccr-box: config error: telegram.mode: must be 'polling' or 'webhook', got 'pull'\n"
    )
    assert FILE_API_KEY not in err


def test_invalid_env_value_names_the_variable(
    clean_environ: pytest.MonkeyPatch, config_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    clean_environ.setenv("CCR_BOX_PORT", "http")
    assert main(["--config", str(config_file), "config", "show"]) == 2
    err = capsys.readouterr().err
    assert err == (
        "ccr-box: config error: CCR_BOX_PORT (server.port): must be an integer, got 'http'\n"
    )


def test_invalid_port_flag_exits_2(
    clean_environ: pytest.MonkeyPatch, config_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["--config", str(config_file), "up", "--headless", "--port", "70000"]) == 2
    assert capsys.readouterr().err == (
        "ccr-box: config error: --port: must be between 0 and 65535, got 70000\n"
    )


def test_invalid_toml_names_the_file(
    clean_environ: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "broken.toml"
    path.write_text("[server\n")
    assert main(["--config", str(path), "config", "show"]) == 2
    assert capsys.readouterr().err.startswith(f"ccr-box: config error: {path}: invalid TOML: ")


# --- version, help, flags ------------------------------------------------------------------------


async def test_python_m_ccr_box_version(tmp_path: Path) -> None:
    proc = await run_ccr_box("--version", env=clean_env())
    assert proc.process.returncode == 0
    assert proc.stdout == f"ccr-box {__version__}\n"


def test_no_command_prints_help(
    clean_environ: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main([]) == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: ccr-box")
    assert "up" in out and "config" in out


async def test_flags_override_env(tmp_path: Path, procs: list[Proc]) -> None:
    with socket.socket() as taken:  # CCR_BOX_PORT points at a busy port: using it would fail
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        busy_port = taken.getsockname()[1]
        env = clean_env(
            CCR_BOX_CONFIG=str(tmp_path / "config.toml"),
            CCR_BOX_HOST="127.0.0.2",
            CCR_BOX_PORT=str(busy_port),
            CCR_BOX_DATA_DIR=str(tmp_path / "env-data"),
            CCR_BOX_LOG_LEVEL="error",
        )
        flag_data = tmp_path / "flag-data"
        proc = await Proc.start(
            "up",
            "--headless",
            "--host",
            "127.0.0.1",
            "--port",
            "0",
            "--data-dir",
            str(flag_data),
            "--log-level",
            "info",
            env=env,
        )
        procs.append(proc)
        line = await proc.wait_line("ccr-box listening on http://")
        port = await proc.listening_port()
    assert line.endswith(f"ccr-box listening on http://127.0.0.1:{port} (telegram: off)")
    assert port != busy_port
    assert f"ccr_box.server: database {flag_data / 'ccr-box.sqlite3'}" in proc.stderr
    assert (flag_data / "ccr-box.sqlite3").exists()
    assert not (tmp_path / "env-data").exists()
    proc.send_signal(signal.SIGTERM)
    assert await proc.wait_exit() == 0


async def test_busy_port_is_a_clear_error(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        busy_port = taken.getsockname()[1]
        env = clean_env(
            CCR_BOX_CONFIG=str(tmp_path / "config.toml"),
            CCR_BOX_DATA_DIR=str(tmp_path / "data"),
            CCR_BOX_PORT=str(busy_port),
        )
        proc = await run_ccr_box("up", "--headless", env=env)
    assert proc.process.returncode == 1
    last = proc.lines[-1]
    assert last.startswith("ccr-box: cannot start the server: [Errno ")
    assert f"('127.0.0.1', {busy_port})" in last
    assert "Traceback" not in proc.stderr
