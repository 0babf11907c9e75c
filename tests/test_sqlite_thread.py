"""``ccr_box.sqlite_thread.SqliteThread``: the one-connection worker thread that the server's reader
(``Database.read``) and the agent's inbox (``AsyncStore``) share."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from functools import partial
from pathlib import Path

import pytest

from ccr_box.agent.store import AGENT_DB, AgentStore, AsyncStore
from ccr_box.errors import DatabaseError
from ccr_box.sqlite_thread import SqliteThread, connect


async def test_jobs_run_in_order_on_the_one_thread_that_opened_the_connection(
    tmp_path: Path,
) -> None:
    thread = SqliteThread("test-sqlite")
    opened_on: list[str] = []

    def open_db() -> sqlite3.Connection:
        opened_on.append(threading.current_thread().name)
        return connect(tmp_path / "t.sqlite3", "PRAGMA journal_mode = WAL")

    await thread.open(open_db)
    try:
        await thread.run(lambda c: c.execute("CREATE TABLE t (n INTEGER)"))

        names = await asyncio.gather(*(thread.run(partial(_insert, n=n)) for n in range(50)))
        rows = await thread.run(lambda c: [r["n"] for r in c.execute("SELECT n FROM t")])
        mode = await thread.run(lambda c: c.execute("PRAGMA journal_mode").fetchone()[0])
    finally:
        await thread.close()
    assert rows == list(range(50))  # submitted order, one at a time
    assert set(names) == set(opened_on) and opened_on[0].startswith("test-sqlite")
    assert mode == "wal"  # the pragmas given to connect() were run


def _insert(conn: sqlite3.Connection, n: int) -> str:
    conn.execute("INSERT INTO t (n) VALUES (?)", (n,))
    return threading.current_thread().name


async def test_run_before_open_or_after_close_is_refused(tmp_path: Path) -> None:
    thread = SqliteThread("test-sqlite")
    with pytest.raises(DatabaseError, match="closed"):
        await thread.run(lambda c: 1)
    await thread.open(lambda: connect(tmp_path / "t.sqlite3"))
    with pytest.raises(DatabaseError, match="already open"):
        await thread.open(lambda: connect(tmp_path / "t.sqlite3"))
    assert await thread.run(lambda c: c.execute("SELECT 41 + 1").fetchone()[0]) == 42
    await thread.close()
    await thread.close()  # twice is harmless
    with pytest.raises(DatabaseError, match="closed"):
        await thread.run(lambda c: 1)


async def test_a_failing_job_leaves_the_connection_usable(tmp_path: Path) -> None:
    thread = SqliteThread("test-sqlite")
    await thread.open(lambda: connect(tmp_path / "t.sqlite3"))
    try:
        with pytest.raises(sqlite3.OperationalError):
            await thread.run(lambda c: c.execute("SELECT * FROM missing"))
        assert await thread.run(lambda c: c.execute("SELECT 1").fetchone()[0]) == 1
    finally:
        await thread.close()


async def test_the_agent_store_runs_typed_calls_on_its_thread(tmp_path: Path) -> None:
    store = await AsyncStore(tmp_path / AGENT_DB).open()
    try:
        assert await store.run(AgentStore.receive, "c1", "command", "s1", "42", {"command": "x"})
        assert not await store.run(AgentStore.receive, "c1", "command", "s1", "42", {})
        row = await store.run(AgentStore.get, "c1")
        assert row is not None and row["status"] == "received"
        assert await store.call("get", "missing") is None  # the by-name form, for tests
        # The pragmas and the schema a hook process would see (AgentStore opened it).
        sync = await store.run(lambda s: s.conn.execute("PRAGMA synchronous").fetchone()[0])
        assert sync == 2  # FULL
    finally:
        await store.close()
    # A hook process opens the same file synchronously and sees the row.
    hook_view = AgentStore(tmp_path / AGENT_DB)
    try:
        assert [r["command_id"] for r in hook_view.list_inbox()] == ["c1"]
    finally:
        hook_view.close()
