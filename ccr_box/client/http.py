"""What every ccr-box client shares: one session, its timeout, the bearer header, the answers.

:class:`HttpClient` sends a request and hands back an :class:`Answer` (status and body, read in
full); network failures propagate as aiohttp/OS errors (:data:`NETWORK_ERRORS`) so each client
words them for its reader. :func:`raise_for_status` turns an HTTP error answer into the
:mod:`ccr_box.client.errors` tree, the same way for every client.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Self
from urllib.parse import quote, urlsplit, urlunsplit

import aiohttp

from ccr_box.client.errors import (
    ROUTER_ERRORS,
    EndpointMissing,
    ServerRefused,
    ServerUnavailable,
)

# What a request that got no answer raises (``aiohttp.ServerTimeoutError`` is both a ClientError
# and a TimeoutError; ``aiohttp.InvalidURL`` both a ClientError and a ValueError).
NETWORK_ERRORS = (aiohttp.ClientError, OSError, TimeoutError)


def bearer(api_key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {api_key}"}


def display_url(url: str) -> str:
    """The URL without any ``user:password@`` part (safe for messages)."""
    parts = urlsplit(url)
    if parts.username is None and parts.password is None:
        return url
    netloc = parts.netloc.rpartition("@")[2]
    return urlunsplit(parts._replace(netloc=netloc))


def local_url(host: str, port: int) -> str:
    """How this machine reaches a server listening on ``host:port`` (a wildcard or ``localhost``
    is reached over loopback; an IPv6 address is bracketed)."""
    if host in ("0.0.0.0", "", "localhost"):
        host = "127.0.0.1"
    elif host == "::":
        host = "::1"
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def segment(value: str) -> str:
    """``value`` as one URL path segment (a ``/`` in an id travels quoted)."""
    return quote(value, safe="")


def describe(exc: BaseException) -> str:
    """Plain words for a failed connection (no URL: the caller names it)."""
    if isinstance(exc, aiohttp.ClientConnectorError):
        if isinstance(exc.os_error, ConnectionRefusedError):
            return "connection refused (is `ccr-box up` running there?)"
        return exc.os_error.strerror or str(exc.os_error) or "connection failed"
    return str(exc) or type(exc).__name__


@dataclass(frozen=True)
class Answer:
    """An HTTP answer, read in full."""

    status: int
    reason: str | None
    body: bytes
    charset: str | None = None

    @property
    def text(self) -> str:
        try:
            return self.body.decode(self.charset or "utf-8", "replace")
        except LookupError:  # an unknown charset name
            return self.body.decode("utf-8", "replace")

    def json(self) -> Any:
        """The body as JSON; None when it is empty or not JSON."""
        text = self.text
        if not text.strip():
            return None
        try:
            return json.loads(text)
        except ValueError:
            return None

    @property
    def error(self) -> str | None:
        """The ``{"error"}`` text of a ccr-box error answer, when there is one."""
        data = self.json()
        error = data.get("error") if isinstance(data, dict) else None
        return error if isinstance(error, str) and error else None


def raise_for_status(
    answer: Answer, *, fallback: str, unavailable: str | None = None, plain: bool = False
) -> None:
    """Raise what an error answer (status >= 400) means; nothing for any other.

    5xx: :class:`ServerUnavailable` (message ``unavailable``, else the error text). 4xx:
    :class:`ServerRefused`, or :class:`EndpointMissing` for the router's own 404/405 (or a 404/405
    without a ccr-box error body). The error text is the server's ``{"error"}``, else
    ``fallback``; with ``plain`` the message is that text alone (what the operator tools print).
    """
    if answer.status < 400:
        return
    error = answer.error or fallback
    if answer.status >= 500:
        raise ServerUnavailable(unavailable or error)
    text = error if plain else None
    if answer.status in (404, 405) and (answer.error is None or answer.error in ROUTER_ERRORS):
        raise EndpointMissing(answer.status, error, text)
    raise ServerRefused(answer.status, error, text)


class HttpClient:
    """Bearer-authenticated requests to one server: ``async with HttpClient(url, key) as c``.

    Pass ``session`` to share one (the agent does; it stays open), else one is opened on first
    use with ``timeout`` and closed by :meth:`close`. ``timeout`` also bounds every request.
    """

    def __init__(
        self,
        base_url: str,
        api_key: str,
        session: aiohttp.ClientSession | None = None,
        *,
        timeout: aiohttp.ClientTimeout,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self._api_key = api_key
        self._session = session
        self._owns_session = session is None
        self.timeout = timeout

    def __repr__(self) -> str:  # never the key
        return f"{type(self).__name__}({display_url(self.base_url)!r})"

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        if self._owns_session and self._session is not None:
            await self._session.close()
            self._session = None

    @property
    def headers(self) -> dict[str, str]:
        return bearer(self._api_key)

    def session(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=self.timeout)
        return self._session

    async def send(
        self,
        method: str,
        path: str,
        *,
        params: dict[str, str] | None = None,
        body: Any = None,
        auth: bool = True,
    ) -> Answer:
        """One request; ``body`` (when not None) goes as JSON. Raises :data:`NETWORK_ERRORS`."""
        headers = self.headers if auth else {}
        data = None
        if body is not None:
            data = json.dumps(body)
            headers = {**headers, "Content-Type": "application/json"}
        async with self.session().request(
            method,
            self.base_url + path,
            params=params,
            data=data,
            headers=headers,
            timeout=self.timeout,
        ) as resp:
            return Answer(resp.status, resp.reason, await resp.read(), resp.charset)
