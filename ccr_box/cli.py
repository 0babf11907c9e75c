"""The ``ccr-box`` command: parse arguments, load config, set up logging, run the chosen mode.

Modes are imported lazily so ``ccr-box config show`` does not pay for the server's imports.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

from ccr_box import __version__
from ccr_box.config import (
    Config,
    load_machine_config,
    load_or_create,
    redacted,
    resolve_config_path,
    to_toml,
)
from ccr_box.errors import CcrBoxError, ConfigError


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ccr-box",
        description="Drive Claude Code sessions on many machines from Telegram.",
    )
    parser.add_argument("--version", action="version", version=f"ccr-box {__version__}")
    parser.add_argument(
        "--config",
        metavar="PATH",
        help="config file (default: $CCR_BOX_CONFIG, else config.toml in the user config dir)",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    up = sub.add_parser(
        "up", help="run the server (creates a config with fresh secrets on first run)"
    )
    up.add_argument(
        "--headless",
        action="store_true",
        help="server only, logs to stderr (default when not on a terminal; on a terminal the console runs in front)",
    )
    up.add_argument("--host", help="listen address (server.host, CCR_BOX_HOST)")
    up.add_argument("--port", type=int, help="listen port, 0 = any free port (CCR_BOX_PORT)")
    up.add_argument(
        "--data-dir", help="where the database lives (server.data_dir, CCR_BOX_DATA_DIR)"
    )
    up.add_argument("--log-level", choices=["debug", "info", "warning", "error"])

    config = sub.add_parser("config", help="inspect the configuration")
    config_sub = config.add_subparsers(dest="config_command", metavar="ACTION")
    show = config_sub.add_parser("show", help="print the effective config, secrets redacted")
    show.add_argument("--json", action="store_true", help="JSON instead of TOML")
    config_sub.add_parser("path", help="print the config file path in use")

    for module in _command_modules():
        module.add_parsers(sub)
    return parser


# Modules that own subcommands: each has ``COMMANDS``, ``add_parsers(sub)`` and ``run(args)``, and
# imports its heavy dependencies inside ``run`` so ``ccr-box --help`` stays quick.
_COMMAND_MODULES = (
    "ccr_box.ops.init",
    "ccr_box.agent.commands",
    "ccr_box.admin_cli",
    "ccr_box.tui.commands",
    "ccr_box.ops.telegram_cli",
    "ccr_box.ops.doctor",
    "ccr_box.ops.service",
    "ccr_box.ops.backup",
)


def _command_modules() -> list[ModuleType]:
    import importlib

    return [importlib.import_module(name) for name in _COMMAND_MODULES]


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        if args.command == "up":
            return _up(args)
        if args.command == "config":
            return _config(args, parser)
        for module in _command_modules():
            if args.command in module.COMMANDS:
                code: int = module.run(args)
                return code
    except ConfigError as exc:
        print(f"ccr-box: config error: {exc}", file=sys.stderr)
        return 2
    except CcrBoxError as exc:
        print(f"ccr-box: {exc}", file=sys.stderr)
        return 1
    parser.print_help()
    return 0


def _config(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    path = resolve_config_path(args.config, os.environ)
    if args.config_command == "path":
        print(path)
        return 0
    if args.config_command == "show":
        config = load_machine_config(path)
        view = redacted(config)
        print(
            json.dumps(view, indent=2) if args.json else to_toml(view),
            end="" if not args.json else "\n",
        )
        if not path.exists():
            print(f"# {path} does not exist yet; `ccr-box up` creates it", file=sys.stderr)
        overridden = _env_overrides(config, path)
        if overridden:
            print(f"# set by environment variables: {', '.join(overridden)}", file=sys.stderr)
        return 0
    parser.parse_args(["config", "--help"])
    return 2


def _env_overrides(config: Config, path: Path) -> list[str]:
    """Dotted keys whose effective value differs from the file's because of the environment."""
    from ccr_box.config import SECTIONS, parse

    try:
        text = path.read_text(encoding="utf-8") if path.exists() else ""
        from_file = parse(text, env={}, path=path)
    except (ConfigError, OSError, UnicodeDecodeError):
        return []  # the file alone is invalid, e.g. a required value only set in the environment
    return [
        f"{section}.{f.name}"
        for section in SECTIONS
        for f in dataclasses.fields(getattr(config, section))
        if getattr(getattr(config, section), f.name) != getattr(getattr(from_file, section), f.name)
    ]


def _with_flags(config: Config, args: argparse.Namespace) -> Config:
    """Command-line flags win over env vars and the file."""
    server = config.server
    changes: dict[str, Any] = {}
    if args.host:
        changes["host"] = args.host
    if args.port is not None:
        if not 0 <= args.port <= 65535:
            raise ConfigError("--port", f"must be between 0 and 65535, got {args.port}")
        changes["port"] = args.port
    if args.data_dir:
        changes["data_dir"] = Path(args.data_dir).expanduser()
    if args.log_level:
        changes["log_level"] = args.log_level
    return dataclasses.replace(config, server=dataclasses.replace(server, **changes))


def first_run_notice(config: Config) -> str:
    """What ``ccr-box up`` says in the console when it has just created the config file."""
    lines = [f"First run: created {config.path} with freshly generated secrets (mode 0600)."]
    tg = config.telegram
    if not tg.bot_token:
        lines.append(
            "Telegram is off: the console, agents and hooks work without it. To add a bot, run "
            "`ccr-box init` (or set telegram.bot_token and telegram.allowed_chat_ids), then "
            "restart."
        )
    elif not tg.allowed_chat_ids:
        lines.append(
            "No chat is allowed yet, so Telegram accepts and sends nothing: run `ccr-box init` "
            "(or set telegram.allowed_chat_ids)."
        )
    return "\n".join(lines)


def _up(args: argparse.Namespace) -> int:
    from ccr_box.config import secrets_of
    from ccr_box.logs import setup_logging
    from ccr_box.server.runner import serve

    config, created = load_or_create(args.config)

    def adjust(reloaded: Config) -> Config:  # flags keep winning when the file is reloaded
        return _with_flags(reloaded, args)

    config = adjust(config)
    setup_logging(config.server.log_level, secrets_of(config))
    console = not args.headless and sys.stdin.isatty() and sys.stdout.isatty()
    # In the console the first-run notice is shown inside it (printed here, it would only be
    # seen after the console quits); without it, on stderr.
    if created and not console:
        print(
            f"ccr-box: created {config.path} with freshly generated secrets (mode 0600).",
            file=sys.stderr,
        )
        missing = [
            key
            for key, value in (
                ("telegram.bot_token", config.telegram.bot_token),
                ("telegram.allowed_chat_ids", config.telegram.allowed_chat_ids),
            )
            if not value
        ]
        if missing:
            print(
                f"  Fill in {' and '.join(missing)} to turn Telegram on;\n"
                "  the server is starting now with what it has.",
                file=sys.stderr,
            )
    if console:
        # On a terminal: server and console in one process (--headless for the server alone).
        from ccr_box.tui.up import run_up_with_console

        notice = first_run_notice(config) if created else None
        return run_up_with_console(config, adjust, notice=notice)
    try:
        asyncio.run(serve(config, config_adjust=adjust))
    except KeyboardInterrupt:
        pass
    except OSError as exc:  # e.g. the port is taken: a clear line instead of a traceback
        print(f"ccr-box: cannot start the server: {exc}", file=sys.stderr)
        return 1
    return 0
