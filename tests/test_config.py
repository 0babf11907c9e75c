"""Tests of ccr_box.config and ccr_box.config_file."""

from __future__ import annotations

import os
import stat
import sys
import tomllib
from pathlib import Path

import pytest

from ccr_box import config as cfg
from ccr_box.config_file import TEMPLATE, render_template
from ccr_box.errors import ConfigError

REPO = Path(__file__).resolve().parents[1]
POSIX = sys.platform != "win32"


def error_of(text: str, env: dict[str, str] | None = None) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        cfg.parse(text, env=env or {})
    return info.value


# --- defaults, file, environment --------------------------------------------------------------


def test_defaults() -> None:
    c = cfg.parse("", env={})
    assert c == cfg.Config()
    assert c.path is None
    assert (c.server.host, c.server.port, c.server.log_level) == ("127.0.0.1", 8787, "info")
    assert c.server.api_key == "" and c.server.session_ttl_days == 7
    assert c.server.enable_launch is False
    assert c.server.data_dir == cfg.default_data_dir() == c.agent.data_dir
    assert c.telegram == cfg.TelegramConfig()
    assert c.telegram.mode == "polling"
    assert c.telegram.api_base == "https://api.telegram.org"
    assert c.telegram.allowed_chat_ids == () and c.telegram.allowed_user_ids == ()
    assert c.agent == cfg.AgentConfig()
    assert c.agent.enter_delay_ms == 200 and c.agent.inject_command == ""
    assert cfg.default_config_path().name == "config.toml"


