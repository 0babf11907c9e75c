"""Ordered schema migrations. The applied version lives in ``PRAGMA user_version``.

Append new migrations to ``MIGRATIONS``; never edit one that has shipped.
"""

from __future__ import annotations

import sqlite3
from contextlib import closing

from ccr_box.errors import SchemaTooNewError

MIGRATIONS: list[str] = [
    # 1: the four tables of the CCR Worker design, plus machines and the notification outbox.
    """
    CREATE TABLE sessions (
        session_id  TEXT PRIMARY KEY,
        machine_id  TEXT NOT NULL,
        label       TEXT,
        created_at  INTEGER NOT NULL,
        updated_at  INTEGER NOT NULL
    );
    CREATE INDEX sessions_machine ON sessions (machine_id);
    CREATE INDEX sessions_updated ON sessions (updated_at);

    CREATE TABLE messages (
        chat_id     TEXT NOT NULL,
        message_id  INTEGER NOT NULL,
        session_id  TEXT NOT NULL,
        token       TEXT NOT NULL,
        created_at  INTEGER NOT NULL,
        PRIMARY KEY (chat_id, message_id)
    ) WITHOUT ROWID;
    CREATE INDEX messages_session ON messages (session_id);
    -- created_at last so "newest row of a token in a chat" is an index walk, not a sort
    CREATE INDEX messages_token_chat ON messages (token, chat_id, created_at);
    CREATE INDEX messages_created ON messages (created_at);

    CREATE TABLE command_queue (
        command_id    TEXT PRIMARY KEY,
        machine_id    TEXT NOT NULL,
        session_id    TEXT,
        command_type  TEXT NOT NULL DEFAULT 'execute',
        command       TEXT NOT NULL,
        directory     TEXT,
        chat_id       TEXT NOT NULL,
        update_id     INTEGER UNIQUE,
        status        TEXT NOT NULL DEFAULT 'pending',
        attempts      INTEGER NOT NULL DEFAULT 0,
        created_at    INTEGER NOT NULL,
        expires_at    INTEGER NOT NULL,
        sent_at       INTEGER,
        next_retry_at INTEGER,
        acked_at      INTEGER,
        last_error    TEXT,
        dead_at       INTEGER,
        dead_reason   TEXT,
        result        TEXT,
        result_error  TEXT,
        result_at     INTEGER
    );
    CREATE INDEX command_queue_machine_status ON command_queue (machine_id, status);
    CREATE INDEX command_queue_status_retry ON command_queue (status, next_retry_at);
    CREATE INDEX command_queue_status_expires ON command_queue (status, expires_at);

    CREATE TABLE seen_updates (
        update_id   INTEGER PRIMARY KEY,
        created_at  INTEGER NOT NULL
    );
    CREATE INDEX seen_updates_created ON seen_updates (created_at);

    CREATE TABLE machines (
        machine_id            TEXT PRIMARY KEY,
        first_connected_at    INTEGER,
        last_connected_at     INTEGER,
        last_disconnected_at  INTEGER,
        last_close_code       INTEGER,
        last_close_reason     TEXT
    );

    -- Notification chunks Telegram has not accepted yet (contract §8.2, durable outbox).
    CREATE TABLE outbox (
        id               INTEGER PRIMARY KEY AUTOINCREMENT,
        notification_id  TEXT NOT NULL,
        seq              INTEGER NOT NULL,
        session_id       TEXT NOT NULL,
        chat_id          TEXT NOT NULL,
        token            TEXT NOT NULL,
        text             TEXT NOT NULL,
        entities         TEXT,
        reply_markup     TEXT,
        status           TEXT NOT NULL DEFAULT 'pending',
        attempts         INTEGER NOT NULL DEFAULT 0,
        created_at       INTEGER NOT NULL,
        next_attempt_at  INTEGER NOT NULL,
        sent_at          INTEGER,
        message_id       INTEGER,
        last_error       TEXT,
        UNIQUE (notification_id, seq)
    );
    CREATE INDEX outbox_status_next ON outbox (status, next_attempt_at);
    """,
]

SCHEMA_VERSION = len(MIGRATIONS)


def migrate(conn: sqlite3.Connection, path: str) -> int:
    """Bring the database up to ``SCHEMA_VERSION``; refuse one written by a newer ccr-box."""
    with closing(conn.execute("PRAGMA user_version")) as cursor:
        row = cursor.fetchone()
    version = row[0] if row else 0
    if version > SCHEMA_VERSION:
        raise SchemaTooNewError(
            f"database {path} has schema version {version}, but this ccr-box only knows up to "
            f"{SCHEMA_VERSION}; upgrade ccr-box or point CCR_BOX_DATA_DIR at another directory"
        )
    for number in range(version, SCHEMA_VERSION):
        # executescript commits on its own; the version bump rides in the same script.
        conn.executescript(
            "BEGIN IMMEDIATE;\n"
            + MIGRATIONS[number]
            + f"\nPRAGMA user_version = {number + 1};\nCOMMIT;"
        )
    return SCHEMA_VERSION
