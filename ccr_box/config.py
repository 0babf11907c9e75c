"""Typed configuration: defaults < config file (TOML) < environment.

One setting = one config key = one environment variable (contract §10.2, §10.3). The only shared
variables are ``CCR_API_KEY`` (server.api_key and agent.api_key: one shared key) and
``CCR_BOX_DATA_DIR`` (server.data_dir and agent.data_dir). An environment variable set to ``""``
counts as unset. Every invalid value raises :class:`ConfigError` naming the key (and the variable,
when the value came from the environment); messages never contain secret values.
"""

from __future__ import annotations

import dataclasses
import difflib
import os
import re
import socket
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit

import platformdirs
import tomli_w

from ccr_box.config_file import write_initial
from ccr_box.errors import ConfigError

APP_NAME = "ccr-box"
REDACTED = "<redacted>"


T = TypeVar("T")

# (raw value from the TOML file or the environment, came from env) -> typed value, or _Invalid.
Converter = Callable[[Any, bool], T]


class _Invalid(Exception):
    """A converter's complaint; ``parse`` turns it into a ConfigError naming the key."""


def default_data_dir() -> Path:
    return Path(platformdirs.user_data_dir(APP_NAME, appauthor=False))


def default_config_path() -> Path:
    return Path(platformdirs.user_config_dir(APP_NAME, appauthor=False)) / "config.toml"


# --- converters: (raw value, came from env) -> typed value, or raise _Invalid -------------------

_ID = re.compile(r"-?[0-9]+")
_MACHINE_ID = re.compile(r"[A-Za-z0-9-]{1,64}")
_URLSAFE_SECRET = re.compile(r"[A-Za-z0-9_-]{1,256}")
_TOKEN_CHARS = frozenset(chr(c) for c in range(0x21, 0x7F)) - frozenset('()<>@,;:\\"/[]?={}')
_TRUE, _FALSE = ("true", "1", "yes"), ("false", "0", "no")
_KINDS = {bool: "boolean", int: "integer", float: "float", str: "string", list: "array"}


def _kind(value: Any) -> str:
    return _KINDS.get(type(value), "table" if isinstance(value, dict) else type(value).__name__)


def _text(
    check: Callable[[str], str | None] | None = None,
    *,
    secret: bool = False,
    required: bool = False,
) -> Converter[str]:
    """A string; stripped unless secret; ``check`` (non-empty values) returns a problem or None."""

    def convert(value: Any, from_env: bool) -> str:
        if not isinstance(value, str):
            raise _Invalid(f"must be a string, got {_kind(value)}")
        text = value if secret else value.strip()
        if required and not text:
            raise _Invalid("must not be empty")
        problem = check(text) if check and text else None
        if problem:
            raise _Invalid(problem if secret else f"{problem}, got {text!r}")
        return text

    return convert


def _integer(low: int, high: int | None = None) -> Converter[int]:
    def convert(value: Any, from_env: bool) -> int:
        if from_env:
            if not re.fullmatch(r"\s*[+-]?[0-9]+\s*", value):
                raise _Invalid(f"must be an integer, got {value!r}")
            number = int(value)
        elif isinstance(value, bool) or not isinstance(value, int):
            raise _Invalid(f"must be an integer, got {_kind(value)}")
        else:
            number = value
        if number < low or (high is not None and number > high):
            limits = f"between {low} and {high}" if high is not None else f"at least {low}"
            raise _Invalid(f"must be {limits}, got {number}")
        return number

    return convert


def _boolean(value: Any, from_env: bool) -> bool:
    if not from_env:
        if isinstance(value, bool):
            return value
        raise _Invalid(f"must be true or false, got {_kind(value)}")
    word = value.strip().lower()
    if word not in _TRUE + _FALSE:
        raise _Invalid(f"must be true/false, 1/0 or yes/no, got {value!r}")
    return word in _TRUE


def _choice(*options: str) -> Converter[str]:
    listed = (
        " or ".join(map(repr, options))
        if len(options) == 2
        else "one of " + ", ".join(map(repr, options))
    )
    check = _text(lambda v: None if v.lower() in options else f"must be {listed}", required=True)
    return lambda value, from_env: check(value, from_env).lower()


def _path(value: Any, from_env: bool) -> Path:
    text = _text()(value, from_env)
    return Path(text).expanduser() if text else default_data_dir()


