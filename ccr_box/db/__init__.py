"""The server's SQLite database: the only package that holds SQL.

Jobs are plain functions ``job(conn: sqlite3.Connection) -> T`` built from the named queries in
this package.

Writes: one writer connection owned by one task. It runs every job that is waiting in one
``BEGIN IMMEDIATE`` transaction (group commit), each inside a savepoint so one failing job does not
undo its neighbours. The SQL runs on the event loop's own thread: a batch is tens of microseconds
per job, while handing each statement to a thread costs far more (every sqlite3 call releases and
re-takes the GIL against a busy event loop). Durability comes from an explicit ``fsync`` of the
WAL file on a worker thread after ``COMMIT`` (the same guarantee as ``PRAGMA synchronous = FULL``,
which fsyncs the WAL at every commit), and the next batch runs while that fsync is in flight. A
caller's future resolves only after its batch is on disk.

Why not aiosqlite (one thread per connection, every statement an ``await``):
``.venv/bin/python scripts/bench_sqlite_writer.py`` (about 25 s) commits a webhook reply's work
(an INSERT of the dedup row and one of the command row) durably, with this writer and with
aiosqlite in WAL mode with ``synchronous = FULL``, in the same run. On the 2-CPU development VM (ext4, SQLite 3.40, aiosqlite
0.22; 13 runs, median and range) this writer did 11.7x (7.3-15.1x) the jobs/s of aiosqlite with
one transaction per job at 16 concurrent jobs and 18x (13.5-25.8x) at 64, since aiosqlite pays one
fsync per job whatever the concurrency (1,000-2,600 jobs/s); against aiosqlite doing this same
group commit by hand (one transaction per waiting batch, a savepoint per job) it did 7.2x
(2.8-10.2x) and 6.0x (5.1-16.1x): the statement hops to aiosqlite's thread are the cost, and they
grow when other processes want the CPU. One job at a time, all of them wait for one fsync per job
(ratio about 1x: 0.9-1.5x, 0.5x in one run beside CPU-heavy tests).

Reads that need no transaction use a second, read-only connection on its own thread
(:class:`ccr_box.sqlite_thread.SqliteThread`, which the agent's inbox uses too), so a large
listing never blocks the loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import os
import sqlite3
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

from ccr_box.db.schema import migrate
from ccr_box.errors import DatabaseBusyError, DatabaseError
from ccr_box.sqlite_thread import SqliteThread, connect

T = TypeVar("T")
Job = Callable[[sqlite3.Connection], T]

log = logging.getLogger("ccr_box.db")

DB_FILENAME = "ccr-box.sqlite3"
MAX_BATCH = 256


class Database:
    """Open with :meth:`open`, close with :meth:`close`."""

    def __init__(self, path: Path, *, fsync: Callable[[int], None] = os.fsync) -> None:
        self.path = path
        self._fsync = fsync  # os.fsync; fault tests pass one that fails like a dying disk
        self._conn: sqlite3.Connection | None = None  # the writer, used on the loop thread only
        self._reader = SqliteThread("ccr-box-db-reader")
        self._fsync_pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="ccr-box-fsync")
        self._jobs: asyncio.Queue[tuple[Job[Any], asyncio.Future[Any], bool] | None] = (
            asyncio.Queue()
        )
        self._task: asyncio.Task[None] | None = None
        # Committed batches whose callers are not answered yet, in commit order:
        # (commit number, needs fsync, futures, outcomes). One syncer task answers them.
        self._unanswered: deque[tuple[int, bool, list[asyncio.Future[Any]], list[Any]]] = deque()
        self._committed = 0  # commit number of the newest batch
        self._synced = 0  # every batch up to this commit number is on disk
        self._syncer: asyncio.Task[None] | None = None
        self._lock_fd: int | None = None
        self._closing = False  # set by close(): no job may queue behind the stop marker
        self._full_sync = True  # whether durable batches are fsynced (synchronous == FULL)
        self.batches = 0  # group commits so far (benchmarks and tests read it)
        # Set when an fsync failed: from then on every write is refused (see _answer).
        self.sync_failure: DatabaseError | None = None

    @classmethod
    async def open(
        cls, path: Path, *, synchronous: str = "FULL", fsync: Callable[[int], None] = os.fsync
    ) -> Database:
        db = cls(path, fsync=fsync)
        await db._open(synchronous)
        return db

    async def _open(self, synchronous: str) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        self._take_lock()
        _private_files(self.path)
        # FULL: a commit is on disk before the webhook answers 200 (group commit amortises it).
        self._full_sync = synchronous.upper() == "FULL"
        try:
            conn = sqlite3.connect(str(self.path), isolation_level=None)
            self._conn = conn
            conn.row_factory = sqlite3.Row
            conn.execute("PRAGMA busy_timeout = 5000")
            conn.execute("PRAGMA journal_mode = WAL")
            # Commits write the WAL without syncing; _fsync_wal() makes each batch durable.
            conn.execute("PRAGMA synchronous = NORMAL")
            migrate(conn, str(self.path))
            # Make everything the WAL holds durable before anyone is answered: after a failed
            # fsync and a restart, the page cache can still hold WAL frames that never reached
            # the disk; SQLite would treat them as valid and new commits would land behind them
            # (lost together on a power cut). The checkpoint writes them into the database file
            # and fsyncs it.
            conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            await self._reader.open(
                lambda: connect(self.path, "PRAGMA busy_timeout = 5000", "PRAGMA query_only = ON")
            )
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

    async def write(self, job: Job[T], *, durable: bool = True) -> T:
        """Run ``job`` in the next group commit; return its result once it is committed.

        ``durable=True`` (default): the commit is on disk (fsynced) before this returns.
        ``durable=False`` is for bookkeeping that is safe to lose on a power cut (not on a
        process crash, which WAL survives either way): marking rows sent or acked, presence.
        Losing one only causes a re-send that the agent de-duplicates.
        """
        if self._closing or self._task is None or self._task.done():
            raise DatabaseError("database is closed")
        future: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        self._jobs.put_nowait((job, future, durable))
        return await future

    async def read(self, job: Job[T]) -> T:
        """Run a read-only ``job`` on the reader connection (sees committed data only)."""
        if self._closing and self._task is None:
            raise DatabaseError("database is closed")
        return await self._reader.run(job)

    async def _run_writer(self) -> None:
        while True:
            item = await self._jobs.get()
            if item is None:
                break
            batch = [item]
            while len(batch) < MAX_BATCH and not self._jobs.empty():
                more = self._jobs.get_nowait()
                if more is None:
                    self._jobs.put_nowait(None)  # stop after this batch
                    break
                batch.append(more)
            batch = [entry for entry in batch if not entry[1].cancelled()]
            if batch:
                self._commit(batch)
            await asyncio.sleep(0)  # let the loop run (and more jobs gather) between batches
        if self._syncer is not None:
            await self._syncer

    def _commit(self, batch: list[tuple[Job[Any], asyncio.Future[Any], bool]]) -> None:
        assert self._conn is not None
        if self.sync_failure is not None:  # fail-stop (see _answer): no write runs any more
            for _job, fut, _durable in batch:
                if not fut.done():
                    fut.set_exception(self.sync_failure)
            return
        try:
            outcomes = self._run_batch(self._conn, [job for job, _fut, _durable in batch])
        except Exception as exc:
            log.exception("group commit of %d job(s) failed", len(batch))
            failure = DatabaseError(f"database write failed: {type(exc).__name__}")
            for _job, fut, _durable in batch:
                if not fut.done():
                    fut.set_exception(failure)
            return
        self.batches += 1
        self._committed += 1
        sync = self._full_sync and any(durable for _job, _fut, durable in batch)
        futures = [fut for _job, fut, _durable in batch]
        self._unanswered.append((self._committed, sync, futures, outcomes))
        if self._syncer is None or self._syncer.done():
            self._syncer = asyncio.create_task(self._answer(), name="ccr-box-db-sync")

    async def _answer(self) -> None:
        """Answer callers in commit order; one fsync covers every batch committed before it."""
        while self._unanswered:
            number, sync, futures, outcomes = self._unanswered[0]
            if sync and number > self._synced:
                target = self._committed  # the WAL holds every commit up to here
                try:
                    await asyncio.get_running_loop().run_in_executor(
                        self._fsync_pool, self._fsync_wal
                    )
                except OSError as exc:
                    # The data may not be on disk, and after a failed fsync the kernel may have
                    # dropped those pages while keeping them readable: a later fsync can succeed
                    # with a hole behind it, and a dedup row only in the page cache would answer
                    # Telegram's retry 200. So fail-stop, like PostgreSQL: every unanswered
                    # batch fails and every later write is refused until a restart.
                    log.error(
                        "fsync of the database failed (%s): refusing every write until ccr-box "
                        "is restarted on a healthy disk",
                        exc,
                    )
                    self.sync_failure = DatabaseError(
                        f"database sync failed ({exc}); restart ccr-box once the disk is healthy"
                    )
                    self._fail_unanswered(self._committed, self.sync_failure)
                    continue
                self._synced = target
                continue
            self._unanswered.popleft()
            for fut, (result, error) in zip(futures, outcomes, strict=True):
                if fut.done():
                    continue
                if error is not None:
                    fut.set_exception(error)
                else:
                    fut.set_result(result)

    def _fail_unanswered(self, up_to: int, failure: BaseException) -> None:
        while self._unanswered and self._unanswered[0][0] <= up_to:
            _number, _sync, futures, _outcomes = self._unanswered.popleft()
            for fut in futures:
                if not fut.done():
                    fut.set_exception(failure)

    def _fsync_wal(self) -> None:
        """Worker thread: flush the WAL (what ``synchronous = FULL`` does at each commit)."""
        target = str(self.path) + "-wal"
        if not os.path.exists(target):
            target = str(self.path)
        fd = os.open(target, os.O_RDONLY)
        try:
            self._fsync(fd)
        finally:
            os.close(fd)

    @staticmethod
    def _run_batch(
        conn: sqlite3.Connection, jobs: list[Job[Any]]
    ) -> list[tuple[Any, BaseException | None]]:
        """The whole group commit, synchronously."""
        outcomes: list[tuple[Any, BaseException | None]] = []
        use_savepoints = len(jobs) > 1
        try:
            conn.execute("BEGIN IMMEDIATE")
            for job in jobs:
                if use_savepoints:
                    conn.execute("SAVEPOINT job")
                try:
                    result = job(conn)
                except Exception as exc:  # the job's own failure: undo only its part
                    if use_savepoints:
                        conn.execute("ROLLBACK TO job")
                        conn.execute("RELEASE job")
                    outcomes.append((None, exc))
                else:
                    if use_savepoints:
                        conn.execute("RELEASE job")
                    outcomes.append((result, None))
            if not use_savepoints and outcomes[0][1] is not None:
                conn.execute("ROLLBACK")
            else:
                conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                try:
                    conn.execute("ROLLBACK")
                except sqlite3.Error:
                    log.exception("rollback failed")
            raise
        return outcomes

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
        await self._reader.close()
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()
        self._fsync_pool.shutdown(wait=True)


def database_path(data_dir: Path) -> Path:
    return data_dir / DB_FILENAME


def _private_files(path: Path) -> None:
    """The database holds chat ids and message texts: 0600, like the config file.

    SQLite creates a new file 0644 (less the umask) and gives its -wal and -shm files the
    database file's mode, so creating the file 0600 first covers all three; files left by
    older versions are tightened.
    """
    os.close(os.open(path, os.O_RDWR | os.O_CREAT, 0o600))
    for suffix in ("", "-wal", "-shm"):
        with contextlib.suppress(FileNotFoundError):
            os.chmod(f"{path}{suffix}", 0o600)
