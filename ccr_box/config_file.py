"""The commented config file: its template, the one-time write, and every later edit.

Edits (``ccr-box init``, the hint line of a denied chat) go through tomlkit, which keeps the
user's comments, layout and multi-line values; every write goes through
:func:`ccr_box.files.atomic_write`.

``config.example.toml`` at the top of the repository is exactly ``render_template()`` (empty
secrets); a test keeps the two identical. Regenerate it with
``python -m ccr_box.config_file > config.example.toml`` after editing the template.
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import tomlkit
from tomlkit.items import Array, Comment, Item, Null, Table

from ccr_box.files import atomic_write

_MARKERS = ("@API_KEY@", "@WEBHOOK_SECRET@", "@WEBHOOK_PATH_SECRET@")

TEMPLATE = """\
# ccr-box configuration.
#
# `ccr-box init` (guided setup) or the first `ccr-box up` writes this file (mode 0600) with
# freshly generated secrets.
# Every setting also has an environment variable (named under each key). A variable set to a
# non-empty value wins over this file, which wins over the built-in default; an empty variable
# counts as unset. Commented-out lines show the default: remove the '#' to change a value.
# Unknown sections and keys are errors, so a typo never goes unnoticed.
#
# The file's own location: CCR_BOX_CONFIG, default `config.toml` in the platform's user config
# directory for ccr-box (~/.config/ccr-box on Linux).
#
# This file holds secrets (API key, bot token, webhook secrets): keep it private (mode 0600).


[server]

# Address to listen on. 127.0.0.1 accepts this machine only: right behind a reverse proxy or
# tunnel that terminates TLS. Use "0.0.0.0" (or a LAN address) when agents on other machines
# connect directly. Env: CCR_BOX_HOST
# host = "127.0.0.1"

# TCP port (0..65535; 0 = let the system pick a free port). Env: CCR_BOX_PORT
# port = 8787

# Directory of the server database. Default: the platform's user data directory for ccr-box
# (~/.local/share/ccr-box on Linux, ~/Library/Application Support/ccr-box on macOS).
# "~" is expanded. Env: CCR_BOX_DATA_DIR
# data_dir = "~/.local/share/ccr-box"

# Shared key of agents, Claude Code hooks, daemons and the console: HTTP `Authorization: Bearer
# <key>` or `X-API-Key: <key>`, and the `/ws` subprotocol. Empty = nothing authenticates.
# Generated on first run; give the same value to every agent. No spaces or commas (it travels in
# the Sec-WebSocket-Protocol header); letters, digits, '-' and '_' are safest. Env: CCR_API_KEY
api_key = "@API_KEY@"

# Log verbosity: "debug", "info", "warning" or "error". Env: CCR_BOX_LOG_LEVEL
# log_level = "info"

# Sessions and their message mappings (reply tokens) expire after this many days without
# activity (>= 1). Env: CCR_SESSION_TTL_DAYS
# session_ttl_days = 7

# Optional /launch and /kill bot commands: start or stop Claude Code on a machine from Telegram.
# Off by default because anyone in an allowed chat could then start processes on your machines.
# Env: CCR_BOX_ENABLE_LAUNCH
# enable_launch = false

# Prometheus metrics at /metrics. By default a scrape needs the API key (Prometheus:
# `authorization: {credentials: <api_key>}`), because counts and machine ids are nobody else's
# business. true = anyone who can reach the port may read them (only behind a firewall).
# Readiness (/ready, JSON, no secrets) is always open. Env: CCR_BOX_METRICS_PUBLIC
# metrics_public = false


[telegram]

# Bot API token from @BotFather. Empty = Telegram features off (reported at start).
# Env: TELEGRAM_BOT_TOKEN
bot_token = ""

# How updates arrive:
#   "polling" - ccr-box asks Telegram for updates (getUpdates). Needs no public URL: the right
#               choice for a home server. Only one process may poll a given bot token.
#   "webhook" - Telegram POSTs updates to <public base>/webhook/telegram/<webhook_path_secret>.
#               Needs a public HTTPS URL (reverse proxy or tunnel). The server does not call
#               setWebhook itself: `ccr-box init --mode webhook --webhook-url https://...`
#               registers it, or do it once by hand, for example:
#                 curl -sS "https://api.telegram.org/bot<bot_token>/setWebhook" \\
#                   -d url="https://ccr.example.com/webhook/telegram/<webhook_path_secret>" \\
#                   -d secret_token="<webhook_secret>" \\
#                   -d allowed_updates='["message","callback_query"]'
# The webhook route is served in both modes. Env: TELEGRAM_MODE
# mode = "polling"

