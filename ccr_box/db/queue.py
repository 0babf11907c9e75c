"""Named queries for ``command_queue``, the durable per-machine outbox (contract §6)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import aiosqlite

from ccr_box import limits

ACTIVE = ("pending", "sent")
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


async def get(conn: aiosqlite.Connection, command_id: str) -> dict[str, Any] | None:
    async with conn.execute("SELECT * FROM command_queue WHERE command_id = ?", (command_id,)) as c:
        row = await c.fetchone()
    return dict(row) if row else None


async def count_active(conn: aiosqlite.Connection, machine_id: str) -> int:
    async with conn.execute(
        "SELECT COUNT(*) FROM command_queue WHERE machine_id = ? AND status IN ('pending', 'sent')",
        (machine_id,),
    ) as cur:
        row = await cur.fetchone()
    return int(row[0])


async def enqueue(conn: aiosqlite.Connection, cmd: NewCommand, now: int) -> None:
    await conn.execute(
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


async def due_for_flush(
    conn: aiosqlite.Connection, machine_id: str, now: int
) -> list[dict[str, Any]]:
    """Rows to send now, respecting the in-flight limit and batch size (§6.3 steps 1-3)."""
    async with conn.execute(
        "SELECT COUNT(*) FROM command_queue"
        " WHERE machine_id = ? AND status = 'sent' AND next_retry_at > ?",
        (machine_id, now),
    ) as cur:
        inflight = int((await cur.fetchone())[0])
    if inflight >= limits.MAX_INFLIGHT_PER_MACHINE:
        return []
    batch = min(limits.MAX_FLUSH_BATCH, limits.MAX_INFLIGHT_PER_MACHINE - inflight)
    async with conn.execute(
        "SELECT * FROM command_queue"
        " WHERE machine_id = ? AND status IN ('pending', 'sent') AND next_retry_at <= ?"
        " AND attempts < ? AND expires_at > ?"
        " ORDER BY created_at, rowid LIMIT ?",
        (machine_id, now, limits.MAX_ATTEMPTS, now, batch),
    ) as cur:
        return [dict(r) for r in await cur.fetchall()]


async def mark_sent(conn: aiosqlite.Connection, command_ids: list[str], now: int) -> None:
    # The status guard keeps an ack that raced ahead of this write from being undone.
    await conn.executemany(
        "UPDATE command_queue SET status = 'sent', attempts = attempts + 1, sent_at = ?,"
        " next_retry_at = ? WHERE command_id = ? AND status IN ('pending', 'sent')",
        [(now, now + limits.RESEND_INTERVAL_MS, cid) for cid in command_ids],
    )


async def mark_send_failed(
    conn: aiosqlite.Connection, command_id: str, error: str, now: int
) -> None:
    row = await get(conn, command_id)
    if row is None or row["status"] not in ACTIVE:
        return
    delay = limits.send_backoff_ms(row["attempts"])
    await conn.execute(
        "UPDATE command_queue SET attempts = attempts + 1, next_retry_at = ?, last_error = ?"
        " WHERE command_id = ?",
        (now + delay, error[:500], command_id),
    )


async def requeue_sent(conn: aiosqlite.Connection, machine_id: str, now: int) -> int:
    """A new connection of the machine: its ``sent`` rows go back to ``pending`` at once."""
    cur = await conn.execute(
        "UPDATE command_queue SET status = 'pending', next_retry_at = ?"
        " WHERE machine_id = ? AND status = 'sent'",
        (now, machine_id),
    )
    return cur.rowcount


async def acknowledge(
    conn: aiosqlite.Connection, command_id: str, machine_id: str, now: int
) -> dict[str, Any] | None:
    """Mark the machine's row acked. Returns the row as it was before, or None if unknown."""
    async with conn.execute(
        "SELECT * FROM command_queue WHERE command_id = ? AND machine_id = ?",
        (command_id, machine_id),
    ) as cur:
        row = await cur.fetchone()
    if row is None:
        return None
    before = dict(row)
    if before["status"] != "acked":
        await conn.execute(
            "UPDATE command_queue SET status = 'acked', acked_at = ? WHERE command_id = ?",
            (now, command_id),
        )
    return before


