"""A small Telegram Bot API client (contract.md §8.5, §7.7).

Every call is a JSON ``POST`` to ``<base_url>/bot<token>/<method>``. Failures are classified into
:class:`~ccr_box.errors.TelegramTransientError` (network error, timeout, 5xx, unparsable answer,
429 that cannot be waited out) and :class:`~ccr_box.errors.TelegramPermanentError` (any other 4xx,
or a 200 answer with ``ok`` false / without ``result``).

The bot token never appears in an exception message, a chained exception or a log line: aiohttp
errors can embed the request URL, so their text only ever goes through :func:`_scrub`, and the
original exception is never chained onto ours.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable, Iterable
from typing import Any, TypeVar
from urllib.parse import quote

import aiohttp

from ccr_box import limits
from ccr_box.errors import TelegramError, TelegramPermanentError, TelegramTransientError
from ccr_box.wire import positive_int64

K = TypeVar("K")  # the kind of result a method answers with (dict, list)

log = logging.getLogger("ccr_box.telegram")

ALLOWED_UPDATES: tuple[str, ...] = ("message", "callback_query")
_NO_TOKEN_PAYLOAD = {"ok": False, "error_code": 401, "description": "No bot token configured"}


class TelegramRateLimitedError(TelegramTransientError):
    """A 429 that was not waited out (budget exceeded or retries exhausted).

    ``retry_after`` is the last wait Telegram asked for, in seconds.
    """

    def __init__(self, method: str, message: str, retry_after: float) -> None:
        self.retry_after = retry_after
        super().__init__(method, message)


def _scrub(text: str, token: str) -> str:
    """``text`` with every spelling of ``token`` (raw or percent-encoded) replaced by ``<token>``."""
    if not token:
        return text
    for variant in {token, quote(token, safe=""), quote(token)}:
        text = text.replace(variant, "<token>")
    return text


def is_webhook_conflict(err: BaseException) -> bool:
    """409 from getUpdates because a webhook is set (``Conflict: can't use getUpdates method…``)."""
    return (
        isinstance(err, TelegramPermanentError)
        and err.status == 409
        and "webhook is active" in err.description.lower()
    )


def is_other_poller_conflict(err: BaseException) -> bool:
    """409 from getUpdates because another process polls the same token."""
    return (
        isinstance(err, TelegramPermanentError)
        and err.status == 409
        and "terminated by other getupdates request" in err.description.lower()
    )


def error_kind(err: TelegramError) -> str:
    """``rate_limited``, ``transient`` or ``permanent``: how a failed call is counted."""
    if isinstance(err, TelegramRateLimitedError):
        return "rate_limited"
    return "transient" if isinstance(err, TelegramTransientError) else "permanent"


def _retry_after(payload: Any) -> float:
    """``parameters.retry_after`` of a 429 answer in seconds; 1 when missing or malformed."""
    params = payload.get("parameters") if isinstance(payload, dict) else None
    value = params.get("retry_after") if isinstance(params, dict) else None
    if isinstance(value, int | float) and not isinstance(value, bool) and value >= 0:
        return float(value)
    return 1.0


class TelegramAPI:
    """Bot API client bound to one token. ``enabled`` is False when the token is empty; calls then
    fail with a :class:`TelegramPermanentError` (status 401) without touching the network.

    ``on_error(method, kind)`` (optional) hears of every call that raises after reaching for the
    network, with ``kind`` from :func:`error_kind`: the server counts them in its metrics.
    """

    def __init__(
        self,
        session: aiohttp.ClientSession,
        token: str,
        *,
        base_url: str = "https://api.telegram.org",
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        call_timeout_s: float = limits.TELEGRAM_CALL_TIMEOUT_S,
        poll_http_timeout_s: float | None = None,
        on_error: Callable[[str, str], None] | None = None,
    ) -> None:
        self._session = session
        self._on_error = on_error
        self._token = token or ""
        self._base_url = base_url.rstrip("/")
        self._sleep = sleep
        # Public so fault tests can shorten them on a running server instead of waiting them out.
        # call_timeout_s: every call but getUpdates (§8.5, 10 s). poll_http_timeout_s: getUpdates;
        # None = max(45 s, long-poll timeout + 15 s).
        self.call_timeout_s = call_timeout_s
        self.poll_http_timeout_s = poll_http_timeout_s

    def __repr__(self) -> str:
        return f"TelegramAPI(base_url={self._base_url!r}, enabled={self.enabled})"

    @property
    def enabled(self) -> bool:
        return bool(self._token)

    # -- core -------------------------------------------------------------------------------------

    async def call(
        self,
        method: str,
        payload: dict[str, Any] | None = None,
        *,
        timeout_s: float | None = None,
        wait_budget_s: float | None = limits.TELEGRAM_REQUEST_WAIT_BUDGET_S,
    ) -> Any:
        """Call ``method`` and return Telegram's ``result``.

        429 answers are retried after ``parameters.retry_after`` seconds, at most
        ``limits.TELEGRAM_MAX_429_RETRIES`` times. When ``wait_budget_s`` is not None and the total
        wait would exceed it, :class:`TelegramRateLimitedError` is raised at once without sleeping.
        """
        if not self.enabled:
            raise TelegramPermanentError(method, 401, dict(_NO_TOKEN_PAYLOAD))
        try:
            return await self._call(method, payload, timeout_s, wait_budget_s)
        except TelegramError as exc:
            self._report(method, exc)
            raise

    def _report(self, method: str, exc: TelegramError) -> None:
        if self._on_error is None:
            return
        try:
            self._on_error(method, error_kind(exc))
        except Exception:  # counting never changes what the caller sees
            log.exception("Telegram error callback failed")

    async def _call(
        self,
        method: str,
        payload: dict[str, Any] | None,
        timeout_s: float | None,
        wait_budget_s: float | None,
    ) -> Any:
        waited = 0.0
        retries = 0
        while True:
            status, body = await self._post(method, payload or {}, timeout_s)
            if status != 429:
                return self._result(method, status, body)
            delay = _retry_after(body)
            if retries >= limits.TELEGRAM_MAX_429_RETRIES:
                raise TelegramRateLimitedError(
                    method, f"HTTP 429: still rate limited after {retries} retries", delay
                )
            if wait_budget_s is not None and waited + delay > wait_budget_s:
                raise TelegramRateLimitedError(
                    method,
                    f"HTTP 429: retry after {delay:g} s exceeds the wait budget of {wait_budget_s:g} s",
                    delay,
                )
            log.info("Telegram %s: rate limited, retrying in %g s", method, delay)
            await self._sleep(delay)
            waited += delay
            retries += 1

    async def _post(
        self, method: str, payload: dict[str, Any], timeout_s: float | None
    ) -> tuple[int, Any]:
        """One HTTP round trip → (status, parsed JSON or None when unparsable)."""
        url = f"{self._base_url}/bot{self._token}/{method}"
        timeout = aiohttp.ClientTimeout(
            total=timeout_s if timeout_s is not None else self.call_timeout_s
        )
        failure: str | None = None
        try:
            async with self._session.post(url, json=payload, timeout=timeout) as resp:
                status = resp.status
                raw = await resp.read()
        except TimeoutError:
            failure = "timeout"
        except (aiohttp.ClientError, OSError) as exc:
            detail = _scrub(str(exc), self._token)
            failure = f"network error: {type(exc).__name__}" + (f": {detail}" if detail else "")
        if failure is not None:
            # Raised outside the except block: the aiohttp exception (whose text may contain the
            # URL, hence the token) is neither chained nor attached as context.
            log.debug(
                "Telegram %s -> %s", method, "timeout" if failure == "timeout" else "network error"
            )
            raise TelegramTransientError(method, failure)
        log.debug("Telegram %s -> %s", method, status)
        try:
            # Plain parsing: an answer is Telegram's, and one odd update inside a getUpdates batch
            # must not make the whole batch unreadable (the poller checks each update itself).
            body = json.loads(raw)
        except (ValueError, RecursionError):
            body = None
        return status, body

    def _result(self, method: str, status: int, body: Any) -> Any:
        if status >= 500:
            raise TelegramTransientError(method, f"HTTP {status}")
        if 400 <= status < 500:
            if not isinstance(body, dict):
                body = {"ok": False, "error_code": status, "description": f"HTTP {status}"}
            raise TelegramPermanentError(method, status, body)
        if not isinstance(body, dict):
            raise TelegramTransientError(method, f"HTTP {status}: unparsable answer")
        if status != 200:
            raise TelegramTransientError(method, f"unexpected HTTP {status}")
        if body.get("ok") is not True or "result" not in body:
            raise TelegramPermanentError(method, status, body)
        return body["result"]

    @staticmethod
    def _expect(method: str, result: object, kind: type[K]) -> K:
        if not isinstance(result, kind):
            raise TelegramPermanentError(
                method, 200, {"ok": True, "result": result, "description": "unexpected result type"}
            )
        return result

    # -- methods ----------------------------------------------------------------------------------

    async def get_me(self) -> dict[str, Any]:
        return self._expect("getMe", await self.call("getMe"), dict)

    async def send_message(
        self,
        chat_id: str,
        text: str,
        *,
        wait_budget_s: float | None = limits.TELEGRAM_REQUEST_WAIT_BUDGET_S,
        **fields: Any,
    ) -> dict[str, Any]:
        """Send plain text; ``fields`` (``reply_markup``, ``entities``, ``message_thread_id``…) are
        passed verbatim when not None. ``parse_mode`` is refused: texts are always plain."""
        if "parse_mode" in fields:
            raise TypeError("send_message never uses parse_mode (texts are plain)")
        payload: dict[str, Any] = {"chat_id": chat_id, "text": text}
        payload.update({key: value for key, value in fields.items() if value is not None})
        result = await self.call("sendMessage", payload, wait_budget_s=wait_budget_s)
        return self._expect("sendMessage", result, dict)

    @staticmethod
    def message_id_of(message: dict[str, Any]) -> int | None:
        """The id of a sent message; None when Telegram's answer lacks a usable one (the message
        was still delivered: never re-send it, only its reply mapping is lost)."""
        return positive_int64(message.get("message_id"))

    async def answer_callback_query(
        self,
        callback_query_id: str,
        text: str | None = None,
        *,
        wait_budget_s: float | None = limits.TELEGRAM_REQUEST_WAIT_BUDGET_S,
    ) -> None:
        payload: dict[str, Any] = {"callback_query_id": callback_query_id}
        if text is not None:
            payload["text"] = text
        await self.call("answerCallbackQuery", payload, wait_budget_s=wait_budget_s)

    async def get_updates(
        self,
        offset: int | None,
        *,
        timeout: int = limits.TELEGRAM_POLL_TIMEOUT_S,  # noqa: ASYNC109 (Bot API name)
        limit: int = 100,
        wait_budget_s: float | None = None,
    ) -> list[dict[str, Any]]:
        """Long poll. ``allowed_updates`` is sent on every call (the setting is sticky)."""
        payload: dict[str, Any] = {
            "timeout": timeout,
            "limit": limit,
            "allowed_updates": list(ALLOWED_UPDATES),
        }
        if offset is not None:
            payload["offset"] = offset
        http_timeout = self.poll_http_timeout_s
        if http_timeout is None:  # always longer than the long poll itself
            http_timeout = max(limits.TELEGRAM_POLL_HTTP_TIMEOUT_S, timeout + 15.0)
        result = await self.call(
            "getUpdates", payload, timeout_s=http_timeout, wait_budget_s=wait_budget_s
        )
        return self._expect("getUpdates", result, list)

    async def delete_webhook(self, *, drop_pending_updates: bool = False) -> None:
        await self.call("deleteWebhook", {"drop_pending_updates": drop_pending_updates})

    async def set_webhook(
        self, url: str, *, secret_token: str, allowed_updates: Iterable[str] = ALLOWED_UPDATES
    ) -> None:
        payload = {
            "url": url,
            "secret_token": secret_token,
            "allowed_updates": list(allowed_updates),
        }
        await self.call("setWebhook", payload)

    async def get_webhook_info(self) -> dict[str, Any]:
        return self._expect("getWebhookInfo", await self.call("getWebhookInfo"), dict)