def _url_problem(value: str) -> str | None:
    try:
        parts = urlsplit(value)
        parts.port  # noqa: B018 - raises ValueError on a bad port
    except ValueError:
        return "must be an http:// or https:// URL"
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return "must be an http:// or https:// URL"
    if parts.query or parts.fragment:
        return "must not have a query or fragment"
    return None


def _url(*, required: bool) -> Converter[str]:
    check = _text(_url_problem, required=required)
    return lambda value, from_env: check(value, from_env).rstrip("/")


def _canonical_id(item: Any, where: str) -> str:
    if isinstance(item, int) and not isinstance(item, bool):
        return str(item)
    if isinstance(item, str) and _ID.fullmatch(item.strip()):
        return str(int(item.strip()))
    shown = repr(item) if isinstance(item, str) else f"of type {_kind(item)}"
    raise _Invalid(f"{where}{shown} is not a Telegram id (an optional '-' followed by digits)")


def _ids(value: Any, from_env: bool) -> tuple[str, ...]:
    if isinstance(value, str):
        items: list[Any] = [part.strip() for part in value.split(",")]
    elif isinstance(value, list):
        items = [i.strip() if isinstance(i, str) else i for i in value]
    else:
        raise _Invalid(f"must be an array of ids or a comma-separated string, got {_kind(value)}")
    found = [_canonical_id(i, "item ") for i in items if i != ""]
    return tuple(dict.fromkeys(found))


def _chat_id(value: Any, from_env: bool) -> str:
    if isinstance(value, str) and not value.strip():
        return ""
    return _canonical_id(value, "")


def _api_key_problem(key: str) -> str | None:
    if any(c.isspace() or c == "," for c in key):
        return "must not contain whitespace or commas (it travels in the Sec-WebSocket-Protocol header)"
    return None


def _urlsafe_secret_problem(value: str) -> str | None:
    ok = _URLSAFE_SECRET.fullmatch(value)
    return None if ok else "must be 1-256 characters from A-Z a-z 0-9 _ -"


# --- the typed configuration (field comments: environment variable) ------------------------------


@dataclass(frozen=True)
class ServerConfig:
    host: str = "127.0.0.1"  # CCR_BOX_HOST
    port: int = 8787  # CCR_BOX_PORT (0 = any free port)
    data_dir: Path = field(default_factory=default_data_dir)  # CCR_BOX_DATA_DIR
    api_key: str = ""  # CCR_API_KEY
    log_level: str = "info"  # CCR_BOX_LOG_LEVEL
    session_ttl_days: int = 7  # CCR_SESSION_TTL_DAYS
    enable_launch: bool = False  # CCR_BOX_ENABLE_LAUNCH (/launch and /kill, contract §7.6)
    metrics_public: bool = False  # CCR_BOX_METRICS_PUBLIC (/metrics without the API key)


@dataclass(frozen=True)
class TelegramConfig:
    bot_token: str = ""  # TELEGRAM_BOT_TOKEN
    mode: str = "polling"  # TELEGRAM_MODE: "polling" | "webhook"
    webhook_secret: str = ""  # TELEGRAM_WEBHOOK_SECRET
    webhook_path_secret: str = ""  # TELEGRAM_WEBHOOK_PATH_SECRET
    delete_webhook: bool = False  # TELEGRAM_DELETE_WEBHOOK
    api_base: str = "https://api.telegram.org"  # TELEGRAM_API_BASE (no trailing slash)
    allowed_chat_ids: tuple[str, ...] = ()  # ALLOWED_CHAT_IDS (canonical decimal strings)
    allowed_user_ids: tuple[str, ...] = ()  # ALLOWED_USER_IDS


@dataclass(frozen=True)
class AgentConfig:
    server_url: str = ""  # CCR_WORKER_URL (no trailing slash)
    api_key: str = ""  # CCR_API_KEY; "" in the file = [server] api_key
    machine_id: str = ""  # CCR_MACHINE_ID; "" = default_machine_id()
    chat_id: str = ""  # CCR_CHAT_ID
    data_dir: Path = field(default_factory=default_data_dir)  # CCR_BOX_DATA_DIR
    enter_delay_ms: int = 200  # CCR_BOX_ENTER_DELAY_MS
    inject_command: str = ""  # CCR_BOX_INJECT_COMMAND ("" = tmux)


@dataclass(frozen=True)
class Config:
    server: ServerConfig = field(default_factory=ServerConfig)
    telegram: TelegramConfig = field(default_factory=TelegramConfig)
    agent: AgentConfig = field(default_factory=AgentConfig)
    path: Path | None = None  # the file it came from


