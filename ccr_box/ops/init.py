"""``ccr-box init``: a guided first setup, from nothing to a working bot (or agent machine).

Server machine (default): bot token (checked with getMe), the chat(s) to use (found by asking the
user to message the bot), polling or webhook mode (the webhook is registered), optionally the
listen address; then the config file is written (mode 0600) and a test message is sent. Without a
bot (an empty answer at the token prompt, or ``--no-telegram``) the Telegram questions are skipped:
the config is written for the console only, and init still exits 0 so ``ccr-box up`` can follow.
``--agent``: the server URL and API key of an agent machine, checked against the running server.

Every answer can come from a flag instead of a prompt (``--non-interactive``); secrets only ever
come from a hidden prompt, an environment variable or a file / stdin, never from the command line.
An existing config keeps its secrets and comments: only the keys init sets are rewritten.
"""

from __future__ import annotations

import argparse
import os
import sys

COMMANDS: tuple[str, ...] = ("init",)


def add_parsers(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "init",
        help="guided setup: write the config file, check the bot token, find your chat",
        description=(
            "Guided setup of this machine. Without flags it asks its questions; with "
            "--non-interactive every answer comes from flags and environment variables. "
            "Secrets are never command-line values: the bot token comes from a prompt, "
            "TELEGRAM_BOT_TOKEN or --bot-token-file; the API key from a prompt, CCR_API_KEY or "
            "--api-key-file (PATH '-' reads one line of standard input)."
        ),
    )
    p.add_argument("--agent", action="store_true", help="set up an agent machine instead")
    p.add_argument(
        "--non-interactive", action="store_true", help="never ask; a missing answer is an error"
    )
    server = p.add_argument_group("server machine")
    server.add_argument(
        "--no-telegram",
        action="store_true",
        help="no bot yet: set up for the console only (add a bot later with `ccr-box init`)",
    )
    server.add_argument("--bot-token-file", metavar="PATH", help="file holding the bot token")
    server.add_argument("--api-base", metavar="URL", help="Bot API base URL (self-hosted)")
    server.add_argument(
        "--chat-id",
        metavar="ID",
        action="append",
        default=[],
        help="allowed chat (repeatable); with --agent: this machine's notification chat",
    )
    server.add_argument(
        "--find-chat", action="store_true", help="use the chat of the next message to the bot"
    )
    server.add_argument(
        "--user-id", metavar="ID", action="append", default=[], help="allowed user (repeatable)"
    )
    server.add_argument(
        "--wait",
        metavar="SECONDS",
        type=float,
        default=120.0,
        help="how long to wait for that message (default 120)",
    )
    server.add_argument("--mode", choices=["polling", "webhook"], help="how updates arrive")
    server.add_argument("--webhook-url", metavar="URL", help="public https:// base URL (webhook)")
    server.add_argument("--host", help="server listen address (server.host)")
    server.add_argument("--port", type=int, help="server listen port (server.port)")
    server.add_argument("--no-test-message", action="store_true", help="do not send a test message")
    server.add_argument("--show-api-key", action="store_true", help="print the API key agents need")
    agent = p.add_argument_group("agent machine (--agent)")
    agent.add_argument("--server-url", metavar="URL", help="the server, http(s)://host[:port]")
    agent.add_argument("--api-key-file", metavar="PATH", help="file holding the server's API key")
    agent.add_argument("--machine-id", metavar="ID", help="this machine's name in Telegram")


def _answers_given(args: argparse.Namespace) -> bool:
    """True when the flags (and environment) answer every required question."""
    if args.agent:
        return bool(args.server_url and (args.api_key_file or os.environ.get("CCR_API_KEY")))
    if args.no_telegram:
        return True
    token = args.bot_token_file or os.environ.get("TELEGRAM_BOT_TOKEN")
    chats = args.chat_id or args.find_chat
    return bool(token and chats and (args.mode != "webhook" or args.webhook_url))


def run(args: argparse.Namespace) -> int:
    import asyncio

    from ccr_box.config import resolve_config_path
    from ccr_box.config_file import generate_secrets, render_template
    from ccr_box.errors import ConfigError
    from ccr_box.ops.init_common import InitRun, InitUsageError, Prompter

    implied = not sys.stdin.isatty() and _answers_given(args)
    prompter = Prompter(interactive=not (args.non_interactive or implied))
    path = resolve_config_path(args.config, os.environ)
    try:
        if path.exists():
            text, new_secrets = path.read_bytes().decode("utf-8"), {}
        else:
            new_secrets = generate_secrets()
            text = render_template(**new_secrets)
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(str(path), f"cannot be read: {exc}") from None
    try:
        with asyncio.Runner() as runner:
            state = InitRun(args, path, path.exists(), text, new_secrets, prompter, runner)
            if args.agent:
                from ccr_box.ops.init_agent import run_agent_init

                return run_agent_init(state)
            from ccr_box.ops.init_server import run_server_init

            return run_server_init(state)
    except InitUsageError as exc:
        print(f"ccr-box: init: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("\nccr-box: init interrupted", file=sys.stderr)
        return 1
