"""`ccr-box up` on a terminal: the server runs on its own thread behind the console."""

from __future__ import annotations

import urllib.request
from pathlib import Path

from ccr_box.config import Config, ServerConfig
from ccr_box.tui.up import ServerThread


def test_server_thread_serves_then_stops_cleanly(tmp_path: Path) -> None:
    config = Config(server=ServerConfig(data_dir=tmp_path, api_key="k", port=0))
    server = ServerThread(config)
    server.start()
    assert server.ready.wait(30)
    assert server.error is None and server.address is not None
    host, port = server.address
    with urllib.request.urlopen(f"http://{host}:{port}/health", timeout=5) as resp:
        assert resp.read() == b"ok"
    server.stop()
    assert not server.is_alive()
    assert server.error is None
    # The database lock was released: a second server on the same data dir starts.
    again = ServerThread(config)
    again.start()
    assert again.ready.wait(30) and again.address is not None
    again.stop()


def test_server_thread_reports_a_start_failure(tmp_path: Path) -> None:
    config = Config(server=ServerConfig(data_dir=tmp_path, api_key="k", port=0))
    first = ServerThread(config)
    first.start()
    assert first.ready.wait(30) and first.address is not None
    try:
        second = ServerThread(config)  # same database: refused
        second.start()
        assert second.ready.wait(30)
        second.join(10)
        assert second.address is None
        assert "another ccr-box server" in str(second.error)
    finally:
        first.stop()