async def store_result(
    conn: aiosqlite.Connection,
    command_id: str,
    success: bool,
    error: str | None,
    now: int,
) -> bool:
    """Store the first execution result of a row; False when it already had one."""
    cur = await conn.execute(
        "UPDATE command_queue SET result = ?, result_error = ?, result_at = ?"
        " WHERE command_id = ? AND result IS NULL",
        ("ok" if success else "failed", error, now, command_id),
    )
    return cur.rowcount == 1


async def dead_letter_due(conn: aiosqlite.Connection, now: int) -> list[dict[str, Any]]:
    """Move rows past max attempts or expiry to ``dead``; return them (with their reason)."""
    async with conn.execute(
        "SELECT * FROM command_queue WHERE status IN ('pending', 'sent') AND"
        " ((attempts >= ? AND next_retry_at <= ?) OR expires_at <= ?)"
        " ORDER BY created_at, rowid",
        (limits.MAX_ATTEMPTS, now, now),
    ) as cur:
        rows = [dict(r) for r in await cur.fetchall()]
    for row in rows:
        reason = "expired" if row["expires_at"] <= now else "max_attempts"
        row["dead_reason"] = reason
        row["dead_at"] = now
        row["status"] = "dead"
        await conn.execute(
            "UPDATE command_queue SET status = 'dead', dead_at = ?, dead_reason = ?"
            " WHERE command_id = ?",
            (now, reason, row["command_id"]),
        )
    return rows


async def revive(
    conn: aiosqlite.Connection,
    command_id: str,
    now: int,
    *,
    session_id: str | None = None,
    machine_id: str | None = None,
) -> None:
    """Operator retry / reassign: back to ``pending`` with a fresh budget (§6.1)."""
    await conn.execute(
        "UPDATE command_queue SET status = 'pending', attempts = 0, next_retry_at = ?,"
        " expires_at = ?, dead_at = NULL, dead_reason = NULL, last_error = NULL,"
        " session_id = COALESCE(?, session_id), machine_id = COALESCE(?, machine_id)"
        " WHERE command_id = ?",
        (now, now + limits.COMMAND_EXPIRY_MS, session_id, machine_id, command_id),
    )


async def list_commands(
    conn: aiosqlite.Connection,
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
    async with conn.execute(
        f"SELECT * FROM command_queue {where} ORDER BY created_at DESC, rowid DESC LIMIT ?",
        (*params, limit),
    ) as cur:
        return [dict(r) for r in await cur.fetchall()]


async def counts_by_machine(conn: aiosqlite.Connection) -> dict[str, dict[str, int]]:
    """{machine_id: {"pending": n, "sent": n, "dead": n}} for machines with such rows."""
    async with conn.execute(
        "SELECT machine_id, status, COUNT(*) FROM command_queue"
        " WHERE status IN ('pending', 'sent', 'dead') GROUP BY machine_id, status"
    ) as cur:
        rows = await cur.fetchall()
    counts: dict[str, dict[str, int]] = {}
    for machine_id, status, n in rows:
        counts.setdefault(machine_id, {"pending": 0, "sent": 0, "dead": 0})[status] = n
    return counts


async def delete_finished(conn: aiosqlite.Connection, now: int) -> int:
    """Retention (§9): acked rows after 24 h, dead rows after 7 days."""
    acked = await conn.execute(
        "DELETE FROM command_queue WHERE status = 'acked' AND acked_at < ?",
        (now - limits.ACKED_TTL_MS,),
    )
    dead = await conn.execute(
        "DELETE FROM command_queue WHERE status = 'dead' AND dead_at < ?",
        (now - limits.DEAD_TTL_MS,),
    )
    return acked.rowcount + dead.rowcount
