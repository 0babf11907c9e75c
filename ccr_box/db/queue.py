"""Named queries for ``command_queue``, the durable per-machine outbox (contract §6)."""

from __future__ import annotations

import sqlite3
from contextlib import closing
from dataclasses import dataclass
from typing import Any

from ccr_box import limits

STATUSES = ("pending", "sent", "acked", "dead")


@dataclass(frozen=True)
class NewCommand:
    command_id: str
    machine_id: str
    session_id: str | None
    command: str
    chat_id: str
    command_type: str = "execute"
    directory: str | None = None
    update_id: int | None = None


def get(conn: sqlite3.Connection, command_id: str) -> dict[str, Any] | None:
    with closing(
        conn.execute("SELECT * FROM command_queue WHERE command_id = ?", (command_id,))
    ) as c:
        row = c.fetchone()
    return dict(row) if row else None


def count_active(conn: sqlite3.Connection, machine_id: str) -> int:
    with closing(
        conn.execute(
            "SELECT COUNT(*) FROM command_queue WHERE machine_id = ? AND status IN ('pending', 'sent')",
            (machine_id,),
        )
    ) as cur:
        row = cur.fetchone()
    return int(row[0])


def enqueue(conn: sqlite3.Connection, cmd: NewCommand, now: int) -> None:
    conn.execute(
        "INSERT INTO command_queue (command_id, machine_id, session_id, command_type, command,"
        " directory, chat_id, update_id, status, attempts, created_at, expires_at, next_retry_at)"
        " VALUES (?, ?, ?, ?, ?, ?, ?, ?, 'pending', 0, ?, ?, ?)",
        (
            cmd.command_id,
            cmd.machine_id,
            cmd.session_id,
            cmd.command_type,
            cmd.command,
            cmd.directory,
            cmd.chat_id,
            cmd.update_id,
            now,
            now + limits.COMMAND_EXPIRY_MS,
            now,
        ),
    )


def due_for_flush(conn: sqlite3.Connection, machine_id: str, now: int) -> list[dict[str, Any]]:
    """Rows to send now, respecting the in-flight limit and batch size (§6.3 steps 1-3)."""
    with closing(
        conn.execute(
            "SELECT COUNT(*) FROM command_queue"
            " WHERE machine_id = ? AND status = 'sent' AND next_retry_at > ?",
            (machine_id, now),
        )
    ) as cur:
        inflight = int((cur.fetchone())[0])
    if inflight >= limits.MAX_INFLIGHT_PER_MACHINE:
        return []
    batch = min(limits.MAX_FLUSH_BATCH, limits.MAX_INFLIGHT_PER_MACHINE - inflight)
    with closing(
        conn.execute(
            "SELECT * FROM command_queue"
            " WHERE machine_id = ? AND status IN ('pending', 'sent') AND next_retry_at <= ?"
            " AND attempts < ? AND expires_at > ?"
            " ORDER BY created_at, rowid LIMIT ?",
            (machine_id, now, limits.MAX_ATTEMPTS, now, batch),
        )
    ) as cur:
        return [dict(r) for r in cur.fetchall()]


def mark_sent(conn: sqlite3.Connection, command_ids: list[str], now: int) -> None:
    # The status guard keeps an ack that raced ahead of this write from being undone.
    conn.executemany(
        "UPDATE command_queue SET status = 'sent', attempts = attempts + 1, sent_at = ?,"
        " next_retry_at = ? WHERE command_id = ? AND status IN ('pending', 'sent')",
        [(now, now + limits.RESEND_INTERVAL_MS, cid) for cid in command_ids],
    )


def claim_due(conn: sqlite3.Connection, machine_id: str, now: int) -> list[dict[str, Any]]:
    """Select the rows to send now (§6.3) and mark them sent in the same transaction.

    Returns the rows as they were before the claim, so a failed send can be undone exactly
    (:func:`unclaim_failed`). Claiming under the writer's ``BEGIN IMMEDIATE`` is what makes
    overlapping flushes unable to send a row twice.
    """
    rows = due_for_flush(conn, machine_id, now)
    if rows:
        mark_sent(conn, [r["command_id"] for r in rows], now)
    return rows


