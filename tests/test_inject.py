"""Injection (§11.3): sanitising, a real tmux server on a private socket, a fake tmux, the command
injector.

The tmux tests run a small reader program in the pane that appends everything it receives to a file,
one ``repr`` per line. In "raw" mode the pane's tty is non-canonical with CR translation off, so each
recorded line ends with the byte that ended it: ``\\r`` for tmux's Enter, ``\\n`` for a newline inside
a paste, and C-u arrives as ``\\x15``. The kernel's 4095-byte canonical line limit does not apply.
In "canon" mode the kernel's line discipline edits the line (C-u erases it) before the reader sees it.
A test ends by typing a sentinel line and waiting for it, so "nothing else arrived" is exact.
"""

from __future__ import annotations

import ast
import asyncio
import json
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from ccr_box.agent.inject import (
    CommandInjector,
    Target,
    TmuxInjector,
    make_injector,
    sanitize,
    utf8_pieces,
)
from ccr_box.errors import ConfigError, InjectionError
from tests.helpers_wait import until

SENTINEL = "__ccr_end__"

READER = r"""
import os, sys, termios
out, mode = sys.argv[1], sys.argv[2]

def record(line):
    with open(out, "a", encoding="utf-8") as f:
        f.write(repr(line) + "\n")
        f.flush()

if mode == "canon":
    open(out + ".ready", "w").close()
    for line in sys.stdin:
        record(line.rstrip("\n"))
else:
    attrs = termios.tcgetattr(0)
    attrs[0] &= ~(termios.ICRNL | termios.INLCR | termios.IGNCR | termios.IXON)
    attrs[3] &= ~(termios.ICANON | termios.ECHO | termios.IEXTEN)  # ISIG stays: ^C would kill us
    attrs[6][termios.VMIN], attrs[6][termios.VTIME] = 1, 0
    termios.tcsetattr(0, termios.TCSANOW, attrs)
    if mode == "raw-bp":
        sys.stdout.write("\x1b[?2004h")  # ask for bracketed paste, like Claude Code does
        sys.stdout.flush()
    open(out + ".ready", "w").close()
    buf = b""
    while True:
        chunk = os.read(0, 65536)
        if not chunk:
            break
        buf += chunk
        while True:
            ends = [i for i in (buf.find(b"\r"), buf.find(b"\n")) if i >= 0]
            if not ends:
                break
            cut = min(ends) + 1
            record(buf[:cut].decode("utf-8", "surrogateescape"))
            buf = buf[cut:]
"""

# Bounds a wait that ends within a second unless the code under test hangs (then 30 s).
LIVENESS_S = 15

needs_tmux = pytest.mark.skipif(shutil.which("tmux") is None, reason="tmux is not installed")


class Pane:
    def __init__(self, socket: str, out: Path, mode: str) -> None:
        self.socket = socket
        self.out = out
        self.mode = mode
        self.id = ""

    def tmux(self, *args: str) -> str:
        return subprocess.run(
            ["tmux", "-S", self.socket, *args], check=True, capture_output=True, text=True
        ).stdout.strip()

    def lines(self) -> list[str]:
        if not self.out.exists():
            return []
        return [ast.literal_eval(x) for x in self.out.read_text(encoding="utf-8").splitlines()]

    async def received(self) -> list[str]:
        """Everything the reader got before a sentinel line typed now."""
        self.tmux("send-keys", "-t", self.id, "-l", SENTINEL)
        self.tmux("send-keys", "-t", self.id, "Enter")

        def done():
            got = self.lines()
            for i, line in enumerate(got):
                if SENTINEL in line:
                    return (got[:i],)  # a tuple: an empty list would read as "not yet"
            return None

        (before,) = await until(done, "the injection to finish")
        return before


@pytest.fixture
def tmux_dir() -> Iterator[str]:
    # A short directory: unix socket paths are limited to ~108 bytes, pytest's tmp_path can be long.
    path = tempfile.mkdtemp(prefix="ccrtmux", dir="/tmp" if os.path.isdir("/tmp") else None)
    yield path
    shutil.rmtree(path, ignore_errors=True)


def _new_server(socket: str, argv: list[str]) -> None:
    """A private tmux server (no config file) whose only pane runs ``argv``."""
    new_session = ("-f", "/dev/null", "new-session", "-d", "-s", "t", "-x", "200", "-y", "50")
    subprocess.run(
        ["tmux", "-S", socket, *new_session, shlex.join(argv)],
        check=True,
        env={k: v for k, v in os.environ.items() if k != "TMUX"},
    )


