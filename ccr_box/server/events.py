"""The in-process event bus behind the console's live view (``/admin/events``).

``publish(kind, **data)`` stamps an event ``{"seq","at","kind","data"}``, keeps the last
``HISTORY`` of them in a ring buffer and hands it to every subscriber's bounded queue. Publishing
never blocks and never does I/O: a subscriber whose queue is full is dropped, with a final
``{"kind":"overflow"}`` marker so it knows it missed events (it may re-read ``recent(after_seq)``).
``close()`` (server shutdown) ends every subscription with a final ``{"kind":"shutdown"}`` marker.
Synchronous listeners (``add_listener``; the metrics) see every event inside ``publish``; one that
raises is logged and never breaks the publisher.

Events are published after the database commit they describe, never inside a write job. Their
data is plain JSON values; untrusted text (commands, notification texts) stays data.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
from collections import deque
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any, overload

from ccr_box.clock import Clock

log = logging.getLogger("ccr_box.events")

HISTORY = 1000  # events kept for replay
QUEUE_SIZE = 1000  # events a subscriber may lag behind before it is dropped
PREVIEW_CHARS = 200  # untrusted text is cut to this many characters in events

OVERFLOW = "overflow"
SHUTDOWN = "shutdown"


@overload
def preview(text: str) -> str: ...
@overload
def preview(text: str | None) -> str | None: ...
def preview(text: str | None) -> str | None:
    """Text shortened for an event (≤ ``PREVIEW_CHARS`` characters); None unchanged."""
    return text[:PREVIEW_CHARS] if isinstance(text, str) else text


class EventBus:
    def __init__(
        self, clock: Clock, *, history: int = HISTORY, queue_size: int = QUEUE_SIZE
    ) -> None:
        self._clock = clock
        self._seq = itertools.count(1)
        self._last_seq = 0
        self._ring: deque[dict[str, Any]] = deque(maxlen=history)
        self._queue_size = queue_size
        self._subscribers: set[asyncio.Queue[dict[str, Any]]] = set()
        self._closed = False
        self._open = 0  # subscriptions not yet exited (dropped ones included)
        self._idle = asyncio.Event()
        self._idle.set()
        self._listeners: list[Callable[[dict[str, Any]], None]] = []

    @property
    def last_seq(self) -> int:
        return self._last_seq

    @property
    def subscriber_count(self) -> int:
        return len(self._subscribers)

    def add_listener(self, listener: Callable[[dict[str, Any]], None]) -> None:
        """Call ``listener(event)`` synchronously for every event published from now on.

        It must be quick and do no I/O (it runs inside the publisher); it must not change the
        event. An exception it raises is logged and swallowed.
        """
        self._listeners.append(listener)

    def remove_listener(self, listener: Callable[[dict[str, Any]], None]) -> None:
        if listener in self._listeners:
            self._listeners.remove(listener)

    def publish(self, kind: str, **data: Any) -> dict[str, Any]:
        seq = next(self._seq)
        self._last_seq = seq
        event = {"seq": seq, "at": self._clock.now_ms(), "kind": kind, "data": data}
        self._ring.append(event)
        for queue in list(self._subscribers):
            # One slot stays free for the final marker, so it always fits.
            if queue.qsize() >= self._queue_size:
                self._drop(queue, {"seq": seq, "at": event["at"], "kind": OVERFLOW, "data": {}})
            else:
                queue.put_nowait(event)
        for listener in list(self._listeners):
            try:
                listener(event)
            except Exception:  # a listener never breaks the publisher
                log.exception("event listener failed on %s", kind)
        return event

    def recent(self, after_seq: int = 0, limit: int = 200) -> list[dict[str, Any]]:
        """Up to ``limit`` kept events with ``seq > after_seq``, oldest first."""
        found = [e for e in self._ring if e["seq"] > after_seq]
        return found[:limit] if limit >= 0 else []

    @asynccontextmanager
    async def subscribe(self) -> AsyncIterator[asyncio.Queue[dict[str, Any]]]:
        """A queue receiving every event published from now on, until the block exits."""
        queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue(maxsize=self._queue_size + 1)
        if self._closed:
            queue.put_nowait(self._marker(SHUTDOWN))
        else:
            self._subscribers.add(queue)
        self._open += 1
        self._idle.clear()
        try:
            yield queue
        finally:
            self._subscribers.discard(queue)
            self._open -= 1
            if self._open == 0:
                self._idle.set()

    def close(self) -> None:
        """Server shutdown: end every subscription with a ``shutdown`` marker."""
        self._closed = True
        for queue in list(self._subscribers):
            self._drop(queue, self._marker(SHUTDOWN))

    async def wait_idle(self, timeout_s: float) -> bool:
        """Wait until no subscription is open (the stream handlers have finished)."""
        try:
            await asyncio.wait_for(self._idle.wait(), timeout_s)
        except TimeoutError:
            return False
        return True

    def _marker(self, kind: str) -> dict[str, Any]:
        return {"seq": self._last_seq, "at": self._clock.now_ms(), "kind": kind, "data": {}}

    def _drop(self, queue: asyncio.Queue[dict[str, Any]], final: dict[str, Any]) -> None:
        self._subscribers.discard(queue)
        queue.put_nowait(final)
