"""Durable small writes: ccr-box's group-commit writer against aiosqlite, in the same run.

Why ccr-box does not use aiosqlite on its hot path, measured. Every job is what a webhook reply
costs the database: an INSERT of the update's de-duplication row and an INSERT of the command row,
committed durably (on disk before the caller goes on). Three writers do the same jobs against the
same schema (ccr-box's own, migrated fresh for every measurement) in the same directory:

- ``ccr-box``: ``Database.write`` (ccr_box/db): the SQL runs on the event loop in group commits,
  one savepoint per job, and the WAL is fsynced on a worker thread (``synchronous = FULL``
  semantics) while the next batch runs.
- ``aiosqlite txn/job``: one aiosqlite connection in WAL mode with ``PRAGMA synchronous = FULL``;
  every job is its own ``BEGIN IMMEDIATE`` ... ``COMMIT`` (an ``asyncio.Lock`` keeps concurrent
  jobs out of each other's transaction, as one shared connection needs).
- ``aiosqlite batched``: the same connection with ccr-box's batching done by hand: one writer task
  takes every waiting job into one transaction, one savepoint per job (so one failing job would not
  undo its neighbours, as in ccr-box), one fsync per batch (``synchronous = FULL``). Each statement
  is still one ``await`` (aiosqlite runs it on its thread), which is the cost ccr-box avoids.

``concurrency`` tasks each submit jobs back to back for ``--seconds``; every cell is measured
``--rounds`` times, the writers interleaved, and the median jobs/s is shown, with the ratio of
ccr-box to each aiosqlite writer. Only throughput: the database files must be on a real disk
(``--dir``; a tmpfs makes fsync free and the comparison meaningless).

    .venv/bin/python scripts/bench_sqlite_writer.py [--seconds 0.8] [--rounds 3] [--dir DIR]
    .venv/bin/python scripts/bench_sqlite_writer.py --quick   # a smoke run (tests use it)

aiosqlite is a dev extra for this script only: ccr_box never imports it.
"""

from __future__ import annotations

import abc
import argparse
import asyncio
import itertools
import os
import platform
import sqlite3
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import aiosqlite

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ccr_box.db import Database
from ccr_box.db.schema import migrate

# The two statements of a webhook reply (ccr_box.db.updates.record, ccr_box.db.queue.enqueue).
DEDUP_SQL = (
    "INSERT INTO seen_updates (update_id, created_at) VALUES (?, ?)"
    " ON CONFLICT (update_id) DO NOTHING"
)
COMMAND_SQL = (
    "INSERT INTO command_queue (command_id, machine_id, session_id, command_type, command,"
    " directory, chat_id, update_id, status, attempts, created_at, expires_at, next_retry_at)"
    " VALUES (?, ?, ?, 'execute', ?, NULL, ?, ?, 'pending', 0, ?, ?, ?)"
)
MAX_BATCH = 256  # as ccr_box.db
WARMUP_JOBS = 20
CONCURRENCY = (1, 16, 64)
WRITERS = ("ccr-box", "aiosqlite txn/job", "aiosqlite batched")

Params = tuple[tuple[int, int], tuple[object, ...]]  # (dedup row, command row)


def job_params(n: int) -> Params:
    now = time.time_ns() // 1_000_000
    command = (f"cmd-{n:012d}", "bench-box", "bench-session", f"reply number {n}", "4242", n)
    return (n, now), (*command, now, now + 86_400_000, now)


# -- the writers ----------------------------------------------------------------------------------


class Writer(abc.ABC):
    """One writer on one fresh database file; ``commits`` counts its transactions."""

    @abc.abstractmethod
    async def submit(self, params: Params) -> None:
        """Return once the job is committed and on disk."""

    @abc.abstractmethod
    async def close(self) -> None: ...

    @property
    @abc.abstractmethod
    def commits(self) -> int: ...


class CcrBoxWriter(Writer):
    def __init__(self, db: Database) -> None:
        self._db = db

    @classmethod
    async def open(cls, path: Path) -> CcrBoxWriter:
        return cls(await Database.open(path, synchronous="FULL"))

    async def submit(self, params: Params) -> None:
        dedup, command = params

        def job(conn: sqlite3.Connection) -> None:
            conn.execute(DEDUP_SQL, dedup)
            conn.execute(COMMAND_SQL, command)

        await self._db.write(job)

    async def close(self) -> None:
        await self._db.close()

    @property
    def commits(self) -> int:
        return self._db.batches