SECTIONS: dict[str, type] = {
    "server": ServerConfig,
    "telegram": TelegramConfig,
    "agent": AgentConfig,
}

_API_KEY = _text(_api_key_problem, secret=True)
_URLSAFE = _text(_urlsafe_secret_problem, secret=True)
_MACHINE = _text(
    lambda v: None if _MACHINE_ID.fullmatch(v) else "must be 1-64 letters, digits or '-'"
)

# (section, key) -> (environment variable, converter); every dataclass field has exactly one entry.
_RULES: dict[tuple[str, str], tuple[str, Converter[object]]] = {
    ("server", "host"): ("CCR_BOX_HOST", _text(required=True)),
    ("server", "port"): ("CCR_BOX_PORT", _integer(0, 65535)),
    ("server", "data_dir"): ("CCR_BOX_DATA_DIR", _path),
    ("server", "api_key"): ("CCR_API_KEY", _API_KEY),
    ("server", "log_level"): ("CCR_BOX_LOG_LEVEL", _choice("debug", "info", "warning", "error")),
    ("server", "session_ttl_days"): ("CCR_SESSION_TTL_DAYS", _integer(1)),
    ("server", "enable_launch"): ("CCR_BOX_ENABLE_LAUNCH", _boolean),
    ("server", "metrics_public"): ("CCR_BOX_METRICS_PUBLIC", _boolean),
    ("telegram", "bot_token"): ("TELEGRAM_BOT_TOKEN", _text(secret=True)),
    ("telegram", "mode"): ("TELEGRAM_MODE", _choice("polling", "webhook")),
    ("telegram", "webhook_secret"): ("TELEGRAM_WEBHOOK_SECRET", _URLSAFE),
    ("telegram", "webhook_path_secret"): ("TELEGRAM_WEBHOOK_PATH_SECRET", _URLSAFE),
    ("telegram", "delete_webhook"): ("TELEGRAM_DELETE_WEBHOOK", _boolean),
    ("telegram", "api_base"): ("TELEGRAM_API_BASE", _url(required=True)),
    ("telegram", "allowed_chat_ids"): ("ALLOWED_CHAT_IDS", _ids),
    ("telegram", "allowed_user_ids"): ("ALLOWED_USER_IDS", _ids),
    ("agent", "server_url"): ("CCR_WORKER_URL", _url(required=False)),
    ("agent", "api_key"): ("CCR_API_KEY", _API_KEY),
    ("agent", "machine_id"): ("CCR_MACHINE_ID", _MACHINE),
    ("agent", "chat_id"): ("CCR_CHAT_ID", _chat_id),
    ("agent", "data_dir"): ("CCR_BOX_DATA_DIR", _path),
    ("agent", "enter_delay_ms"): ("CCR_BOX_ENTER_DELAY_MS", _integer(100)),
    ("agent", "inject_command"): ("CCR_BOX_INJECT_COMMAND", _text()),
}
_SECRETS = ("api_key", "bot_token", "webhook_secret", "webhook_path_secret")
SECRET_KEYS = frozenset(k for k in _RULES if k[1] in _SECRETS)  # (section, key) of every secret


# --- parsing ------------------------------------------------------------------------------------


def _suggest(name: str, candidates: list[str]) -> str:
    close = difflib.get_close_matches(name, candidates, n=1, cutoff=0.6)
    return f"; did you mean {close[0]!r}?" if close else ""


def _check_known(data: dict[str, Any]) -> None:
    owners = {key: section for section, key in reversed(_RULES)}
    for name, value in data.items():
        if name not in SECTIONS:
            if name in owners:
                raise ConfigError(name, f"must be inside the [{owners[name]}] section")
            raise ConfigError(
                name,
                f"unknown section (valid: server, telegram, agent){_suggest(name, list(SECTIONS))}",
            )
        if not isinstance(value, dict):
            raise ConfigError(name, f"must be a section ([{name}]), got {_kind(value)}")
        valid = [key for section, key in _RULES if section == name]
        for key in value:
            if key not in valid:
                hint = _suggest(key, valid)
                if not hint and key in owners:
                    hint = f"; it belongs in the [{owners[key]}] section"
                raise ConfigError(f"{name}.{key}", f"unknown key{hint}")


