"""Waiting in tests: for a condition, never for a fixed time.

``await until(check, "what is awaited")`` re-checks ``check`` (a plain or an async callable) until
it returns something truthy and returns that value. If it never does, the test fails after
``timeout`` seconds with an AssertionError naming what was awaited. The timeout is a liveness bound
for a broken build, not a measurement: keep it generous, and prefer an event (the fake Telegram's
``wait_for``, a connection's frames) where the code under test offers one.

``skippable_loop_clock()`` is the injected clock for timeouts that are asyncio timers (aiohttp's
``receive(timeout=...)``, ``asyncio.timeout``): the test moves the loop's clock forward instead of
sleeping until the timer is due.
"""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar, overload

T = TypeVar("T")

DEFAULT_TIMEOUT_S = 5.0


@overload
async def until(
    check: Callable[[], Awaitable[T]],
    what: str,
    *,
    timeout: float = DEFAULT_TIMEOUT_S,
    pause: Callable[[float], Awaitable[Any]] = asyncio.sleep,
    interval: float = 0.01,
) -> T: ...


@overload
async def until(
    check: Callable[[], T],
    what: str,
    *,
    timeout: float = DEFAULT_TIMEOUT_S,
    pause: Callable[[float], Awaitable[Any]] = asyncio.sleep,
    interval: float = 0.01,
) -> T: ...


async def until(
    check: Callable[[], Any],
    what: str,
    *,
    timeout: float = DEFAULT_TIMEOUT_S,
    pause: Callable[[float], Awaitable[Any]] = asyncio.sleep,
    interval: float = 0.01,
) -> Any:
    """Re-check ``check()`` until it is truthy; return that value.

    ``what`` names the awaited condition in the failure. ``pause`` runs between checks (a Textual
    test passes ``pilot.pause`` so the app processes its messages meanwhile). The deadline is
    measured on the monotonic clock, so a test that skips its loop's clock keeps its real bound.
    """
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if inspect.isawaitable(value):
            value = await value
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
        await pause(interval)


def skippable_loop_clock(loop: asyncio.AbstractEventLoop | None = None) -> Callable[[float], None]:
    """Make the running loop's clock skippable; returns ``skip(seconds)``.

    ``skip`` moves ``loop.time()`` forward, so every asyncio timer due within that span fires as if
    the time had passed (and timers started later count from the new time). The clock never goes
    back: use it only on the test's own function-scoped loop, which is closed after the test.
    """
    loop = loop or asyncio.get_running_loop()
    real_time = loop.time
    skipped = 0.0

    def steered_time() -> float:
        return real_time() + skipped

    def skip(seconds: float) -> None:
        nonlocal skipped
        assert seconds >= 0, "the loop's clock only moves forward"
        skipped += seconds

    loop.time = steered_time  # type: ignore[method-assign]
    return skip
