"""Live config reload: watch ``config.toml`` (and SIGHUP), apply what is safe to change live.

Components read ``ConfigRef.current`` on each use, so swapping it is the whole mechanism. A valid
edit replaces the *live* keys (allowed chats and users, log level, TTLs, secrets checked per
request...); keys that shape what was built at start (listen address, database, bot token, mode)
keep their running values and a warning says a restart is needed. An invalid edit is rejected with
one log line and a ``config.rejected`` console event; the previous config stays in force.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import logging
import os
from collections.abc import Callable, Mapping
from pathlib import Path

from ccr_box.config import SECTIONS, Config, parse, secrets_of
from ccr_box.errors import ConfigError
from ccr_box.logs import add_secrets
from ccr_box.server.events import EventBus
from ccr_box.server.state import ConfigRef

log = logging.getLogger("ccr_box.config")

# Read by the server once, at start: changing them needs a restart.
RESTART_KEYS = frozenset(
    {
        ("server", "host"),
        ("server", "port"),
        ("server", "data_dir"),
        ("telegram", "bot_token"),
        ("telegram", "mode"),
        ("telegram", "api_base"),
    }
)
WATCH_INTERVAL_S = 1.0


def changed_keys(old: Config, new: Config, section_names: tuple[str, ...]) -> list[tuple[str, str]]:
    """``(section, key)`` whose value differs between ``old`` and ``new``, in declaration order."""
    return [
        (section, f.name)
        for section in section_names
        for f in dataclasses.fields(getattr(old, section))
        if getattr(getattr(old, section), f.name) != getattr(getattr(new, section), f.name)
    ]


def merge_live(old: Config, new: Config) -> Config:
    """``new`` with every restart-only key kept at its running value from ``old``."""
    sections = {}
    for section in SECTIONS:
        kept = {key: getattr(getattr(old, section), key) for s, key in RESTART_KEYS if s == section}
        sections[section] = dataclasses.replace(getattr(new, section), **kept)
    return dataclasses.replace(new, **sections)


class ConfigReloader:
    """Re-reads the config file when its content changes (polled) or when asked (SIGHUP)."""

    def __init__(
        self,
        ref: ConfigRef,
        events: EventBus,
        *,
        path: Path,
        adjust: Callable[[Config], Config] | None = None,
        env: Mapping[str, str] | None = None,
    ) -> None:
        self._ref = ref
        self._events = events
        self._path = path
        self._adjust = adjust or (lambda config: config)
        self._env = env
        self._digest = self._read_digest()
        self._wake = asyncio.Event()

    def request(self) -> None:
        """Reload at the next chance, even if the file looks unchanged (SIGHUP)."""
        self._digest = None
        self._wake.set()

    async def run(self, interval_s: float = WATCH_INTERVAL_S) -> None:
        while True:
            try:
                await asyncio.wait_for(self._wake.wait(), interval_s)
            except TimeoutError:
                pass
            self._wake.clear()
            try:
                self.check()
            except Exception:  # the watcher must outlive any surprise; the server keeps going
                log.exception("config reload failed unexpectedly; the previous config stays")

    def check(self) -> bool:
        """Reload if the file's content changed since the last look; True when something applied."""
        digest = self._read_digest()
        if digest == self._digest:
            return False
        self._digest = digest
        return self.reload()

    def reload(self) -> bool:
        old = self._ref.current
        try:
            text = self._path.read_text(encoding="utf-8")
            env = os.environ if self._env is None else self._env
            new = self._adjust(parse(text, env=env, path=self._path))
        except (ConfigError, OSError, UnicodeDecodeError) as exc:
            problem = str(exc) if isinstance(exc, ConfigError) else f"cannot be read: {exc}"
            log.error(
                "config reload rejected: %s (%s); the previous config stays in force",
                problem,
                self._path,
            )
            self._events.publish("config.rejected", path=str(self._path), error=problem)
            return False
        changed = changed_keys(old, new, ("server", "telegram"))
        live = [key for key in changed if key not in RESTART_KEYS]
        restart = [key for key in changed if key in RESTART_KEYS]
        if restart:
            names = ", ".join(".".join(k) for k in restart)
            log.warning("config: %s changed; restart ccr-box for that to take effect", names)
        if not live:
            if not restart:
                log.info("config reloaded: nothing the server uses changed")
            if restart:
                self._publish(live, restart)
            return False
        applied = merge_live(old, new)
        add_secrets(secrets_of(applied))  # a new api_key or webhook secret is masked from now on
        self._ref.current = applied
        if ("server", "log_level") in live:
            logging.getLogger().setLevel(applied.server.log_level.upper())
        log.info("config reloaded: %s", ", ".join(".".join(k) for k in live))
        self._publish(live, restart)
        return True

    def _publish(self, live: list[tuple[str, str]], restart: list[tuple[str, str]]) -> None:
        self._events.publish(
            "config.reloaded",
            path=str(self._path),
            changed=[".".join(k) for k in live],
            needsRestart=[".".join(k) for k in restart],
        )

    def _read_digest(self) -> str | None:
        try:
            return hashlib.sha256(self._path.read_bytes()).hexdigest()
        except OSError:
            return None
