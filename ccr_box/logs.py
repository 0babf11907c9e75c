"""Logging set-up: one readable line per event, with every known secret masked."""

from __future__ import annotations

import logging
import logging.handlers
import sys
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from urllib.parse import quote

from aiohttp.abc import AbstractAccessLogger
from aiohttp.http_exceptions import HttpProcessingError
from aiohttp.web import BaseRequest, StreamResponse

from ccr_box.wire import clip

MASK = "***"
FORMAT = "%(asctime)s %(levelname)-7s %(name)s: %(message)s"
ACCESS_LOGGER = "ccr_box.access"  # the runner hands this logger to AccessLogger


class SecretMasker(logging.Filter):
    """Replaces secret values anywhere in a formatted record (belt and braces)."""

    def __init__(self, secrets: Iterable[str]) -> None:
        super().__init__()
        # Each secret also in its percent-encoded spellings (a bot token's ':' becomes '%3A' in a
        # URL). Longest first, so a secret that contains another is masked whole.
        self.secrets: list[str] = []
        self.add(secrets)

    def add(self, secrets: Iterable[str]) -> None:
        """Mask these too from now on (a live config reload may bring a new secret)."""
        variants = {v for s in secrets if s for v in (s, quote(s, safe=""), quote(s))}
        self.secrets = sorted(variants | set(self.secrets), key=len, reverse=True)

    def filter(self, record: logging.LogRecord) -> bool:
        if not self.secrets:
            return True
        try:
            message = record.getMessage()
        except Exception:  # bad format arguments: never let logging raise into the caller
            message = f"{record.msg} (unformattable log arguments)"
            record.msg, record.args = message, None
        masked = self.mask(message)
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = self.mask(record.exc_text)
        if record.stack_info:
            record.stack_info = self.mask(record.stack_info)
        if masked != message:
            record.msg, record.args = masked, None
        return True

    def mask(self, text: str) -> str:
        for secret in self.secrets:
            text = text.replace(secret, MASK)
        return text


class RateLimit:
    """At most one record per key per ``interval_s``; counts what it held back.

    Client mistakes (malformed requests, garbage frames) are worth one line, not one per packet:
    a stranger must not be able to fill the disk with our logs.
    """

    def __init__(
        self,
        interval_s: float = 10.0,
        *,
        clock: Callable[[], float] = time.monotonic,
        max_keys: int = 1000,
    ) -> None:
        self._interval_s = interval_s
        self._clock = clock
        self._max_keys = max_keys
        self._last: dict[str, float] = {}
        self._held: dict[str, int] = {}

    def allow(self, key: str) -> int | None:
        """None: drop this record. Otherwise log it; the number says how many were dropped."""
        now = self._clock()
        last = self._last.get(key)
        if last is not None and now - last < self._interval_s:
            self._held[key] = self._held.get(key, 0) + 1
            return None
        if key not in self._last and len(self._last) >= self._max_keys:
            self._last.clear()
            self._held.clear()
        self._last[key] = now
        return self._held.pop(key, 0)


class ClientErrorFilter(logging.Filter):
    """aiohttp logs a full traceback at ERROR for every malformed HTTP request it rejects with
    400. That is the client's mistake: one clipped WARNING line, rate-limited, no traceback."""

    def __init__(self, limit: RateLimit | None = None) -> None:
        super().__init__()
        self._limit = limit or RateLimit()

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if not isinstance(exc, HttpProcessingError | ConnectionError):
            return True
        held = self._limit.allow("malformed-http")
        if held is None:
            return False
        remote = record.args[0] if isinstance(record.args, tuple) and record.args else "?"
        record.levelno, record.levelname = logging.WARNING, "WARNING"
        record.msg = "rejected a malformed HTTP request from %s: %s%s"
        # Only the parser's reason: the lines after it quote the offending header, which may
        # hold a secret (a key sent with a stray byte), and a clipped secret escapes masking.
        detail = str(getattr(exc, "message", None) or exc or type(exc).__name__)
        detail = detail.splitlines()[0].split("b'", 1)[0].split('b"', 1)[0].strip()
        more = f" ({held} more since the last report)" if held else ""
        record.args = (clip(remote, 64), clip(detail), more)
        record.exc_info, record.exc_text = None, None
        return True


def quiet_client_errors() -> None:
    """Install :class:`ClientErrorFilter` on aiohttp's server logger (once per process)."""
    server_log = logging.getLogger("aiohttp.server")
    if not any(isinstance(f, ClientErrorFilter) for f in server_log.filters):
        server_log.addFilter(ClientErrorFilter())


def setup_logging(
    level: str, secrets: Iterable[str] = (), *, log_file: Path | None = None
) -> SecretMasker:
    """Log to stderr (or append to ``log_file``) at ``level``; returns the masker."""
    masker = SecretMasker(secrets)
    handler: logging.Handler
    if log_file is not None:
        log_file.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        # Hooks run on every Claude Code event for months: keep the file small.
        handler = logging.handlers.RotatingFileHandler(
            log_file, maxBytes=1_000_000, backupCount=1, encoding="utf-8"
        )
    else:
        handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(FORMAT))
    handler.addFilter(masker)
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())
    # aiohttp's own access log is replaced by AccessLogger below (logger ACCESS_LOGGER).
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
    return masker


def add_secrets(secrets: Iterable[str]) -> None:
    """Teach every masker on the root logger's handlers more secrets (see :func:`setup_logging`)."""
    secrets = list(secrets)
    for handler in logging.getLogger().handlers:
        for each in handler.filters:
            if isinstance(each, SecretMasker):
                each.add(secrets)


def masked_path(path: str) -> str:
    """The webhook's secret path segment never reaches a log."""
    if path.startswith("/webhook/telegram/"):
        return "/webhook/telegram/" + MASK
    return path


class AccessLogger(AbstractAccessLogger):
    """``METHOD path status bytes time`` with the webhook path secret masked; no query strings."""

    def log(self, request: BaseRequest, response: StreamResponse, time: float) -> None:
        self.logger.info(
            "%s %s %s %s %.1fms",
            clip(request.method, 16),
            clip(masked_path(request.path), 200),
            response.status,
            response.body_length,
            time * 1000,
        )
