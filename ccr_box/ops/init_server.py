"""``ccr-box init`` on the server machine: token, chats, mode, address; write; test; next steps.

Without a bot (an empty answer at the token prompt, or ``--no-telegram``) only the address is
asked: the file is written with its generated secrets, Telegram stays off, and init exits 0.
"""

from __future__ import annotations

import os
import shlex
import socket
from typing import Any
from urllib.parse import urlsplit

from ccr_box.config import TelegramConfig, parse
from ccr_box.config_file import generate_secrets
from ccr_box.errors import CcrBoxError, TelegramError
from ccr_box.ops.init_chats import choose_chats
from ccr_box.ops.init_common import Bot, InitRun, InitUsageError, read_secret_file, url_problem
from ccr_box.ops.telegram_words import explain
from ccr_box.ops.webhook_state import WEBHOOK_ROUTE, full_webhook_url

DEFAULT_API_BASE = TelegramConfig().api_base
_LOOPBACK = ("127.0.0.1", "localhost", "::1")
_ANY = ("0.0.0.0", "::", "")
_TELEGRAM_FLAGS = (  # argparse dest, flag: answers that make no sense with --no-telegram
    ("bot_token_file", "--bot-token-file"),
    ("chat_id", "--chat-id"),
    ("find_chat", "--find-chat"),
    ("user_id", "--user-id"),
    ("mode", "--mode"),
    ("webhook_url", "--webhook-url"),
)


def run_server_init(run: InitRun) -> int:
    args = run.args
    if run.interactive:
        if run.exists:
            run.say(f"Updating {run.path}: its secrets and comments stay as they are.")
        else:
            run.say(f"Creating {run.path} with freshly generated secrets.")
    api_base = _api_base(run)
    if args.no_telegram:
        for dest, flag in _TELEGRAM_FLAGS:
            if getattr(args, dest):
                raise InitUsageError(f"--no-telegram cannot be combined with {flag}")
        return _without_telegram(run)
    chosen = _choose_token(run, api_base)
    if chosen is None:  # an empty answer at the token prompt: no bot for now
        return _without_telegram(run)
    bot, me = chosen
    username = str(me.get("username") or "your_bot")
    run.say(f"Bot @{username} OK")
    values: dict[tuple[str, str], Any] = {("telegram", "bot_token"): bot.token}
    if args.api_base and (api_base != DEFAULT_API_BASE or run.raw_value("telegram", "api_base")):
        values[("telegram", "api_base")] = api_base
    chats, users = choose_chats(run, bot, username)
    values[("telegram", "allowed_chat_ids")] = [int(c) for c in chats]  # TOML integers
    if users is not None:
        values[("telegram", "allowed_user_ids")] = [int(u) for u in users]
    public_url = _choose_mode(run, bot, values)
    _choose_address(run, values)
    _agent_on_this_machine(run, values, chats)
    run.save(values)
    run.say(f"Wrote {run.path} (mode 0600).")
    if not args.no_test_message:
        _send_test_message(run, bot, chats)
    _next_steps(run, chats, public_url)
    return 0


def _without_telegram(run: InitRun) -> int:
    """Console-only set-up: the address and this machine's agent; Telegram is not touched."""
    values: dict[tuple[str, str], Any] = {}
    _choose_address(run, values)
    _agent_on_this_machine(run, values, [])
    if values or not run.exists:
        run.save(values)
        run.say(f"Wrote {run.path} (mode 0600).")
    if run.current.telegram.bot_token:
        run.say("Telegram settings left as they are (the file already has a bot token).")
    else:
        run.say()
        run.say("Telegram is off: no bot token. Everything else works: agents connect, and the")
        run.say("console (`ccr-box up`) shows machines, sessions and commands and sends commands.")
        run.say(
            "To add a bot later, run `ccr-box init` again or set telegram.bot_token in "
            f"{run.path}, then restart the server."
        )
        if os.environ.get("TELEGRAM_BOT_TOKEN", "").strip():
            run.say("Note: TELEGRAM_BOT_TOKEN is set here; a server started with it uses that bot.")
    _next_steps(run, [], None)
    return 0


def _api_base(run: InitRun) -> str:
    given = run.args.api_base
    if given:
        problem = url_problem(given)
        if problem:
            raise InitUsageError(f"--api-base {problem}")
        return given.rstrip("/")
    return (os.environ.get("TELEGRAM_API_BASE") or run.current.telegram.api_base).rstrip("/")


