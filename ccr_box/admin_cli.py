"""CLI equivalents of the operator console: ``ccr-box machines|sessions|commands|retry|...``.

Every command talks to a running server through :class:`ccr_box.client.admin.AdminClient`. Server
URL and key: ``--url`` > ``[agent] server_url`` > ``http://<server.host>:<server.port>``; the key
is ``[agent] api_key`` (which defaults to ``[server] api_key``; ``CCR_API_KEY`` sets both).
Tables are built from plain ``rich.text.Text`` cells: labels, commands and errors come from
untrusted sources and are never interpreted as markup.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from typing import Any

from ccr_box.client.present import age, plain, shorten

COMMANDS = ("machines", "sessions", "commands", "retry", "reassign", "unregister")
STATUSES = ("pending", "sent", "acked", "dead")


def add_parsers(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    url = argparse.ArgumentParser(add_help=False)
    url.add_argument(
        "--url",
        metavar="URL",
        help="server base URL (default: agent.server_url, else http://<server.host>:<server.port>)",
    )
    as_json = argparse.ArgumentParser(add_help=False)
    as_json.add_argument("--json", action="store_true", help="print the API's JSON as is")

    sub.add_parser("machines", parents=[url, as_json], help="list machines and their queues")
    sub.add_parser("sessions", parents=[url, as_json], help="list registered sessions")
    commands = sub.add_parser(
        "commands", parents=[url, as_json], help="list queued commands, newest first"
    )
    commands.add_argument("--status", choices=STATUSES, help="only commands in this state")
    commands.add_argument("--machine", metavar="MACHINE_ID", help="only this machine's commands")
    commands.add_argument("--limit", type=_limit, default=100, help="at most N rows (1-500)")
    retry = sub.add_parser("retry", parents=[url], help="send a dead command again")
    retry.add_argument("command_id", metavar="COMMAND_ID")
    reassign = sub.add_parser(
        "reassign", parents=[url], help="move a pending or dead command to another session"
    )
    reassign.add_argument("command_id", metavar="COMMAND_ID")
    reassign.add_argument("--session", required=True, metavar="SESSION_ID")
    unregister = sub.add_parser("unregister", parents=[url], help="remove a session")
    unregister.add_argument("session_id", metavar="SESSION_ID")


def _limit(text: str) -> int:
    if not (text.isascii() and text.isdigit()) or not 1 <= int(text) <= 500:
        raise argparse.ArgumentTypeError(f"must be an integer from 1 to 500, got {text!r}")
    return int(text)


def run(args: argparse.Namespace) -> int:
    """Entry point for every command of :data:`COMMANDS` (errors are reported by ``cli.main``)."""
    from ccr_box.client.admin import admin_target

    url, api_key = admin_target(args.config, args.url)
    return asyncio.run(_run(args, url, api_key))


async def _run(args: argparse.Namespace, url: str, api_key: str) -> int:
    from ccr_box.client.admin import AdminClient

    async with AdminClient(url, api_key) as admin:
        name = args.command
        if name == "machines":
            return _show(args, await admin.machines(), _machines_table)
        if name == "sessions":
            return _show(args, await admin.sessions(), _sessions_table)
        if name == "commands":
            rows = await admin.commands(args.status, args.machine, args.limit)
            return _show(args, rows, _commands_table)
        if name == "retry":
            await admin.retry(args.command_id)
            print(f"Command {plain(args.command_id)} queued again.")
        elif name == "reassign":
            await admin.reassign(args.command_id, args.session)
            print(f"Command {plain(args.command_id)} moved to session {plain(args.session)}.")
        elif name == "unregister":
            await admin.unregister(args.session_id)
            print(f"Session {plain(args.session_id)} removed.")
    return 0


def _show(args: argparse.Namespace, data: Any, table: Any) -> int:
    if args.json:
        print(json.dumps(data, indent=2, ensure_ascii=False))
        return 0
    from rich.console import Console

    console = Console()
    if not data:
        console.print("(none)", markup=False, highlight=False)
        return 0
    console.print(table(data, int(time.time() * 1000)))
    return 0


# -- tables ---------------------------------------------------------------------------------------


def _cell(value: Any, style: str = "") -> Any:
    from rich.text import Text

    return Text(plain(value), style=style)


def _table(*columns: str) -> Any:
    from rich.table import Table

    table = Table(header_style="bold")
    for column in columns:
        table.add_column(column, overflow="fold")
    return table


def _machines_table(rows: list[dict[str, Any]], now: int) -> Any:
    table = _table("Machine", "Connected", "Pending", "Sent", "Dead")
    for m in rows:
        if m.get("connected"):
            presence = _cell(f"yes, connected {age(m.get('connectedSince'), now)}", "green")
        elif m.get("lastDisconnectedAt") is not None:
            presence = _cell(f"no, last seen {age(m['lastDisconnectedAt'], now)}", "yellow")
        else:
            presence = _cell("no", "yellow")
        dead = m.get("dead", 0)
        table.add_row(
            _cell(m.get("machineId")),
            presence,
            _cell(m.get("pending", 0)),
            _cell(m.get("sent", 0)),
            _cell(dead, "bold red" if dead else ""),
        )
    return table


def _sessions_table(rows: list[dict[str, Any]], now: int) -> Any:
    table = _table("Session", "Machine", "Label", "Created", "Updated")
    for s in rows:
        table.add_row(
            _cell(s.get("session_id")),
            _cell(s.get("machine_id")),
            _cell(s.get("label")),
            _cell(age(s.get("created_at"), now)),
            _cell(age(s.get("updated_at"), now)),
        )
    return table


def _commands_table(rows: list[dict[str, Any]], now: int) -> Any:
    table = _table(
        "Command ID", "Status", "Machine", "Session", "Tries", "Created", "Text", "Error"
    )
    for c in rows:
        status = c.get("status")
        error = c.get("dead_reason") or c.get("result_error") or c.get("last_error")
        table.add_row(
            _cell(c.get("command_id")),
            _cell(status, "bold red" if status == "dead" else ""),
            _cell(c.get("machine_id")),
            _cell(c.get("session_id")),
            _cell(c.get("attempts")),
            _cell(age(c.get("created_at"), now)),
            _cell(shorten(c.get("command"))),
            _cell(error),
            style="red" if status == "dead" else None,
        )
    return table
