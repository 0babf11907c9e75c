"""The commented config file: its template and the one-time, never-overwriting write.

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

import tomli_w

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
    """``text`` with each ``(section, key)`` set to a value, keeping every comment.

    The key's line in its section (``key = ...`` or the commented default ``# key = ...``) is
    replaced by ``key = <value>``; a key with no such line is added at the end of its section, and
    a missing section is appended. Used by ``ccr-box init`` and to show the exact line that would
    allow a chat.
    """
    lines = text.splitlines(keepends=True)
    for (section, key), value in values.items():
        new = assignment(key, value) + "\n"
        start, end = _section_span(lines, section)
        if start is None:
            if lines and not lines[-1].endswith("\n"):
                lines[-1] += "\n"
            lines += ["\n", f"[{section}]\n", new]
            continue
        pattern = re.compile(rf"^\s*#?\s*{re.escape(key)}\s*=")
        hits = [i for i in range(start, end) if pattern.match(lines[i])]
        live = [i for i in hits if not lines[i].lstrip().startswith("#")]
        if live or hits:
            lines[(live or hits)[0]] = new
        else:
            last = end
            while last > start and not lines[last - 1].strip():
                last -= 1
            lines.insert(last, new)
    return "".join(lines)


def assignment(key: str, value: Any) -> str:
    """One TOML line ``key = value`` (no newline), as ``tomli_w`` writes it."""
    if isinstance(value, list | tuple):  # one line, as a person would write it
        items = (tomli_w.dumps({"v": item}).split("=", 1)[1].strip() for item in value)
        return f"{key} = [{', '.join(items)}]"
    return tomli_w.dumps({key: value}).strip()


def _section_span(lines: list[str], section: str) -> tuple[int | None, int]:
    """(first line after ``[section]``, index of the next section header or the end)."""
    header = re.compile(r"^\s*\[([^\]]+)\]\s*(#.*)?$")
    start = None
    for i, line in enumerate(lines):
        found = header.match(line)
        if found and start is not None:
            return start, i
        if found and found.group(1).strip() == section:
            start = i + 1
    return start, len(lines)


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
    :func:`set_values`). Never overwrites: raises :class:`FileExistsError` when ``path`` exists. The file appears
    atomically (written to a private temporary file, then hard-linked into place, which fails if
    the target exists); where hard links are unsupported it is created with O_EXCL directly.
    """
    path = Path(path)
    _make_private_dirs(path.parent)
    data = set_values(render_template(**generate_secrets()), values or {}).encode("utf-8")
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    _write_new(tmp, data)
    try:
        os.link(tmp, path)
    except FileExistsError:
        raise
    except OSError:  # no hard links here (some network or FUSE file systems)
        _write_new(path, data)
    finally:
        with contextlib.suppress(OSError):
            tmp.unlink()


def update_file(path: Path, values: Mapping[tuple[str, str], Any]) -> None:
    """Set ``values`` (``{(section, key): value}``) in the existing config file at ``path``.

    Everything else stays as it was: comments, the secrets, other keys (see :func:`set_values`).
    The rewrite is atomic: the new text goes to a private temporary file (mode 0600, fsynced) in
    the same directory, which then replaces the file; a crash leaves the old file or the new one,
    never half of each. The result always has mode 0600. A symlinked file is updated where it
    points. Raises :class:`FileNotFoundError` when ``path`` does not exist.
    """
    target = Path(os.path.realpath(path))
    text = target.read_bytes().decode("utf-8")  # bytes: keeps the file's line endings
    data = set_values(text, values).encode("utf-8")
    tmp = target.with_name(f".{target.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    _write_new(tmp, data)
    try:
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    _fsync_directory(target.parent)


def _fsync_directory(directory: Path) -> None:
    """Make a rename durable (POSIX); silently skipped where directories cannot be opened."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _write_new(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY | getattr(os, "O_BINARY", 0), 0o600)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        os.fsync(fd)
    finally:
        os.close(fd)


if __name__ == "__main__":  # python -m ccr_box.config_file > config.example.toml
    print(render_template(), end="")
