"""Typing a command into a Claude Code session (contract §11.3).

Two implementations of one small interface, :class:`Injector`:

- :class:`TmuxInjector` types into the session's tmux pane. Every step is a separate ``tmux``
  process started from an argument vector (never a shell), with its own timeout.
- :class:`CommandInjector` pipes the text to a configured command (other tools, tests).

Both sanitise the text themselves first (:func:`sanitize` is idempotent) and report every failure as
:class:`InjectionError` with a message fit for the user; they never let an ``OSError`` escape.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import shlex
import signal
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

from ccr_box.errors import ConfigError, InjectionError

PIECE_BYTES = 4000  # send-keys -l argument size (UTF-8 bytes), never splitting a character
MIN_ENTER_DELAY_MS = 100
STDERR_TAIL = 200

# C0 controls except "\n" (tab is turned into a space before), DEL, C1 controls; lone surrogates
# (which cannot be encoded as UTF-8) become U+FFFD.
_CONTROLS = re.compile("[\x00-\x09\x0b-\x1f\x7f-\x9f]")
_SURROGATES = re.compile("[\ud800-\udfff]")


def sanitize(text: str) -> str:
    """§11.3: CR LF and lone CR -> LF, tab -> space, drop ESC, other C0 controls, DEL and C1."""
    text = text.replace("\r\n", "\n").replace("\r", "\n").replace("\t", " ")
    return _SURROGATES.sub("\ufffd", _CONTROLS.sub("", text))


def utf8_pieces(text: str, limit: int = PIECE_BYTES) -> list[str]:
    """Split ``text`` into pieces of at most ``limit`` UTF-8 bytes without splitting a character."""
    data = text.encode("utf-8")
    pieces: list[str] = []
    start = 0
    while start < len(data):
        end = min(start + limit, len(data))
        while end < len(data) and (data[end] & 0xC0) == 0x80:  # inside a multi-byte character
            end -= 1
        pieces.append(data[start:end].decode("utf-8"))
        start = end
    return pieces


def _tmux_literal(piece: str) -> str:
    # tmux reads an argument ending in ";" as a command separator (and drops the ";"); an argument
    # ending in "\;" stands for a literal ";".
    return piece[:-1] + "\\;" if piece.endswith(";") else piece


@dataclass(frozen=True)
class Target:
    """Where a session's commands go: a tmux pane id (``%N``) on an optional tmux socket."""

    pane: str
    tmux_socket: str | None = None
    session_id: str = ""


class Injector(Protocol):
    async def inject(self, target: Target, text: str) -> None:
        """Type ``text`` and press Enter; raise :class:`InjectionError` on failure."""
        ...


def _kill(proc: asyncio.subprocess.Process) -> None:
    """Kill the child and everything it started (it runs in its own session/process group)."""
    if proc.returncode is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except OSError:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()


async def _run(
    argv: Sequence[str],
    *,
    stdin: bytes | None,
    timeout_s: float,
    env: dict[str, str] | None = None,
    what: str,
) -> tuple[int, str, str]:
    """Run ``argv`` (no shell) to completion: (exit code, stdout, stderr). Timeout -> kill + error."""
    proc = await asyncio.create_subprocess_exec(
        *argv,
        stdin=asyncio.subprocess.PIPE if stdin is not None else asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=env,
        start_new_session=True,
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(stdin), timeout_s)
    except TimeoutError:
        _kill(proc)
        with contextlib.suppress(Exception):
            await asyncio.wait_for(proc.wait(), 5)
        raise InjectionError(f"{what} timed out after {timeout_s:g} s") from None
    except BaseException:  # cancelled: do not leave the child behind
        _kill(proc)
        raise
    assert proc.returncode is not None
    return proc.returncode, out.decode("utf-8", "replace"), err.decode("utf-8", "replace")


def _trim(stderr: str) -> str:
    return " ".join(stderr.split())[-STDERR_TAIL:] or "no error output"


