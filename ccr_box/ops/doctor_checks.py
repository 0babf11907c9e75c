"""The checks of ``ccr-box doctor``, each returning :class:`Check` results (never raising).

Server machine: bot token, allowed chats, webhook versus ``telegram.mode``, the database, the
local server's readiness. Agent machine: agent settings, the server and API key (and whether
this machine's agent is connected), tmux or the inject command, Claude Code hooks.
"""

from __future__ import annotations

import asyncio
import os
import shlex
import shutil
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ccr_box.config import Config, TelegramConfig, default_machine_id

OK, WARN, FAIL = "ok", "warn", "fail"


@dataclass(frozen=True)
class Check:
    """One line of the report: ``level`` is ok, warn or fail; ``fix`` says what to do."""

    name: str
    level: str
    text: str
    fix: str | None = None


def config_file(path: Path) -> list[Check]:
    """The file's permissions (validity is checked by loading it)."""
    mode = stat.S_IMODE(path.stat().st_mode)
    if mode & 0o077:
        return [
            Check(
                "config",
                WARN,
                f"{path} is valid but readable by others (mode {mode:04o}); it holds secrets",
                f"chmod 600 {shlex.quote(str(path))}",
            )
        ]
    return [Check("config", OK, f"{path} is valid (mode {mode:04o})")]


async def telegram(tg: TelegramConfig) -> list[Check]:
    """Bot token (getMe), allowed chats, and the webhook against the configured mode."""
    from ccr_box.errors import TelegramError
    from ccr_box.ops.telegram_words import bot_api, explain
    from ccr_box.ops.webhook_state import assess

    checks = [_allowed_chats(tg)]
    if not tg.bot_token:
        checks.insert(
            0,
            Check(
                "bot",
                FAIL,
                "no bot token: Telegram is off (nothing is sent, no reply arrives)",
                "ccr-box init   (or set telegram.bot_token / TELEGRAM_BOT_TOKEN)",
            ),
        )
        return checks
    async with bot_api(tg.bot_token, tg.api_base) as api:
        try:
            me = await api.get_me()
        except TelegramError as exc:
            checks.insert(0, Check("bot", FAIL, explain(exc), "ccr-box init"))
            return checks
        checks.insert(0, Check("bot", OK, f"token works: @{me.get('username', '?')}"))
        try:
            info = await api.get_webhook_info()
        except TelegramError as exc:
            return [*checks, Check("webhook", WARN, f"cannot read the webhook: {explain(exc)}")]
    for finding in assess(info, tg):
        # Name the mode once: some findings already do.
        text = finding.text if "mode" in finding.text else f"{tg.mode} mode: {finding.text}"
        checks.append(Check("webhook", finding.level, text, finding.fix))
    return checks


def _allowed_chats(tg: TelegramConfig) -> Check:
    if not tg.allowed_chat_ids:
        return Check(
            "chats",
            FAIL,
            "telegram.allowed_chat_ids is empty: every message is refused and nothing is sent",
            "ccr-box init   (it finds your chat id), or add it in [telegram]",
        )
    users = f"; users: {', '.join(tg.allowed_user_ids)}" if tg.allowed_user_ids else ""
    return Check("chats", OK, f"allowed chats: {', '.join(tg.allowed_chat_ids)}{users}")


def database(data_dir: Path) -> list[Check]:
    """Integrity and schema version of the server database, read-only (safe while it runs)."""
    from ccr_box.db import database_path

    path = database_path(data_dir)
    if not path.exists():
        return [Check("database", WARN, f"{path} does not exist yet (`ccr-box up` creates it)")]
    from ccr_box.db.backup import inspect_database

    try:
        report = inspect_database(path)
    except Exception as exc:  # the check reports, it never takes doctor down
        return [Check("database", FAIL, f"{path} cannot be checked: {exc}")]
    if report.problems:
        return [
            Check("database", FAIL, f"{path}: {problem}", _DB_FIX) for problem in report.problems
        ]
    return [Check("database", OK, f"{path}: integrity ok, schema version {report.schema_version}")]


_DB_FIX = "restore a backup (`ccr-box restore PATH`, see the README) or move the file aside"


async def local_server(config: Config) -> list[Check]:
    """Is a server running here with this config, and is it ready?"""
    from ccr_box.client.http import local_url
    from ccr_box.client.probe import probe_server

    server = config.server
    url = local_url(server.host, server.port)
    probe = await probe_server(url, server.api_key, details=True, timeout_s=5)
    if probe.unreachable:
        return [
            Check(
                "server",
                WARN,
                f"no server answers at {url} ({probe.unreachable})",
                "ccr-box up   (or keep it running: ccr-box service install)",
            )
        ]
    if not probe.is_ccr_box:
        return [Check("server", FAIL, f"{url} answers, but it is not ccr-box (port taken?)")]
    if not probe.key_accepted:
        return [
            Check(
                "server",
                FAIL,
                f"the server at {url} refuses this config's api_key (HTTP {probe.key_status})",
                "is it running with another config? compare `ccr-box config path`",
            )
        ]
    return _readiness(url, probe.ready or {})


