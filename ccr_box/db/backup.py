"""Consistent copies of the live database, checks of a database file, and restore.

A backup reads the database through SQLite's online backup API on its own read-only connection: one
read transaction sees one committed state, and in WAL mode the server's writer is never blocked, so
``ccr-box backup`` runs while the server does. The copy is checked (``integrity_check``, schema
version) before it is moved into place, and is a single self-contained file (journal mode DELETE).

Restore is the reverse and needs the server stopped: it takes the same lock file the server holds
(:meth:`ccr_box.db.Database._take_lock`), keeps the current database beside it and moves the backup
in. A WAL left by a killed server moves with the file it belongs to: left beside a different
database it would be replayed into it.
"""

from __future__ import annotations

import fcntl
import os
import sqlite3
import tempfile
from collections.abc import Iterator
from contextlib import closing, contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from ccr_box.db import database_path
from ccr_box.db.schema import SCHEMA_VERSION
from ccr_box.errors import DatabaseBusyError, DatabaseError

SIDECARS = ("-wal", "-shm")
REQUIRED_TABLES = ("sessions", "messages", "command_queue", "seen_updates", "machines", "outbox")


@dataclass(frozen=True)
class DatabaseReport:
    """What :func:`inspect_database` found; ``problems`` is empty for a healthy file."""

    path: Path
    schema_version: int | None = None
    size_bytes: int = 0
    commands: dict[str, int] = field(default_factory=dict)  # by status
    sessions: int = 0
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def summary(self) -> str:
        """``1.2 MB, schema version 1, 40 commands, 3 sessions``."""
        total = sum(self.commands.values())
        return (
            f"{_size(self.size_bytes)}, schema version {self.schema_version}, "
            f"{total} command{'s' * (total != 1)}, {self.sessions} session{'s' * (self.sessions != 1)}"
        )


def _connect_read_only(path: Path) -> sqlite3.Connection:
    # mode=ro: never creates or changes the file; safe beside a running server.
    return sqlite3.connect(f"file:{path}?mode=ro", uri=True, isolation_level=None)


def inspect_database(path: Path, *, full: bool = False) -> DatabaseReport:
    """Check ``path`` read-only: SQLite integrity, ccr-box schema version and tables.

    ``full`` runs ``integrity_check`` (reads every index too) instead of ``quick_check``.
    """
    size = sum(_file_size(Path(f"{path}{s}")) for s in ("", *SIDECARS))
    if not path.is_file():
        return DatabaseReport(path, problems=[f"{path} does not exist or is not a file"])
    try:
        with closing(_connect_read_only(path)) as conn:
            conn.execute("PRAGMA busy_timeout = 5000")
            # One read transaction: the counts and the check see the same state.
            conn.execute("BEGIN")
            check = "integrity_check" if full else "quick_check"
            results = [row[0] for row in conn.execute(f"PRAGMA {check}(20)")]
            version = conn.execute("PRAGMA user_version").fetchone()[0]
            tables = {
                r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")
            }
            problems = [] if results == ["ok"] else [f"integrity check: {r}" for r in results]
            problems += _schema_problems(version, tables)
            commands: dict[str, int] = {}
            sessions = 0
            if not problems:
                commands = dict(
                    conn.execute("SELECT status, COUNT(*) FROM command_queue GROUP BY status")
                )
                sessions = conn.execute("SELECT COUNT(*) FROM sessions").fetchone()[0]
            conn.execute("COMMIT")
    except sqlite3.DatabaseError as exc:
        return DatabaseReport(path, size_bytes=size, problems=[f"not a readable database: {exc}"])
    return DatabaseReport(path, version, size, commands, sessions, problems)


def _schema_problems(version: int, tables: set[str]) -> list[str]:
    if version > SCHEMA_VERSION:
        return [
            f"schema version {version} is newer than this ccr-box knows ({SCHEMA_VERSION}); "
            "upgrade ccr-box"
        ]
    missing = [t for t in REQUIRED_TABLES if t not in tables]
    if version == 0 or missing:
        return [
            f"not a ccr-box database (schema version {version}, missing tables: "
            f"{', '.join(missing) or 'none'})"
        ]
    return []


