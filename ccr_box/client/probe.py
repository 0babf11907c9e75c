"""Ask a ccr-box server how it is, over HTTP: ``/health``, the API key, ``/ready``, machines.

Used by ``ccr-box init --agent`` (is the server up, is the key right) and ``ccr-box doctor``. It
never raises for a network problem: :class:`ServerProbe` says what answered and what did not,
with the reason in plain words.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import aiohttp

from ccr_box.client.http import NETWORK_ERRORS, HttpClient

PROBE_TIMEOUT_S = 10.0


@dataclass(frozen=True)
class ServerProbe:
    url: str
    unreachable: str | None = None  # why nothing answered, in plain words; None = it answered
    health: tuple[int, str] | None = None  # /health status and body
    key_status: int | None = None  # HTTP status of an authenticated request (200 = accepted)
    ready: dict[str, Any] | None = None  # /ready's JSON, when asked for and parsable
    machines: list[dict[str, Any]] | None = None  # /admin/machines, when asked for and allowed

    @property
    def is_ccr_box(self) -> bool:
        return self.health == (200, "ok")

    @property
    def key_accepted(self) -> bool:
        return self.key_status == 200


async def probe_server(
    url: str, api_key: str, *, details: bool = False, timeout_s: float = PROBE_TIMEOUT_S
) -> ServerProbe:
    """Probe ``url``; with ``details`` also read ``/ready`` and ``/admin/machines``."""
    timeout = aiohttp.ClientTimeout(total=timeout_s)
    async with HttpClient(url, api_key, timeout=timeout) as client:
        try:
            answer = await client.send("GET", "/health", auth=False)
            health = (answer.status, answer.text.strip())
            if health != (200, "ok"):
                return ServerProbe(url, health=health)
            key_status = (await client.send("GET", "/sessions")).status
            if not details:
                return ServerProbe(url, health=health, key_status=key_status)
            ready = (await client.send("GET", "/ready", auth=False)).json()
            machines = (
                (await client.send("GET", "/admin/machines")).json() if key_status == 200 else None
            )
        except NETWORK_ERRORS as exc:
            return ServerProbe(url, unreachable=reason(exc, timeout_s))
    return ServerProbe(
        url,
        health=health,
        key_status=key_status,
        ready=ready if isinstance(ready, dict) else None,
        machines=machines if isinstance(machines, list) else None,
    )


def reason(exc: BaseException, timeout_s: float = PROBE_TIMEOUT_S) -> str:
    """Plain words for a connection failure (no URL: the caller shows it)."""
    if isinstance(exc, TimeoutError):
        return f"no answer within {timeout_s:g} s"
    os_error = getattr(exc, "os_error", None)
    if isinstance(os_error, OSError) and os_error.strerror:
        return os_error.strerror.lower()
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror.lower()
    return type(exc).__name__
