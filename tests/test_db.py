"""The database layer (contract §5): schema and migrations, the single-server lock, group commit
with per-job rollback, its durability (the fsync after a commit, ``durable=False``, fail-stop when
an fsync fails), the indexes the contract names, and the uniqueness backstops."""

from __future__ import annotations

import asyncio
import errno
import os
import sqlite3
import threading
from collections.abc import Callable
from contextlib import closing
from pathlib import Path
from typing import Any

import pytest

from ccr_box.db import Database, database_path
from ccr_box.db import queue as q
from ccr_box.db import sessions as sessions_db
from ccr_box.db import updates as updates_db
from ccr_box.db.schema import SCHEMA_VERSION
from ccr_box.errors import DatabaseBusyError, DatabaseError, SchemaTooNewError
from ccr_box.server.app import Options
from tests.conftest import CHAT
from tests.helpers_wait import until


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return database_path(tmp_path / "data")


async def scalar(db: Database, query: str, *params: Any) -> Any:
    def job(c: sqlite3.Connection) -> Any:
        with closing(c.execute(query, params)) as cur:
            row = cur.fetchone()
        return row[0] if row else None

    return await db.read(job)


def raw(path: Path, query: str) -> list[tuple[Any, ...]]:
    conn = sqlite3.connect(path)
    try:
        return conn.execute(query).fetchall()
    finally:
        conn.close()


def write_garbage(path: Path) -> None:
    path.parent.mkdir(parents=True)
    path.write_bytes(b"this is not an SQLite file at all, just text" * 100)


# -- open, schema version, reopen -----------------------------------------------------------------


async def test_open_creates_wal_database_at_current_schema(path: Path) -> None:
    db = await Database.open(path)
    try:
        assert await scalar(db, "PRAGMA user_version") == SCHEMA_VERSION
        assert SCHEMA_VERSION >= 1
        tables = {
            r[0]
            for r in raw(path, "SELECT name FROM sqlite_master WHERE type = 'table'")
            if not r[0].startswith("sqlite_")
        }
        assert {"sessions", "messages", "command_queue", "seen_updates", "machines"} <= tables
    finally:
        await db.close()
    assert raw(path, "PRAGMA journal_mode") == [("wal",)]
    assert raw(path, "PRAGMA user_version") == [(SCHEMA_VERSION,)]


async def test_reopen_keeps_data_and_version(path: Path) -> None:
    db = await Database.open(path)
    await db.write(lambda c: sessions_db.upsert(c, "s1", "m1", "lbl", 1000, max_sessions=1000))
    await db.close()
    db = await Database.open(path)
    try:
        assert await db.read(lambda c: sessions_db.get(c, "s1")) == {
            "session_id": "s1",
            "machine_id": "m1",
            "label": "lbl",
            "created_at": 1000,
            "updated_at": 1000,
        }
        assert await scalar(db, "PRAGMA user_version") == SCHEMA_VERSION
    finally:
        await db.close()


async def test_newer_schema_is_refused_with_a_clear_message(path: Path) -> None:
    db = await Database.open(path)
    await db.close()
    conn = sqlite3.connect(path)
    conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    conn.commit()
    conn.close()
    with pytest.raises(SchemaTooNewError) as info:
        await Database.open(path)
    message = str(info.value)
    assert f"schema version {SCHEMA_VERSION + 1}" in message
    assert f"only knows up to {SCHEMA_VERSION}" in message
    assert str(path) in message
    # The failed open released the lock: trying again gives the same error, not "busy".
    with pytest.raises(SchemaTooNewError):
        await Database.open(path)
    assert raw(path, "PRAGMA user_version") == [(SCHEMA_VERSION + 1,)]  # left untouched


async def test_not_a_database_is_a_database_error(path: Path) -> None:
    write_garbage(path)
    with pytest.raises(DatabaseError) as info:
        await Database.open(path)
    assert "cannot open database" in str(info.value)
    with pytest.raises(DatabaseError) as again:  # lock released: same error, not busy
        await Database.open(path)
    assert not isinstance(again.value, DatabaseBusyError)


async def test_second_open_while_open_is_busy(path: Path) -> None:
    first = await Database.open(path)
    with pytest.raises(DatabaseBusyError) as info:
        await Database.open(path)
    assert "another ccr-box server is already using" in str(info.value)
    assert isinstance(info.value, DatabaseError)
    # The refused open did not disturb the first one.
    assert await first.write(lambda c: updates_db.record(c, 1, 10)) is True
    await first.close()
    second = await Database.open(path)
    try:
        assert await second.read(lambda c: updates_db.seen(c, 1)) is True
    finally:
        await second.close()