def unclaim_failed(conn: sqlite3.Connection, before: dict[str, Any], error: str, now: int) -> None:
    """The transport raised: the row keeps its status, counts the attempt, backs off (§6.4)."""
    delay = limits.send_backoff_ms(before["attempts"])
    conn.execute(
        "UPDATE command_queue SET status = ?, sent_at = ?, attempts = ?, next_retry_at = ?,"
        " last_error = ? WHERE command_id = ? AND status = 'sent'",
        (
            before["status"],
            before["sent_at"],
            before["attempts"] + 1,
            now + delay,
            error[:500],
            before["command_id"],
        ),
    )


def requeue_sent(conn: sqlite3.Connection, machine_id: str, now: int) -> int:
    """A new connection of the machine: its ``sent`` rows go back to ``pending`` at once.

    So do ``pending`` rows waiting out a send backoff (§6.4): their send failed because the old
    connection was dying, and the new one must get them before any later row of their session
    (a flush sends due rows oldest first; a row left in backoff would be overtaken). Rows out of
    attempts keep their ``next_retry_at``: the dead-letter timing of §6.4 does not change.
    """
    cur = conn.execute(
        "UPDATE command_queue SET status = 'pending', next_retry_at = ?"
        " WHERE machine_id = ? AND (status = 'sent'"
        " OR (status = 'pending' AND next_retry_at > ? AND attempts < ?))",
        (now, machine_id, now, limits.MAX_ATTEMPTS),
    )
    return cur.rowcount


def acknowledge(
    conn: sqlite3.Connection, command_id: str, machine_id: str, now: int
) -> dict[str, Any] | None:
    """Mark the machine's row acked. Returns the row as it was before, or None if unknown."""
    with closing(
        conn.execute(
            "SELECT * FROM command_queue WHERE command_id = ? AND machine_id = ?",
            (command_id, machine_id),
        )
    ) as cur:
        row = cur.fetchone()
    if row is None:
        return None
    before = dict(row)
    if before["status"] != "acked":
        conn.execute(
            "UPDATE command_queue SET status = 'acked', acked_at = ? WHERE command_id = ?",
            (now, command_id),
        )
    return before


def store_result(
    conn: sqlite3.Connection,
    command_id: str,
    success: bool,
    error: str | None,
    now: int,
) -> bool:
    """Store the first execution result of a row; False when it already had one."""
    cur = conn.execute(
        "UPDATE command_queue SET result = ?, result_error = ?, result_at = ?"
        " WHERE command_id = ? AND result IS NULL",
        ("ok" if success else "failed", error, now, command_id),
    )
    return cur.rowcount == 1


def dead_letter_due(conn: sqlite3.Connection, now: int) -> list[dict[str, Any]]:
    """Move rows past max attempts or expiry to ``dead``; return them (with their reason)."""
    with closing(
        conn.execute(
            "SELECT * FROM command_queue WHERE status IN ('pending', 'sent') AND"
            " ((attempts >= ? AND next_retry_at <= ?) OR expires_at <= ?)"
            " ORDER BY created_at, rowid",
            (limits.MAX_ATTEMPTS, now, now),
        )
    ) as cur:
        rows = [dict(r) for r in cur.fetchall()]
    for row in rows:
        reason = "expired" if row["expires_at"] <= now else "max_attempts"
        row["dead_reason"] = reason
        row["dead_at"] = now
        row["status"] = "dead"
        conn.execute(
            "UPDATE command_queue SET status = 'dead', dead_at = ?, dead_reason = ?"
            " WHERE command_id = ?",
            (now, reason, row["command_id"]),
        )
    return rows