def test_parse_without_env_ignores_os_environ(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CCR_BOX_PORT", "1234")
    assert cfg.parse("").server.port == 8787


FULL = """
[server]
host = "0.0.0.0"
port = 9000
data_dir = "~/ccr-data"
api_key = "key-123"
log_level = "DEBUG"
session_ttl_days = 30
enable_launch = true

[telegram]
bot_token = "123:abc"
mode = "webhook"
webhook_secret = "hook_secret-1"
webhook_path_secret = "path-secret"
delete_webhook = true
api_base = "http://localhost:8081/"
allowed_chat_ids = [-1001234567890123, "42", " 7 "]
allowed_user_ids = "1, 2"

[agent]
server_url = "https://ccr.example.com/"
api_key = "agent-key"
machine_id = "laptop-1"
chat_id = -100500
data_dir = "/var/lib/ccr-agent"
enter_delay_ms = 350
inject_command = "my-injector --pane"
"""


def test_file_values(tmp_path: Path) -> None:
    c = cfg.parse(FULL, env={}, path=tmp_path / "c.toml")
    assert c.path == tmp_path / "c.toml"
    s, t, a = c.server, c.telegram, c.agent
    assert (s.host, s.port, s.api_key, s.log_level) == ("0.0.0.0", 9000, "key-123", "debug")
    assert s.data_dir == Path.home() / "ccr-data"
    assert (s.session_ttl_days, s.enable_launch) == (30, True)
    assert (t.bot_token, t.mode, t.delete_webhook) == ("123:abc", "webhook", True)
    assert (t.webhook_secret, t.webhook_path_secret) == ("hook_secret-1", "path-secret")
    assert t.api_base == "http://localhost:8081"
    assert t.allowed_chat_ids == ("-1001234567890123", "42", "7")
    assert t.allowed_user_ids == ("1", "2")
    assert (a.server_url, a.api_key, a.machine_id, a.chat_id) == (
        "https://ccr.example.com",
        "agent-key",
        "laptop-1",
        "-100500",
    )
    assert a.data_dir == Path("/var/lib/ccr-agent")
    assert (a.enter_delay_ms, a.inject_command) == (350, "my-injector --pane")


def test_env_overrides_win() -> None:
    env = {
        "CCR_BOX_HOST": "10.0.0.1",
        "CCR_BOX_PORT": "0",
        "CCR_BOX_DATA_DIR": "~/from-env",
        "CCR_API_KEY": "env-key",
        "CCR_BOX_LOG_LEVEL": "warning",
        "CCR_SESSION_TTL_DAYS": "2",
        "CCR_BOX_ENABLE_LAUNCH": "No",
        "TELEGRAM_BOT_TOKEN": "999:zzz",
        "TELEGRAM_MODE": "polling",
        "TELEGRAM_WEBHOOK_SECRET": "s1",
        "TELEGRAM_WEBHOOK_PATH_SECRET": "p1",
        "TELEGRAM_DELETE_WEBHOOK": "0",
        "TELEGRAM_API_BASE": "https://bot.example",
        "ALLOWED_CHAT_IDS": " 5 ,, -6 ,",
        "ALLOWED_USER_IDS": "8",
        "CCR_WORKER_URL": "http://host:1",
        "CCR_MACHINE_ID": "env-box",
        "CCR_CHAT_ID": "77",
        "CCR_BOX_ENTER_DELAY_MS": "100",
        "CCR_BOX_INJECT_COMMAND": "cat",
    }
    c = cfg.parse(FULL, env=env)
    s, t, a = c.server, c.telegram, c.agent
    assert (s.host, s.port, s.log_level, s.session_ttl_days, s.enable_launch) == (
        "10.0.0.1",
        0,
        "warning",
        2,
        False,
    )
    assert s.data_dir == a.data_dir == Path.home() / "from-env"
    assert s.api_key == a.api_key == "env-key"  # one variable, one shared key
    assert (t.bot_token, t.mode, t.webhook_secret, t.webhook_path_secret) == (
        "999:zzz",
        "polling",
        "s1",
        "p1",
    )
    assert (t.delete_webhook, t.api_base) == (False, "https://bot.example")
    assert (t.allowed_chat_ids, t.allowed_user_ids) == (("5", "-6"), ("8",))
    assert (a.server_url, a.machine_id, a.chat_id) == ("http://host:1", "env-box", "77")
    assert (a.enter_delay_ms, a.inject_command) == (100, "cat")


@pytest.mark.parametrize(
    ("word", "expected"),
    [("true", True), ("TRUE", True), ("1", True), ("Yes", True), ("false", False), ("0", False)],
)
def test_env_booleans(word: str, expected: bool) -> None:
    assert cfg.parse("", env={"TELEGRAM_DELETE_WEBHOOK": word}).telegram.delete_webhook is expected


def test_empty_env_counts_as_unset() -> None:
    env = {
        name: "" for name in ("CCR_BOX_PORT", "TELEGRAM_MODE", "CCR_API_KEY", "ALLOWED_CHAT_IDS")
    }
    c = cfg.parse(FULL, env=env)
    assert c.server.port == 9000
    assert c.telegram.mode == "webhook"
    assert c.server.api_key == "key-123" and c.agent.api_key == "agent-key"
    assert c.telegram.allowed_chat_ids == ("-1001234567890123", "42", "7")


def test_agent_api_key_falls_back_to_server_key() -> None:
    c = cfg.parse('[server]\napi_key = "shared"\n[agent]\napi_key = ""\n', env={})
    assert c.agent.api_key == "shared"


# --- validation ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "key", "fragment"),
    [
        (
            '[telegram]\nmode = "pull"',
            "telegram.mode",
            "must be 'polling' or 'webhook', got 'pull'",
        ),
        ("[server]\nport = 70000", "server.port", "between 0 and 65535"),
        ("[server]\nport = -1", "server.port", "between 0 and 65535"),
        ('[server]\nport = "8787"', "server.port", "must be an integer, got string"),
        ("[server]\nport = true", "server.port", "must be an integer, got boolean"),
        ("[server]\nport = 80.5", "server.port", "must be an integer"),
        ('[server]\nlog_level = "verbose"', "server.log_level", "'debug', 'info'"),
        ("[server]\nsession_ttl_days = 0", "server.session_ttl_days", "at least 1"),
        ('[server]\nenable_launch = "yes"', "server.enable_launch", "true or false"),
        ('[server]\nhost = ""', "server.host", "must not be empty"),
        ("[server]\nhost = 1", "server.host", "must be a string, got integer"),
        ("[agent]\nenter_delay_ms = 99", "agent.enter_delay_ms", "at least 100"),
        ('[agent]\nmachine_id = "my_box"', "agent.machine_id", "letters, digits or '-'"),
        ('[agent]\nmachine_id = "' + "a" * 65 + '"', "agent.machine_id", "1-64"),
        ('[agent]\nserver_url = "ws://x"', "agent.server_url", "http:// or https://"),
        ('[agent]\nserver_url = "http://x:99999"', "agent.server_url", "http:// or https://"),
        ('[agent]\nchat_id = "@channel"', "agent.chat_id", "not a Telegram id"),
        ('[telegram]\napi_base = "api.telegram.org"', "telegram.api_base", "http://"),
        ('[telegram]\nallowed_chat_ids = [1, "12a"]', "telegram.allowed_chat_ids", "'12a'"),
        ("[telegram]\nallowed_chat_ids = [true]", "telegram.allowed_chat_ids", "boolean"),
        ("[telegram]\nallowed_user_ids = 5", "telegram.allowed_user_ids", "got integer"),
        ('[server]\napi_key = "a b"', "server.api_key", "whitespace or commas"),
        ('[agent]\napi_key = "a,b"', "agent.api_key", "whitespace or commas"),
        ('[telegram]\nwebhook_secret = "x y"', "telegram.webhook_secret", "A-Z a-z 0-9 _ -"),
        ('[telegram]\nwebhook_path_secret = "a/b"', "telegram.webhook_path_secret", "0-9 _ -"),
    ],
)
def test_validation_errors_name_the_key(text: str, key: str, fragment: str) -> None:
    error = error_of(text)
    assert error.key == key
    assert fragment in error.problem
    assert str(error).startswith(key + ": ")


