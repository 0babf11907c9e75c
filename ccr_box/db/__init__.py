"""The server's SQLite database: the only package that holds SQL.

One writer connection owned by one task. Callers hand it *jobs* (``async def job(conn)``); the task
runs every job that is waiting in one ``BEGIN IMMEDIATE`` transaction (group commit), each inside a
savepoint so one failing job does not undo its neighbours, and resolves each caller's future only
after ``COMMIT`` returned. Reads that need no transaction use a second, read-only connection.
"""

from __future__ import annotations

import asyncio
import fcntl
import logging
import os
import sqlite3
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import aiosqlite

from ccr_box.db.schema import migrate
from ccr_box.errors import DatabaseBusyError, DatabaseError

T = TypeVar("T")
Job = Callable[[aiosqlite.Connection], Awaitable[T]]

log = logging.getLogger("ccr_box.db")

DB_FILENAME = "ccr-box.sqlite3"
MAX_BATCH = 128


class Database:
    """Open with :meth:`open`, close with :meth:`close`."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._writer: aiosqlite.Connection | None = None
        self._reader: aiosqlite.Connection | None = None
        self._jobs: asyncio.Queue[tuple[Job[Any], asyncio.Future[Any]] | None] = asyncio.Queue()
        self._task: asyncio.Task[None] | None = None
        self._lock_fd: int | None = None
        self._closing = False  # set by close(): no job may queue behind the stop marker
        self.batches = 0  # group commits so far (benchmarks read it)

    @classmethod
    async def open(cls, path: Path, *, synchronous: str = "FULL") -> Database:
        db = cls(path)
        await db._open(synchronous)
        return db

    async def _open(self, synchronous: str) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        self._take_lock()
        try:
            self._writer = await _connect(self.path)
            await self._writer.execute("PRAGMA journal_mode = WAL")
            # FULL: a commit is on disk before the webhook answers 200 (group commit amortises it).
            await self._writer.execute(f"PRAGMA synchronous = {synchronous}")
            await migrate(self._writer, str(self.path))
            self._reader = await _connect(self.path)
            await self._reader.execute("PRAGMA query_only = ON")
        except sqlite3.DatabaseError as exc:
            await self._close_connections()
            self._release_lock()
            raise DatabaseError(f"cannot open database {self.path}: {exc}") from exc
        except BaseException:
            await self._close_connections()
            self._release_lock()
            raise
        self._task = asyncio.create_task(self._run_writer(), name="ccr-box-db-writer")

    def _take_lock(self) -> None:
        # One server per database file (contract §5): an advisory lock beside the file.
        fd = os.open(str(self.path) + ".lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise DatabaseBusyError(
                f"another ccr-box server is already using {self.path}; stop it first"
            ) from None
        self._lock_fd = fd

    def _release_lock(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    async def write(self, job: Job[T]) -> T:
        """Run ``job`` in the next group commit; return its result once it is durable."""
        if self._closing or self._task is None or self._task.done():
            raise DatabaseError("database is closed")
        future: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        self._jobs.put_nowait((job, future))
        return await future

    async def read(self, job: Job[T]) -> T:
        """Run a read-only ``job`` on the reader connection (sees committed data only)."""
        if self._reader is None:
            raise DatabaseError("database is closed")
        return await job(self._reader)

    async def _run_writer(self) -> None:
        assert self._writer is not None
        conn = self._writer
        while True:
            item = await self._jobs.get()
            if item is None:
                return
            batch = [item]
            while len(batch) < MAX_BATCH and not self._jobs.empty():
                more = self._jobs.get_nowait()
                if more is None:
                    self._jobs.put_nowait(None)  # stop after this batch
                    break
                batch.append(more)
            batch = [(job, fut) for job, fut in batch if not fut.cancelled()]
            if batch:
                await self._commit_batch(conn, batch)

    async def _commit_batch(
        self, conn: aiosqlite.Connection, batch: list[tuple[Job[Any], asyncio.Future[Any]]]
    ) -> None:
        outcomes: list[tuple[asyncio.Future[Any], Any, BaseException | None]] = []
        use_savepoints = len(batch) > 1
        try:
            await conn.execute("BEGIN IMMEDIATE")
            for job, fut in batch:
                if use_savepoints:
                    await conn.execute("SAVEPOINT job")
                try:
                    result = await job(conn)
                except Exception as exc:  # the job's own failure: undo only its part
                    if use_savepoints:
                        await conn.execute("ROLLBACK TO job")
                        await conn.execute("RELEASE job")
                    outcomes.append((fut, None, exc))
                else:
                    if use_savepoints:
                        await conn.execute("RELEASE job")
                    outcomes.append((fut, result, None))
            if not use_savepoints and outcomes[0][2] is not None:
                await conn.execute("ROLLBACK")
            else:
                await conn.execute("COMMIT")
        except Exception as exc:
            log.exception("group commit of %d job(s) failed", len(batch))
            if conn.in_transaction:
                try:
                    await conn.execute("ROLLBACK")
                except sqlite3.Error:
                    log.exception("rollback failed")
            failure = DatabaseError(f"database write failed: {type(exc).__name__}")
            for _job, fut in batch:
                if not fut.done():
                    fut.set_exception(failure)
            return
        self.batches += 1
        for fut, result, error in outcomes:
            if fut.done():
                continue
            if error is not None:
                fut.set_exception(error)
            else:
                fut.set_result(result)

    async def close(self) -> None:
        """Finish queued writes, then close both connections and release the lock."""
        self._closing = True
        if self._task is not None:
            self._jobs.put_nowait(None)
            await self._task
            self._task = None
        await self._close_connections()
        self._release_lock()

    async def _close_connections(self) -> None:
        for conn in (self._reader, self._writer):
            if conn is not None:
                await conn.close()
        self._reader = self._writer = None


async def _connect(path: Path) -> aiosqlite.Connection:
    # isolation_level=None: we issue BEGIN/COMMIT ourselves.
    conn = await aiosqlite.connect(str(path), isolation_level=None)
    conn.row_factory = sqlite3.Row
    await conn.execute("PRAGMA busy_timeout = 5000")
    await conn.execute("PRAGMA foreign_keys = OFF")
    return conn


def database_path(data_dir: Path) -> Path:
    return data_dir / DB_FILENAME
