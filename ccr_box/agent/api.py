"""The agent's HTTP client for the server's session and notification routes (contract §2.3, §8)."""

from __future__ import annotations

import json
from typing import Any

import aiohttp

from ccr_box.errors import CcrBoxError


class ServerUnavailable(CcrBoxError):
    """The server could not be reached, timed out or answered 5xx: try again later."""

    retryable = True


class ServerRefused(CcrBoxError):
    """The server answered 4xx. ``status`` and the contract's ``error`` text are kept."""

    def __init__(self, status: int, error: str) -> None:
        self.status = status
        self.error = error
        super().__init__(f"server answered {status}: {error}")


class ServerAPI:
    """Bearer-authenticated calls to a ccr-box (or CCR Worker) server."""

    def __init__(
        self,
        base_url: str,
        api_key: str,
        session: aiohttp.ClientSession,
        *,
        timeout: aiohttp.ClientTimeout | None = None,
    ) -> None:
        self._base = base_url.rstrip("/")
        self._headers = {"Authorization": f"Bearer {api_key}"}
        self._session = session
        self._timeout = timeout or aiohttp.ClientTimeout(total=10, connect=3)

    async def _post(self, path: str, body: dict[str, Any]) -> Any:
        try:
            async with self._session.post(
                self._base + path,
                data=json.dumps(body),
                headers={**self._headers, "Content-Type": "application/json"},
                timeout=self._timeout,
            ) as resp:
                text = await resp.text()
                status = resp.status
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            raise ServerUnavailable(f"{path}: {type(exc).__name__}") from None
        try:
            data = json.loads(text) if text else {}
        except ValueError:
            data = {}
        if status >= 500:
            raise ServerUnavailable(f"{path}: HTTP {status}")
        if status >= 400:
            error = data.get("error") if isinstance(data, dict) else None
            raise ServerRefused(status, error if isinstance(error, str) else text[:200])
        return data

    async def register(self, session_id: str, machine_id: str, label: str | None) -> None:
        body = {"sessionId": session_id, "machineId": machine_id, "label": label}
        await self._post("/sessions/register", body)

    async def unregister(self, session_id: str) -> None:
        await self._post("/sessions/unregister", {"sessionId": session_id})

    async def notify(self, body: dict[str, Any]) -> dict[str, Any]:
        """POST /notifications/send; 200 and 202 (queued by the server) both count as taken."""
        return await self._post("/notifications/send", body)

    async def notify_session(
        self, body: dict[str, Any], machine_id: str, label: str | None, *, known: bool
    ) -> dict[str, Any]:
        """Notify; if the server forgot the session (restart, retention) and it is ``known``
        locally, register it again and retry once."""
        try:
            return await self.notify(body)
        except ServerRefused as exc:
            if exc.status != 404 or not known:
                raise
            await self.register(body["sessionId"], machine_id, label)
            return await self.notify(body)