def _given_token(run: InitRun) -> tuple[str, str]:
    """(token, where it came from) from --bot-token-file or TELEGRAM_BOT_TOKEN; ("", "") if none."""
    if run.args.bot_token_file:
        return read_secret_file("--bot-token-file", run.args.bot_token_file), "--bot-token-file"
    from_env = os.environ.get("TELEGRAM_BOT_TOKEN", "").strip()
    return (from_env, "TELEGRAM_BOT_TOKEN") if from_env else ("", "")


def _choose_token(run: InitRun, api_base: str) -> tuple[Bot, dict[str, Any]] | None:
    """The bot and its ``getMe``; None when the person has no bot (an empty answer)."""
    given, source = _given_token(run)
    kept = run.current.telegram.bot_token if run.exists else ""
    explained = False
    while True:
        if given:
            token, given = given, ""
        elif not run.interactive:
            if not kept:
                raise InitUsageError(
                    "no bot token: set TELEGRAM_BOT_TOKEN or pass --bot-token-file PATH "
                    "('-' reads it from standard input), or --no-telegram to set up the "
                    "console only"
                )
            token, source = kept, "the config file"
        else:
            if not explained:
                run.say("ccr-box talks to you through a Telegram bot. To create one, open a chat")
                run.say("with @BotFather in Telegram, send /newbot and answer its two questions (a")
                run.say("name, then a username ending in 'bot'). It answers with a token like")
                run.say("123456789:AA...")
                if not kept:
                    run.say("No bot at hand? Press Enter: the console works without Telegram,")
                    run.say("and `ccr-box init` adds a bot later.")
                explained = True
            question = "Paste the token @BotFather gave you (hidden)"
            question += "; Enter keeps the current one" if kept else "; Enter skips Telegram"
            hint = "TELEGRAM_BOT_TOKEN, --bot-token-file or --no-telegram"
            token = run.prompter.secret(question, hint=hint)
            source = "the prompt"
            if not token and not kept:
                return None
            token = token or kept
        bot = Bot(run.runner, token, api_base)
        try:
            return bot, bot.call("get_me")
        except TelegramError as exc:
            if not run.interactive:
                raise CcrBoxError(
                    f"the bot token from {source} does not work: {explain(exc)}"
                ) from None
            run.say(f"That token does not work: {explain(exc)}.")


def _choose_mode(run: InitRun, bot: Bot, values: dict[tuple[str, str], Any]) -> str | None:
    """Set telegram.mode; register or clear the webhook. The public base URL in webhook mode."""
    mode = run.args.mode
    if mode is None and run.interactive:
        run.say("How should Telegram deliver messages to this server?")
        run.say("  1) polling - recommended for a home server: no public URL needed")
        run.say("  2) webhook - Telegram calls a public https:// address (reverse proxy or tunnel)")
        default = "2" if run.current.telegram.mode == "webhook" else "1"
        while mode is None:
            answer = run.prompter.ask("Choose 1 or 2", default=default, hint="--mode").lower()
            mode = {"1": "polling", "polling": "polling", "2": "webhook", "webhook": "webhook"}.get(
                answer
            )
    mode = mode or run.current.telegram.mode
    values[("telegram", "mode")] = mode
    if mode == "webhook":
        return _register_webhook(run, bot, values)
    _clear_webhook(run, bot)
    return None


def _register_webhook(run: InitRun, bot: Bot, values: dict[tuple[str, str], Any]) -> str:
    from ccr_box.telegram import ALLOWED_UPDATES

    tg = run.current.telegram
    secret, path_secret = tg.webhook_secret, tg.webhook_path_secret
    fresh = generate_secrets()
    if not secret:  # an older file without one: the server would reject every webhook call
        secret = values[("telegram", "webhook_secret")] = fresh["webhook_secret"]
    if not path_secret:
        path_secret = values[("telegram", "webhook_path_secret")] = fresh["webhook_path_secret"]
    url = run.args.webhook_url or ""
    while True:
        if not url:
            if not run.interactive:
                raise InitUsageError("webhook mode needs --webhook-url https://<public address>")
            url = run.prompter.ask(
                "Public https:// address of this server (e.g. https://ccr.example.com)",
                hint="--webhook-url",
            )
            if not url:
                continue
        problem = url_problem(url, https_only=True)
        if problem is None:
            try:
                full = full_webhook_url(url, path_secret)
                bot.call("set_webhook", full, secret_token=secret, allowed_updates=ALLOWED_UPDATES)
                break
            except TelegramError as exc:
                if not run.interactive:
                    raise CcrBoxError(
                        f"Telegram did not accept the webhook: {explain(exc)}"
                    ) from None
                problem = f"was not accepted: {explain(exc)}"
        elif not run.interactive:
            raise InitUsageError(f"--webhook-url {problem}")
        run.say(f"That address {problem}.")
        url = ""
    base = full_webhook_url(url, "").removesuffix(WEBHOOK_ROUTE)
    run.say(f"Webhook registered: Telegram sends updates to {base}{WEBHOOK_ROUTE}/<path secret>.")
    return base


