"""The systemd user units ``ccr-box service install`` writes: which command, where, what text.

A unit never holds a secret: its ExecStart names the config file (absolute path) and ccr-box reads
the bot token and API key from there. ExecStart words are quoted by systemd's rules (double quotes,
``\\`` and ``"`` escaped, ``%`` doubled against specifiers, ``$`` doubled against variables).
"""

from __future__ import annotations

import os
import re
import shutil
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from ccr_box.errors import CcrBoxError


@dataclass(frozen=True)
class Role:
    """One kind of service: the server (``up --headless``) or the machine agent (``agent``)."""

    unit: str  # the unit file's name
    name: str  # journal identifier, tmux session name, log file stem
    flag: str  # how the CLI selects it: "" or " --agent"
    args: tuple[str, ...]  # the ccr-box subcommand after ``--config PATH``
    description: str
    after: str


SERVER = Role(
    "ccr-box.service",
    "ccr-box",
    "",
    ("up", "--headless"),
    "ccr-box server: drives Claude Code sessions from Telegram",
    "network-online.target",
)
AGENT = Role(
    "ccr-box-agent.service",
    "ccr-box-agent",
    " --agent",
    ("agent",),
    "ccr-box agent: types Telegram replies into this machine's Claude Code sessions",
    "network-online.target ccr-box.service",
)

_PLAIN = re.compile(r"[A-Za-z0-9_@%+=:,./$-]+")


def unit_dir(env: Mapping[str, str]) -> Path:
    """Where systemd looks for this user's own units: ``$XDG_CONFIG_HOME/systemd/user``."""
    xdg = env.get("XDG_CONFIG_HOME", "")
    if xdg and os.path.isabs(xdg):
        return Path(xdg) / "systemd" / "user"
    home = env.get("HOME", "")
    return (Path(home) if os.path.isabs(home) else Path.home()) / ".config" / "systemd" / "user"


def executable() -> list[str]:
    """How to start this very ccr-box: its script when it runs as ``ccr-box``, else the one on
    PATH, else ``python -m ccr_box`` with this interpreter. Absolute, symlinks kept (a venv's
    ``python`` must stay the venv's)."""
    argv0 = sys.argv[0] if sys.argv else ""
    if Path(argv0).name == "ccr-box" and os.path.isfile(argv0):
        return [os.path.abspath(argv0)]
    found = shutil.which("ccr-box")
    if found:
        return [os.path.abspath(found)]
    return [os.path.abspath(sys.executable), "-m", "ccr_box"]


def command(role: Role, config_path: Path) -> list[str]:
    """The full command line the service runs."""
    return [*executable(), "--config", os.path.abspath(config_path), *role.args]


def systemd_word(word: str) -> str:
    """``word`` as one ExecStart argument, quoted only when it has to be."""
    if any(c in word for c in "\n\r\0"):
        raise CcrBoxError(f"cannot put {word!r} in a systemd unit: it contains a line break")
    escaped = word.replace("%", "%%").replace("$", "$$")
    if _PLAIN.fullmatch(word):
        return escaped
    return '"' + escaped.replace("\\", "\\\\").replace('"', '\\"') + '"'


def render(role: Role, cmd: Sequence[str], config_path: Path) -> str:
    """The unit file's text."""
    exec_start = " ".join(systemd_word(word) for word in cmd)
    config = os.path.abspath(config_path).replace("\n", " ")
    return f"""\
# Written by `ccr-box service install{role.flag}`; remove it with `ccr-box service uninstall{role.flag}`.
# It holds no secrets: ccr-box reads them from {config}.
[Unit]
Description={role.description}
After={role.after}
Wants=network-online.target

[Service]
Type=simple
ExecStart={exec_start}
Restart=on-failure
RestartSec=5
StandardOutput=journal
StandardError=journal
SyslogIdentifier={role.name}
UMask=0077
Environment=PYTHONUNBUFFERED=1

[Install]
WantedBy=default.target
"""