@pytest.fixture
def start_pane(tmp_path: Path, tmux_dir: str):
    sockets: list[str] = []

    async def start(mode: str = "raw") -> Pane:
        socket = os.path.join(tmux_dir, f"s{len(sockets)}")
        sockets.append(socket)
        reader = tmp_path / "reader.py"
        reader.write_text(READER)
        pane = Pane(socket, tmp_path / f"out{len(sockets)}.txt", mode)
        _new_server(socket, [sys.executable, str(reader), str(pane.out), mode])
        pane.id = pane.tmux("display-message", "-p", "-t", "t", "#{pane_id}")
        await until(
            lambda: Path(str(pane.out) + ".ready").exists(), "the recorder ready in the pane"
        )
        return pane

    yield start
    for socket in sockets:
        subprocess.run(["tmux", "-S", socket, "kill-server"], capture_output=True, check=False)


def injector(**kw) -> TmuxInjector:
    return TmuxInjector(**{"enter_delay_ms": 100, "clear_delay_ms": 10, **kw})


async def inject(pane: Pane, text: str) -> list[str]:
    await injector().inject(Target(pane=pane.id, tmux_socket=pane.socket), text)
    return await pane.received()


# --- sanitize ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "clean"),
    [
        ("hello", "hello"),
        ("a\r\nb\rc\nd", "a\nb\nc\nd"),
        ("\r\r\n", "\n\n"),
        ("a\tb", "a b"),
        ("\x1b[31mred\x1b[0m", "[31mred[0m"),
        ("\x1b]0;title\x07x", "]0;titlex"),
        ("a\x00b\x03c\x08d\x15e\x1ff", "abcdef"),
        ("del\x7f c1\x80\x85\x9b\x9f.", "del c1."),
        ("émoji 🎉 中文 ñ \u00a0\u00a9", "émoji 🎉 中文 ñ \u00a0\u00a9"),
        ("\ud83d lone", "\ufffd lone"),
        ("", ""),
    ],
)
def test_sanitize(raw: str, clean: str) -> None:
    assert sanitize(raw) == clean
    assert sanitize(clean) == clean  # idempotent


def test_sanitize_keeps_no_control_at_all() -> None:
    every = "".join(chr(c) for c in range(0x200))
    kept = sanitize(every)
    # "\n" itself and the "\r" turned into "\n"; the tab became a space.
    assert [c for c in kept if ord(c) < 0x20 or 0x7F <= ord(c) <= 0x9F] == ["\n", "\n"]
    assert " " in kept


def test_utf8_pieces_never_split_a_character() -> None:
    text = ("a" * 3998 + "€" + "b" * 3995 + "🎉" + "中文" * 500) * 2
    pieces = utf8_pieces(text)
    assert "".join(pieces) == text
    assert all(0 < len(p.encode()) <= 4000 for p in pieces)
    assert len(pieces[0].encode()) == 3998  # "€" would cross byte 4000: it starts the next piece
    assert utf8_pieces("") == []
    assert utf8_pieces("x" * 4000) == ["x" * 4000]


# --- a real tmux server -----------------------------------------------------------------------


@needs_tmux
async def test_single_line_arrives_once(start_pane) -> None:
    pane = await start_pane()
    assert await inject(pane, "hello world") == ["\x15hello world\r"]


@needs_tmux
async def test_unicode_intact(start_pane) -> None:
    pane = await start_pane()
    text = "café naïve — 🎉👍🏽 中文字 日本語 한국어 Ωμέγα"
    assert await inject(pane, text) == [f"\x15{text}\r"]


@needs_tmux
async def test_hostile_text_is_typed_literally(start_pane) -> None:
    pane = await start_pane()
    text = "\x1b[31mred\x1b]0;title\x07 C-c Enter\x03 a\tb -t %0 ; ls; find . -exec x {} \\;"
    assert await inject(pane, text) == [
        "\x15[31mred]0;title C-c Enter a b -t %0 ; ls; find . -exec x {} \\;\r"
    ]


@needs_tmux
async def test_crlf_normalised(start_pane) -> None:
    pane = await start_pane()
    assert await inject(pane, "one\r\ntwo\rthree") == ["\x15one\n", "two\n", "three\r"]


@needs_tmux
async def test_long_line_with_multibyte_at_piece_boundaries(start_pane) -> None:
    pane = await start_pane()
    head = "a" * 3998 + "€" + "b" * 3997 + "🎉" + "c" * 1000
    text = head + "中" * (10_000 - len(head))
    assert len(text) == 10_000
    assert await inject(pane, text) == [f"\x15{text}\r"]