async def _aiosqlite_connect(path: Path) -> aiosqlite.Connection:
    _migrate(path)
    conn = await aiosqlite.connect(str(path), isolation_level=None)
    await conn.execute("PRAGMA busy_timeout = 5000")
    await conn.execute("PRAGMA journal_mode = WAL")
    await conn.execute("PRAGMA synchronous = FULL")  # the WAL is fsynced at every COMMIT
    return conn


class AiosqlitePerJob(Writer):
    def __init__(self, conn: aiosqlite.Connection) -> None:
        self._conn = conn
        self._lock = asyncio.Lock()  # one connection: one transaction at a time
        self._commits = 0

    @classmethod
    async def open(cls, path: Path) -> AiosqlitePerJob:
        return cls(await _aiosqlite_connect(path))

    async def submit(self, params: Params) -> None:
        dedup, command = params
        async with self._lock:
            await self._conn.execute("BEGIN IMMEDIATE")
            try:
                await self._conn.execute(DEDUP_SQL, dedup)
                await self._conn.execute(COMMAND_SQL, command)
            except BaseException:
                await self._conn.execute("ROLLBACK")
                raise
            await self._conn.execute("COMMIT")
            self._commits += 1

    async def close(self) -> None:
        await self._conn.close()

    @property
    def commits(self) -> int:
        return self._commits


class AiosqliteBatched(Writer):
    def __init__(self, conn: aiosqlite.Connection) -> None:
        self._conn = conn
        self._jobs: asyncio.Queue[tuple[Params, asyncio.Future[None]] | None] = asyncio.Queue()
        self._task = asyncio.create_task(self._run())
        self._commits = 0

    @classmethod
    async def open(cls, path: Path) -> AiosqliteBatched:
        return cls(await _aiosqlite_connect(path))

    async def submit(self, params: Params) -> None:
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._jobs.put_nowait((params, future))
        await future

    async def _run(self) -> None:
        conn = self._conn
        while (item := await self._jobs.get()) is not None:
            batch = [item]
            while len(batch) < MAX_BATCH and not self._jobs.empty():
                more = self._jobs.get_nowait()
                if more is None:
                    self._jobs.put_nowait(None)
                    break
                batch.append(more)
            savepoints = len(batch) > 1
            failures: list[BaseException | None] = []
            await conn.execute("BEGIN IMMEDIATE")
            for (dedup, command), _future in batch:
                if savepoints:
                    await conn.execute("SAVEPOINT job")
                try:
                    await conn.execute(DEDUP_SQL, dedup)
                    await conn.execute(COMMAND_SQL, command)
                except sqlite3.Error as exc:
                    if savepoints:
                        await conn.execute("ROLLBACK TO job")
                        await conn.execute("RELEASE job")
                    failures.append(exc)
                else:
                    if savepoints:
                        await conn.execute("RELEASE job")
                    failures.append(None)
            await conn.execute("COMMIT")  # synchronous = FULL: on disk when this returns
            self._commits += 1
            for (_params, future), failure in zip(batch, failures, strict=True):
                if failure is None:
                    future.set_result(None)
                else:
                    future.set_exception(failure)

    async def close(self) -> None:
        self._jobs.put_nowait(None)
        await self._task
        await self._conn.close()

    @property
    def commits(self) -> int:
        return self._commits


def _migrate(path: Path) -> None:
    """ccr-box's schema, created with plain sqlite3 before aiosqlite opens the file."""
    conn = sqlite3.connect(str(path), isolation_level=None)
    try:
        conn.execute("PRAGMA journal_mode = WAL")
        migrate(conn, str(path))
    finally:
        conn.close()


OPENERS: dict[str, Callable[[Path], Awaitable[Writer]]] = {
    "ccr-box": CcrBoxWriter.open,
    "aiosqlite txn/job": AiosqlitePerJob.open,
    "aiosqlite batched": AiosqliteBatched.open,
}