# -- group commit ------------------------------------------------------------------------------------


async def test_group_commit_batches_concurrent_writes(path: Path) -> None:
    db = await Database.open(path)
    before = db.batches
    results = await asyncio.gather(
        *(db.write(lambda c, i=i: updates_db.record(c, i, i)) for i in range(1, 201))
    )
    assert results == [True] * 200
    batches = db.batches - before
    assert 1 <= batches <= 10, batches
    await db.close()
    assert raw(path, "SELECT COUNT(*), MIN(update_id), MAX(update_id) FROM seen_updates") == [
        (200, 1, 200)
    ]


async def test_failing_job_rolls_back_only_itself(path: Path) -> None:
    db = await Database.open(path)

    def failing(c: sqlite3.Connection) -> None:
        updates_db.record(c, 2, 2)
        c.execute("UPDATE seen_updates SET created_at = 99 WHERE update_id = 1")
        raise ValueError("job failed")

    before = db.batches
    outcomes = await asyncio.gather(
        db.write(lambda c: updates_db.record(c, 1, 1)),
        db.write(failing),
        db.write(lambda c: updates_db.record(c, 3, 3)),
        return_exceptions=True,
    )
    assert db.batches - before == 1  # the three jobs shared one transaction
    assert outcomes[0] is True and outcomes[2] is True
    assert isinstance(outcomes[1], ValueError) and str(outcomes[1]) == "job failed"
    await db.close()
    assert raw(path, "SELECT update_id, created_at FROM seen_updates ORDER BY 1") == [
        (1, 1),
        (3, 3),
    ]


async def test_failing_job_alone_rolls_back(path: Path) -> None:
    db = await Database.open(path)

    def failing(c: sqlite3.Connection) -> None:
        updates_db.record(c, 7, 7)
        raise KeyError("alone")

    with pytest.raises(KeyError):
        await db.write(failing)
    # The writer is still usable and the failed job left nothing behind.
    assert await db.write(lambda c: updates_db.record(c, 8, 8)) is True
    await db.close()
    assert raw(path, "SELECT update_id FROM seen_updates") == [(8,)]


async def test_write_and_read_after_close_raise(path: Path) -> None:
    db = await Database.open(path)
    await db.close()
    with pytest.raises(DatabaseError, match="closed"):
        await db.write(lambda c: updates_db.record(c, 1, 1))
    with pytest.raises(DatabaseError, match="closed"):
        await db.read(lambda c: updates_db.seen(c, 1))


async def test_close_finishes_queued_writes(path: Path) -> None:
    db = await Database.open(path)
    # gather starts the writes in order, so all 50 jobs are queued before close() runs.
    *results, closed = await asyncio.gather(
        *(db.write(lambda c, i=i: updates_db.record(c, i, i)) for i in range(1, 51)), db.close()
    )
    assert results == [True] * 50 and closed is None
    assert raw(path, "SELECT COUNT(*) FROM seen_updates") == [(50,)]


async def test_write_racing_close_fails_instead_of_hanging(path: Path) -> None:
    db = await Database.open(path)

    async def late_write() -> Any:
        return await db.write(lambda c: updates_db.record(c, 5, 5))

    # close() queues its stop marker first; the write arrives while the writer is stopping.
    outcomes = await asyncio.wait_for(
        asyncio.gather(db.close(), late_write(), return_exceptions=True), timeout=2
    )
    assert outcomes[0] is None
    assert isinstance(outcomes[1], DatabaseError) and "closed" in str(outcomes[1])


# -- durability: the fsync after each group commit, durable=False, fail-stop ---------------------


class FakeFsync:
    """The ``fsync`` a Database calls on its fsync thread (``Database.open(..., fsync=...)``):
    counts calls, holds a call while ``hold()`` is in force, fails with EIO while ``failing``."""

    def __init__(self) -> None:
        self.calls = 0
        self.failing = False
        self.entered = threading.Event()  # a call has started
        self._released = threading.Event()
        self._released.set()

    def hold(self) -> None:
        self.entered.clear()
        self._released.clear()

    def release(self) -> None:
        self._released.set()

    def __call__(self, fd: int) -> None:
        self.calls += 1
        self.entered.set()
        self._released.wait(60)  # a safety net: the test releases it (also in its finally)
        if self.failing:
            raise OSError(errno.EIO, os.strerror(errno.EIO))
        os.fsync(fd)


