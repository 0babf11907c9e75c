"""``ccr-box up`` on a terminal: the server on a thread of its own, the console in front.

The server keeps its own event loop (so the console's rendering never delays a webhook) and logs
to ``server.log`` in the data directory, since the terminal belongs to the console. Quitting the
console stops the server cleanly.
"""

from __future__ import annotations

import asyncio
import sys
import threading
from collections.abc import Callable
from pathlib import Path

from ccr_box.config import Config, secrets_of
from ccr_box.logs import setup_logging

START_TIMEOUT_S = 30.0


class ServerThread(threading.Thread):
    def __init__(
        self, config: Config, config_adjust: Callable[[Config], Config] | None = None
    ) -> None:
        super().__init__(name="ccr-box-server", daemon=True)
        self.config = config
        self.config_adjust = config_adjust
        self.ready = threading.Event()
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
        except BaseException as exc:  # reported by start_server(); the thread just ends
            self.error = exc
        finally:
            self.ready.set()

    def _bound(self, host: str, port: int) -> None:
        self.address = (host, port)
        self.ready.set()

    def stop(self) -> None:
        if self._loop is not None and self._stop_event is not None and not self._loop.is_closed():
            self._loop.call_soon_threadsafe(self._stop_event.set)
        self.join(timeout=15)


def run_up_with_console(
    config: Config, config_adjust: Callable[[Config], Config] | None = None
) -> int:
    log_file = Path(config.server.data_dir) / "server.log"
    setup_logging(config.server.log_level, secrets_of(config), log_file=log_file)
    server = ServerThread(config, config_adjust)
    server.start()
    if not server.ready.wait(START_TIMEOUT_S) or server.address is None:
        server.stop()
        why = server.error or "it did not start in time"
        print(f"ccr-box: cannot start the server: {why} (log: {log_file})", file=sys.stderr)
        return 1
    host, port = server.address
    if host in ("0.0.0.0", "::", ""):  # the console talks to it over loopback
        host = "127.0.0.1"
    url = f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"
    from ccr_box.tui.app import ConsoleApp

    try:
        ConsoleApp(url, config.server.api_key).run()
    finally:
        server.stop()
    print(f"ccr-box: stopped (server log: {log_file})", file=sys.stderr)
    return 0