def revive(
    conn: sqlite3.Connection,
    command_id: str,
    now: int,
    *,
    session_id: str | None = None,
    machine_id: str | None = None,
) -> None:
    """Operator retry / reassign: back to ``pending`` with a fresh budget (§6.1)."""
    conn.execute(
        "UPDATE command_queue SET status = 'pending', attempts = 0, next_retry_at = ?,"
        " expires_at = ?, dead_at = NULL, dead_reason = NULL, last_error = NULL,"
        " session_id = COALESCE(?, session_id), machine_id = COALESCE(?, machine_id)"
        " WHERE command_id = ?",
        (now, now + limits.COMMAND_EXPIRY_MS, session_id, machine_id, command_id),
    )


def list_commands(
    conn: sqlite3.Connection,
    *,
    status: str | None = None,
    machine_id: str | None = None,
    limit: int = 100,
) -> list[dict[str, Any]]:
    clauses, params = [], []
    if status:
        clauses.append("status = ?")
        params.append(status)
    if machine_id:
        clauses.append("machine_id = ?")
        params.append(machine_id)
    where = f"WHERE {' AND '.join(clauses)}" if clauses else ""
    with closing(
        conn.execute(
            f"SELECT * FROM command_queue {where} ORDER BY created_at DESC, rowid DESC LIMIT ?",
            (*params, limit),
        )
    ) as cur:
        return [dict(r) for r in cur.fetchall()]


def counts_by_machine(conn: sqlite3.Connection) -> dict[str, dict[str, int]]:
    """{machine_id: {"pending": n, "sent": n, "dead": n}} for machines with such rows."""
    with closing(
        conn.execute(
            "SELECT machine_id, status, COUNT(*) FROM command_queue"
            " WHERE status IN ('pending', 'sent', 'dead') GROUP BY machine_id, status"
        )
    ) as cur:
        rows = cur.fetchall()
    counts: dict[str, dict[str, int]] = {}
    for machine_id, status, n in rows:
        counts.setdefault(machine_id, {"pending": 0, "sent": 0, "dead": 0})[status] = n
    return counts


def delete_finished(conn: sqlite3.Connection, now: int) -> int:
    """Retention (§9): acked rows after 24 h, dead rows after 7 days."""
    acked = conn.execute(
        "DELETE FROM command_queue WHERE status = 'acked' AND acked_at < ?",
        (now - limits.ACKED_TTL_MS,),
    )
    dead = conn.execute(
        "DELETE FROM command_queue WHERE status = 'dead' AND dead_at < ?",
        (now - limits.DEAD_TTL_MS,),
    )
    return acked.rowcount + dead.rowcount


def revive_dead_of_machine(conn: sqlite3.Connection, machine_id: str, now: int) -> list[str]:
    """Operator "retry dead" of a machine: every dead row back to ``pending`` (see revive)."""
    with closing(
        conn.execute(
            "SELECT command_id FROM command_queue WHERE machine_id = ? AND status = 'dead'"
            " ORDER BY created_at, rowid",
            (machine_id,),
        )
    ) as cur:
        ids = [r[0] for r in cur.fetchall()]
    for command_id in ids:
        revive(conn, command_id, now)
    return ids


def move_session_commands(
    conn: sqlite3.Connection, session_id: str, machine_id: str, now: int
) -> tuple[int, int]:
    """A session moved machines: its ``pending`` rows follow it (due now) and its ``dead`` rows
    follow it staying dead (an operator retry then targets the new machine). ``sent`` and
    ``acked`` rows stay with the machine that has them. Returns (pending moved, dead moved).
    """
    pending = conn.execute(
        "UPDATE command_queue SET machine_id = ?, next_retry_at = MIN(next_retry_at, ?)"
        " WHERE session_id = ? AND status = 'pending' AND machine_id != ?",
        (machine_id, now, session_id, machine_id),
    )
    dead = conn.execute(
        "UPDATE command_queue SET machine_id = ?"
        " WHERE session_id = ? AND status = 'dead' AND machine_id != ?",
        (machine_id, session_id, machine_id),
    )
    return pending.rowcount, dead.rowcount
