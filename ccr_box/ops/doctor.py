"""``ccr-box doctor``: check this machine's set-up and explain what is wrong and how to fix it.

It finds which roles the machine has from the config: *server* (a bot token, a database, or no
agent settings at all) and *agent* (``agent.server_url`` set); ``--server`` / ``--agent`` choose.
Every check runs even when an earlier one failed, so one run shows every problem. Exit status 0
when nothing failed (warnings allowed), 1 when something did, 2 when there is no usable config.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ccr_box.config import Config
    from ccr_box.ops.doctor_checks import Check

COMMANDS: tuple[str, ...] = ("doctor",)

_MARKS = {"ok": "✓", "warn": "!", "fail": "✗"}


def add_parsers(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "doctor",
        help="check the config, Telegram, database, server, tmux and hooks; explain problems",
        description=(
            "Check this machine's ccr-box set-up and say how to fix what is wrong. Exit status: "
            "0 all good (warnings allowed), 1 something failed, 2 no usable config."
        ),
    )
    p.add_argument("--server", action="store_true", help="only the server machine's checks")
    p.add_argument("--agent", action="store_true", help="only the agent machine's checks")
    p.add_argument("--json", action="store_true", help="the results as JSON")


def run(args: argparse.Namespace) -> int:
    from ccr_box.config import load, resolve_config_path
    from ccr_box.errors import ConfigError
    from ccr_box.ops.doctor_checks import FAIL, Check

    path = resolve_config_path(args.config, os.environ)
    if not path.exists():
        check = Check("config", FAIL, f"{path} does not exist", "ccr-box init")
        return _report(path, [], [check], args.json)
    try:
        config = load(path)
    except ConfigError as exc:
        check = Check("config", FAIL, str(exc), f"edit {path} (see config.example.toml)")
        return _report(path, [], [check], args.json)
    roles = _roles(config, args)
    checks = asyncio.run(_run_checks(config, path, roles))
    return _report(path, roles, checks, args.json)


def _roles(config: Config, args: argparse.Namespace) -> list[str]:
    if args.server or args.agent:
        return [role for role in ("server", "agent") if getattr(args, role)]
    from ccr_box.db import database_path

    roles = []
    has_db = database_path(config.server.data_dir).exists()
    if config.telegram.bot_token or has_db or not config.agent.server_url:
        roles.append("server")
    if config.agent.server_url:
        roles.append("agent")
    return roles


async def _run_checks(config: Config, path: Path, roles: list[str]) -> list[Check]:
    from ccr_box.ops import doctor_checks as c

    checks = c.config_file(path)
    server: list[Check] = []
    agent: list[Check] = []
    if "server" in roles:
        telegram, local = await asyncio.gather(c.telegram(config.telegram), c.local_server(config))
        server = [*telegram, *c.database(config.server.data_dir), *local]
    if "agent" in roles:
        reach, inject = await asyncio.gather(c.agent_server(config), c.injector(config))
        agent = [*c.agent_settings(config), *reach, *inject, *c.hooks()]
    return [*checks, *server, *agent]


def _report(path: Path, roles: list[str], checks: list[Check], as_json: bool) -> int:
    failed = sum(check.level == "fail" for check in checks)
    warned = sum(check.level == "warn" for check in checks)
    if as_json:
        body = {
            "config": str(path),
            "roles": roles,
            "ok": not failed,
            "checks": [asdict(check) for check in checks],
        }
        print(json.dumps(body, indent=2, ensure_ascii=False))
    else:
        print(f"ccr-box doctor: {path}" + (f" ({' + '.join(roles)})" if roles else ""))
        width = max((len(check.name) for check in checks), default=6)
        for check in checks:
            print(f"  {_MARKS[check.level]} {check.name:<{width}}  {check.text}")
            if check.fix and check.level != "ok":
                print(f"    {'':<{width}}  fix: {check.fix}")
        print(_summary(failed, warned))
    if not checks:
        return 2
    if checks[0].name == "config" and checks[0].level == "fail":
        return 2
    return 1 if failed else 0


def _summary(failed: int, warned: int) -> str:
    if not failed and not warned:
        return "All good."
    parts = []
    if failed:
        parts.append(f"{failed} problem{'s' if failed != 1 else ''}")
    if warned:
        parts.append(f"{warned} warning{'s' if warned != 1 else ''}")
    return ", ".join(parts) + "." + ("" if failed else " Nothing is broken.")
