"""Named read-only queries for observability: ``/ready`` and ``/metrics`` (run on the reader)."""

from __future__ import annotations

import sqlite3
from contextlib import closing
from dataclasses import dataclass

from ccr_box.db.queue import STATUSES


@dataclass(frozen=True)
class Counts:
    """Row counts a scrape reports as gauges."""

    commands: dict[str, int]  # every status of ``queue.STATUSES``, zero when absent
    outbox_pending: int
    sessions: int


def check(conn: sqlite3.Connection) -> None:
    """A trivial query that still reads the database file (the schema page), not just the library.

    Raises ``sqlite3.Error`` when the database cannot be read.
    """
    with closing(conn.execute("SELECT COUNT(*) FROM sqlite_master")) as cur:
        cur.fetchone()


def counts(conn: sqlite3.Connection) -> Counts:
    """Commands by status, pending outbox chunks and sessions, in one read transaction."""
    conn.execute("BEGIN")  # one snapshot for the three counts
    try:
        with closing(
            conn.execute("SELECT status, COUNT(*) FROM command_queue GROUP BY status")
        ) as cur:
            found = {status: int(n) for status, n in cur.fetchall()}
        with closing(conn.execute("SELECT COUNT(*) FROM outbox WHERE status = 'pending'")) as cur:
            outbox_pending = int(cur.fetchone()[0])
        with closing(conn.execute("SELECT COUNT(*) FROM sessions")) as cur:
            sessions = int(cur.fetchone()[0])
    finally:
        conn.execute("COMMIT")
    return Counts(
        commands={status: found.get(status, 0) for status in STATUSES},
        outbox_pending=outbox_pending,
        sessions=sessions,
    )
