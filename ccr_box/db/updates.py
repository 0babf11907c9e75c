"""``seen_updates`` (Telegram de-duplication) and ``machines`` (presence history)."""

from __future__ import annotations

from typing import Any

import aiosqlite


async def seen(conn: aiosqlite.Connection, update_id: int) -> bool:
    async with conn.execute("SELECT 1 FROM seen_updates WHERE update_id = ?", (update_id,)) as cur:
        return await cur.fetchone() is not None


async def record(conn: aiosqlite.Connection, update_id: int, now: int) -> bool:
    """Insert the update id; False when it was already there (a concurrent delivery won)."""
    cur = await conn.execute(
        "INSERT INTO seen_updates (update_id, created_at) VALUES (?, ?)"
        " ON CONFLICT (update_id) DO NOTHING",
        (update_id, now),
    )
    return cur.rowcount == 1


async def delete_older_than(conn: aiosqlite.Connection, cutoff: int) -> int:
    cur = await conn.execute("DELETE FROM seen_updates WHERE created_at < ?", (cutoff,))
    return cur.rowcount


async def machine_connected(conn: aiosqlite.Connection, machine_id: str, now: int) -> None:
    await conn.execute(
        "INSERT INTO machines (machine_id, first_connected_at, last_connected_at)"
        " VALUES (?, ?, ?)"
        " ON CONFLICT (machine_id) DO UPDATE SET last_connected_at = excluded.last_connected_at",
        (machine_id, now, now),
    )


async def machine_disconnected(
    conn: aiosqlite.Connection, machine_id: str, now: int, code: int | None, reason: str | None
) -> None:
    await conn.execute(
        "UPDATE machines SET last_disconnected_at = ?, last_close_code = ?,"
        " last_close_reason = ? WHERE machine_id = ?",
        (now, code, reason, machine_id),
    )


async def list_machines(conn: aiosqlite.Connection) -> list[dict[str, Any]]:
    async with conn.execute("SELECT * FROM machines ORDER BY machine_id") as cur:
        return [dict(r) for r in await cur.fetchall()]