def test_env_errors_name_the_variable_and_the_key() -> None:
    error = error_of("", {"TELEGRAM_MODE": "pull"})
    assert error.key == "TELEGRAM_MODE (telegram.mode)"
    assert error.problem == "must be 'polling' or 'webhook', got 'pull'"
    assert error_of("", {"CCR_BOX_PORT": "80a"}).key == "CCR_BOX_PORT (server.port)"
    assert "got '80a'" in error_of("", {"CCR_BOX_PORT": "80a"}).problem
    error = error_of("", {"TELEGRAM_DELETE_WEBHOOK": "maybe"})
    assert error.key == "TELEGRAM_DELETE_WEBHOOK (telegram.delete_webhook)"
    error = error_of("", {"ALLOWED_USER_IDS": "1,x2"})
    assert error.key == "ALLOWED_USER_IDS (telegram.allowed_user_ids)"
    assert "'x2'" in error.problem


def test_secret_values_never_appear_in_errors() -> None:
    for text in ('[server]\napi_key = "sec ret"', '[telegram]\nwebhook_secret = "sec ret"'):
        assert "sec ret" not in str(error_of(text))
    assert "sec ret" not in str(error_of("", {"CCR_API_KEY": "sec ret"}))


def test_toml_syntax_error_names_file_and_line(tmp_path: Path) -> None:
    error = error_of("[server]\nport = = 1\n")
    assert error.key == "<file>"
    assert "line 2" in error.problem
    path = tmp_path / "bad.toml"
    path.write_text("[server\n")
    with pytest.raises(ConfigError) as info:
        cfg.load(path, env={})
    assert info.value.key == str(path)
    assert "line 1" in info.value.problem


def test_unknown_keys_and_sections_with_suggestions() -> None:
    error = error_of("[server]\nprot = 1")
    assert error.key == "server.prot"
    assert "unknown key" in error.problem and "'port'" in error.problem
    error = error_of("[telegram]\nallowed_chats = []")
    assert error.key == "telegram.allowed_chats" and "'allowed_chat_ids'" in error.problem
    error = error_of("[srever]\nport = 1")
    assert error.key == "srever" and "'server'" in error.problem
    error = error_of("[database]\n")
    assert error.key == "database" and "unknown section" in error.problem
    error = error_of("[server]\nbot_token = 'x'")
    assert error.key == "server.bot_token" and "[telegram]" in error.problem
    error = error_of("port = 1")
    assert error.key == "port" and "[server]" in error.problem
    error = error_of("server = 1")
    assert error.key == "server" and "section" in error.problem
    error = error_of("[agent]\ncompletely_unrelated = 1")
    assert error.key == "agent.completely_unrelated" and error.problem == "unknown key"


def test_integer_ids_are_converted_exactly() -> None:
    c = cfg.parse(
        "[telegram]\nallowed_chat_ids = [-1001234567890123, 9007199254740993]\n"
        "allowed_user_ids = [123456789]\n[agent]\nchat_id = -1001234567890123\n",
        env={},
    )
    assert c.telegram.allowed_chat_ids == ("-1001234567890123", "9007199254740993")
    assert c.telegram.allowed_user_ids == ("123456789",)
    assert c.agent.chat_id == "-1001234567890123"


def test_id_lists_trimmed_empty_dropped_deduplicated() -> None:
    c = cfg.parse('[telegram]\nallowed_chat_ids = " 1, ,2 ,, 1 ,-3 "\n', env={})
    assert c.telegram.allowed_chat_ids == ("1", "2", "-3")
    c = cfg.parse('[telegram]\nallowed_chat_ids = [" 4 ", "", 5]\n', env={})
    assert c.telegram.allowed_chat_ids == ("4", "5")
    assert cfg.parse("", env={"ALLOWED_CHAT_IDS": " , "}).telegram.allowed_chat_ids == ()


