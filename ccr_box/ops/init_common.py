"""Shared pieces of ``ccr-box init``: prompts, the state of one run, blocking Bot API calls, saving.

The flow is synchronous on purpose: each Telegram call runs to completion on one
:class:`asyncio.Runner`, and prompts happen between calls, outside the event loop, so Ctrl-C at a
prompt interrupts at once (inside ``asyncio.run`` the first Ctrl-C only cancels the task, which
cannot happen while ``input()`` blocks).
"""

from __future__ import annotations

import argparse
import asyncio
import getpass
import sys
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from ccr_box.config import Config, parse
from ccr_box.config_file import set_values, update_file, write_initial
from ccr_box.errors import CcrBoxError

ALL_FLAGS_HINT = "the flags listed by `ccr-box init --help` (with --non-interactive)"


class InitUsageError(Exception):
    """An answer is missing or invalid and cannot be asked for: exit 2, naming the flag."""


class Prompter:
    """Questions on the terminal. Everything goes to stdout; answers come from stdin.

    Secrets are read with :func:`getpass.getpass` on a terminal. When stdin is not a terminal
    (a pipe, a script), the line is read from stdin directly: getpass would first try /dev/tty
    (the *controlling* terminal, not the pipe) and warn; there is no echo to hide on a pipe anyway.
    """

    def __init__(self, interactive: bool) -> None:
        self.interactive = interactive

    @staticmethod
    def say(text: str = "") -> None:
        print(text, flush=True)

    def ask(self, question: str, *, default: str = "", hint: str = ALL_FLAGS_HINT) -> str:
        shown = f"{question} [{default}]: " if default else f"{question}: "
        return self._line(lambda: input(shown), question, hint).strip() or default

    def secret(self, question: str, *, hint: str = ALL_FLAGS_HINT) -> str:
        prompt = f"{question}: "
        if sys.stdin.isatty():
            return self._line(lambda: getpass.getpass(prompt), question, hint).strip()

        def from_pipe() -> str:
            print(prompt, end="", flush=True)
            line = sys.stdin.readline()
            print(flush=True)  # the newline a terminal would have echoed
            if not line:
                raise EOFError
            return line

        return self._line(from_pipe, question, hint).strip()

    def confirm(self, question: str, *, default: bool, hint: str = ALL_FLAGS_HINT) -> bool:
        suffix = "[Y/n]" if default else "[y/N]"
        while True:
            answer = self._line(lambda: input(f"{question} {suffix} "), question, hint)
            word = answer.strip().lower()
            if not word:
                return default
            if word in ("y", "yes"):
                return True
            if word in ("n", "no"):
                return False
            self.say("Please answer y or n.")

    def _line(self, read: Any, question: str, hint: str) -> str:
        if not self.interactive:
            raise InitUsageError(f"{question.rstrip('?:. ')}: not given; pass {hint}")
        try:
            return read()
        except EOFError:
            print(flush=True)
            raise InitUsageError(
                f"no answer to {question.rstrip('?:. ')!r} (standard input ended); pass {hint}"
            ) from None


def read_secret_file(flag: str, where: str) -> str:
    """A secret from a file (whole file, stripped) or, for ``-``, one line of standard input."""
    if where == "-":
        value = sys.stdin.readline().strip()
    else:
        try:
            value = Path(where).expanduser().read_text(encoding="utf-8").strip()
        except (OSError, UnicodeDecodeError) as exc:
            reason = getattr(exc, "strerror", None) or type(exc).__name__
            raise InitUsageError(f"{flag}: cannot read {where}: {reason}") from None
    if not value:
        raise InitUsageError(f"{flag}: {'standard input' if where == '-' else where} is empty")
    return value


def url_problem(url: str, *, https_only: bool = False) -> str | None:
    """Why ``url`` is not a usable http(s) base URL, or None."""
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError on a bad port
    except ValueError:
        return "is not a valid URL"
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return "must be an http:// or https:// URL, e.g. https://ccr.example.com"
    if https_only and parts.scheme != "https":
        return (
            "must start with https:// (Telegram only delivers webhooks over HTTPS: put ccr-box "
            "behind a reverse proxy or tunnel that terminates TLS)"
        )
    if parts.query or parts.fragment:
        return "must not have a query (?...) or fragment (#...)"
    return None


@dataclass
class InitRun:
    """One run of ``ccr-box init``: flags, the config file as it is now, prompts, an event loop."""

    args: argparse.Namespace
    path: Path
    exists: bool
    text: str  # the file's text, or for a new file the template with ``new_secrets``
    new_secrets: dict[str, str]  # generated for a new file; {} when the file exists
    prompter: Prompter
    runner: asyncio.Runner
    current: Config = field(init=False)  # ``text`` parsed without the environment
    raw: dict[str, Any] = field(init=False)  # ``text`` as TOML: what the file itself says

    def __post_init__(self) -> None:
        self.current = parse(self.text, env={}, path=self.path)
        self.raw = tomllib.loads(self.text)

    @property
    def interactive(self) -> bool:
        return self.prompter.interactive

    def say(self, text: str = "") -> None:
        self.prompter.say(text)

    def raw_value(self, section: str, key: str) -> Any:
        return self.raw.get(section, {}).get(key, "")

    def save(self, values: dict[tuple[str, str], Any]) -> None:
        """Write ``values`` (0600): into a new file with the generated secrets, or in place."""
        if not self.exists:
            generated = {
                ("server", "api_key"): self.new_secrets["api_key"],
                ("telegram", "webhook_secret"): self.new_secrets["webhook_secret"],
                ("telegram", "webhook_path_secret"): self.new_secrets["webhook_path_secret"],
            }
            values = {**generated, **values}
        parse(set_values(self.text, values), env={}, path=self.path)  # never write a bad file
        try:
            if self.exists:
                update_file(self.path, values)
            else:
                write_initial(self.path, values)
        except FileExistsError:
            raise CcrBoxError(
                f"{self.path} was created while init was running; run `ccr-box init` again"
            ) from None
        except OSError as exc:
            raise CcrBoxError(f"cannot write {self.path}: {exc.strerror or exc}") from None


class Bot:
    """Blocking Bot API calls for the step-by-step flow, each on its own short HTTP session."""

    def __init__(self, runner: asyncio.Runner, token: str, api_base: str) -> None:
        self._runner = runner
        self.token = token
        self.api_base = api_base

    def call(self, method: str, *args: Any, **kwargs: Any) -> Any:
        """``TelegramAPI.<method>(*args, **kwargs)``; raises :class:`TelegramError` subclasses."""
        from ccr_box.ops.telegram_words import bot_api

        async def go() -> Any:
            async with bot_api(self.token, self.api_base) as api:
                return await getattr(api, method)(*args, **kwargs)

        return self._runner.run(go())