def record(update_id: int) -> Callable[[sqlite3.Connection], bool]:
    return lambda c: updates_db.record(c, update_id, update_id)


async def test_bookkeeping_skips_the_fsync_and_no_answer_overtakes_one(path: Path) -> None:
    """``durable=False`` commits without an fsync of its own; a batch holding any durable write is
    fsynced; and a bookkeeping write committed while an fsync is in flight is answered after the
    durable write before it, never first."""
    fsync = FakeFsync()
    db = await Database.open(path, fsync=fsync)
    try:
        batches = db.batches
        assert await asyncio.gather(*(db.write(record(i), durable=False) for i in (1, 2, 3)))
        assert (db.batches - batches, fsync.calls) == (1, 0)  # one batch, no fsync
        assert await asyncio.gather(db.write(record(4), durable=False), db.write(record(5)))
        assert (db.batches - batches, fsync.calls) == (2, 1)  # one mixed batch, fsynced

        answered: list[str] = []
        fsync.hold()
        durable = asyncio.create_task(db.write(record(6)))
        durable.add_done_callback(lambda _: answered.append("durable"))
        await until(fsync.entered.is_set, "the durable write's fsync to start")
        committed = db.batches
        bookkeeping = asyncio.create_task(db.write(record(7), durable=False))
        bookkeeping.add_done_callback(lambda _: answered.append("bookkeeping"))
        await until(lambda: db.batches > committed, "the bookkeeping write to commit")
        fsync.release()
        assert await asyncio.gather(durable, bookkeeping) == [True, True]
        assert answered == ["durable", "bookkeeping"]
        assert fsync.calls == 2  # the bookkeeping batch needed none of its own
    finally:
        fsync.release()
        await db.close()