# -- measuring ------------------------------------------------------------------------------------


async def measure(
    writer_name: str, directory: Path, concurrency: int, seconds: float
) -> tuple[float, float]:
    """(jobs per second, jobs per commit) of one writer at one concurrency, on a fresh file."""
    path = directory / f"bench-{os.getpid()}-{time.monotonic_ns()}.sqlite3"
    writer = await OPENERS[writer_name](path)
    numbers = itertools.count(1)
    try:
        for _ in range(WARMUP_JOBS):
            await writer.submit(job_params(next(numbers)))
        done = 0
        commits_before = writer.commits
        start = time.perf_counter()
        deadline = start + seconds

        async def client() -> None:
            nonlocal done
            while time.perf_counter() < deadline:
                await writer.submit(job_params(next(numbers)))
                done += 1

        await asyncio.gather(*(client() for _ in range(concurrency)))
        elapsed = time.perf_counter() - start
        commits = writer.commits - commits_before
    finally:
        await writer.close()
        _remove(path)
    return done / elapsed, done / max(commits, 1)


def _remove(path: Path) -> None:
    for suffix in ("", "-wal", "-shm", ".lock"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)


Results = dict[tuple[str, int], tuple[float, float]]  # (writer, concurrency) -> medians


async def run(
    directory: Path, seconds: float, rounds: int, concurrencies: tuple[int, ...]
) -> Results:
    samples: dict[tuple[str, int], list[tuple[float, float]]] = {}
    for _round in range(rounds):
        for concurrency in concurrencies:
            for name in WRITERS:  # interleaved, so drift in the disk hits every writer alike
                sample = await measure(name, directory, concurrency, seconds)
                samples.setdefault((name, concurrency), []).append(sample)
    return {
        key: (
            statistics.median(rate for rate, _batch in values),
            statistics.median(batch for _rate, batch in values),
        )
        for key, values in samples.items()
    }


def table(results: Results, concurrencies: tuple[int, ...]) -> str:
    """Jobs/s per writer (jobs per commit in brackets) and ccr-box's ratio to each aiosqlite."""
    header = (
        f"{'concurrency':>11} | {'ccr-box':>14} | {'aiosqlite txn/job':>17} | "
        f"{'aiosqlite batched':>17} | {'ratio vs txn/job':>16} | {'ratio vs batched':>16}"
    )
    lines = [header, "-" * len(header)]
    for c in concurrencies:
        ours, ours_batch = results["ccr-box", c]
        per_job, _one = results["aiosqlite txn/job", c]
        batched, batched_batch = results["aiosqlite batched", c]
        lines.append(
            f"{c:>11} | {ours:>6.0f} ({ours_batch:>4.1f}) | {per_job:>17.0f} | "
            f"{batched:>8.0f} ({batched_batch:>5.1f}) | "
            f"{ours / per_job:>15.1f}x | {ours / batched:>15.1f}x"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--seconds", type=float, default=0.8, help="per measurement (0.8)")
    parser.add_argument("--rounds", type=int, default=3, help="measurements per cell (3)")
    parser.add_argument("--dir", type=Path, default=None, help="where the database files go")
    parser.add_argument("--quick", action="store_true", help="0.2 s, one round: a smoke run")
    args = parser.parse_args(argv)
    seconds, rounds = (0.2, 1) if args.quick else (args.seconds, args.rounds)
    with tempfile.TemporaryDirectory(prefix="ccr-box-bench-", dir=args.dir) as tmp:
        started = time.perf_counter()
        results = asyncio.run(run(Path(tmp), seconds, rounds, CONCURRENCY))
        took = time.perf_counter() - started
        print(
            "Durable jobs/s (INSERT dedup row + INSERT command row, each committed to disk;"
            f" jobs per commit in brackets), median of {rounds} x {seconds:g} s per cell"
        )
        print(
            f"python {platform.python_version()}, SQLite {sqlite3.sqlite_version}, "
            f"aiosqlite {aiosqlite.__version__}, {os.cpu_count()} CPUs, files in {tmp}"
        )
        print()
        print(table(results, CONCURRENCY))
        print(f"\n({took:.1f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
