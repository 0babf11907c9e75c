"""The agent's and the hooks' calls to the server's session and notification routes (§2.3, §8).

Every failure is a :class:`ServerUnavailable` (keep the work, try later) or a
:class:`ServerRefused` (4xx: retrying will not help); messages name the route, never the key.
The caller owns the session and picks the timeout: the hooks pass strict ones, since Claude Code
waits for them.
"""

from __future__ import annotations

from typing import Any

import aiohttp

from ccr_box.client.errors import ServerRefused, ServerUnavailable
from ccr_box.client.http import NETWORK_ERRORS, HttpClient, raise_for_status

DEFAULT_TIMEOUT = aiohttp.ClientTimeout(total=10, connect=3)


class ServerAPI(HttpClient):
    """Bearer-authenticated calls to a ccr-box (or CCR Worker) server."""

    def __init__(
        self,
        base_url: str,
        api_key: str,
        session: aiohttp.ClientSession,
        *,
        timeout: aiohttp.ClientTimeout | None = None,
    ) -> None:
        super().__init__(base_url, api_key, session, timeout=timeout or DEFAULT_TIMEOUT)

    async def _post(self, path: str, body: dict[str, Any]) -> Any:
        try:
            answer = await self.send("POST", path, body=body)
        except NETWORK_ERRORS as exc:
            raise ServerUnavailable(f"{path}: {type(exc).__name__}") from None
        raise_for_status(
            answer, fallback=answer.text[:200], unavailable=f"{path}: HTTP {answer.status}"
        )
        data = answer.json()
        return {} if data is None else data

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
