"""Named queries for ``sessions`` and ``messages`` (reply routing and tokens)."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable
from contextlib import closing
from typing import Any

SESSION_COLUMNS = "session_id, machine_id, label, created_at, updated_at"


def _dict(row: sqlite3.Row | None) -> dict[str, Any] | None:
    return dict(row) if row is not None else None


def get(conn: sqlite3.Connection, session_id: str) -> dict[str, Any] | None:
    with closing(
        conn.execute(f"SELECT {SESSION_COLUMNS} FROM sessions WHERE session_id = ?", (session_id,))
    ) as cur:
        return _dict(cur.fetchone())


def list_all(conn: sqlite3.Connection) -> list[dict[str, Any]]:
    with closing(
        conn.execute(f"SELECT {SESSION_COLUMNS} FROM sessions ORDER BY updated_at DESC, session_id")
    ) as cur:
        return [dict(r) for r in cur.fetchall()]


def count(conn: sqlite3.Connection) -> int:
    with closing(conn.execute("SELECT COUNT(*) FROM sessions")) as cur:
        row = cur.fetchone()
    return int(row[0])


def upsert(
    conn: sqlite3.Connection,
    session_id: str,
    machine_id: str,
    label: str | None,
    now: int,
    *,
    max_sessions: int,
) -> bool:
    """Insert or update a session. False when it is new and the table is full."""
    cur = conn.execute(
        "UPDATE sessions SET machine_id = ?, label = ?, updated_at = ? WHERE session_id = ?",
        (machine_id, label, now, session_id),
    )
    if cur.rowcount:
        return True
    if count(conn) >= max_sessions:
        return False
    conn.execute(
        "INSERT INTO sessions (session_id, machine_id, label, created_at, updated_at)"
        " VALUES (?, ?, ?, ?, ?)",
        (session_id, machine_id, label, now, now),
    )
    return True


def touch(conn: sqlite3.Connection, session_id: str, now: int) -> None:
    conn.execute("UPDATE sessions SET updated_at = ? WHERE session_id = ?", (now, session_id))


def move(conn: sqlite3.Connection, session_id: str, machine_id: str, now: int) -> bool:
    cur = conn.execute(
        "UPDATE sessions SET machine_id = ?, updated_at = ? WHERE session_id = ?",
        (machine_id, now, session_id),
    )
    return cur.rowcount > 0


def delete(conn: sqlite3.Connection, session_id: str) -> bool:
    """Delete a session and all its message mappings (queued commands stay)."""
    conn.execute("DELETE FROM messages WHERE session_id = ?", (session_id,))
    cur = conn.execute("DELETE FROM sessions WHERE session_id = ?", (session_id,))
    return cur.rowcount > 0


def map_messages(
    conn: sqlite3.Connection,
    rows: Iterable[tuple[str, int, str, str]],
    now: int,
) -> None:
    """Upsert (chat_id, message_id, session_id, token) mappings."""
    conn.executemany(
        "INSERT INTO messages (chat_id, message_id, session_id, token, created_at)"
        " VALUES (?, ?, ?, ?, ?)"
        " ON CONFLICT (chat_id, message_id) DO UPDATE SET"
        " session_id = excluded.session_id, token = excluded.token,"
        " created_at = excluded.created_at",
        [(chat, msg, sess, tok, now) for chat, msg, sess, tok in rows],
    )


def session_for_reply(conn: sqlite3.Connection, chat_id: str, message_id: int) -> str | None:
    with closing(
        conn.execute(
            "SELECT session_id FROM messages WHERE chat_id = ? AND message_id = ?",
            (chat_id, message_id),
        )
    ) as cur:
        row = cur.fetchone()
    return row[0] if row else None


def session_for_token(conn: sqlite3.Connection, token: str, chat_id: str) -> str | None:
    with closing(
        conn.execute(
            "SELECT session_id FROM messages WHERE token = ? AND chat_id = ?"
            " ORDER BY created_at DESC LIMIT 1",
            (token, chat_id),
        )
    ) as cur:
        row = cur.fetchone()
    return row[0] if row else None


def live_in_chat(conn: sqlite3.Connection, chat_id: str) -> list[dict[str, Any]]:
    """Sessions with a mapping in this chat, newest activity first, with their newest token."""
    with closing(
        conn.execute(
            """
        SELECT s.session_id, s.machine_id, s.label, s.updated_at,
               (SELECT m2.token FROM messages m2
                 WHERE m2.session_id = s.session_id AND m2.chat_id = :chat
                 ORDER BY m2.created_at DESC, m2.message_id DESC LIMIT 1) AS token
          FROM sessions s
         WHERE EXISTS (SELECT 1 FROM messages m
                        WHERE m.session_id = s.session_id AND m.chat_id = :chat)
         ORDER BY s.updated_at DESC, s.session_id
        """,
            {"chat": chat_id},
        )
    ) as cur:
        return [dict(r) for r in cur.fetchall()]


def delete_expired(conn: sqlite3.Connection, cutoff: int) -> tuple[int, int]:
    """Retention: sessions idle since before ``cutoff`` (with their mappings), old mappings."""
    conn.execute(
        "DELETE FROM messages WHERE session_id IN"
        " (SELECT session_id FROM sessions WHERE updated_at < ?)",
        (cutoff,),
    )
    sessions = conn.execute("DELETE FROM sessions WHERE updated_at < ?", (cutoff,))
    messages = conn.execute("DELETE FROM messages WHERE created_at < ?", (cutoff,))
    return sessions.rowcount, messages.rowcount
