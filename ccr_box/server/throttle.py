"""Slow down repeated authentication failures from one address (ccr-box improvement).

What counts: every **401** the application answers (wrong or missing API key on an HTTP route or
on the ``/ws`` and ``/admin/events/stream`` upgrades, wrong webhook secret or path secret).

Policy (defaults in :mod:`ccr_box.limits`):

- Failures are counted per remote address over a sliding window (``AUTH_THROTTLE_WINDOW_MS``,
  60 s). The first ``AUTH_THROTTLE_FREE_FAILURES`` (10) in a window cost nothing: a mistyped key or
  an agent restarting with an old key is not punished.
- Each further failure **blocks** the address for a delay that doubles with every failure over the
  threshold, from ``AUTH_THROTTLE_BASE_DELAY_MS`` (250 ms) up to ``AUTH_THROTTLE_MAX_DELAY_MS``
  (2 s).
- While blocked, every request from the address to a route that checks credentials is answered
  ``429 {"error":"Too many requests"}`` with ``Retry-After`` (whole seconds, at least 1), **before**
  its credentials are looked at. This is what bounds the guessing rate: a blocked request is never
  evaluated, so opening many connections in parallel does not help an attacker (after the free
  failures, at most one guess per block, i.e. about one every 2 s).
- ``/health``, ``/ready`` and ``/openapi.json`` (and ``/metrics`` when ``server.metrics_public``)
  are never blocked, nor are unknown paths (404) or wrong methods (405): they check no credential.

Choices, and why:

- **A correct key from a blocked address is blocked too** (until the block ends). Letting it
  through would mean evaluating every key sent during a block, which would make the block useless
  against guessing. The cost falls on a legitimate client sharing an address with an attacker
  (NAT, a reverse proxy on the same host): it is never locked out for long, because a block
  lasts at most 2 s and agents already retry with backoff. An attacker who stops frees the address
  within 2 s; the failure count itself fades with the window.
- **Success does not reset the count.** Behind a shared address the successful client is usually
  not the one failing; resetting would let an attacker hide behind a working agent.
- **Loopback is not exempt.** A reverse proxy makes every client look like 127.0.0.1, and local
  processes are not necessarily trusted. The short cap keeps this a slow-down, not a lockout.
- **429 instead of holding the request.** A delayed answer would keep a connection and a task per
  attempt alive, i.e. let the attacker spend the server's resources; a 429 costs nothing.
- **Bounded memory.** At most ``AUTH_THROTTLE_MAX_ADDRESSES`` addresses are tracked (least recently
  failing forgotten first); each keeps at most a few dozen timestamps. IPv6 clients are tracked per
  /64 network (one host usually owns a whole /64), IPv4 per address.

The clock is the application's injectable :class:`~ccr_box.clock.Clock` (epoch ms).
"""

from __future__ import annotations

import ipaddress
import logging
import math
from collections import OrderedDict, deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from aiohttp import web

from ccr_box import limits
from ccr_box.clock import Clock
from ccr_box.server import keys
from ccr_box.server.http import json_error

log = logging.getLogger("ccr_box.throttle")

OPEN_PATHS = frozenset({"/health", "/ready", "/openapi.json"})
TOO_MANY = "Too many requests"


@dataclass(frozen=True)
class ThrottlePolicy:
    free_failures: int = limits.AUTH_THROTTLE_FREE_FAILURES
    window_ms: int = limits.AUTH_THROTTLE_WINDOW_MS
    base_delay_ms: int = limits.AUTH_THROTTLE_BASE_DELAY_MS
    max_delay_ms: int = limits.AUTH_THROTTLE_MAX_DELAY_MS
    max_addresses: int = limits.AUTH_THROTTLE_MAX_ADDRESSES

    def delay_ms(self, failures: int) -> int:
        """Block after the ``failures``-th failure in the window (0 while still free)."""
        over = failures - self.free_failures
        if over <= 0:
            return 0
        # (Python ints do not overflow, but a shift by millions would build a huge number.)
        return min(self.base_delay_ms << min(over - 1, 32), self.max_delay_ms)

    @property
    def remembered(self) -> int:
        """Timestamps worth keeping per address: enough to reach the longest delay."""
        steps = 1
        while self.base_delay_ms << (steps - 1) < self.max_delay_ms and steps < 32:
            steps += 1
        return self.free_failures + steps


DEFAULT_POLICY = ThrottlePolicy()


@dataclass
class _Entry:
    failures: deque[int] = field(default_factory=deque)
    blocked_until: int = 0


class AuthThrottle:
    """Failure bookkeeping per address; see the module docstring for the policy."""

    def __init__(self, clock: Clock, policy: ThrottlePolicy | None = None) -> None:
        self.clock = clock
        self.policy = policy or ThrottlePolicy()
        self._entries: OrderedDict[str, _Entry] = OrderedDict()
        self.failures_seen = 0  # 401s observed so far

    def __len__(self) -> int:
        return len(self._entries)

    def retry_after_ms(self, address: str) -> int:
        """Milliseconds the address must still wait; 0 when it is not blocked."""
        entry = self._entries.get(address)
        if entry is None:
            return 0
        return max(entry.blocked_until - self.clock.now_ms(), 0)

    def failed(self, address: str) -> int:
        """Record one failure; returns the block (ms) it started, 0 for none."""
        self.failures_seen += 1
        now = self.clock.now_ms()
        policy = self.policy
        entry = self._entries.pop(address, None) or _Entry(deque(maxlen=policy.remembered))
        self._entries[address] = entry  # most recently failing last
        while entry.failures and entry.failures[0] <= now - policy.window_ms:
            entry.failures.popleft()
        entry.failures.append(now)
        delay = policy.delay_ms(len(entry.failures))
        if delay:
            entry.blocked_until = max(entry.blocked_until, now + delay)
            # One warning when an address starts being blocked; its further blocks at debug level.
            first = len(entry.failures) == policy.free_failures + 1
            log.log(
                logging.WARNING if first else logging.DEBUG,
                "authentication failures from %s: %d within %d s; blocked for %.2f s",
                address,
                len(entry.failures),
                policy.window_ms // 1000,
                delay / 1000,
            )
        while len(self._entries) > policy.max_addresses:
            self._entries.popitem(last=False)
        return delay


def address_key(remote: str | None) -> str | None:
    """The throttling key of a peer: the IPv4 address, or the IPv6 /64 network."""
    if not remote:
        return None
    try:
        ip = ipaddress.ip_address(remote)
    except ValueError:
        return remote
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.IPv6Network((ip, 64), strict=False))
    return str(ip)


def _exempt(request: web.Request) -> bool:
    if request.match_info.http_exception is not None:  # 404 / 405: no credential is checked
        return True
    if request.path in OPEN_PATHS:
        return True
    return request.path == "/metrics" and request.app[keys.CONFIG].current.server.metrics_public


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

# Set by make_app; None turns throttling off (Options.auth_throttle=None, tests only).


@web.middleware
async def auth_throttle(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Answer 429 for a blocked address; count every 401 the application answers."""
    throttle = request.app.get(keys.THROTTLE)
    address = address_key(request.remote)
    if throttle is None or address is None or _exempt(request):
        return await handler(request)
    wait_ms = throttle.retry_after_ms(address)
    if wait_ms:
        refused = json_error(429, TOO_MANY)
        refused.headers["Retry-After"] = str(max(math.ceil(wait_ms / 1000), 1))
        return refused
    try:
        response = await handler(request)
    except web.HTTPException as exc:
        if exc.status == 401:
            throttle.failed(address)
        raise
    if response.status == 401:
        throttle.failed(address)
    return response
