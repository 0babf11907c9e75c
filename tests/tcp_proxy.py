"""A small TCP proxy on 127.0.0.1 (port 0) that a test puts between clients and a server to break
the network on purpose: nothing in ccr-box is patched, the faults happen on real sockets.

Controls (all take effect at once, on every live connection):

- :meth:`TcpProxy.cut` — close every connection now, with a reset (``SO_LINGER`` 0, the peer sees
  ``ECONNRESET``) or a plain ``FIN``.
- :meth:`TcpProxy.cut_after` — forward exactly ``n`` more bytes in one direction (on one given
  connection, or on whichever carries them), then cut that connection: with ``n`` smaller than a
  frame, the peer receives half a frame (a cut mid-frame).
- :meth:`TcpProxy.freeze` / :meth:`TcpProxy.resume` — stop forwarding both ways without closing
  anything: both ends keep an open socket that carries nothing (a half-open connection, as after a
  NAT time-out or a dead Wi-Fi). The proxy keeps reading meanwhile, so a test can see what each
  side sent into the void (:meth:`held`); resume delivers it. New connections made while frozen
  are accepted and held without an answer (a connect "succeeds" but the handshake never
  completes); they are reset on resume.
- :meth:`TcpProxy.refuse` — reset every new connection at once (the server looks down).

Waits are event-based: :meth:`wait_accepted`, :meth:`wait_held` and the event returned by
:meth:`cut_after`.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import socket
import struct
from dataclasses import dataclass, field

UP, DOWN = "up", "down"  # client -> server, server -> client


def _reset(writer: asyncio.StreamWriter) -> None:
    """Close with an RST: linger on, time-out 0, then abort (no FIN, unsent bytes dropped)."""
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


@dataclass(eq=False)
class Link:
    """One proxied connection: the client's socket and ours to the server."""

    number: int
    client: asyncio.StreamWriter
    server: asyncio.StreamWriter | None = None
    tasks: list[asyncio.Task[None]] = field(default_factory=list)
    closed: bool = False
    bytes: dict[str, int] = field(default_factory=lambda: {UP: 0, DOWN: 0})
    # Bytes read while frozen, in order, and whether the sender half-closed meanwhile.
    held: dict[str, bytearray] = field(default_factory=lambda: {UP: bytearray(), DOWN: bytearray()})
    held_eof: dict[str, bool] = field(default_factory=lambda: {UP: False, DOWN: False})

    def dst(self, direction: str) -> asyncio.StreamWriter | None:
        return self.server if direction == UP else self.client

    def writers(self) -> list[asyncio.StreamWriter]:
        return [w for w in (self.client, self.server) if w is not None]


@dataclass
class _Trip:
    direction: str
    remaining: int
    how: str
    link: Link | None  # None: whichever connection carries the bytes
    tripped: asyncio.Event = field(default_factory=asyncio.Event)