@needs_tmux
async def test_multi_line_is_one_bracketed_paste(start_pane) -> None:
    pane = await start_pane("raw-bp")
    # Paste start/end markers prove one paste; the final line is ended by Enter (\r).
    assert await inject(pane, "first\nsecond\n\nlast") == [
        "\x15\x1b[200~first\n",
        "second\n",
        "\n",
        "last\x1b[201~\r",
    ]


@needs_tmux
async def test_multi_line_without_bracketed_paste_mode(start_pane) -> None:
    pane = await start_pane("raw")  # the program did not ask for bracketed paste: plain LFs
    assert await inject(pane, "a\nb\n") == ["\x15a\n", "b\n", "\r"]


@needs_tmux
async def test_empty_command_is_only_enter(start_pane) -> None:
    pane = await start_pane()
    assert await inject(pane, "") == ["\x15\r"]
    assert await inject(pane, "\x1b\x07") == ["\x15\r"]  # nothing left after sanitising


@needs_tmux
async def test_input_line_is_cleared_first(start_pane) -> None:
    pane = await start_pane("canon")  # the kernel's line editing applies C-u
    pane.tmux("send-keys", "-t", pane.id, "-l", "garbage")
    assert await inject(pane, "real") == ["real"]


@needs_tmux
async def test_copy_mode_is_left(start_pane) -> None:
    pane = await start_pane()
    pane.tmux("copy-mode", "-t", pane.id)
    assert pane.tmux("display-message", "-p", "-t", pane.id, "#{pane_in_mode}") == "1"
    assert await inject(pane, "after copy mode") == ["\x15after copy mode\r"]
    assert pane.tmux("display-message", "-p", "-t", pane.id, "#{pane_in_mode}") == "0"


@needs_tmux
async def test_missing_pane(start_pane) -> None:
    pane = await start_pane()
    with pytest.raises(InjectionError) as err:
        await injector().inject(Target(pane="%999", tmux_socket=pane.socket), "x")
    assert str(err.value) == "tmux target '%999' not found"
    assert await pane.received() == []


@needs_tmux
async def test_dead_server(tmux_dir: str) -> None:
    target = Target(pane="%0", tmux_socket=os.path.join(tmux_dir, "nothing-here"))
    with pytest.raises(InjectionError) as err:
        await injector().inject(target, "x")
    assert str(err.value).startswith("tmux target '%0' not found")


async def test_tmux_not_installed(tmp_path: Path) -> None:
    with pytest.raises(InjectionError, match="tmux is not installed"):
        await injector(tmux=str(tmp_path / "no-tmux")).inject(Target(pane="%1"), "x")


# --- a fake tmux: exact argument vectors, errors, timeouts --------------------------------------

FAKE_TMUX = r"""#!{python}
import json, os, sys, time
args = sys.argv[1:]
data = sys.stdin.read() if "load-buffer" in args else None
with open(os.environ["FAKE_TMUX_LOG"], "a") as f:
    f.write(json.dumps([args, data]) + "\n")
behaviour = os.environ.get("FAKE_TMUX", "")
if "display-message" in args:
    print("1" if behaviour == "copy-mode" else "0")
if behaviour == "fail-send" and "send-keys" in args and "C-u" in args:
    sys.stderr.write("  something\n  broke \n")
    sys.exit(1)
if behaviour == "hang" and "display-message" in args:
    time.sleep(30)
"""


