"""The agent's own SQLite file (never the server's): inbox, local sessions, pending notifications.

Shared by the long-running agent and the short-lived hook processes, so it uses plain ``sqlite3``
in WAL mode with a busy timeout; the agent calls it from one worker thread (``AsyncStore``).
"""

from __future__ import annotations

import fcntl
import json
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Concatenate, ParamSpec, TypeVar

from ccr_box.sqlite_thread import SqliteThread

P = ParamSpec("P")
T = TypeVar("T")

AGENT_DB = "agent.sqlite3"
DONE_TTL_MS = 48 * 3600 * 1000  # longer than the server's 24 h re-send horizon (§11.2)

SCHEMA = [
    """
    CREATE TABLE inbox (
        command_id   TEXT PRIMARY KEY,
        kind         TEXT NOT NULL DEFAULT 'command',
        session_id   TEXT,
        chat_id      TEXT NOT NULL,
        payload      TEXT NOT NULL,
        status       TEXT NOT NULL,
        error        TEXT,
        received_at  INTEGER NOT NULL,
        updated_at   INTEGER NOT NULL,
        result_sent  INTEGER NOT NULL DEFAULT 0
    );
    CREATE INDEX inbox_status ON inbox (status, received_at);
    CREATE INDEX inbox_unsent ON inbox (result_sent, status);

    CREATE TABLE local_sessions (
        session_id   TEXT PRIMARY KEY,
        pane         TEXT NOT NULL,
        tmux_socket  TEXT,
        cwd          TEXT,
        label        TEXT,
        created_at   INTEGER NOT NULL,
        updated_at   INTEGER NOT NULL
    );
    CREATE INDEX local_sessions_pane ON local_sessions (pane, tmux_socket);

    CREATE TABLE pending_notifications (
        id          INTEGER PRIMARY KEY AUTOINCREMENT,
        session_id  TEXT NOT NULL,
        body        TEXT NOT NULL,
        created_at  INTEGER NOT NULL,
        attempts    INTEGER NOT NULL DEFAULT 0,
        last_error  TEXT
    );
    """,
]


def now_ms() -> int:
    return time.time_ns() // 1_000_000


