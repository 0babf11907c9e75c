"""``seen_updates`` (Telegram de-duplication) and ``machines`` (presence history)."""

from __future__ import annotations

import sqlite3
from contextlib import closing
from typing import Any


def seen(conn: sqlite3.Connection, update_id: int) -> bool:
    with closing(
        conn.execute("SELECT 1 FROM seen_updates WHERE update_id = ?", (update_id,))
    ) as cur:
        return cur.fetchone() is not None


def record(conn: sqlite3.Connection, update_id: int, now: int) -> bool:
    """Insert the update id; False when it was already there (a concurrent delivery won)."""
    cur = conn.execute(
        "INSERT INTO seen_updates (update_id, created_at) VALUES (?, ?)"
        " ON CONFLICT (update_id) DO NOTHING",
        (update_id, now),
    )
    return cur.rowcount == 1


def delete_older_than(conn: sqlite3.Connection, cutoff: int) -> int:
    cur = conn.execute("DELETE FROM seen_updates WHERE created_at < ?", (cutoff,))
    return cur.rowcount


def machine_connected(conn: sqlite3.Connection, machine_id: str, now: int) -> None:
    conn.execute(
        "INSERT INTO machines (machine_id, first_connected_at, last_connected_at)"
        " VALUES (?, ?, ?)"
        " ON CONFLICT (machine_id) DO UPDATE SET last_connected_at = excluded.last_connected_at",
        (machine_id, now, now),
    )


def machine_disconnected(
    conn: sqlite3.Connection, machine_id: str, now: int, code: int | None, reason: str | None
) -> None:
    conn.execute(
        "UPDATE machines SET last_disconnected_at = ?, last_close_code = ?,"
        " last_close_reason = ? WHERE machine_id = ?",
        (now, code, reason, machine_id),
    )


def list_machines(conn: sqlite3.Connection) -> list[dict[str, Any]]:
    with closing(conn.execute("SELECT * FROM machines ORDER BY machine_id")) as cur:
        return [dict(r) for r in cur.fetchall()]
