"""A typed client for the operator API (contract §6.8), shared by the console and the CLI.

No Textual here: ``ccr-box machines`` & co. use it without paying for the console's imports.
Error messages name the server URL, never the API key.
"""

from __future__ import annotations

import ipaddress
import json
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import quote, urlsplit, urlunsplit

import aiohttp

from ccr_box.config import Config
from ccr_box.errors import CcrBoxError

COMMAND_STATUSES = ("pending", "sent", "acked", "dead")


class AdminError(CcrBoxError):
    """The server refused a request; ``message`` is its ``{"error"}`` text (e.g. ``Unauthorized``)."""

    def __init__(self, status: int, message: str) -> None:
        self.status = status
        self.message = message
        super().__init__(message)


class AdminUnavailable(CcrBoxError):
    """The server could not be reached (refused, timed out, not a ccr-box answer)."""

    retryable = True


def default_target(config: Config) -> tuple[str, str]:
    """``(base_url, api_key)``: ``[agent]`` server_url/api_key, else this machine's ``[server]``.

    ``parse`` already falls back from ``agent.api_key`` to ``server.api_key`` (one shared key), so
    a console on the server machine works with zero config.
    """
    url = config.agent.server_url
    if not url:
        host = config.server.host
        if host in ("0.0.0.0", ""):
            host = "127.0.0.1"
        elif host == "::":
            host = "::1"
        if _is_ipv6(host):
            host = f"[{host}]"
        url = f"http://{host}:{config.server.port}"
    return url.rstrip("/"), config.agent.api_key or config.server.api_key


def _is_ipv6(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).version == 6
    except ValueError:
        return False


def display_url(url: str) -> str:
    """The URL without any ``user:password@`` part (safe for messages)."""
    parts = urlsplit(url)
    if parts.username is None and parts.password is None:
        return url
    netloc = parts.netloc.rpartition("@")[2]
    return urlunsplit(parts._replace(netloc=netloc))


