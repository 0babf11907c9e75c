"""Run ``python -m ccr_box`` as a real child process and follow its stderr line by line.

No sleeps and no fixed ports: the server is started with ``--port 0`` and the port is read from its
``ccr-box listening on http://127.0.0.1:<port>`` line. stderr is drained continuously by a reader
task (a full pipe would block the child), and tests wait for lines with a timeout.
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import sys
from collections.abc import Callable, Mapping
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
LISTENING = re.compile(r"ccr-box listening on http://127\.0\.0\.1:(\d+)")

# Variables that would leak the developer's or CI's settings into a child ccr-box.
OWN_PREFIXES = ("CCR_", "TELEGRAM_", "ALLOWED_")


def clean_env(**values: str) -> dict[str, str]:
    """``os.environ`` without any ccr-box setting, plus ``values``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(OWN_PREFIXES)}
    env["PYTHONUNBUFFERED"] = "1"
    env.update(values)
    return env


class Proc:
    """A running ``python -m ccr_box ...``; ``lines`` holds every stderr line so far."""

    def __init__(self, process: asyncio.subprocess.Process) -> None:
        self.process = process
        self.lines: list[str] = []
        self.stdout = ""
        self._changed = asyncio.Event()
        self._eof = False
        self._reader = asyncio.create_task(self._read_stderr())
        self._out_reader = asyncio.create_task(self._read_stdout())

    @classmethod
    async def start(cls, *args: str, env: Mapping[str, str]) -> Proc:
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "ccr_box",
            *args,
            env=dict(env),
            cwd=str(REPO_ROOT),
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        return cls(process)

    async def _read_stderr(self) -> None:
        assert self.process.stderr is not None
        while True:
            raw = await self.process.stderr.readline()
            if not raw:
                break
            self.lines.append(raw.decode("utf-8", "replace").rstrip("\n"))
            self._changed.set()
        self._eof = True
        self._changed.set()

    async def _read_stdout(self) -> None:
        assert self.process.stdout is not None
        self.stdout = (await self.process.stdout.read()).decode("utf-8", "replace")

    @property
    def stderr(self) -> str:
        return "\n".join(self.lines)

    async def wait_line(self, match: str | Callable[[str], bool], timeout: float = 15.0) -> str:
        """The first stderr line (so far or to come) that contains ``match`` / satisfies it."""
        predicate = match if callable(match) else (lambda line: match in line)

        async def scan() -> str:
            seen = 0
            while True:
                for line in self.lines[seen:]:
                    if predicate(line):
                        return line
                seen = len(self.lines)
                if self._eof:
                    raise AssertionError(
                        f"ccr-box ended (stderr closed) before a line matching {match!r}:\n"
                        + self.stderr
                    )
                self._changed.clear()
                await self._changed.wait()

        try:
            return await asyncio.wait_for(scan(), timeout)
        except TimeoutError:
            raise AssertionError(
                f"no stderr line matching {match!r} within {timeout}s:\n{self.stderr}"
            ) from None

    async def listening_port(self, timeout: float = 15.0) -> int:
        line = await self.wait_line(lambda text: LISTENING.search(text) is not None, timeout)
        match = LISTENING.search(line)
        assert match is not None
        return int(match.group(1))

    async def wait_exit(self, timeout: float = 15.0) -> int:
        """Wait for the process to end and its output to be read completely; the exit code."""
        code = await asyncio.wait_for(self.process.wait(), timeout)
        await asyncio.wait_for(asyncio.gather(self._reader, self._out_reader), timeout)
        return code

    def send_signal(self, sig: signal.Signals) -> None:
        if self.process.returncode is None:
            self.process.send_signal(sig)

    async def stop(self) -> None:
        """Clean-up for tests that fail half-way: SIGKILL if still running, reap."""
        if self.process.returncode is None:
            self.process.kill()
        await self.wait_exit()


async def run_ccr_box(*args: str, env: Mapping[str, str], timeout: float = 15.0) -> Proc:
    """Run a short-lived ``ccr-box`` command to completion (``returncode``, ``stdout``, ``lines``)."""
    proc = await Proc.start(*args, env=env)
    try:
        await proc.wait_exit(timeout)
    finally:
        await proc.stop()
    return proc