class TcpProxy:
    """``async with TcpProxy(port) as proxy:`` forwards ``127.0.0.1:proxy.port`` to ``host:port``."""

    def __init__(self, target_port: int, target_host: str = "127.0.0.1") -> None:
        self.target = (target_host, target_port)
        self.port = 0
        self.links: list[Link] = []  # live connections, oldest first
        self.accepted = 0  # connections accepted so far
        self.cuts = 0  # connections the proxy closed on purpose (cut, cut_after, refuse, held)
        self._numbers = itertools.count(1)
        self._flowing = asyncio.Event()
        self._flowing.set()
        self._refusing = False
        self._held: list[Link] = []  # accepted while frozen, never connected upstream
        self._trip: _Trip | None = None
        self._changed = asyncio.Condition()
        self._server: asyncio.Server | None = None
        self._handlers: set[asyncio.Task[None]] = set()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def frozen(self) -> bool:
        return not self._flowing.is_set()

    # -- lifecycle ----------------------------------------------------------------------------

    async def start(self) -> TcpProxy:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        for link in [*self.links, *self._held]:
            self._close_link(link, "rst", count=False)
        self._held.clear()
        self._flowing.set()
        # Not cancelled: asyncio (3.11) logs an error for a cancelled start_server callback.
        # With every socket reset and nothing frozen, each handler ends on its own at once.
        if self._handlers:
            await asyncio.wait(set(self._handlers), timeout=5.0)
        if self._server is not None:
            await self._server.wait_closed()
            self._server = None

    async def __aenter__(self) -> TcpProxy:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # -- controls -----------------------------------------------------------------------------

    def cut(self, how: str = "rst") -> int:
        """Close every live connection now (``how`` = ``rst`` or ``fin``); returns how many."""
        links = list(self.links)
        for link in links:
            self._close_link(link, how)
        return len(links)

    def cut_after(
        self, nbytes: int, direction: str = DOWN, how: str = "rst", *, link: Link | None = None
    ) -> asyncio.Event:
        """Forward exactly ``nbytes`` more bytes going ``direction`` on ``link`` (default: on
        whichever connection carries them), then cut that connection. One-shot; the returned
        event is set once it happened."""
        assert direction in (UP, DOWN) and nbytes >= 0
        self._trip = _Trip(direction, nbytes, how, link)
        return self._trip.tripped

    @property
    def newest(self) -> Link:
        """The connection accepted last (e.g. the one a client just opened)."""
        return self.links[-1]

    def freeze(self) -> None:
        """Stop forwarding in both directions; sockets stay open (half-open connections)."""
        self._flowing.clear()

    def resume(self) -> None:
        """Forward again (bytes read before the freeze go out now); held connections are reset."""
        held, self._held = self._held, []
        for link in held:
            self._close_link(link, "rst")
        self._flowing.set()
        for link in list(self.links):
            for direction in (UP, DOWN):
                data, link.held[direction] = bytes(link.held[direction]), bytearray()
                if data:
                    self._forward(link, direction, data)
                dst = link.dst(direction)
                if link.held_eof[direction] and not link.closed and dst is not None:
                    link.held_eof[direction] = False
                    if dst.can_write_eof():
                        dst.write_eof()

    def refuse(self, on: bool = True) -> None:
        """While on, every new connection is reset as soon as it is accepted."""
        self._refusing = on

    async def wait_accepted(self, count: int, timeout: float = 5.0) -> None:
        """Wait until ``count`` connections have been accepted in all."""

        async def enough() -> None:
            async with self._changed:
                await self._changed.wait_for(lambda: self.accepted >= count)

        await asyncio.wait_for(enough(), timeout)

    # -- forwarding ---------------------------------------------------------------------------

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._handlers.add(task)
        link = Link(next(self._numbers), writer)
        try:
            async with self._changed:
                self.accepted += 1
                self._changed.notify_all()
            if self._refusing:
                self._close_link(link, "rst")
                return
            if self.frozen:  # a partition: the connect "works", nothing ever answers
                self._held.append(link)
                await self._flowing.wait()
                return  # resume() has reset it
            try:
                up_reader, up_writer = await asyncio.open_connection(*self.target)
            except OSError:
                self._close_link(link, "rst")
                return
            if link.closed:  # cut (proxy closed) while connecting
                _reset(up_writer)
                return
            link.server = up_writer
            self.links.append(link)
            link.tasks = [
                asyncio.create_task(self._pump(link, reader, up_writer, UP)),
                asyncio.create_task(self._pump(link, up_reader, writer, DOWN)),
            ]
            await asyncio.gather(*link.tasks, return_exceptions=True)
            await self._flowing.wait()  # both senders finished while frozen: resume flushes first
            self._close_link(link, "fin", count=False)
        finally:
            self._handlers.discard(task)

    async def _pump(
        self,
        link: Link,
        src: asyncio.StreamReader,
        dst: asyncio.StreamWriter,
        direction: str,
    ) -> None:
        try:
            while not link.closed:
                data = await src.read(65536)
                if link.closed:
                    return
                if self.frozen:  # keep reading (so a test can see what was sent), forward nothing
                    if data:
                        link.held[direction] += data
                    else:
                        link.held_eof[direction] = True
                    await self._notify()
                    if not data:
                        return
                    continue
                if not data:  # the sender half-closed: pass its FIN on
                    if dst.can_write_eof():
                        dst.write_eof()
                    return
                self._forward(link, direction, bytes(data))
                await dst.drain()
        except (ConnectionError, OSError):
            self._close_link(link, "rst", count=False)

    def _forward(self, link: Link, direction: str, data: bytes) -> None:
        """Write ``data`` on towards its destination, unless an armed cut_after trips first."""
        dst = link.dst(direction)
        if link.closed or dst is None:
            return
        trip = self._trip
        if trip is not None and trip.direction == direction and trip.link in (None, link):
            if len(data) >= trip.remaining:
                self._trip = None
                if trip.remaining:
                    dst.write(data[: trip.remaining])
                    link.bytes[direction] += trip.remaining
                self._close_link(link, trip.how)
                trip.tripped.set()
                return
            trip.remaining -= len(data)
        dst.write(data)
        link.bytes[direction] += len(data)

    async def _notify(self) -> None:
        async with self._changed:
            self._changed.notify_all()

    def held(self, direction: str) -> bytes:
        """Everything read while frozen in ``direction``, over all live connections."""
        return b"".join(bytes(link.held[direction]) for link in self.links)

    async def wait_held(self, predicate, timeout: float = 5.0) -> None:
        """Wait until ``predicate(proxy)`` is true; re-checked whenever frozen bytes arrive."""

        async def check() -> None:
            async with self._changed:
                await self._changed.wait_for(lambda: predicate(self))

        await asyncio.wait_for(check(), timeout)

    def _close_link(self, link: Link, how: str, *, count: bool = True) -> None:
        if link.closed:
            return
        link.closed = True
        if count:
            self.cuts += 1
        for writer in link.writers():
            if writer.transport.is_closing():
                continue
            if how == "rst":
                _reset(writer)
            else:
                writer.close()
        for task in link.tasks:
            if task is not asyncio.current_task():
                task.cancel()
        if link in self.links:
            self.links.remove(link)