def backup_database(
    source: Path, target: Path, *, force: bool = False, now: datetime | None = None
) -> tuple[Path, DatabaseReport]:
    """Copy the database at ``source`` to ``target`` (a file, or a directory to put one in).

    Returns the file written and the check of the copy. Nothing is left at ``target`` when the copy
    or its check fails.
    """
    if not source.is_file():
        raise DatabaseError(f"no database at {source}; check server.data_dir (or pass --data-dir)")
    if target.is_dir():
        target = target / f"ccr-box-{_stamp(now)}.sqlite3"
    if _same_file(target, source) or any(
        _same_file(target, Path(f"{source}{s}")) for s in SIDECARS
    ):
        raise DatabaseError(f"{target} is the live database itself; choose another path")
    if not target.parent.is_dir():
        raise DatabaseError(f"directory {target.parent} does not exist")
    if target.exists() and not force:
        raise DatabaseError(f"{target} already exists; pass --force to replace it")
    with _temp_beside(target) as temp:
        with closing(_connect_read_only(source)) as src, closing(sqlite3.connect(temp)) as dst:
            src.execute("PRAGMA busy_timeout = 5000")
            try:
                src.backup(dst, pages=-1)  # all pages in one step: one consistent snapshot
            except sqlite3.DatabaseError as exc:
                raise DatabaseError(f"cannot read {source}: {exc}") from exc
            dst.execute("PRAGMA journal_mode = DELETE")  # a single self-contained file
        report = _verified(temp, f"the copy of {source}")
        _fsync(temp)
        os.replace(temp, target)
    _fsync_dir(target.parent)
    return target, DatabaseReport(
        target, report.schema_version, _file_size(target), report.commands, report.sessions
    )


def restore_database(
    backup: Path, data_dir: Path, *, now: datetime | None = None
) -> tuple[Path, Path | None]:
    """Replace the database in ``data_dir`` with ``backup``; the server must not be running.

    Returns the database path and where the previous database was kept (None if there was none).
    """
    _verified(backup, str(backup))
    target = database_path(data_dir)
    data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    with _server_lock(target), _temp_beside(target) as temp:
        with closing(_connect_read_only(backup)) as src, closing(sqlite3.connect(temp)) as dst:
            src.backup(dst, pages=-1)
            dst.execute("PRAGMA journal_mode = DELETE")
        _verified(temp, f"the copy of {backup}")
        _fsync(temp)
        kept = Path(f"{target}.before-restore-{_stamp(now)}")
        moved = target.exists()
        if moved:
            os.replace(target, kept)
        # With the lock held no connection is open: -shm is scratch, an empty -wal holds nothing,
        # and a WAL with frames belongs to the kept file.
        wal = Path(f"{target}-wal")
        if _file_size(wal):
            os.replace(wal, f"{kept}-wal")
        for scratch in (wal, Path(f"{target}-shm")):
            scratch.unlink(missing_ok=True)
        os.replace(temp, target)
        _fsync_dir(data_dir)
    return target, kept if moved else None


def _verified(path: Path, what: str) -> DatabaseReport:
    report = inspect_database(path, full=True)
    if report.problems:
        raise DatabaseError(
            f"{what} is not a usable ccr-box database: {'; '.join(report.problems)}"
        )
    return report


@contextmanager
def _server_lock(db_path: Path) -> Iterator[None]:
    fd = os.open(f"{db_path}.lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise DatabaseBusyError(
                f"a ccr-box server is using {db_path}; stop it first "
                "(Ctrl-C in its console, or `systemctl --user stop ccr-box`), then restore"
            ) from None
        yield
    finally:
        os.close(fd)  # closing the descriptor releases the lock


@contextmanager
def _temp_beside(target: Path) -> Iterator[Path]:
    """A fresh private file name in ``target``'s directory (same file system: os.replace works)."""
    fd, name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    temp = Path(name)
    try:
        yield temp
    finally:
        for suffix in ("", "-journal", *SIDECARS):
            Path(f"{temp}{suffix}").unlink(missing_ok=True)


def _same_file(a: Path, b: Path) -> bool:
    try:
        return a.exists() and b.exists() and os.path.samefile(a, b)
    except OSError:
        return False


def _file_size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _stamp(now: datetime | None) -> str:
    return (now or datetime.now()).strftime("%Y%m%d-%H%M%S")


def _size(n: int) -> str:
    if n < 1000:
        return f"{n} bytes"
    value = float(n)
    for unit in ("KB", "MB", "GB"):
        value /= 1000
        if value < 1000 or unit == "GB":
            break
    return f"{value:.1f} {unit}"
