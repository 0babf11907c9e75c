"""Named queries for ``outbox``: notification chunks waiting for Telegram (contract §8.2)."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable
from contextlib import closing
from typing import Any

from ccr_box import limits

SENT_TTL_MS = limits.ACKED_TTL_MS
FAILED_TTL_MS = limits.DEAD_TTL_MS


def add(
    conn: sqlite3.Connection,
    notification_id: str,
    session_id: str,
    chat_id: str,
    token: str,
    chunks: Iterable[tuple[int, str, str | None, str | None]],
    now: int,
    *,
    next_attempt_at: int | None = None,
    first_error: str | None = None,
) -> int:
    """Store chunks ``(seq, text, entities_json, reply_markup_json)``; returns how many.

    ``first_error``: the first chunk was already tried once and failed with this error (it then
    starts with ``attempts = 1``). ``next_attempt_at`` defaults to ``now``.
    """
    due = now if next_attempt_at is None else next_attempt_at
    rows = [
        (notification_id, seq, session_id, chat_id, token, text, entities, markup, now, due)
        for seq, text, entities, markup in chunks
    ]
    conn.executemany(
        "INSERT INTO outbox (notification_id, seq, session_id, chat_id, token, text, entities,"
        " reply_markup, created_at, next_attempt_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        rows,
    )
    if rows and first_error is not None:
        conn.execute(
            "UPDATE outbox SET attempts = 1, last_error = ? WHERE notification_id = ? AND seq = ?",
            (first_error[:500], notification_id, rows[0][1]),
        )
    return len(rows)


def due(conn: sqlite3.Connection, now: int, limit: int = 50) -> list[dict[str, Any]]:
    """Pending chunks of notifications whose first pending chunk is due, in send order."""
    with closing(
        conn.execute(
            """
        SELECT o.* FROM outbox o
         WHERE o.status = 'pending' AND o.notification_id IN (
               SELECT h.notification_id FROM outbox h
                WHERE h.status = 'pending' AND h.next_attempt_at <= :now
                  AND NOT EXISTS (SELECT 1 FROM outbox e
                                   WHERE e.notification_id = h.notification_id
                                     AND e.status = 'pending' AND e.seq < h.seq))
         ORDER BY o.id
         LIMIT :limit
        """,
            {"now": now, "limit": limit},
        )
    ) as cur:
        return [dict(r) for r in cur.fetchall()]


def mark_sent(conn: sqlite3.Connection, row_id: int, message_id: int | None, now: int) -> None:
    conn.execute(
        "UPDATE outbox SET status = 'sent', sent_at = ?, message_id = ?, attempts = attempts + 1,"
        " last_error = NULL WHERE id = ?",
        (now, message_id, row_id),
    )


def mark_retry(conn: sqlite3.Connection, row_id: int, error: str, next_attempt_at: int) -> None:
    conn.execute(
        "UPDATE outbox SET attempts = attempts + 1, last_error = ?, next_attempt_at = ?"
        " WHERE id = ?",
        (error[:500], next_attempt_at, row_id),
    )


def mark_failed(conn: sqlite3.Connection, notification_id: str, error: str) -> None:
    """Telegram refused a chunk for good: the rest of that notification cannot follow."""
    conn.execute(
        "UPDATE outbox SET status = 'failed', last_error = ? WHERE notification_id = ?"
        " AND status = 'pending'",
        (error[:500], notification_id),
    )


def list_rows(
    conn: sqlite3.Connection, *, status: str | None = None, limit: int = 100
) -> list[dict[str, Any]]:
    where, params = ("WHERE status = ?", (status,)) if status else ("", ())
    with closing(
        conn.execute(f"SELECT * FROM outbox {where} ORDER BY id DESC LIMIT ?", (*params, limit))
    ) as cur:
        return [dict(r) for r in cur.fetchall()]


def delete_finished(conn: sqlite3.Connection, now: int) -> int:
    cur = conn.execute(
        "DELETE FROM outbox WHERE (status = 'sent' AND sent_at < ?)"
        " OR (status = 'failed' AND created_at < ?)",
        (now - SENT_TTL_MS, now - FAILED_TTL_MS),
    )
    return cur.rowcount