def test_data_dir_expands_home() -> None:
    assert cfg.parse('[agent]\ndata_dir = "~/x"', env={}).agent.data_dir == Path.home() / "x"


def test_api_key_is_token() -> None:
    assert cfg.api_key_is_token("abc-DEF_123.~!#$%&'*+^`|")
    for bad in ("", "a b", "a,b", "a;b", "a/b", "a=b", 'a"b', "a\tb", "a\x7fb", "é"):
        assert not cfg.api_key_is_token(bad), bad
    c = cfg.parse('[server]\napi_key = "a;b"', env={})  # a separator: allowed, the server warns
    assert c.server.api_key == "a;b"


# --- files ----------------------------------------------------------------------------------------


def test_load_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "nope.toml"
    with pytest.raises(ConfigError) as info:
        cfg.load(path, env={})
    assert (info.value.key, info.value.problem) == (str(path), "not found")


def test_load_reads_file_and_env(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text("[server]\nport = 1111\n")
    c = cfg.load(path, env={"CCR_BOX_HOST": "::1"})
    assert (c.server.port, c.server.host, c.path) == (1111, "::1", path)


def test_resolve_config_path(tmp_path: Path) -> None:
    env = {"CCR_BOX_CONFIG": str(tmp_path / "env.toml")}
    assert cfg.resolve_config_path(tmp_path / "x.toml", env) == tmp_path / "x.toml"
    assert cfg.resolve_config_path(str(tmp_path / "y.toml"), env) == tmp_path / "y.toml"
    assert cfg.resolve_config_path(None, env) == tmp_path / "env.toml"
    assert cfg.resolve_config_path(None, {"CCR_BOX_CONFIG": ""}) == cfg.default_config_path()
    assert cfg.resolve_config_path(None, {}) == cfg.default_config_path()
    assert cfg.resolve_config_path("~/c.toml", {}) == Path.home() / "c.toml"


def test_write_initial(tmp_path: Path) -> None:
    path = tmp_path / "new" / "deeper" / "config.toml"
    cfg.write_initial(path)
    if POSIX:
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
        assert stat.S_IMODE(path.parent.parent.stat().st_mode) == 0o700
    assert [p.name for p in path.parent.iterdir()] == ["config.toml"]  # no temp file left
    c = cfg.load(path, env={})
    t = c.telegram
    for secret in (c.server.api_key, t.webhook_secret, t.webhook_path_secret):
        assert len(secret) >= 32
    assert c.agent.api_key == c.server.api_key
    assert cfg.api_key_is_token(c.server.api_key)
    assert len({c.server.api_key, t.webhook_secret, t.webhook_path_secret}) == 3
    # apart from the secrets it is the example
    assert c.telegram.bot_token == "" and c.server.port == 8787 and c.telegram.mode == "polling"

    before = path.read_bytes()
    with pytest.raises(FileExistsError):
        cfg.write_initial(path)
    assert path.read_bytes() == before
    cfg.write_initial(tmp_path / "other.toml")
    assert cfg.load(tmp_path / "other.toml", env={}).server.api_key != c.server.api_key


def test_write_initial_without_hard_links(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def no_link(src: object, dst: object) -> None:
        raise PermissionError("hard links not supported")

    monkeypatch.setattr(os, "link", no_link)
    path = tmp_path / "config.toml"
    cfg.write_initial(path)
    assert [p.name for p in tmp_path.iterdir()] == ["config.toml"]
    if POSIX:
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert cfg.load(path, env={}).server.api_key
    with pytest.raises(FileExistsError):
        cfg.write_initial(path)


def test_load_or_create_creates_once_then_loads(tmp_path: Path) -> None:
    path = tmp_path / "conf" / "config.toml"
    env = {"CCR_BOX_CONFIG": str(path)}
    first, created = cfg.load_or_create(env=env)
    assert created is True and first.path == path and path.exists()
    assert first.server.api_key
    second, created = cfg.load_or_create(env=env)
    assert created is False and second == first
    third, created = cfg.load_or_create(path, env={"CCR_BOX_PORT": "5"})
    assert created is False and third.server.port == 5
    assert third.server.api_key == first.server.api_key


def test_load_or_create_cannot_create(tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    with pytest.raises(ConfigError) as info:
        cfg.load_or_create(blocker / "config.toml", env={})
    assert info.value.key == str(blocker / "config.toml")
    assert "cannot be created" in info.value.problem


# --- views ----------------------------------------------------------------------------------------


def test_redacted_hides_every_secret() -> None:
    c = cfg.parse(FULL, env={})
    view = cfg.redacted(c)
    text = str(view)
    for secret in ("key-123", "agent-key", "123:abc", "hook_secret-1", "path-secret"):
        assert secret not in text
    assert view["server"]["api_key"] == "<redacted>"
    assert view["agent"]["api_key"] == "<redacted>"
    assert view["telegram"]["bot_token"] == "<redacted>"
    assert view["telegram"]["webhook_secret"] == "<redacted>"
    assert view["telegram"]["webhook_path_secret"] == "<redacted>"
    assert view["server"]["port"] == 9000
    assert view["agent"]["data_dir"] == "/var/lib/ccr-agent"
    assert view["telegram"]["allowed_chat_ids"] == ["-1001234567890123", "42", "7"]
    assert set(view) == {"server", "telegram", "agent"}
    assert tomllib.loads(cfg.to_toml(view)) == view
    empty = cfg.redacted(cfg.Config())
    assert empty["server"]["api_key"] == "" and empty["telegram"]["bot_token"] == ""


def test_secrets_of() -> None:
    c = cfg.parse(FULL, env={})
    assert sorted(cfg.secrets_of(c)) == sorted(
        ["key-123", "agent-key", "123:abc", "hook_secret-1", "path-secret"]
    )
    shared = cfg.parse("", env={"CCR_API_KEY": "k"})
    assert cfg.secrets_of(shared) == ["k"]
    assert cfg.secrets_of(cfg.Config()) == []


# --- the example file -----------------------------------------------------------------------------


def test_example_file_is_the_template() -> None:
    example = (REPO / "config.example.toml").read_text(encoding="utf-8")
    assert example == render_template(), (
        "config.example.toml drifted: python -m ccr_box.config_file > config.example.toml"
    )
    for marker in ("@API_KEY@", "@WEBHOOK_SECRET@", "@WEBHOOK_PATH_SECRET@"):
        assert marker in TEMPLATE and marker not in example


def test_example_file_yields_the_defaults() -> None:
    example = (REPO / "config.example.toml").read_text(encoding="utf-8")
    assert cfg.parse(example, env={}) == cfg.Config()
    assert max(len(line) for line in example.splitlines()) <= 100


def test_example_documents_every_key_and_variable() -> None:
    example = render_template()
    for section, cls in cfg.SECTIONS.items():
        assert f"[{section}]" in example
        for name in cls.__dataclass_fields__:
            assert f"{name} = " in example, name
    for variable in ("CCR_BOX_HOST", "CCR_BOX_PORT", "CCR_BOX_DATA_DIR", "CCR_API_KEY"):
        assert variable in example
    for variable in ("CCR_BOX_LOG_LEVEL", "CCR_SESSION_TTL_DAYS", "CCR_BOX_ENABLE_LAUNCH"):
        assert variable in example
    for variable in ("TELEGRAM_BOT_TOKEN", "TELEGRAM_MODE", "TELEGRAM_WEBHOOK_SECRET"):
        assert variable in example
    for variable in ("TELEGRAM_WEBHOOK_PATH_SECRET", "TELEGRAM_DELETE_WEBHOOK"):
        assert variable in example
    for variable in ("TELEGRAM_API_BASE", "ALLOWED_CHAT_IDS", "ALLOWED_USER_IDS"):
        assert variable in example
    for variable in ("CCR_WORKER_URL", "CCR_MACHINE_ID", "CCR_CHAT_ID", "CCR_BOX_CONFIG"):
        assert variable in example
    for variable in ("CCR_BOX_ENTER_DELAY_MS", "CCR_BOX_INJECT_COMMAND"):
        assert variable in example
    assert "/webhook/telegram/<webhook_path_secret>" in example


# --- machine id -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("hostname", "expected"),
    [
        ("laptop", "laptop"),
        ("my_box.local", "my-box-local"),
        ("Büro PC", "B-ro-PC"),
        ("", "machine"),
        ("a" * 70, "a" * 64),
        ("host-01", "host-01"),
    ],
)
def test_default_machine_id(hostname: str, expected: str) -> None:
    assert cfg.default_machine_id(hostname) == expected


def test_default_machine_id_from_this_host() -> None:
    machine_id = cfg.default_machine_id()
    assert 1 <= len(machine_id) <= 64
    assert all(c.isascii() and (c.isalnum() or c == "-") for c in machine_id)
