"""Helpers shared by the inbound-pipeline tests (webhook, pipeline, polling).

Expected texts are copied from the contract (§7.6, §7.8), not imported from ccr_box, so a wording
change in the implementation makes the tests fail.
"""

from __future__ import annotations

import json
from contextlib import closing
from typing import Any

from aiohttp import WSMsgType

from ccr_box.db import updates as updates_db
from ccr_box.server import keys
from tests.conftest import API_KEY, CHAT, Harness

HELP = (
    "ccr-box forwards your replies to Claude Code sessions.\n"
    "\n"
    "Reply to a notification to send text to its session.\n"
    "/cmd TOKEN text - send text to the session TOKEN belongs to.\n"
    "//command - start with two slashes to send a /command to Claude (e.g. //compact).\n"
    "/sessions - list the live sessions in this chat.\n"
    "/help - show this help."
)
NO_SESSION = (
    "Could not find session for this message. Please reply to a recent notification or use "
    "/cmd TOKEN command format."
)
SESSION_NOT_FOUND = "Session not found"
ONLY_TEXT = "Only text messages can be sent to a session."
SESSION_EXPIRED = "Session expired"
COMMAND_SENT = "Command sent"
NO_LIVE = "No live sessions in this chat."


def offline(target: str) -> str:
    return f"Command queued - {target} is offline."


def unknown(name: str) -> str:
    return f"Unknown command: /{name}\n{HELP}"


async def receive_json(ws, timeout: float = 5.0) -> dict[str, Any]:
    msg = await ws.receive(timeout=timeout)
    assert msg.type == WSMsgType.TEXT, msg
    return json.loads(msg.data)


async def connect_agent(h: Harness, machine_id: str):
    """A connected agent (boot frame consumed, so the hub counts it as connected)."""
    ws = await h.connect(machine_id)
    boot = await receive_json(ws)
    assert boot["type"] == "boot"
    return ws


async def sync_agent(ws) -> None:
    """Round-trip a ping: every frame sent before it has been handled by the server."""
    await ws.send_str(json.dumps({"type": "ping"}))
    assert await receive_json(ws) == {"type": "pong"}


async def mapped(
    h: Harness,
    session_id: str = "sess-1",
    machine_id: str = "devbox",
    label: str | None = None,
    chat: str = CHAT,
    **extra: Any,
) -> tuple[int, str]:
    """Register a session and send it a notification in ``chat``: (message_id, token)."""
    await h.register(session_id, machine_id, label)
    resp = await h.post(
        "/notifications/send", {"sessionId": session_id, "chatId": chat, "text": "Done.", **extra}
    )
    assert resp.status == 200, await resp.text()
    body = await resp.json()
    return body["messageId"], body["token"]


async def settle(h: Harness, chat: str = CHAT, **kw: Any) -> None:
    """Send ``/help`` from ``chat`` and wait for its answer, then for every in-flight send.

    Everything an earlier update triggered has been sent to the fake by the time this returns.
    """
    fake = h.fake
    before = len(fake.sent)
    resp = await h.webhook(fake.make_message(chat, "/help", **kw))
    assert resp.status == 200
    await fake.wait_for(lambda: any(m.get("text") == HELP for m in fake.sent[before:]))
    await h.app[keys.NOTIFIER].drain()


def texts_since(fake, mark: int, chat: str | None = None) -> list[str]:
    return [
        m.get("text", "")
        for m in fake.sent[mark:]
        if chat is None or str(m.get("chat_id")) == str(chat)
    ]


async def is_seen(h: Harness, update_id: int) -> bool:
    return await h.db.read(lambda c: updates_db.seen(c, update_id))


async def sql(h: Harness, statement: str, params: tuple[Any, ...] = ()) -> None:
    """Run one statement on the writer connection (test set-up that no route offers)."""

    def job(conn: Any) -> None:
        conn.execute(statement, params)

    await h.db.write(job)


async def query(h: Harness, statement: str, params: tuple[Any, ...] = ()) -> list[dict[str, Any]]:
    def job(conn: Any) -> list[dict[str, Any]]:
        with closing(conn.execute(statement, params)) as cur:
            return [dict(r) for r in cur.fetchall()]

    return await h.db.read(job)


async def admin_status(h: Harness) -> dict[str, Any]:
    resp = await h.client.get("/admin/status", headers={"Authorization": f"Bearer {API_KEY}"})
    assert resp.status == 200
    return await resp.json()
