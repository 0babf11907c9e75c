"""The server on a thread (and event loop) of its own, for a process that does something else in
front: ``ccr-box up`` on a terminal runs the console there.

The server keeps its own loop, so the front's work never delays a webhook; it cannot handle
signals off the main thread, so :meth:`ServerThread.stop` is how it ends.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable

from ccr_box.config import Config

STOP_TIMEOUT_S = 15.0


class ServerThread(threading.Thread):
    """``start()``, then ``wait_ready(s)``; ``stop()`` shuts the server down and joins.

    ``address`` is the bound ``(host, port)`` once it listens; ``error`` what ended it early
    (e.g. another server holds the database).
    """

    def __init__(
        self, config: Config, config_adjust: Callable[[Config], Config] | None = None
    ) -> None:
        super().__init__(name="ccr-box-server", daemon=True)
        self.config = config
        self.config_adjust = config_adjust
        self.ready = threading.Event()  # set once it listens, or once it ended
        self.address: tuple[str, int] | None = None
        self.error: BaseException | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop_event: asyncio.Event | None = None

    def run(self) -> None:
        from ccr_box.server.runner import serve

        async def main() -> None:
            self._loop = asyncio.get_running_loop()
            self._stop_event = asyncio.Event()
            await serve(
                self.config,
                stop=self._stop_event,
                handle_signals=False,
                on_ready=self._bound,
                config_adjust=self.config_adjust,
            )

        try:
            asyncio.run(main())
        except BaseException as exc:  # reported through .error; the thread just ends
            self.error = exc
        finally:
            self.ready.set()

    def _bound(self, host: str, port: int) -> None:
        self.address = (host, port)
        self.ready.set()

    def wait_ready(self, timeout_s: float) -> bool:
        """True once the server listens; False when it failed or did not start in time."""
        return self.ready.wait(timeout_s) and self.address is not None

    def stop(self) -> None:
        if self._loop is not None and self._stop_event is not None and not self._loop.is_closed():
            self._loop.call_soon_threadsafe(self._stop_event.set)
        self.join(timeout=STOP_TIMEOUT_S)
