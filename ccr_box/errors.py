"""The exception tree of ccr-box.

Every error ccr-box raises on purpose derives from :class:`CcrBoxError`. Messages are written for the
person running ccr-box and never contain secrets (API key, bot token, webhook secrets).

    CcrBoxError
    ├── ConfigError            a config file or environment value is invalid (names the key)
    ├── DatabaseError
    │   ├── SchemaTooNewError  the database was written by a newer ccr-box
    │   └── DatabaseBusyError  another ccr-box server already uses this database
    ├── TelegramError          a Bot API call failed
    │   ├── TelegramPermanentError   Telegram refused (4xx other than 429); retrying will not help
    │   └── TelegramTransientError   network error, timeout, 5xx or a too-long 429; retry later
    ├── InjectionError         the agent could not type a command into its target
    └── ClientError            a call to a ccr-box server failed (the clients' tree, documented
                               in ccr_box/client/errors.py: ServerUnavailable, ServerRefused)
"""

from __future__ import annotations

from typing import Any


class CcrBoxError(Exception):
    """Base class of every deliberate ccr-box error."""

    retryable = False


class ConfigError(CcrBoxError):
    """A configuration value is invalid. ``key`` is the dotted config key (or env var) at fault."""

    def __init__(self, key: str, problem: str) -> None:
        self.key = key
        self.problem = problem
        super().__init__(f"{key}: {problem}")


class DatabaseError(CcrBoxError):
    """The database cannot be used."""


class SchemaTooNewError(DatabaseError):
    """The database has a schema version this ccr-box does not know."""


class DatabaseBusyError(DatabaseError):
    """Another ccr-box server process holds the database."""


class TelegramError(CcrBoxError):
    """A Bot API call failed. ``method`` is the Bot API method name."""

    def __init__(self, method: str, message: str) -> None:
        self.method = method
        super().__init__(f"Telegram {method}: {message}")


class TelegramPermanentError(TelegramError):
    """Telegram answered with an error that retrying will not fix (bad request, chat not found...).

    ``status`` is the HTTP status, ``payload`` Telegram's JSON answer (for 502 ``details``).
    """

    def __init__(self, method: str, status: int, payload: dict[str, Any]) -> None:
        self.status = status
        self.payload = payload
        description = payload.get("description") if isinstance(payload, dict) else None
        super().__init__(method, f"HTTP {status}: {description or 'error'}")

    @property
    def description(self) -> str:
        value = self.payload.get("description") if isinstance(self.payload, dict) else None
        return value if isinstance(value, str) else ""


class TelegramTransientError(TelegramError):
    """Telegram could not be reached or asked us to come back later."""

    retryable = True


class InjectionError(CcrBoxError):
    """The agent could not deliver a command to its target (missing pane, dead tmux...)."""
