"""Queue a reply for a session: the one path shared by Telegram replies and the console.

Runs inside the caller's write transaction (a ``Database.write`` job), so the checks and the
insert are one atomic step: the length limit, the session lookup, the per-machine queue cap
(contract §6.2), the insert and the session's ``last_activity``. A refusal carries both the
user-facing text (sent to the chat by the pipeline) and the HTTP status (the admin API's answer).
"""

from __future__ import annotations

import secrets
import sqlite3
from dataclasses import dataclass

from ccr_box import limits
from ccr_box.db import queue as q
from ccr_box.db import sessions as sessions_db
from ccr_box.server import texts
from ccr_box.textutil import utf16_len


@dataclass(frozen=True)
class Enqueued:
    command: q.NewCommand
    target: str  # the session's label, else its machine id (contract: <target>)


class EnqueueRefused(Exception):
    """Nothing was queued; ``text`` says why in the words of the catalogue (§7.8)."""

    def __init__(self, status: int, text: str) -> None:
        super().__init__(text)
        self.status = status
        self.text = text


def enqueue_for_session(
    db: sqlite3.Connection,
    session_id: str,
    text: str,
    chat_id: str,
    now: int,
    *,
    update_id: int | None = None,
) -> Enqueued:
    length = utf16_len(text)
    if length > limits.MAX_COMMAND_LENGTH:
        raise EnqueueRefused(400, texts.too_long(length))
    session = sessions_db.get(db, session_id)
    if session is None:
        raise EnqueueRefused(404, texts.SESSION_NOT_FOUND)
    machine_id = session["machine_id"]
    target = texts.target(session, machine_id)
    active = q.count_active(db, machine_id)
    if active >= limits.MAX_QUEUE_PER_MACHINE:
        raise EnqueueRefused(409, texts.queue_full(target, active))
    command = q.NewCommand(
        command_id=secrets.token_hex(16),
        machine_id=machine_id,
        session_id=session_id,
        command=text,
        chat_id=chat_id,
        update_id=update_id,
    )
    q.enqueue(db, command, now)
    sessions_db.touch(db, session_id, now)
    return Enqueued(command, target)