def _build(section: str, cls: type, values: dict[str, Any], env: Mapping[str, str]) -> Any:
    kwargs: dict[str, Any] = {}
    for f in dataclasses.fields(cls):
        env_name, convert = _RULES[section, f.name]
        if env.get(env_name, "") != "":
            raw, from_env, key = env[env_name], True, f"{env_name} ({section}.{f.name})"
        elif f.name in values:
            raw, from_env, key = values[f.name], False, f"{section}.{f.name}"
        else:
            continue
        try:
            kwargs[f.name] = convert(raw, from_env)
        except _Invalid as exc:
            raise ConfigError(key, str(exc)) from None
    return cls(**kwargs)


def parse(text: str, *, env: Mapping[str, str] | None = None, path: Path | None = None) -> Config:
    """Parse config-file text and apply environment overrides.

    ``env=None`` means *no* environment overrides (pure; handy in tests). :func:`load` and
    :func:`load_or_create` default to ``os.environ`` instead.
    """
    env = {} if env is None else env
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(str(path) if path else "<file>", f"invalid TOML: {exc}") from None
    _check_known(data)
    server, telegram, agent = (_build(s, cls, data.get(s, {}), env) for s, cls in SECTIONS.items())
    if not agent.api_key:  # agent on the server machine: one shared key
        agent = dataclasses.replace(agent, api_key=server.api_key)
    return Config(server=server, telegram=telegram, agent=agent, path=path)


def load(path: Path, *, env: Mapping[str, str] | None = None) -> Config:
    """Read and parse ``path``. ``env=None`` means ``os.environ``."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(str(path), "not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(str(path), f"cannot be read: {exc}") from None
    return parse(text, env=os.environ if env is None else env, path=path)


def resolve_config_path(explicit: str | Path | None, env: Mapping[str, str]) -> Path:
    """``explicit`` > ``CCR_BOX_CONFIG`` (empty = unset) > :func:`default_config_path`."""
    chosen = explicit if explicit not in (None, "") else env.get("CCR_BOX_CONFIG", "")
    return Path(chosen).expanduser() if chosen else default_config_path()


def load_machine_config(explicit: str | Path | None = None) -> Config:
    """The config file when there is one; else (a bare agent machine) defaults + environment.

    What every command but ``up`` reads; nothing is written.
    """
    path = resolve_config_path(explicit, os.environ)
    if path.exists():
        return load(path)
    return parse("", env=os.environ, path=path)


def load_or_create(
    explicit_path: str | Path | None = None, *, env: Mapping[str, str] | None = None
) -> tuple[Config, bool]:
    """Load the config file, first writing a fresh one (generated secrets) if it does not exist.

    Returns ``(config, created)``. ``env=None`` means ``os.environ``.
    """
    env = os.environ if env is None else env
    path = resolve_config_path(explicit_path, env)
    created = False
    if not path.exists():
        try:
            write_initial(path)
            created = True
        except FileExistsError:  # another process just wrote it
            pass
        except OSError as exc:
            raise ConfigError(str(path), f"cannot be created: {exc}") from None
    return load(path, env=env), created


# --- views and helpers --------------------------------------------------------------------------


def api_key_is_token(key: str) -> bool:
    """True when ``key`` is a non-empty RFC 6455 token (visible ASCII, no separators)."""
    return bool(key) and all(c in _TOKEN_CHARS for c in key)


def redacted(config: Config) -> dict[str, dict[str, Any]]:
    """The effective config as ``{section: {key: value}}`` with secrets shown as ``<redacted>``."""
    out: dict[str, dict[str, Any]] = {}
    for section in SECTIONS:
        part = getattr(config, section)
        values: dict[str, Any] = {}
        for f in dataclasses.fields(part):
            value = getattr(part, f.name)
            if (section, f.name) in SECRET_KEYS:
                value = REDACTED if value else ""
            elif isinstance(value, Path):
                value = str(value)
            elif isinstance(value, tuple):
                value = list(value)
            values[f.name] = value
        out[section] = values
    return out


def secrets_of(config: Config) -> list[str]:
    """Every non-empty secret value (no duplicates), e.g. for masking logs."""
    found = [getattr(getattr(config, section), key) for section, key in sorted(SECRET_KEYS)]
    return list(dict.fromkeys(v for v in found if v))


def to_toml(d: Mapping[str, Any]) -> str:
    """Serialise a (redacted) config dict as TOML."""
    return tomli_w.dumps(dict(d))


def default_machine_id(hostname: str | None = None) -> str:
    """A valid machineId (§3.4) from a host name: other characters become '-', cut to 64."""
    name = socket.gethostname() if hostname is None else hostname
    return re.sub(r"[^A-Za-z0-9-]", "-", name)[:64] or "machine"