class TmuxInjector:
    """Types into a tmux pane: check, leave copy mode, C-u, literal text or paste, pause, Enter."""

    def __init__(
        self,
        *,
        tmux: str = "tmux",
        enter_delay_ms: int = 200,
        clear_delay_ms: int = 100,
        step_timeout_s: float = 10.0,
        sleep: Callable[[float], Awaitable[object]] = asyncio.sleep,
    ) -> None:
        self.tmux = tmux
        self.enter_delay_ms = max(MIN_ENTER_DELAY_MS, enter_delay_ms)
        self.clear_delay_ms = max(0, clear_delay_ms)
        self.step_timeout_s = step_timeout_s
        self._sleep = sleep

    async def _tmux(self, target: Target, *args: str, stdin: bytes | None = None) -> str:
        """One tmux step; a non-zero exit raises InjectionError with tmux's (trimmed) stderr."""
        rc, out, err = await self._call(target, *args, stdin=stdin)
        if rc != 0:
            raise InjectionError(f"tmux {args[0]} failed: {_trim(err)}")
        return out

    async def _call(
        self, target: Target, *args: str, stdin: bytes | None = None
    ) -> tuple[int, str, str]:
        argv = [self.tmux]
        if target.tmux_socket:
            argv += ["-S", target.tmux_socket]
        argv += args
        try:
            return await _run(
                argv, stdin=stdin, timeout_s=self.step_timeout_s, what=f"tmux {args[0]}"
            )
        except FileNotFoundError:
            raise InjectionError(f"tmux is not installed (cannot run '{self.tmux}')") from None
        except OSError as exc:
            raise InjectionError(f"cannot run tmux: {exc.strerror or exc}") from None

    async def inject(self, target: Target, text: str) -> None:
        text = sanitize(text)
        pane = target.pane
        # 1. The pane exists (this also fails when no tmux server listens on the socket).
        rc, _, err = await self._call(target, "has-session", "-t", pane)
        if rc != 0:
            if "no server running" in err or "error connecting" in err:
                raise InjectionError(f"tmux target '{pane}' not found (tmux server not running)")
            raise InjectionError(f"tmux target '{pane}' not found")
        # 2. Leave copy mode, where keys would move the cursor instead of reaching the program.
        in_mode = await self._tmux(target, "display-message", "-p", "-t", pane, "#{pane_in_mode}")
        if in_mode.strip() == "1":
            await self._tmux(target, "send-keys", "-t", pane, "-X", "cancel")
        # 3. Clear whatever is on the input line.
        await self._tmux(target, "send-keys", "-t", pane, "C-u")
        await self._sleep(self.clear_delay_ms / 1000)
        # 4. The text, never interpreted as key names.
        if "\n" in text:
            await self._paste(target, text)
        else:
            for piece in utf8_pieces(text):
                await self._tmux(target, "send-keys", "-t", pane, "-l", "--", _tmux_literal(piece))
        # 5./6. Pause so the program does not fold Enter into the text, then submit.
        await self._sleep(self.enter_delay_ms / 1000)
        await self._tmux(target, "send-keys", "-t", pane, "Enter")

    async def _paste(self, target: Target, text: str) -> None:
        """Multi-line text as one bracketed paste, so the lines are not submitted one by one."""
        buffer = f"ccr-box-{uuid.uuid4().hex}"
        await self._tmux(target, "load-buffer", "-b", buffer, "-", stdin=text.encode("utf-8"))
        try:
            # -p: bracketed paste if the program asked for it; -r: keep LF; -d: delete the buffer.
            await self._tmux(
                target, "paste-buffer", "-d", "-p", "-r", "-b", buffer, "-t", target.pane
            )
        except InjectionError:
            with contextlib.suppress(InjectionError):
                await self._call(target, "delete-buffer", "-b", buffer)
            raise


class CommandInjector:
    """Runs ``argv`` (no shell) with the text on stdin; CCR_SESSION_ID / CCR_PANE in its env."""

    def __init__(self, argv: list[str], *, timeout_s: float = 10.0) -> None:
        if not argv:
            raise ValueError("CommandInjector needs a command")
        self.argv = list(argv)
        self.timeout_s = timeout_s

    async def inject(self, target: Target, text: str) -> None:
        env = dict(os.environ, CCR_SESSION_ID=target.session_id, CCR_PANE=target.pane)
        if target.tmux_socket:
            env["CCR_TMUX_SOCKET"] = target.tmux_socket
        name = os.path.basename(self.argv[0])
        try:
            rc, _, err = await _run(
                self.argv,
                stdin=sanitize(text).encode("utf-8"),
                timeout_s=self.timeout_s,
                env=env,
                what=f"inject command '{name}'",
            )
        except FileNotFoundError:
            raise InjectionError(f"inject command not found: '{self.argv[0]}'") from None
        except OSError as exc:
            raise InjectionError(f"cannot run inject command '{name}': {exc.strerror}") from None
        if rc != 0:
            raise InjectionError(f"inject command '{name}' failed (exit code {rc}): {_trim(err)}")


def make_injector(inject_command: str, enter_delay_ms: int) -> Injector:
    """The agent's injector: tmux when ``inject_command`` is empty, else that command."""
    if not inject_command.strip():
        return TmuxInjector(enter_delay_ms=enter_delay_ms)
    try:
        argv = shlex.split(inject_command)
    except ValueError as exc:
        raise ConfigError("agent.inject_command", f"cannot be parsed: {exc}") from None
    return CommandInjector(argv)