# Telegram sends it in the X-Telegram-Bot-Api-Secret-Token header (setWebhook's secret_token).
# Empty = every webhook request is rejected. 1-256 characters from A-Z a-z 0-9 _ -.
# Generated on first run. Env: TELEGRAM_WEBHOOK_SECRET
webhook_secret = "@WEBHOOK_SECRET@"

# When set, the webhook URL must be exactly <public base>/webhook/telegram/<this value>, so the
# endpoint cannot even be found without it. Empty = any path under /webhook/telegram/ is accepted.
# 1-256 characters from A-Z a-z 0-9 _ -. Generated on first run.
# Env: TELEGRAM_WEBHOOK_PATH_SECRET
webhook_path_secret = "@WEBHOOK_PATH_SECRET@"

# Polling mode: when Telegram refuses getUpdates because a webhook is registered (409), delete
# the webhook automatically (pending updates are kept). Off = log an error and wait for you.
# Env: TELEGRAM_DELETE_WEBHOOK
# delete_webhook = false

# Bot API base URL (http:// or https://): a self-hosted Bot API server, or a fake one in tests.
# Env: TELEGRAM_API_BASE
# api_base = "https://api.telegram.org"

# Chats allowed to talk to ccr-box and to receive notifications. Empty = deny everything,
# inbound and outbound (fail closed), so set at least one. A TOML array of ids (integers or
# strings) or one comma-separated string. A private chat's id is your user id; group ids are
# negative, supergroup ids start with -100. To find an id: stop ccr-box (only one process may
# poll a bot), send your bot a message, open
#   https://api.telegram.org/bot<bot_token>/getUpdates
# in a browser and read "chat":{"id": ...}. Env: ALLOWED_CHAT_IDS (comma-separated)
allowed_chat_ids = []

# Users allowed inside the allowed chats. Empty = every member of an allowed chat; set it for
# group chats with people who must not drive your sessions. Same format as allowed_chat_ids
# ("from":{"id": ...} in getUpdates). Env: ALLOWED_USER_IDS (comma-separated)
# allowed_user_ids = []


[agent]
# Settings of `ccr-box agent` and the Claude Code hooks on a machine that runs Claude Code.

# Server base URL, http(s)://host[:port]. Required by the agent. Examples:
# "http://127.0.0.1:8787" (same machine), "https://ccr.example.com" (behind a proxy).
# Env: CCR_WORKER_URL
server_url = ""

# The server's api_key. Empty = use [server] api_key from this file (agent on the server
# machine). Env: CCR_API_KEY (one variable for server and agent: one shared key)
api_key = ""

# This machine's id as shown in Telegram: 1-64 letters, digits or '-'. Empty = the host name with
# every other character replaced by '-'. Env: CCR_MACHINE_ID
# machine_id = ""

# Chat that receives this machine's notifications; must be in the server's allowed_chat_ids.
# Env: CCR_CHAT_ID
chat_id = ""

# Directory of the agent's inbox and local session store (same default as the server's data_dir;
# the two use different files in it). "~" is expanded. Env: CCR_BOX_DATA_DIR
# data_dir = "~/.local/share/ccr-box"

# Pause between typing the text and pressing Enter, in milliseconds (>= 100), so Claude Code does
# not fold Enter into the pasted text. Raise it on a slow machine. Env: CCR_BOX_ENTER_DELAY_MS
# enter_delay_ms = 200