class AgentStore:
    """Synchronous access; one instance per thread."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.path = path
        # Hooks and the agent open the store concurrently; on a fresh file two processes would
        # both create the schema. An advisory lock beside it makes opening one at a time.
        with open(str(path) + ".open-lock", "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            self.conn = sqlite3.connect(str(path), isolation_level=None, timeout=5.0)
            try:
                self.conn.row_factory = sqlite3.Row
                self.conn.execute("PRAGMA journal_mode = WAL")
                self.conn.execute("PRAGMA synchronous = FULL")  # acks promise the row is on disk
                self._migrate()
            except BaseException:
                self.conn.close()
                raise

    @classmethod
    def in_dir(cls, data_dir: Path) -> AgentStore:
        return cls(data_dir / AGENT_DB)

    def _migrate(self) -> None:
        version = self.conn.execute("PRAGMA user_version").fetchone()[0]
        if version > len(SCHEMA):
            raise RuntimeError(f"{self.path} was written by a newer ccr-box (schema {version})")
        for number in range(version, len(SCHEMA)):
            self.conn.executescript(
                f"BEGIN IMMEDIATE;\n{SCHEMA[number]}\nPRAGMA user_version = {number + 1};\nCOMMIT;"
            )

    def close(self) -> None:
        self.conn.close()

    # -- inbox (§11.2) ----------------------------------------------------------------------------

    def receive(
        self,
        command_id: str,
        kind: str,
        session_id: str | None,
        chat_id: str,
        payload: dict[str, Any],
    ) -> bool:
        """Store a new command as ``received``; False when the id is already known."""
        now = now_ms()
        cur = self.conn.execute(
            "INSERT INTO inbox (command_id, kind, session_id, chat_id, payload, status, received_at,"
            " updated_at) VALUES (?, ?, ?, ?, ?, 'received', ?, ?)"
            " ON CONFLICT (command_id) DO NOTHING",
            (command_id, kind, session_id, chat_id, json.dumps(payload), now, now),
        )
        return cur.rowcount == 1

    def set_status(self, command_id: str, status: str, error: str | None = None) -> None:
        self.conn.execute(
            "UPDATE inbox SET status = ?, error = ?, updated_at = ? WHERE command_id = ?",
            (status, error, now_ms(), command_id),
        )

    def get(self, command_id: str) -> dict[str, Any] | None:
        row = self.conn.execute(
            "SELECT * FROM inbox WHERE command_id = ?", (command_id,)
        ).fetchone()
        return dict(row) if row else None

    def recover(
        self, notice: Callable[[dict[str, Any]], dict[str, Any] | None] | None = None
    ) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        """Process start: ``executing`` rows become failed (never re-run); return (to_run, interrupted).

        ``notice(row)`` is the notification that tells the user about an interrupted row (None:
        nothing to send). It is stored in ``pending_notifications`` in the same transaction that
        marks the row failed, so a crash right after recovery cannot lose it: the row would never
        be found ``executing`` again, and the stored notification is sent by the agent later.
        """
        now = now_ms()
        self.conn.execute("BEGIN IMMEDIATE")
        try:
            interrupted = [
                dict(r)
                for r in self.conn.execute(
                    "SELECT * FROM inbox WHERE status = 'executing' ORDER BY received_at, rowid"
                ).fetchall()
            ]
            for row in interrupted:
                self.set_status(row["command_id"], "failed", INTERRUPTED)
                row["status"], row["error"] = "failed", INTERRUPTED
                body = notice(row) if notice is not None else None
                if body is not None:
                    self.conn.execute(
                        "INSERT INTO pending_notifications (session_id, body, created_at)"
                        " VALUES (?, ?, ?)",
                        (body["sessionId"], json.dumps(body), now),
                    )
            to_run = [
                dict(r)
                for r in self.conn.execute(
                    "SELECT * FROM inbox WHERE status = 'received' ORDER BY received_at, rowid"
                ).fetchall()
            ]
            self.conn.execute("COMMIT")
        except BaseException:
            self.conn.execute("ROLLBACK")
            raise
        return to_run, interrupted

    def unsent_results(self) -> list[dict[str, Any]]:
        return [
            dict(r)
            for r in self.conn.execute(
                "SELECT * FROM inbox WHERE status IN ('done', 'failed') AND result_sent = 0"
                " ORDER BY updated_at, rowid"
            ).fetchall()
        ]

    def mark_result_sent(self, command_id: str) -> None:
        self.conn.execute("UPDATE inbox SET result_sent = 1 WHERE command_id = ?", (command_id,))

    def prune(self) -> int:
        cur = self.conn.execute(
            "DELETE FROM inbox WHERE status IN ('done', 'failed') AND result_sent = 1"
            " AND updated_at < ?",
            (now_ms() - DONE_TTL_MS,),
        )
        return cur.rowcount

    def list_inbox(self, limit: int = 100) -> list[dict[str, Any]]:
        rows = self.conn.execute(
            "SELECT * FROM inbox ORDER BY received_at DESC, rowid DESC LIMIT ?", (limit,)
        ).fetchall()
        return [dict(r) for r in rows]

    # -- local sessions (§11.4) -------------------------------------------------------------------

    def bind_session(
        self,
        session_id: str,
        pane: str,
        tmux_socket: str | None,
        cwd: str | None,
        label: str | None,
    ) -> list[str]:
        """Record session -> pane; returns other sessions that were bound to the same pane (removed)."""
        now = now_ms()
        self.conn.execute("BEGIN IMMEDIATE")
        try:
            displaced = [
                r[0]
                for r in self.conn.execute(
                    "SELECT session_id FROM local_sessions WHERE pane = ? AND"
                    " COALESCE(tmux_socket, '') = COALESCE(?, '') AND session_id != ?",
                    (pane, tmux_socket, session_id),
                ).fetchall()
            ]
            self.conn.executemany(
                "DELETE FROM local_sessions WHERE session_id = ?", [(s,) for s in displaced]
            )
            self.conn.execute(
                "INSERT INTO local_sessions (session_id, pane, tmux_socket, cwd, label, created_at,"
                " updated_at) VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (session_id) DO UPDATE SET"
                " pane = excluded.pane, tmux_socket = excluded.tmux_socket, cwd = excluded.cwd,"
                " label = excluded.label, updated_at = excluded.updated_at",
                (session_id, pane, tmux_socket, cwd, label, now, now),
            )
            self.conn.execute("COMMIT")
        except BaseException:
            self.conn.execute("ROLLBACK")
            raise
        return displaced

    def session(self, session_id: str) -> dict[str, Any] | None:
        row = self.conn.execute(
            "SELECT * FROM local_sessions WHERE session_id = ?", (session_id,)
        ).fetchone()
        return dict(row) if row else None

    def sessions(self) -> list[dict[str, Any]]:
        rows = self.conn.execute("SELECT * FROM local_sessions ORDER BY updated_at DESC").fetchall()
        return [dict(r) for r in rows]

    def forget_session(self, session_id: str) -> bool:
        cur = self.conn.execute("DELETE FROM local_sessions WHERE session_id = ?", (session_id,))
        return cur.rowcount > 0

    # -- notifications the server could not take yet ----------------------------------------------

    def keep_notification(self, session_id: str, body: dict[str, Any], error: str) -> None:
        self.conn.execute(
            "INSERT INTO pending_notifications (session_id, body, created_at, last_error)"
            " VALUES (?, ?, ?, ?)",
            (session_id, json.dumps(body), now_ms(), error[:300]),
        )

    def pending_notifications(self) -> list[dict[str, Any]]:
        rows = self.conn.execute("SELECT * FROM pending_notifications ORDER BY id").fetchall()
        return [{**dict(r), "body": json.loads(r["body"])} for r in rows]

    def drop_notification(self, notification_id: int) -> None:
        self.conn.execute("DELETE FROM pending_notifications WHERE id = ?", (notification_id,))

    def notification_failed(self, notification_id: int, error: str) -> None:
        self.conn.execute(
            "UPDATE pending_notifications SET attempts = attempts + 1, last_error = ? WHERE id = ?",
            (error[:300], notification_id),
        )


INTERRUPTED = "interrupted by agent restart (not re-run)"


class AsyncStore:
    """Runs :class:`AgentStore` calls on one dedicated thread so the event loop never blocks.

    The thread and its connection are a :class:`~ccr_box.sqlite_thread.SqliteThread` (the class
    the server's reader uses too); the store is opened on that thread exactly as a hook process
    opens it (:class:`AgentStore`: the open lock, WAL, ``synchronous = FULL``, the migration).
    """

    def __init__(self, path: Path) -> None:
        self._thread = SqliteThread("ccr-box-inbox")
        self._path = path
        self._store: AgentStore | None = None

    async def open(self) -> AsyncStore:
        def connect() -> sqlite3.Connection:
            store = AgentStore(self._path)
            self._store = store
            return store.conn

        await self._thread.open(connect)
        return self

    async def run(
        self, method: Callable[Concatenate[AgentStore, P], T], /, *args: P.args, **kwargs: P.kwargs
    ) -> T:
        """``method(store, *args, **kwargs)`` on the store's thread, typed like the method:
        ``await s.run(AgentStore.get, command_id)`` is a ``dict[str, Any] | None``."""
        store = self._store
        assert store is not None, "AsyncStore.open() first"
        return await self._thread.run(lambda _conn: method(store, *args, **kwargs))

    async def call(self, name: str, *args: object) -> object:
        """``store.<name>(*args)`` on the store's thread, the method looked up by name (for tests;
        code uses :meth:`run`, which the type checker follows)."""
        return await self.run(lambda store: getattr(store, name)(*args))

    async def close(self) -> None:
        """Close the connection on its thread (what :meth:`AgentStore.close` does) and stop it."""
        await self._thread.close()
        self._store = None
