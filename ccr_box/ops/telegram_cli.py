"""``ccr-box telegram ...``: the bot's identity, its webhook, and a test message.

Each helper reads the bot token, Bot API base URL and webhook secrets from the config (file and
environment), makes its calls and says in plain words what happened (:func:`explain`). The token
and the webhook secrets are never printed; registered URLs are shown with the path secret hidden.

Exit codes: 0 done; 1 Telegram refused or could not be reached (or, for ``webhook info``, the
webhook does not fit ``telegram.mode``); 2 the config lacks what the command needs.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from collections.abc import Awaitable, Callable
from typing import Any

COMMANDS: tuple[str, ...] = ("telegram",)

_MARK = {"ok": "✓", "warn": "!", "fail": "✗"}


def add_parsers(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    telegram = sub.add_parser(
        "telegram",
        help="bot helpers: identity, webhook set/delete/info, test message",
        description="Talk to the Bot API with the configured token (telegram.bot_token).",
    )
    actions = telegram.add_subparsers(dest="telegram_command", metavar="ACTION")
    actions.add_parser("me", help="show the bot the token belongs to (getMe)")
    test = actions.add_parser("test", help="send a test message to the allowed chats")
    test.add_argument(
        "--chat-id", metavar="ID", action="append", default=[], help="only this allowed chat"
    )
    test.add_argument("--text", help="the message (default: a short greeting from this host)")

    webhook = actions.add_parser("webhook", help="register, remove or inspect the webhook")
    hook_actions = webhook.add_subparsers(dest="webhook_command", metavar="ACTION")
    set_ = hook_actions.add_parser(
        "set",
        help="register the webhook with the configured secrets and allowed updates",
        description=(
            "Register <URL>/webhook/telegram/<webhook_path_secret> with secret_token = "
            "telegram.webhook_secret and allowed_updates = message, callback_query. URL is the "
            "public https:// base address of this server (a full webhook URL also works)."
        ),
    )
    set_.add_argument("--url", required=True, help="public https:// base URL of this server")
    set_.add_argument(
        "--drop-pending-updates", action="store_true", help="discard updates waiting at Telegram"
    )
    delete = hook_actions.add_parser("delete", help="remove the webhook (to use polling)")
    delete.add_argument(
        "--drop-pending-updates",
        action="store_true",
        help="discard updates waiting at Telegram (default: keep them for polling)",
    )
    info = hook_actions.add_parser(
        "info", help="show the registered webhook and whether it fits telegram.mode"
    )
    info.add_argument("--json", action="store_true", help="getWebhookInfo's answer (URL masked)")


def run(args: argparse.Namespace) -> int:
    from ccr_box.config import load_machine_config

    action = args.telegram_command
    if action == "webhook":
        action = f"webhook {args.webhook_command}" if args.webhook_command else None
    handlers: dict[str, Callable[[Any, Any, argparse.Namespace], Awaitable[int]]] = {
        "me": _me,
        "test": _test,
        "webhook set": _webhook_set,
        "webhook delete": _webhook_delete,
        "webhook info": _webhook_info,
    }
    if action not in handlers:
        hint = "telegram webhook --help" if args.telegram_command else "telegram --help"
        print(f"ccr-box: telegram: choose an action (see `ccr-box {hint}`)", file=sys.stderr)
        return 2
    tg = load_machine_config(args.config).telegram
    if not tg.bot_token:
        print(
            "ccr-box: telegram: no bot token configured: set telegram.bot_token "
            "(TELEGRAM_BOT_TOKEN) or run `ccr-box init`",
            file=sys.stderr,
        )
        return 2
    return asyncio.run(_with_api(tg, args, handlers[action]))


async def _with_api(tg: Any, args: argparse.Namespace, handler: Callable) -> int:
    from ccr_box.errors import TelegramError
    from ccr_box.ops.telegram_words import bot_api, explain

    async with bot_api(tg.bot_token, tg.api_base) as api:
        try:
            return await handler(api, tg, args)
        except TelegramError as exc:
            print(f"ccr-box: telegram: {explain(exc)}", file=sys.stderr)
            return 1


async def _me(api: Any, tg: Any, args: argparse.Namespace) -> int:
    me = await api.get_me()
    name = " ".join(str(me.get(k)) for k in ("first_name", "last_name") if me.get(k))
    print(f"@{me.get('username', '?')}  {name}  (id {me.get('id', '?')})")
    if me.get("can_read_all_group_messages") is False:
        print("Privacy mode is on: in groups the bot sees replies to its messages and commands,")
        print("which is all ccr-box needs.")
    print(f"Mode: {tg.mode}; allowed chats: {', '.join(tg.allowed_chat_ids) or 'none'}")
    return 0


async def _test(api: Any, tg: Any, args: argparse.Namespace) -> int:
    import socket

    from ccr_box.errors import TelegramError
    from ccr_box.ops.telegram_words import explain

    given = [_chat_id(c) for c in args.chat_id]
    chats = [c for c in given if c is not None] or list(tg.allowed_chat_ids)
    if len(chats) < len(given):
        print(
            "ccr-box: telegram: --chat-id takes a Telegram id (digits, maybe a '-')",
            file=sys.stderr,
        )
        return 2
    if not chats:
        print("ccr-box: telegram: no allowed chats, so nothing may be sent.", file=sys.stderr)
        print("  Add yours in [telegram] (`ccr-box init` finds it), e.g.:", file=sys.stderr)
        print(f"    {_allowed_line(['123456789'])}", file=sys.stderr)
        return 2
    refused = [c for c in chats if c not in tg.allowed_chat_ids]
    if refused:
        line = _allowed_line([*tg.allowed_chat_ids, *refused])
        print(
            f"ccr-box: telegram: chat {', '.join(refused)} is not in telegram.allowed_chat_ids, "
            f"so the server never sends there. To allow it, set in [telegram]:\n    {line}",
            file=sys.stderr,
        )
        return 2
    text = args.text or f"👋 Test message from ccr-box on {socket.gethostname()}."
    failed = 0
    for chat in chats:
        try:
            await api.send_message(chat, text)
        except TelegramError as exc:
            failed += 1
            print(f"✗ chat {chat}: {explain(exc)}")
        else:
            print(f"✓ chat {chat}: sent")
    return 1 if failed else 0


def _chat_id(text: str) -> str | None:
    text = text.strip()
    return str(int(text)) if text.lstrip("-").isdigit() and text.count("-") <= 1 else None


def _allowed_line(chats: list[str]) -> str:
    from ccr_box.config_file import assignment

    ids = [int(c) if c.lstrip("-").isdigit() else c for c in chats]
    return assignment("allowed_chat_ids", ids)


def _https_problem(url: str) -> str | None:
    from ccr_box.ops.init_common import url_problem

    return url_problem(url, https_only=True)


async def _webhook_set(api: Any, tg: Any, args: argparse.Namespace) -> int:
    from ccr_box.ops.webhook_state import full_webhook_url, masked_url
    from ccr_box.telegram import ALLOWED_UPDATES

    problem = _https_problem(args.url)
    if problem:
        print(f"ccr-box: telegram: --url {problem}", file=sys.stderr)
        return 2
    if not tg.webhook_secret:
        print(
            "ccr-box: telegram: telegram.webhook_secret is empty, so the server would reject "
            "every webhook call; run `ccr-box init` (it generates one) or set it",
            file=sys.stderr,
        )
        return 2
    url = full_webhook_url(args.url, tg.webhook_path_secret)
    await api.call(
        "setWebhook",
        {
            "url": url,
            "secret_token": tg.webhook_secret,
            "allowed_updates": list(ALLOWED_UPDATES),
            "drop_pending_updates": bool(args.drop_pending_updates),
        },
    )
    print(f"Webhook set: {masked_url(url, tg)}")
    print(f"  (secret token: telegram.webhook_secret; updates: {', '.join(ALLOWED_UPDATES)})")
    if tg.mode != "webhook":
        print('Note: telegram.mode is "polling"; set mode = "webhook" in [telegram] and restart')
        print("  `ccr-box up`, or the server's polling will find this webhook in its way.")
    return 0


async def _webhook_delete(api: Any, tg: Any, args: argparse.Namespace) -> int:
    await api.delete_webhook(drop_pending_updates=bool(args.drop_pending_updates))
    kept = "discarded" if args.drop_pending_updates else "kept for polling"
    print(f"Webhook deleted (pending updates {kept}).")
    if tg.mode == "webhook":
        print('Note: telegram.mode is "webhook": with no webhook the server gets no updates;')
        print('  set mode = "polling" in [telegram] and restart `ccr-box up`.')
    return 0


async def _webhook_info(api: Any, tg: Any, args: argparse.Namespace) -> int:
    from ccr_box.ops.webhook_state import assess, masked_url

    raw = await api.get_webhook_info()
    info = {**raw, "url": masked_url(str(raw.get("url") or ""), tg)}
    if args.json:
        print(json.dumps(info, indent=2, ensure_ascii=False))
    else:
        print(f"URL:              {info.get('url') or '(none)'}")
        print(f"Pending updates:  {info.get('pending_update_count', 0)}")
        if info.get("allowed_updates"):
            print(f"Allowed updates:  {', '.join(map(str, info['allowed_updates']))}")
        if info.get("last_error_message"):
            print(f"Last error:       {info['last_error_message']}")
        print(f"Configured mode:  {tg.mode}")
    findings = assess(raw, tg)
    stream = sys.stderr if args.json else sys.stdout
    for finding in findings:
        print(f"{_MARK[finding.level]} {finding.text}", file=stream)
        if finding.fix:
            print(f"    fix: {finding.fix}", file=stream)
    return 1 if any(f.level == "fail" for f in findings) else 0