# Empty = type commands into the session's tmux pane. Otherwise a command that receives the
# text on its standard input instead (for setups without tmux). Env: CCR_BOX_INJECT_COMMAND
# inject_command = ""
"""


def render_template(
    api_key: str = "", webhook_secret: str = "", webhook_path_secret: str = ""
) -> str:
    """The template with the three secrets filled in (URL-safe values only; empty by default)."""
    text = TEMPLATE
    for marker, value in zip(_MARKERS, (api_key, webhook_secret, webhook_path_secret), strict=True):
        text = text.replace(marker, value)
    return text


def set_values(text: str, values: Mapping[tuple[str, str], Any]) -> str:
    """``text`` with each ``(section, key)`` set to a value; everything else stays byte for byte.

    The text is edited as a TOML document (tomlkit), not as lines: comments, blank lines, the
    order of tables and keys, spacing, unknown keys and multi-line values survive, and the result
    is always valid TOML. A key that is set keeps its inline comment, and a multi-line array stays
    multi-line. A key whose value is already the one asked for is not touched. A key that is not
    set but has a commented default in its section (``# key = ...``, as in the template) is set on
    that line; any other missing key goes at the end of its section, and a missing section is
    appended. Used by ``ccr-box init`` and by tests; raises :class:`ValueError` (tomlkit's
    ``ParseError``) when ``text`` is not TOML, or when the section is not a table.
    """
    document = tomlkit.parse(text)
    for (section, key), value in values.items():
        _set_value(document, section, key, _plain(value))
    return document.as_string()


def assignment(key: str, value: Any) -> str:
    """One TOML line ``key = value`` (no newline), as :func:`set_values` writes it.

    Lists stay on one line, as a person would write them (the hint line of a denied chat).
    """
    return tomlkit.dumps({key: _plain(value)}).rstrip("\n")


def _set_value(document: tomlkit.TOMLDocument, section: str, key: str, value: Any) -> None:
    table = document.get(section)
    if table is None:
        table = tomlkit.table()
        table[key] = value
        document[section] = table
        return
    if not isinstance(table, dict):  # Table, InlineTable or a table split in pieces
        raise ValueError(f"[{section}] is not a table in this file")
    if key in table:
        old = table[key]
        if _same(old.unwrap() if isinstance(old, Item) else old, value):
            return
        new = tomlkit.item(value)
        if isinstance(old, Array) and isinstance(new, Array) and "\n" in old.as_string():
            new.multiline(True)
        table[key] = new
        return
    if isinstance(table, Table) and _replace_commented_default(table, key, tomlkit.item(value)):
        return
    table[key] = value


def _replace_commented_default(table: Table, key: str, item: Item) -> bool:
    """Put ``item`` where ``# key = ...`` is, in place of that comment line; False if none."""
    commented = re.compile(rf"#\s*{re.escape(key)}\s*=")
    body = table.value.body
    for index, (name, entry) in enumerate(body):
        if name is None and isinstance(entry, Comment) and commented.match(entry.trivia.comment):
            item.trivia.indent = entry.trivia.indent
            item.trivia.trail = entry.trivia.trail
            table.value._insert_at(index, key, item)  # no public "insert at": tomlkit internals
            body[index + 1] = (None, Null())  # the comment line; renders as nothing
            dict.__setitem__(table, key, item)  # Table mirrors its container, as table[key] = does
            return True
    return False


def _plain(value: Any) -> Any:
    """Tuples as lists (tomlkit writes both as arrays, compares only lists)."""
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value


def _same(old: Any, new: Any) -> bool:
    """Equal and of the same TOML type (``True`` is not ``1``, ``"1"`` is not ``1``)."""
    if isinstance(old, list) and isinstance(new, list):
        return len(old) == len(new) and all(map(_same, old, new))
    return type(old) is type(new) and old == new


def generate_secrets() -> dict[str, str]:
    """Fresh secrets for a new config file. Telegram allows only A-Za-z0-9_- (1-256) in secret_token."""
    return {
        "api_key": secrets.token_urlsafe(32),
        "webhook_secret": secrets.token_urlsafe(32),
        "webhook_path_secret": secrets.token_urlsafe(24),
    }


def _make_private_dirs(directory: Path) -> None:
    """Create ``directory`` and every missing parent with mode 0700 (existing ones are untouched)."""
    missing: list[Path] = []
    current = directory
    while not current.exists():
        missing.append(current)
        if current.parent == current:
            break
        current = current.parent
    for each in reversed(missing):
        with contextlib.suppress(FileExistsError):
            each.mkdir(mode=0o700)


def write_initial(path: Path, values: Mapping[tuple[str, str], Any] | None = None) -> None:
    """Write a fresh commented config with generated secrets to ``path`` (mode 0600).

    ``values`` (``{(section, key): value}``) are set on top of the template (see
    :func:`set_values`). Missing parent directories are created with mode 0700. Never
    overwrites: raises :class:`FileExistsError` when ``path`` exists. The file appears atomically
    and complete (:func:`ccr_box.files.atomic_write` with ``exclusive=True``).
    """
    path = Path(path)
    _make_private_dirs(path.parent)
    text = set_values(render_template(**generate_secrets()), values or {})
    atomic_write(path, text, mode=0o600, exclusive=True)


def update_file(path: Path, values: Mapping[tuple[str, str], Any]) -> None:
    """Set ``values`` (``{(section, key): value}``) in the existing config file at ``path``.

    Everything else stays as it was: comments, layout, the secrets, other keys (see
    :func:`set_values`). The rewrite is atomic and durable (:func:`ccr_box.files.atomic_write`): a
    crash leaves the old file or the new one, never half of each. The result always has mode 0600
    (the file holds secrets). A symlinked file is updated where it points. Raises
    :class:`FileNotFoundError` when ``path`` does not exist and :class:`ValueError` when it is not
    TOML.
    """
    target = Path(os.path.realpath(path))
    text = target.read_bytes().decode("utf-8")  # bytes: keeps the file's line endings
    atomic_write(target, set_values(text, values), mode=0o600)


if __name__ == "__main__":  # python -m ccr_box.config_file > config.example.toml
    print(render_template(), end="")