def _clear_webhook(run: InitRun, bot: Bot) -> None:
    """Polling fails while a webhook is registered: delete it (asking first when interactive)."""
    try:
        registered = str(bot.call("get_webhook_info").get("url") or "")
    except TelegramError as exc:
        run.say(f"Warning: could not check for a registered webhook: {explain(exc)}.")
        return
    if not registered:
        return
    where = urlsplit(registered).hostname or "somewhere"  # not the path: it holds a secret
    run.say(f"A webhook is registered for this bot (to {where}); polling needs it deleted.")
    if run.interactive and not run.prompter.confirm(
        "Delete it now? Pending messages are kept", default=True
    ):
        run.say("Warning: `ccr-box up` cannot poll while it is set; set telegram.delete_webhook")
        run.say("= true in the config file to have the server delete it.")
        return
    try:
        bot.call("delete_webhook", drop_pending_updates=False)
    except TelegramError as exc:
        run.say(f"Warning: the webhook could not be deleted: {explain(exc)}.")
        return
    run.say("Webhook deleted (pending messages kept).")


def _choose_address(run: InitRun, values: dict[tuple[str, str], Any]) -> None:
    args = run.args
    if args.port is not None:
        if not 0 <= args.port <= 65535:
            raise InitUsageError(f"--port must be between 0 and 65535, got {args.port}")
        values[("server", "port")] = args.port
    if args.host:
        values[("server", "host")] = args.host.strip()
        return
    if not run.interactive:
        return
    reachable = run.current.server.host not in _LOOPBACK
    if run.prompter.confirm(
        "Will agents on other machines connect directly (not through a proxy or tunnel)?",
        default=reachable,
        hint="--host",
    ):
        if not reachable:
            values[("server", "host")] = "0.0.0.0"
    elif reachable:
        values[("server", "host")] = "127.0.0.1"


def _agent_on_this_machine(
    run: InitRun, values: dict[tuple[str, str], Any], chats: list[str]
) -> None:
    """Point this file's [agent] at this server (unless set), so an agent here just works."""
    host = values.get(("server", "host"), run.current.server.host)
    port = values.get(("server", "port"), run.current.server.port)
    if not run.raw_value("agent", "server_url") and port:
        address = "127.0.0.1" if host in _ANY or host in _LOOPBACK else host
        values[("agent", "server_url")] = f"http://{address}:{port}"
    if not run.raw_value("agent", "chat_id") and chats:
        values[("agent", "chat_id")] = chats[0]


def _send_test_message(run: InitRun, bot: Bot, chats: list[str]) -> None:
    text = (
        f"✅ ccr-box is set up on {socket.gethostname()}. "
        "Replies to notifications will reach your Claude Code sessions."
    )
    for chat in chats:
        try:
            bot.call("send_message", chat, text)
        except TelegramError as exc:
            run.say(
                f"Warning: the test message to chat {chat} was not delivered: {explain(exc)}. "
                "The config file was written anyway."
            )
        else:
            run.say(f"Test message sent to chat {chat}.")


def _next_steps(run: InitRun, chats: list[str], public_url: str | None) -> None:
    final = parse(run.path.read_bytes().decode("utf-8"), env={}, path=run.path)
    host, port = final.server.host, final.server.port
    if public_url:
        server_url = public_url
    elif host not in _LOOPBACK:
        server_url = f"http://{socket.gethostname() if host in _ANY else host}:{port}"
    else:
        server_url = ""
    say = run.say
    say()
    say("Next steps:")
    say("  Start the server:   ccr-box up")
    say("    (or run it as a service that starts at boot: ccr-box service install)")
    say("  Claude Code on this machine:   ccr-box hooks install   then   ccr-box agent")
    say("  On each other machine with Claude Code, once ccr-box is installed there:")
    command = f"ccr-box init --agent --server-url {server_url or 'https://<public address>'}"
    say(f"    {command} --chat-id {chats[0]}" if chats else f"    {command}")
    if not server_url:
        say("    (this server listens on 127.0.0.1 only: put it behind a reverse proxy or tunnel,")
        say("    or run `ccr-box init --host 0.0.0.0` to accept other machines directly)")
    say("    It asks for the API key, which is [server] api_key in this file. Print it with:")
    say(f"      grep -m1 '^api_key' {shlex.quote(str(run.path))}")
    if run.args.show_api_key:
        say(f"  API key: {final.server.api_key}")
