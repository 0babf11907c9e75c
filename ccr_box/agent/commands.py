"""CLI glue for the machine side: ``ccr-box agent``, ``ccr-box hook``, ``ccr-box hooks``."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import sys
from pathlib import Path

from ccr_box.config import AgentConfig, load_machine_config
from ccr_box.errors import ConfigError

COMMANDS = ("agent", "hook", "hooks")


def run(args: argparse.Namespace) -> int:
    return {"agent": run_agent, "hook": run_hook, "hooks": run_hooks}[args.command](args)


def add_parsers(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    agent = sub.add_parser("agent", help="run the machine agent (receives replies, types them)")
    agent.add_argument("--log-level", choices=["debug", "info", "warning", "error"])

    hook = sub.add_parser(
        "hook", help="handle a Claude Code hook (reads its JSON on stdin; used by settings.json)"
    )
    hook.add_argument("event", nargs="?", help="SessionStart | Stop | Notification | SessionEnd")

    hooks = sub.add_parser("hooks", help="install ccr-box's hooks into Claude Code's settings")
    hooks.add_argument("action", choices=["install", "uninstall", "status"])
    hooks.add_argument(
        "--scope",
        choices=["user", "project", "local"],
        default="user",
        help="user: ~/.claude/settings.json (default); project/local: ./.claude/settings[.local].json",
    )


def run_agent(args: argparse.Namespace) -> int:
    from ccr_box.agent.inject import make_injector
    from ccr_box.agent.runner import Agent, AgentSettings
    from ccr_box.agent.store import AGENT_DB, AsyncStore
    from ccr_box.config import secrets_of
    from ccr_box.logs import setup_logging

    config = load_machine_config(args.config)
    agent = config.agent
    _require(agent)
    setup_logging(args.log_level or config.server.log_level, secrets_of(config))
    settings = AgentSettings(
        server_url=agent.server_url,
        api_key=agent.api_key,
        machine_id=machine_id(agent),
        chat_id=agent.chat_id,
    )
    injector = make_injector(agent.inject_command, agent.enter_delay_ms)

    async def main() -> None:
        store = await AsyncStore(agent.data_dir / AGENT_DB).open()
        try:
            await Agent(settings, store, injector).run()
        finally:
            await store.close()

    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(main())
    return 0


def run_hook(args: argparse.Namespace) -> int:
    """Never fails: Claude Code must not be disturbed by a broken hook."""
    try:
        stdin_text = _read_stdin()
        from ccr_box.agent.hooks import run_hook as handle
        from ccr_box.config import secrets_of
        from ccr_box.logs import setup_logging

        config = load_machine_config(args.config)
        setup_logging(
            config.server.log_level,
            secrets_of(config),
            log_file=config.agent.data_dir / "hooks.log",
        )
        handle(args.event, stdin_text, os.environ, config.agent)
    except Exception as exc:  # config errors included: report on stderr, exit 0 anyway
        print(f"ccr-box hook: {exc}", file=sys.stderr)
    return 0


def _read_stdin() -> str:
    """The hook payload; undecodable bytes never raise (the JSON check reports them)."""
    stdin = sys.stdin
    if stdin is None or stdin.isatty():
        return ""
    return stdin.buffer.read().decode("utf-8", "replace")


def run_hooks(args: argparse.Namespace) -> int:
    from ccr_box.agent import settings as claude_settings

    path = claude_settings.settings_path(args.scope, project_dir=Path.cwd())
    if args.action == "status":
        for event, state in claude_settings.status(path).items():
            print(f"{event:<13} {state}")
        print(f"({path})")
        return 0
    plan = (
        claude_settings.install(path)
        if args.action == "install"
        else claude_settings.uninstall(path)
    )
    print(claude_settings.describe(plan))
    return 0


def machine_id(agent: AgentConfig) -> str:
    from ccr_box.config import default_machine_id

    return agent.machine_id or default_machine_id()


def _require(agent: AgentConfig) -> None:
    if not agent.server_url:
        raise ConfigError(
            "agent.server_url (CCR_WORKER_URL)",
            "is required: the server's base URL, e.g. http://homeserver:8787",
        )
    if not agent.api_key:
        raise ConfigError("agent.api_key (CCR_API_KEY)", "is required: the server's server.api_key")