class AdminClient:
    """``async with AdminClient(url, key) as admin: await admin.machines()``."""

    def __init__(
        self,
        base_url: str,
        api_key: str,
        session: aiohttp.ClientSession | None = None,
        timeout_s: float = 10,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self._api_key = api_key
        self._session = session
        self._owns_session = session is None
        self._timeout = aiohttp.ClientTimeout(total=timeout_s)
        self.timeout_s = timeout_s

    def __repr__(self) -> str:  # never the key
        return f"AdminClient({display_url(self.base_url)!r})"

    async def __aenter__(self) -> AdminClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        if self._owns_session and self._session is not None:
            await self._session.close()
            self._session = None

    # -- the API ---------------------------------------------------------------------------------

    async def status(self) -> dict[str, Any]:
        return await self._call("GET", "/admin/status")

    async def machines(self) -> list[dict[str, Any]]:
        return await self._call("GET", "/admin/machines")

    async def sessions(self) -> list[dict[str, Any]]:
        return await self._call("GET", "/sessions")

    async def commands(
        self, status: str | None = None, machine_id: str | None = None, limit: int = 100
    ) -> list[dict[str, Any]]:
        params = {"limit": str(limit)}
        if status:
            params["status"] = status
        if machine_id:
            params["machineId"] = machine_id
        return await self._call("GET", "/admin/commands", params=params)

    async def retry(self, command_id: str) -> dict[str, Any]:
        return await self._call("POST", f"/admin/commands/{_segment(command_id)}/retry")

    async def reassign(self, command_id: str, session_id: str) -> dict[str, Any]:
        path = f"/admin/commands/{_segment(command_id)}/reassign"
        return await self._call("POST", path, json={"sessionId": session_id})

    async def unregister(self, session_id: str) -> dict[str, Any]:
        return await self._call("POST", "/sessions/unregister", json={"sessionId": session_id})

    async def retry_dead(self, machine_id: str) -> dict[str, Any]:
        """``{"ok":true,"retried":n}``: every dead command of the machine back to pending."""
        return await self._call("POST", f"/admin/machines/{_segment(machine_id)}/retry-dead")

    async def disconnect(self, machine_id: str) -> dict[str, Any]:
        """``{"ok":true,"disconnected":bool}``: close the machine's socket (it reconnects)."""
        return await self._call("POST", f"/admin/machines/{_segment(machine_id)}/disconnect")

    async def move_session(self, session_id: str, machine_id: str) -> dict[str, Any]:
        path = f"/admin/sessions/{_segment(session_id)}/move"
        return await self._call("POST", path, json={"machineId": machine_id})

    async def send_command(self, session_id: str, text: str) -> dict[str, Any]:
        """``{"ok":true,"commandId":...,"queued":bool}`` (queued: the machine is offline)."""
        path = f"/admin/sessions/{_segment(session_id)}/commands"
        return await self._call("POST", path, json={"text": text})

    async def outbox(self, status: str | None = None, limit: int = 100) -> list[dict[str, Any]]:
        params = {"limit": str(limit)}
        if status:
            params["status"] = status
        return await self._call("GET", "/admin/outbox", params=params)

    async def events(self, after: int = 0, limit: int = 200) -> list[dict[str, Any]]:
        params = {"after": str(after), "limit": str(limit)}
        return await self._call("GET", "/admin/events", params=params)

    async def stream_events(self, after: int = 0) -> AsyncIterator[dict[str, Any]]:
        """Kept events with ``seq > after``, then every new one, until the server closes.

        The last item may be ``{"kind":"overflow"}`` (this client fell behind: reconnect with
        ``after`` = the last seq seen). Ends when the stream closes (1001 at server shutdown).
        """
        where = display_url(self.base_url)
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=self._timeout)
        url = f"{self.base_url}/admin/events/stream"
        try:
            ws = await self._session.ws_connect(
                url,
                params={"after": str(after)},
                headers={"Authorization": f"Bearer {self._api_key}"},
                heartbeat=30,
            )
        except aiohttp.WSServerHandshakeError as exc:
            if exc.status == 401:
                raise AdminError(401, "Unauthorized") from None
            raise AdminError(
                exc.status, f"{where} refused the event stream (HTTP {exc.status})"
            ) from None
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            raise AdminUnavailable(
                f"cannot reach the ccr-box server at {where}: {_describe(exc)}"
            ) from None
        async with ws:
            async for msg in ws:
                if msg.type != aiohttp.WSMsgType.TEXT:
                    break
                try:
                    event = json.loads(msg.data)
                except ValueError:
                    continue
                if isinstance(event, dict) and "kind" in event:
                    yield event

    # -- plumbing --------------------------------------------------------------------------------

    async def _call(self, method: str, path: str, **kw: Any) -> Any:
        where = display_url(self.base_url)
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=self._timeout)
        headers = {"Authorization": f"Bearer {self._api_key}"}
        try:
            async with self._session.request(
                method, self.base_url + path, headers=headers, timeout=self._timeout, **kw
            ) as resp:
                try:
                    body = await resp.json(content_type=None)
                except ValueError:
                    body = None
                status, reason = resp.status, resp.reason
        except TimeoutError:
            raise AdminUnavailable(
                f"cannot reach the ccr-box server at {where}: no answer within {self.timeout_s:g} s"
            ) from None
        except (aiohttp.InvalidURL, ValueError) as exc:  # ValueError: e.g. user:pass@ in the URL
            raise AdminUnavailable(f"invalid server URL {where}: {exc}") from None
        except (aiohttp.ClientError, OSError) as exc:
            detail = _describe(exc)
            raise AdminUnavailable(
                f"cannot reach the ccr-box server at {where}: {detail}"
            ) from None
        if status >= 400:
            error = body.get("error") if isinstance(body, dict) else None
            if isinstance(error, str) and error:
                raise AdminError(status, error)
            raise AdminError(status, f"{where} answered HTTP {status} {reason or ''}".rstrip())
        if body is None:
            raise AdminUnavailable(f"{where} did not answer with JSON; is it a ccr-box server?")
        return body


def _segment(value: str) -> str:
    return quote(value, safe="")


def _describe(exc: BaseException) -> str:
    if isinstance(exc, aiohttp.ClientConnectorError):
        if isinstance(exc.os_error, ConnectionRefusedError):
            return "connection refused (is `ccr-box up` running there?)"
        return exc.os_error.strerror or str(exc.os_error) or "connection failed"
    return str(exc) or type(exc).__name__
