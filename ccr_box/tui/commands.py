"""``ccr-box console``: argument parsing and entry point (Textual is imported only when it runs)."""

from __future__ import annotations

import argparse

COMMANDS = ("console",)


def add_parsers(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    console = sub.add_parser(
        "console", help="live operator console attached to a running server (admin API)"
    )
    console.add_argument(
        "--url",
        metavar="URL",
        help="server base URL (default: agent.server_url, else http://<server.host>:<server.port>)",
    )


def run(args: argparse.Namespace) -> int:
    from ccr_box.client.admin import admin_target

    url, api_key = admin_target(args.config, args.url)
    from ccr_box.tui.app import ConsoleApp

    ConsoleApp(url, api_key).run()
    return 0