async def test_a_failed_fsync_refuses_every_unanswered_and_every_later_write(
    path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Fail-stop: after a failed fsync the data may be lost although it reads back, so every
    write committed but not yet answered fails with it, bookkeeping included, and every later
    write is refused, even once the disk is healthy again (until a restart)."""
    fsync = FakeFsync()
    db = await Database.open(path, fsync=fsync)
    try:
        fsync.failing = True
        fsync.hold()
        first = asyncio.create_task(db.write(record(1)))
        await until(fsync.entered.is_set, "the failing fsync to start")
        committed = db.batches
        behind = [
            asyncio.create_task(db.write(record(2), durable=False)),
            asyncio.create_task(db.write(record(3))),
        ]
        await until(lambda: db.batches > committed, "the writes behind it to commit")
        fsync.release()
        outcomes = await asyncio.gather(first, *behind, return_exceptions=True)
        assert [type(o) for o in outcomes] == [DatabaseError] * 3, outcomes
        assert all("database sync failed (" in str(o) for o in outcomes), outcomes
        assert "Input/output error" in str(outcomes[0])
        assert "fsync of the database failed" in caplog.text

        fsync.failing = False
        for durable in (True, False):
            with pytest.raises(DatabaseError, match="database sync failed"):
                await db.write(record(4), durable=durable)
        assert fsync.calls == 1  # nothing was written after the failure, so nothing synced
        # Reads still answer (committed, visible; whether on disk is what nobody knows).
        assert await scalar(db, "SELECT COUNT(*) FROM seen_updates") == 3
    finally:
        fsync.release()
        await db.close()


async def test_after_a_failed_fsync_the_server_is_not_ready_and_takes_no_write(
    start_server,
) -> None:
    fsync = FakeFsync()
    h = await start_server(options=Options(maintenance=False, telegram_inbound=False, fsync=fsync))
    await h.register("s1", "m1")
    resp = await h.client.get("/ready")
    assert resp.status == 200, await resp.text()

    fsync.failing = True
    body = {"sessionId": "s2", "machineId": "m1"}
    assert (await h.post("/sessions/register", body)).status == 500
    calls = fsync.calls
    fsync.failing = False  # healthy again: still refused until a restart
    resp = await h.client.get("/ready")
    ready = await resp.json()
    assert (resp.status, ready["ready"]) == (503, False)
    assert ready["checks"]["database"]["ok"] is False
    assert ready["checks"]["database"]["error"].startswith("database sync failed (")
    assert (await h.post("/sessions/register", {**body, "sessionId": "s3"})).status == 500
    assert (await h.webhook(h.fake.make_message(CHAT, "hello"))).status == 500
    assert fsync.calls == calls  # refused before anything was written


# -- indexes and constraints (§5) ----------------------------------------------------------------------


def index_columns(path: Path) -> dict[str, set[tuple[tuple[str, ...], bool]]]:
    """{table: {(indexed columns, unique)}} including primary keys and UNIQUE constraints."""
    conn = sqlite3.connect(path)
    try:
        result: dict[str, set[tuple[tuple[str, ...], bool]]] = {}
        tables = [
            r[0]
            for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")
            if not r[0].startswith("sqlite_")
        ]
        for table in tables:
            for _seq, name, unique, *_ in conn.execute(f"PRAGMA index_list({table})"):
                cols = tuple(r[2] for r in conn.execute(f"PRAGMA index_info({name})"))
                result.setdefault(table, set()).add((cols, bool(unique)))
        return result
    finally:
        conn.close()


async def test_indexes_named_by_the_contract_exist(path: Path) -> None:
    db = await Database.open(path)
    await db.close()
    idx = index_columns(path)

    def has(table: str, prefix: tuple[str, ...], unique: bool | None = None) -> bool:
        return any(
            cols[: len(prefix)] == prefix and (unique is None or u == unique)
            for cols, u in idx.get(table, set())
        )

    assert has("sessions", ("machine_id",))
    assert has("sessions", ("updated_at",))
    assert has("messages", ("session_id",))
    assert has("messages", ("token", "chat_id"))
    assert has("messages", ("created_at",))
    assert has("messages", ("chat_id", "message_id"), unique=True)  # the primary key
    assert has("command_queue", ("machine_id", "status"))
    assert has("command_queue", ("status", "next_retry_at"))
    assert has("command_queue", ("status", "expires_at"))
    assert has("command_queue", ("update_id",), unique=True)
    assert has("seen_updates", ("created_at",))
    names = {r[0] for r in raw(path, "SELECT name FROM sqlite_master WHERE type = 'index'")}
    assert {
        "sessions_machine",
        "sessions_updated",
        "messages_session",
        "messages_token_chat",
        "messages_created",
        "command_queue_machine_status",
        "command_queue_status_retry",
        "command_queue_status_expires",
        "seen_updates_created",
    } <= names


async def test_newest_token_in_chat_query_uses_an_index(path: Path) -> None:
    db = await Database.open(path)
    await db.write(
        lambda c: sessions_db.map_messages(
            c, [("42", i, f"s{i % 3}", f"tok{i % 5}") for i in range(1, 50)], 1000
        )
    )
    await db.close()
    # Capture the exact SQL the query helper runs, then ask SQLite how it plans it.
    conn = sqlite3.connect(str(path))
    statements: list[str] = []
    try:
        conn.set_trace_callback(statements.append)
        assert sessions_db.session_for_token(conn, "tok1", "42") is not None
        conn.set_trace_callback(None)
        query = next(s for s in statements if "FROM messages" in s)
        plan = " | ".join(str(r[3]) for r in conn.execute(f"EXPLAIN QUERY PLAN {query}"))
    finally:
        conn.close()
    assert "USING INDEX" in plan or "COVERING INDEX" in plan, plan
    assert "TEMP B-TREE" not in plan, plan  # newest row found by walking the index, no sort


async def test_command_queue_update_id_is_unique(path: Path) -> None:
    db = await Database.open(path)
    try:

        def cmd(command_id: str, update_id: int | None) -> q.NewCommand:
            return q.NewCommand(command_id, "m1", "s1", "x", "42", update_id=update_id)

        await db.write(lambda c: q.enqueue(c, cmd("a" * 32, 77), 1000))
        with pytest.raises(sqlite3.IntegrityError):
            await db.write(lambda c: q.enqueue(c, cmd("b" * 32, 77), 1000))
        # NULL update ids (operator-made rows) do not collide.
        await db.write(lambda c: q.enqueue(c, cmd("c" * 32, None), 1000))
        await db.write(lambda c: q.enqueue(c, cmd("d" * 32, None), 1000))
        rows = await db.read(lambda c: q.list_commands(c))
        assert sorted(r["command_id"][0] for r in rows) == ["a", "c", "d"]
    finally:
        await db.close()


async def test_seen_update_record_is_idempotent(path: Path) -> None:
    db = await Database.open(path)
    try:
        assert await db.write(lambda c: updates_db.record(c, 9, 1)) is True
        assert await db.write(lambda c: updates_db.record(c, 9, 2)) is False
        assert await scalar(db, "SELECT created_at FROM seen_updates WHERE update_id = 9") == 1
    finally:
        await db.close()
