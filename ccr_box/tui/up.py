"""``ccr-box up`` on a terminal: the server on a thread of its own, the console in front.

The server (:class:`~ccr_box.server.thread.ServerThread`) keeps its own event loop, so the
console's rendering never delays a webhook, and logs to ``server.log`` in the data directory,
since the terminal belongs to the console. Quitting the console stops the server cleanly.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path

from ccr_box.client.http import local_url
from ccr_box.config import Config, secrets_of
from ccr_box.logs import setup_logging
from ccr_box.server.thread import ServerThread

START_TIMEOUT_S = 30.0


def run_up_with_console(
    config: Config,
    config_adjust: Callable[[Config], Config] | None = None,
    *,
    notice: str | None = None,
) -> int:
    """``notice`` (the first-run message) is shown inside the console, under its header."""
    log_file = Path(config.server.data_dir) / "server.log"
    setup_logging(config.server.log_level, secrets_of(config), log_file=log_file)
    server = ServerThread(config, config_adjust)
    server.start()
    if not server.wait_ready(START_TIMEOUT_S) or server.address is None:
        server.stop()
        why = server.error or "it did not start in time"
        print(f"ccr-box: cannot start the server: {why} (log: {log_file})", file=sys.stderr)
        return 1
    from ccr_box.tui.app import ConsoleApp

    try:
        ConsoleApp(local_url(*server.address), config.server.api_key, notice=notice).run()
    finally:
        server.stop()
    print(f"ccr-box: stopped (server log: {log_file})", file=sys.stderr)
    return 0