def _readiness(url: str, ready: dict) -> list[Check]:
    checks: dict[str, Any] = ready["checks"] if isinstance(ready.get("checks"), dict) else {}
    if not ready.get("ready"):
        error = (checks.get("database") or {}).get("error") or "not ready"
        return [Check("server", FAIL, f"{url} is up but not ready: {error}")]
    connected = (checks.get("machines") or {}).get("connected", 0)
    found = [Check("server", OK, f"{url} is up and ready; {connected} machine(s) connected")]
    tg = checks.get("telegram") or {}
    if ready.get("degraded"):
        error = tg.get("lastError") or tg.get("state")
        found.append(Check("server", WARN, f"the server's Telegram link is failing: {error}"))
    return found


def agent_settings(config: Config) -> list[Check]:
    agent = config.agent
    checks: list[Check] = []
    if not agent.server_url:
        checks.append(Check("agent", FAIL, "agent.server_url is empty", "ccr-box init --agent"))
    if not agent.api_key:
        checks.append(Check("agent", FAIL, "agent.api_key is empty", "ccr-box init --agent"))
    machine = agent.machine_id or default_machine_id()
    if not agent.chat_id:
        checks.append(
            Check(
                "agent",
                WARN,
                "agent.chat_id is empty: this machine's notifications are not sent",
                "ccr-box init --agent --chat-id ID",
            )
        )
    elif config.telegram.allowed_chat_ids and agent.chat_id not in config.telegram.allowed_chat_ids:
        checks.append(
            Check(
                "agent",
                WARN,
                f"agent.chat_id {agent.chat_id} is not in this file's telegram.allowed_chat_ids",
            )
        )
    if not checks:
        checks.append(Check("agent", OK, f"machine {machine}, notifications to {agent.chat_id}"))
    return checks


async def agent_server(config: Config) -> list[Check]:
    """The server from this machine: reachable, the API key, this machine's agent connected."""
    from ccr_box.client.probe import probe_server

    agent = config.agent
    if not (agent.server_url and agent.api_key):
        return []
    url = agent.server_url
    probe = await probe_server(url, agent.api_key, details=True)
    if probe.unreachable:
        return [
            Check(
                "reach",
                FAIL,
                f"cannot reach {url} ({probe.unreachable})",
                "is `ccr-box up` running there, and is the address and port reachable from here?",
            )
        ]
    if not probe.is_ccr_box:
        status = probe.health[0] if probe.health else "?"
        return [Check("reach", FAIL, f"{url} is not a ccr-box server (/health: HTTP {status})")]
    if probe.key_status == 401:
        return [
            Check(
                "reach",
                FAIL,
                f"{url} refuses the API key",
                "copy [server] api_key of the server's config, then `ccr-box init --agent`",
            )
        ]
    if not probe.key_accepted:
        return [Check("reach", FAIL, f"{url} answered HTTP {probe.key_status} to the API key")]
    checks = [Check("reach", OK, f"{url} is up and accepts the API key")]
    machine = agent.machine_id or default_machine_id()
    rows = {row.get("machineId"): row for row in probe.machines or []}
    if rows.get(machine, {}).get("connected"):
        checks.append(Check("reach", OK, f"the agent of {machine} is connected"))
    else:
        checks.append(
            Check(
                "reach",
                WARN,
                f"no agent of {machine} is connected: replies to it wait in the queue",
                "ccr-box agent   (or keep it running: ccr-box service install --agent)",
            )
        )
    return checks


async def injector(config: Config) -> list[Check]:
    """tmux (or the configured inject command) can be started."""
    command = config.agent.inject_command.strip()
    if command:
        try:
            program = shlex.split(command)[0]
        except (ValueError, IndexError):
            return [Check("inject", FAIL, "agent.inject_command cannot be parsed")]
        if shutil.which(program) is None and not os.access(program, os.X_OK):
            return [Check("inject", FAIL, f"agent.inject_command: {program} is not found")]
        return [Check("inject", OK, f"replies are piped to {program}")]
    tmux = shutil.which("tmux")
    if tmux is None:
        return [
            Check(
                "tmux",
                FAIL,
                "tmux is not installed: replies cannot be typed into sessions",
                "install tmux (e.g. `sudo apt install tmux`, `brew install tmux`)",
            )
        ]
    try:
        proc = await asyncio.create_subprocess_exec(
            tmux, "-V", stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL
        )
        out, _ = await asyncio.wait_for(proc.communicate(), 5)
    except (OSError, TimeoutError) as exc:
        return [Check("tmux", FAIL, f"{tmux} does not run: {type(exc).__name__}")]
    return [Check("tmux", OK, out.decode(errors="replace").strip() or tmux)]


def hooks(home: Path | None = None, project_dir: Path | None = None) -> list[Check]:
    """ccr-box's Claude Code hooks, user-wide or in this project."""
    from ccr_box.agent import settings

    states = {}
    for scope in ("user", "project", "local"):
        path = settings.settings_path(scope, home=home, project_dir=project_dir)
        try:
            states[path] = settings.status(path)
        except Exception as exc:  # an unreadable settings file is itself the finding
            return [Check("hooks", FAIL, f"{path} cannot be read: {exc}")]
    for path, state in states.items():
        if all(value == "installed" for value in state.values()):
            return [Check("hooks", OK, f"installed in {path}")]
    for path, state in states.items():
        if any(value != "missing" for value in state.values()):
            stale = ", ".join(event for event, value in state.items() if value != "installed")
            return [
                Check("hooks", WARN, f"{path}: {stale} not up to date", "ccr-box hooks install")
            ]
    user = settings.settings_path("user", home=home)
    return [
        Check(
            "hooks",
            FAIL,
            f"not installed ({user}): Claude Code sends no notifications",
            "ccr-box hooks install",
        )
    ]
