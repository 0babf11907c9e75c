"""A typed client for the operator API (contract §6.8), shared by the console and the CLI.

No Textual here: ``ccr-box machines`` & co. use it without paying for the console's imports.
Errors (:mod:`ccr_box.client.errors`) carry the server's own words as their message, so the CLI
prints ``ccr-box: Unauthorized``; they name the server URL, never the API key.
"""

from __future__ import annotations

from contextlib import AbstractAsyncContextManager
from typing import Any
from urllib.parse import urlsplit

import aiohttp

from ccr_box.client.errors import ServerUnavailable
from ccr_box.client.events import Frames, open_stream
from ccr_box.client.http import (
    NETWORK_ERRORS,
    HttpClient,
    describe,
    display_url,
    local_url,
    raise_for_status,
    segment,
)
from ccr_box.config import Config, load_machine_config
from ccr_box.errors import ConfigError


def default_target(config: Config) -> tuple[str, str]:
    """``(base_url, api_key)``: ``[agent]`` server_url/api_key, else this machine's ``[server]``.

    ``parse`` already falls back from ``agent.api_key`` to ``server.api_key`` (one shared key), so
    a console on the server machine works with zero config.
    """
    url = config.agent.server_url or local_url(config.server.host, config.server.port)
    return url.rstrip("/"), config.agent.api_key or config.server.api_key


def admin_target(config_path: str | None, url: str | None) -> tuple[str, str]:
    """``(base_url, api_key)`` for the CLI and the console: ``url`` (``--url``) wins over
    :func:`default_target`. Raises :class:`ConfigError` for a bad URL or a missing key."""
    base, api_key = default_target(load_machine_config(config_path))
    if url:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise ConfigError("--url", "must be an http:// or https:// URL")
        base = url.rstrip("/")
    if not api_key:
        raise ConfigError("agent.api_key (CCR_API_KEY)", "is required: the server's server.api_key")
    return base, api_key


class AdminClient(HttpClient):
    """``async with AdminClient(url, key) as admin: await admin.machines()``."""

    def __init__(
        self,
        base_url: str,
        api_key: str,
        session: aiohttp.ClientSession | None = None,
        timeout_s: float = 10,
    ) -> None:
        super().__init__(base_url, api_key, session, timeout=aiohttp.ClientTimeout(total=timeout_s))
        self.timeout_s = timeout_s

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
        return await self._call("POST", f"/admin/commands/{segment(command_id)}/retry")

    async def reassign(self, command_id: str, session_id: str) -> dict[str, Any]:
        path = f"/admin/commands/{segment(command_id)}/reassign"
        return await self._call("POST", path, body={"sessionId": session_id})

    async def unregister(self, session_id: str) -> dict[str, Any]:
        return await self._call("POST", "/sessions/unregister", body={"sessionId": session_id})

    async def retry_dead(self, machine_id: str) -> dict[str, Any]:
        """``{"ok":true,"retried":n}``: every dead command of the machine back to pending."""
        return await self._call("POST", f"/admin/machines/{segment(machine_id)}/retry-dead")

    async def disconnect(self, machine_id: str) -> dict[str, Any]:
        """``{"ok":true,"disconnected":bool}``: close the machine's socket (it reconnects)."""
        return await self._call("POST", f"/admin/machines/{segment(machine_id)}/disconnect")

    async def move_session(self, session_id: str, machine_id: str) -> dict[str, Any]:
        path = f"/admin/sessions/{segment(session_id)}/move"
        return await self._call("POST", path, body={"machineId": machine_id})

    async def send_command(self, session_id: str, text: str) -> dict[str, Any]:
        """``{"ok":true,"commandId":...,"queued":bool}`` (queued: the machine is offline).

        An older server without this endpoint: :class:`EndpointMissing`."""
        path = f"/admin/sessions/{segment(session_id)}/commands"
        return await self._call("POST", path, body={"text": text})

    async def outbox(self, status: str | None = None, limit: int = 100) -> list[dict[str, Any]]:
        params = {"limit": str(limit)}
        if status:
            params["status"] = status
        return await self._call("GET", "/admin/outbox", params=params)

    async def events(self, after: int = 0, limit: int = 200) -> list[dict[str, Any]]:
        params = {"after": str(after), "limit": str(limit)}
        return await self._call("GET", "/admin/events", params=params)

    def stream(self, after: int = 0) -> AbstractAsyncContextManager[Frames]:
        """``async with admin.stream(after=seq) as events: async for event in events: ...``

        See :func:`ccr_box.client.events.open_stream`."""
        return open_stream(self, after)

    # -- plumbing --------------------------------------------------------------------------------

    async def _call(
        self,
        method: str,
        path: str,
        *,
        params: dict[str, str] | None = None,
        body: dict[str, Any] | None = None,
    ) -> Any:
        where = display_url(self.base_url)
        try:
            answer = await self.send(method, path, params=params, body=body)
        except TimeoutError:
            raise ServerUnavailable(
                f"cannot reach the ccr-box server at {where}: no answer within {self.timeout_s:g} s"
            ) from None
        except (aiohttp.InvalidURL, ValueError) as exc:  # ValueError: e.g. user:pass@ in the URL
            raise ServerUnavailable(f"invalid server URL {where}: {exc}") from None
        except NETWORK_ERRORS as exc:
            raise ServerUnavailable(
                f"cannot reach the ccr-box server at {where}: {describe(exc)}"
            ) from None
        status = f"{answer.status} {answer.reason or ''}".rstrip()
        raise_for_status(answer, fallback=f"{where} answered HTTP {status}", plain=True)
        data = answer.json()
        if data is None:
            raise ServerUnavailable(f"{where} did not answer with JSON; is it a ccr-box server?")
        return data
