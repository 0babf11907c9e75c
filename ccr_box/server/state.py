"""Small runtime state objects shared by the server's components."""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field

from ccr_box.config import Config


class ConfigRef:
    """The config in force. Components read ``.current`` on each use so a reload takes effect."""

    def __init__(self, config: Config) -> None:
        self.current = config


@dataclass
class TelegramStatus:
    """What ``/admin/status`` reports about Telegram."""

    mode: str
    state: str = "starting"  # off | starting | ok | error | conflict
    last_error: str | None = None
    last_ok_at: int | None = None
    username: str | None = None  # learned from getMe; used for /cmd@bot suffixes

    def ok(self, now: int) -> None:
        self.state = "ok"
        self.last_error = None
        self.last_ok_at = now

    def fail(self, state: str, error: str) -> None:
        self.state = state
        self.last_error = error


@dataclass
class ServerState:
    started_at: int
    telegram: TelegramStatus
    boot_id: str = field(default_factory=lambda: secrets.token_hex(4))
