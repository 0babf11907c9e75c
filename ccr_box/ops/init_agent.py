"""``ccr-box init --agent``: point this machine's agent at the server, then check the connection.

The file is written even when the checks fail (the server may simply not be running yet); the
problems are reported in plain words and the exit status stays 0.
"""

from __future__ import annotations

import os
import re
from typing import Any

from ccr_box.config import default_machine_id
from ccr_box.ops.init_common import InitRun, InitUsageError, read_secret_file, url_problem

_MACHINE_ID = re.compile(r"[A-Za-z0-9-]{1,64}")
_CHAT_ID = re.compile(r"-?[0-9]+")
_CHECK_TIMEOUT_S = 10


def run_agent_init(run: InitRun) -> int:
    if run.interactive:
        state = "its other settings and comments stay" if run.exists else "a new file"
        run.say(f"Setting up this machine's agent in {run.path} ({state}).")
    server_url = _server_url(run)
    api_key = _api_key(run)
    values: dict[tuple[str, str], Any] = {
        ("agent", "server_url"): server_url,
        ("agent", "api_key"): api_key,
        ("agent", "machine_id"): _machine_id(run),
    }
    chat_id = _chat_id(run)
    if chat_id is not None:
        values[("agent", "chat_id")] = chat_id
    run.save(values)
    run.say(f"Wrote {run.path} (mode 0600).")
    if not (chat_id or run.raw_value("agent", "chat_id")):
        run.say("Warning: agent.chat_id is empty, so Claude Code notifications from this machine")
        run.say("are not sent; run init again with --chat-id ID (a chat the server allows).")
    for line in run.runner.run(check_server(server_url, api_key)):
        run.say(line)
    run.say()
    run.say("Next steps:")
    run.say("  Add ccr-box's hooks to Claude Code:   ccr-box hooks install")
    run.say("  Start the agent:   ccr-box agent")
    run.say("    (or run it as a service that starts at login: ccr-box service install --agent)")
    return 0


def _server_url(run: InitRun) -> str:
    url = run.args.server_url or ""
    kept = str(run.raw_value("agent", "server_url") or "")
    while True:
        if not url:
            if not run.interactive:
                if kept:
                    return kept
                raise InitUsageError("no server URL: pass --server-url http(s)://host[:port]")
            url = run.prompter.ask(
                "Server URL (e.g. http://192.168.1.10:8787 or https://ccr.example.com)",
                default=kept,
                hint="--server-url",
            )
            if not url:
                continue
        problem = url_problem(url)
        if problem is None:
            return url.rstrip("/")
        if not run.interactive:
            raise InitUsageError(f"--server-url {problem}")
        run.say(f"That URL {problem}.")
        url = ""


def _api_key_problem(key: str) -> str | None:
    if any(c.isspace() or c == "," for c in key):
        return "contains spaces or commas; copy it again from the server's config file"
    return None


def _api_key(run: InitRun) -> str:
    args = run.args
    if args.api_key_file:
        key, source = read_secret_file("--api-key-file", args.api_key_file), "--api-key-file"
    else:
        key, source = os.environ.get("CCR_API_KEY", "").strip(), "CCR_API_KEY"
    kept = str(run.raw_value("agent", "api_key") or "")
    while True:
        if not key and not run.interactive:
            if kept:
                return kept
            raise InitUsageError("no API key: set CCR_API_KEY or pass --api-key-file PATH")
        if not key:
            question = "The server's API key ([server] api_key in its config file; hidden)"
            if kept:
                question += "; Enter keeps the current one"
            key = run.prompter.secret(question, hint="CCR_API_KEY or --api-key-file") or kept
            source = "the prompt"
            if not key:
                continue
        problem = _api_key_problem(key)
        if problem is None:
            return key
        if not run.interactive:
            raise InitUsageError(f"the API key from {source} {problem}")
        run.say(f"That key {problem}.")
        key = ""


def _machine_id(run: InitRun) -> str:
    given = run.args.machine_id
    default = str(run.raw_value("agent", "machine_id") or default_machine_id())
    while True:
        if given is None:
            if not run.interactive:
                return default
            given = run.prompter.ask(
                "This machine's name in Telegram", default=default, hint="--machine-id"
            )
        if _MACHINE_ID.fullmatch(given):
            return given
        problem = f"{given!r} must be 1-64 letters, digits or '-'"
        if not run.interactive:
            raise InitUsageError(f"--machine-id {problem}")
        run.say(f"{problem}.")
        given = None


def _chat_id(run: InitRun) -> str | None:
    """The chat for this machine's notifications; None = leave the file's value."""
    given = run.args.chat_id
    if len(given) > 1:
        raise InitUsageError("an agent has one chat: give --chat-id once")
    value = given[0].strip() if given else None
    kept = str(run.raw_value("agent", "chat_id") or "")
    while True:
        if value is None:
            if not run.interactive:
                return None
            value = run.prompter.ask(
                "Telegram chat id for this machine's notifications (`ccr-box init` on the "
                "server showed it)",
                default=kept,
                hint="--chat-id",
            )
            if not value:
                return None
        if _CHAT_ID.fullmatch(value):
            return str(int(value))
        if not run.interactive:
            raise InitUsageError(f"--chat-id {value!r}: not a Telegram id (digits, maybe a '-')")
        run.say(f"{value!r} is not a chat id (digits, maybe a '-').")
        value = None


async def check_server(server_url: str, api_key: str) -> list[str]:
    """Lines about the server: does it answer /health, does it accept the API key."""
    from ccr_box.client.probe import probe_server

    probe = await probe_server(server_url, api_key, timeout_s=_CHECK_TIMEOUT_S)
    if probe.unreachable:
        return [
            f"Warning: cannot reach {server_url} ({probe.unreachable}). Is `ccr-box up` running "
            "there, and can this machine reach that address and port?"
        ]
    if not probe.is_ccr_box:
        status = probe.health[0] if probe.health else "?"
        return [
            f"Warning: {server_url} does not look like a ccr-box server (/health answered "
            f"HTTP {status}). Check the URL."
        ]
    lines = [f"Server {server_url} is up."]
    if probe.key_status == 200:
        lines.append("API key accepted.")
    elif probe.key_status == 401:
        lines.append(
            "Warning: the API key is wrong: the server refused it. Copy [server] api_key from the "
            "server's config file and run init again."
        )
    else:
        lines.append(f"Warning: the server answered HTTP {probe.key_status} to an API key check.")
    return lines
