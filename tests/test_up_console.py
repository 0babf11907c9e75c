"""`ccr-box up` on a terminal: the server runs on its own thread behind the console."""

from __future__ import annotations

import fcntl
import os
import pty
import re
import select
import struct
import subprocess
import sys
import termios
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

import pytest

from ccr_box.config import Config, ServerConfig
from ccr_box.server.thread import ServerThread
from tests.helpers_proc import REPO_ROOT, clean_env


def test_server_thread_serves_then_stops_cleanly(tmp_path: Path) -> None:
    config = Config(server=ServerConfig(data_dir=tmp_path, api_key="k", port=0))
    server = ServerThread(config)
    server.start()
    assert server.ready.wait(30)
    assert server.error is None and server.address is not None
    host, port = server.address
    with urllib.request.urlopen(f"http://{host}:{port}/health", timeout=5) as resp:
        assert resp.read() == b"ok"
    server.stop()
    assert not server.is_alive()
    assert server.error is None
    # The database lock was released: a second server on the same data dir starts.
    again = ServerThread(config)
    again.start()
    assert again.ready.wait(30) and again.address is not None
    again.stop()


def test_server_thread_reports_a_start_failure(tmp_path: Path) -> None:
    config = Config(server=ServerConfig(data_dir=tmp_path, api_key="k", port=0))
    first = ServerThread(config)
    first.start()
    assert first.ready.wait(30) and first.address is not None
    try:
        second = ServerThread(config)  # same database: refused
        second.start()
        assert second.ready.wait(30)
        second.join(10)
        assert second.address is None
        assert "another ccr-box server" in str(second.error)
    finally:
        first.stop()


# -- `ccr-box up` on a real terminal: the first-run notice is shown inside the console -------------

_ESCAPE = re.compile(rb"\x1b(\[[0-?]*[ -/]*[@-~]|\][^\x07\x1b]*(\x07|\x1b\\)|[@-Z\\-_])")


def _screen_text(raw: bytes) -> str:
    """Terminal output without its escape sequences (the styled runs of a line join up)."""
    return _ESCAPE.sub(b"", raw).decode("utf-8", "replace")


class Terminal:
    """``python -m ccr_box ...`` on a pseudo-terminal (stdin, stdout and stderr), 120x40."""

    def __init__(self, args: list[str], env: dict[str, str]) -> None:
        self.master, slave = pty.openpty()
        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 120, 0, 0))
        self.process = subprocess.Popen(
            [sys.executable, "-m", "ccr_box", *args],
            stdin=slave,
            stdout=slave,
            stderr=slave,
            env=env,
            cwd=str(REPO_ROOT),
            start_new_session=True,
        )
        os.close(slave)
        self.raw = b""

    def read_until(self, check: Callable[[str], bool], what: str, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while not check(_screen_text(self.raw)):
            left = deadline - time.monotonic()
            assert left > 0, f"no {what} within {timeout} s:\n{_screen_text(self.raw)[-3000:]}"
            ready, _, _ = select.select([self.master], [], [], min(left, 0.5))
            if ready:
                try:
                    self.raw += os.read(self.master, 65536)
                except OSError:  # the child closed the terminal
                    assert check(_screen_text(self.raw)), f"ended before {what}"
                    return

    def type(self, keys: bytes) -> None:
        os.write(self.master, keys)

    def close(self) -> int | None:
        if self.process.poll() is None:
            self.process.kill()
        code = self.process.wait(15)
        os.close(self.master)
        return code


@pytest.mark.skipif(sys.platform != "linux", reason="needs a Linux pseudo-terminal")
def test_up_on_a_terminal_shows_the_first_run_notice_inside_the_console(tmp_path: Path) -> None:
    path = tmp_path / "conf" / "config.toml"
    env = clean_env(
        CCR_BOX_CONFIG=str(path),
        CCR_BOX_DATA_DIR=str(tmp_path / "data"),
        TERM="xterm-256color",
        COLUMNS="120",
        LINES="40",
    )
    term = Terminal(["up", "--port", "0"], env)
    try:
        term.read_until(lambda text: "First run: created" in text, "first-run notice")
        term.read_until(lambda text: "Telegram: off" in text, "the Telegram line")
        term.read_until(lambda text: "No machines yet." in text, "the machines hint")
        text = _screen_text(term.raw)
        assert "Telegram is off: the console, agents and hooks work without it." in text
        assert "ccr-box: created" not in text  # no longer printed behind the console
        term.type(b"q")
        term.read_until(lambda text: "ccr-box: stopped" in text, "the console to quit")
        assert term.process.wait(15) == 0
    finally:
        term.close()
    assert path.exists()