@pytest.fixture
def fake_tmux(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    script = tmp_path / "tmux"
    script.write_text(FAKE_TMUX.replace("{python}", sys.executable))
    script.chmod(0o755)
    log = tmp_path / "tmux.log"
    monkeypatch.setenv("FAKE_TMUX_LOG", str(log))

    def calls() -> list[list]:
        return [json.loads(x) for x in log.read_text().splitlines()] if log.exists() else []

    return str(script), calls


async def test_argument_vectors(fake_tmux, monkeypatch: pytest.MonkeyPatch) -> None:
    script, calls = fake_tmux
    monkeypatch.setenv("FAKE_TMUX", "copy-mode")
    slept: list[float] = []

    async def sleep(seconds: float) -> None:
        slept.append(seconds)

    inj = TmuxInjector(tmux=script, enter_delay_ms=50, clear_delay_ms=100, sleep=sleep)
    assert inj.enter_delay_ms == 100  # never below 100 ms
    await inj.inject(Target(pane="%7", tmux_socket="/s/sock"), "hi;")
    s = ["-S", "/s/sock"]
    assert [c[0] for c in calls()] == [
        [*s, "has-session", "-t", "%7"],
        [*s, "display-message", "-p", "-t", "%7", "#{pane_in_mode}"],
        [*s, "send-keys", "-t", "%7", "-X", "cancel"],
        [*s, "send-keys", "-t", "%7", "C-u"],
        [*s, "send-keys", "-t", "%7", "-l", "--", "hi\\;"],
        [*s, "send-keys", "-t", "%7", "Enter"],
    ]
    assert slept == [0.1, 0.1]


async def test_multi_line_argument_vectors(fake_tmux) -> None:
    script, calls = fake_tmux
    await injector(tmux=script).inject(Target(pane="%3"), "a\r\nb\x1b")
    got = calls()
    assert [c[0][0] for c in got] == [
        "has-session",
        "display-message",
        "send-keys",
        "load-buffer",
        "paste-buffer",
        "send-keys",
    ]
    load, paste = got[3], got[4]
    name = load[0][2]
    assert load == [["load-buffer", "-b", name, "-"], "a\nb"]
    assert name.startswith("ccr-box-")
    assert paste[0] == ["paste-buffer", "-d", "-p", "-r", "-b", name, "-t", "%3"]


async def test_tmux_error_is_reported(fake_tmux, monkeypatch: pytest.MonkeyPatch) -> None:
    script, calls = fake_tmux
    monkeypatch.setenv("FAKE_TMUX", "fail-send")
    with pytest.raises(InjectionError) as err:
        await injector(tmux=script).inject(Target(pane="%3"), "x")
    assert str(err.value) == "tmux send-keys failed: something broke"
    assert "Enter" not in [a for c in calls() for a in c[0]]


async def test_tmux_step_timeout(fake_tmux, monkeypatch: pytest.MonkeyPatch) -> None:
    script, _ = fake_tmux
    monkeypatch.setenv("FAKE_TMUX", "hang")  # for 30 s
    async with asyncio.timeout(LIVENESS_S):  # a safety net, not a measurement
        with pytest.raises(InjectionError, match=r"tmux display-message timed out after 0\.5 s"):
            await injector(tmux=script, step_timeout_s=0.5).inject(Target(pane="%3"), "x")


# --- CommandInjector ----------------------------------------------------------------------------

WRITE_STDIN = (
    "import os, sys, json; data = sys.stdin.buffer.read();"
    "open(sys.argv[1], 'w').write(json.dumps([data.decode('utf-8'),"
    " os.environ.get('CCR_SESSION_ID'), os.environ.get('CCR_PANE')]))"
)


async def test_command_injector_pipes_text_and_env(tmp_path: Path) -> None:
    out = tmp_path / "out.json"
    inj = CommandInjector([sys.executable, "-c", WRITE_STDIN, str(out)])
    await inj.inject(Target(pane="%4", session_id="sess-1"), "héllo\r\n🎉\x1b[1m\tx")
    assert json.loads(out.read_text()) == ["héllo\n🎉[1m x", "sess-1", "%4"]


async def test_command_injector_failure(tmp_path: Path) -> None:
    code = "import sys; sys.stderr.write('x' * 500 + ' the real reason'); sys.exit(3)"
    with pytest.raises(InjectionError) as err:
        await CommandInjector([sys.executable, "-c", code]).inject(Target(pane="%1"), "hi")
    message = str(err.value)
    assert "exit code 3" in message
    assert message.endswith("x" * (200 - len(" the real reason")) + " the real reason")


async def test_command_injector_timeout_kills_the_process_group(tmp_path: Path) -> None:
    # The child keeps stderr open through a grandchild: only killing the group ends the wait.
    code = (
        "import subprocess, sys, time;"
        "subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(30)']);"
        "time.sleep(30)"
    )
    async with asyncio.timeout(LIVENESS_S):  # ends long before the grandchild's 30 s
        with pytest.raises(InjectionError, match=r"timed out after 0\.5 s"):
            await CommandInjector([sys.executable, "-c", code], timeout_s=0.5).inject(
                Target(pane="%1"), "x"
            )


async def test_command_injector_missing_command(tmp_path: Path) -> None:
    with pytest.raises(InjectionError, match="inject command not found"):
        await CommandInjector([str(tmp_path / "nope")]).inject(Target(pane="%1"), "x")


def test_make_injector() -> None:
    tmux = make_injector("", 300)
    assert isinstance(tmux, TmuxInjector)
    assert tmux.enter_delay_ms == 300
    cmd = make_injector("my-tool --to 'a b'", 300)
    assert isinstance(cmd, CommandInjector)
    assert cmd.argv == ["my-tool", "--to", "a b"]
    with pytest.raises(ConfigError):
        make_injector("broken 'quote", 300)
