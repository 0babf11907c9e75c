"""One sqlite3 connection confined to one worker thread, awaited from the event loop.

Shared by the server's read-only reader (``ccr_box.db.Database.read``) and the agent's inbox
(``ccr_box.agent.store.AsyncStore``); it lives outside both packages because the agent never imports
``ccr_box.db``. The connection is created, used and closed on the same thread, so it keeps
sqlite3's ``check_same_thread`` guarantee, and jobs run one at a time in the order they were
submitted.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TypeVar

from ccr_box.errors import DatabaseError

T = TypeVar("T")


def connect(path: Path, *pragmas: str) -> sqlite3.Connection:
    """A connection in autocommit mode (``BEGIN``/``COMMIT`` are explicit) with ``sqlite3.Row``
    rows, after running ``pragmas`` in order. Call it on the thread that will use it."""
    conn = sqlite3.connect(str(path), isolation_level=None, check_same_thread=True)
    try:
        conn.row_factory = sqlite3.Row
        for pragma in pragmas:
            conn.execute(pragma)
    except BaseException:
        conn.close()
        raise
    return conn


class SqliteThread:
    """One sqlite3 connection on one worker thread; ``await run(fn)`` is ``fn(conn)`` there.

    :meth:`open` runs a ``connect`` callable on the thread (so whatever it does, such as taking a
    lock, migrating, setting pragmas, happens there too); :meth:`close` closes the connection on
    the thread and stops it. :meth:`run` before :meth:`open` or after :meth:`close` raises
    :class:`~ccr_box.errors.DatabaseError`.
    """

    def __init__(self, name: str) -> None:
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix=name)
        self._conn: sqlite3.Connection | None = None

    async def open(self, connect: Callable[[], sqlite3.Connection]) -> None:
        if self._conn is not None:
            raise DatabaseError("database is already open")
        self._conn = await self._call(connect)

    async def run(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        conn = self._conn
        if conn is None:
            raise DatabaseError("database is closed")
        return await self._call(lambda: fn(conn))

    async def close(self) -> None:
        """Close the connection (if open) and stop the thread; safe to call twice."""
        conn, self._conn = self._conn, None
        if conn is not None:
            await self._call(conn.close)
        self._pool.shutdown(wait=True)

    async def _call(self, fn: Callable[[], T]) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._pool, fn)
