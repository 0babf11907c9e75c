"""The durable command queue (contract §6): every transition of §6.1, backoff, dead letters,
operator actions. Real server, real agents over WebSocket, real SQLite, fake Telegram; time moves
only through the ManualClock and maintenance runs only through ``tick()``."""

from __future__ import annotations

import json
import socket

from ccr_box import limits
from ccr_box.db import queue as q
from ccr_box.server import texts
from tests.conftest import CHAT, OTHER_CHAT, Harness
from tests.helpers_db import command_row
from tests.helpers_queue import (
    DAY_MS,
    RawAgent,
    connect_booted,
    only_row,
    receive_json,
    reply,
    sync,
    tick,
)

MINUTE = 60_000


def command_frame(r: dict) -> dict:
    return {
        "type": "command",
        "commandId": r["command_id"],
        "sessionId": r["session_id"],
        "command": r["command"],
        "chatId": r["chat_id"],
    }


async def setup_session(
    h: Harness, session_id: str = "s1", machine_id: str = "m1", label: str | None = None
) -> int:
    """Register a session and send one notification; return the message id to reply to."""
    await h.register(session_id, machine_id, label)
    return (await h.notify(session_id))["messageId"]


async def admin_post(h: Harness, path: str, body: dict | None = None):
    resp = await h.post(path, body if body is not None else {})
    return resp.status, await resp.json()


# -- §6.1 enqueue -------------------------------------------------------------------------------


async def test_enqueue_inserts_pending_row_with_exact_fields(server: Harness) -> None:
    mid = await setup_session(server, "s1", "laptop")
    server.clock.advance(1234)
    now = server.clock.now_ms()
    update = await reply(server, mid, "run tests")
    await server.fake.wait_for(
        lambda: "Command queued - laptop is offline." in server.fake.messages_to(CHAT)
    )
    r = await only_row(server)
    command_id = r.pop("command_id")
    assert len(command_id) == 32 and all(c in "0123456789abcdef" for c in command_id)
    assert r == {
        "machine_id": "laptop",
        "session_id": "s1",
        "command_type": "execute",
        "command": "run tests",
        "directory": None,
        "chat_id": CHAT,
        "update_id": update["update_id"],
        "status": "pending",
        "attempts": 0,
        "created_at": now,
        "expires_at": now + 24 * 60 * 60 * 1000,
        "sent_at": None,
        "next_retry_at": now,
        "acked_at": None,
        "last_error": None,
        "dead_at": None,
        "dead_reason": None,
        "result": None,
        "result_error": None,
        "result_at": None,
    }


# -- §6.1 send succeeds -------------------------------------------------------------------------


async def test_send_on_connect_marks_sent(server: Harness) -> None:
    mid = await setup_session(server)
    created = server.clock.now_ms()
    await reply(server, mid, "hello")
    server.clock.advance(5_000)
    now = server.clock.now_ms()
    ws, frames = await connect_booted(server, "m1")
    r = await only_row(server)
    assert frames == [command_frame(r)]
    assert (r["status"], r["attempts"], r["sent_at"], r["next_retry_at"]) == (
        "sent",
        1,
        now,
        now + 60_000,
    )
    assert (r["created_at"], r["expires_at"]) == (created, created + DAY_MS)
    await ws.close()


async def test_send_after_enqueue_to_connected_machine(server: Harness) -> None:
    mid = await setup_session(server)
    ws, frames = await connect_booted(server, "m1")
    assert frames == []
    server.clock.advance(777)
    now = server.clock.now_ms()
    await reply(server, mid, "go")  # the webhook answers after the commit and the flush
    r = await only_row(server)
    assert (r["status"], r["attempts"], r["sent_at"], r["next_retry_at"]) == (
        "sent",
        1,
        now,
        now + 60_000,
    )
    assert await receive_json(ws) == command_frame(r)
    await ws.close()


async def test_unacked_row_is_resent_every_60_s_by_the_tick(server: Harness) -> None:
    mid = await setup_session(server)
    ws, _ = await connect_booted(server, "m1")
    await reply(server, mid, "go")
    first = await receive_json(ws)
    server.clock.advance(59_999)
    await tick(server)
    assert await sync(ws) == []
    assert (await only_row(server))["attempts"] == 1
    server.clock.advance(1)
    now = server.clock.now_ms()
    await tick(server)
    assert await sync(ws) == [first]  # same commandId: the agent de-duplicates
    r = await only_row(server)
    assert (r["status"], r["attempts"], r["sent_at"], r["next_retry_at"]) == (
        "sent",
        2,
        now,
        now + 60_000,
    )
    await ws.close()


# -- §6.4 send raises ---------------------------------------------------------------------------


def test_send_backoff_table() -> None:
    expected = [1, 2, 4, 8, 16, 32, 64, 128, 256, 300, 300, 300, 300]
    assert [limits.send_backoff_ms(n) for n in range(13)] == [s * 1000 for s in expected]
    assert limits.send_backoff_ms(40) == 300_000


async def test_transport_failure_keeps_status_and_backs_off(server: Harness) -> None:
    """A send on a broken socket: attempts+1, last_error, next_retry_at = now + backoff."""
    mid = await setup_session(server)
    agent = await RawAgent.connect(server, "m1")
    assert (await agent.receive_json())["type"] == "boot"
    await reply(server, mid, "one")
    one = await only_row(server)
    assert (await agent.receive_json())["commandId"] == one["command_id"]
    # Break the server's side of the socket: the server's next write fails for real (EPIPE),
    # which closes its transport; every later write on it raises.
    server.hub.connected()["m1"].ws.get_extra_info("socket").shutdown(socket.SHUT_WR)
    server.clock.advance(MINUTE)
    now = server.clock.now_ms()
    await reply(server, mid, "two")  # flush: "one" (due re-send) is written first, then "two"
    rows = {r["command"]: r for r in await server.commands()}
    two = rows["two"]
    assert two["status"] == "pending"  # unchanged
    assert two["attempts"] == 1
    assert two["sent_at"] is None
    assert two["next_retry_at"] == now + 1_000  # backoff(0 previous attempts)
    assert two["last_error"] and "closing transport" in two["last_error"]

    # The broken connection goes away; the rows wait and expire, last_error kept.
    server.clock.advance(DAY_MS)
    await tick(server)
    rows = {r["command"]: r for r in await server.commands()}
    assert (rows["two"]["status"], rows["two"]["dead_reason"]) == ("dead", "expired")
    assert rows["two"]["last_error"] == two["last_error"]

    # Operator retry clears last_error and the dead fields, with a fresh budget.
    status, body = await admin_post(server, f"/admin/commands/{two['command_id']}/retry")
    assert (status, body) == (200, {"ok": True})
    now = server.clock.now_ms()
    r = await command_row(server, two["command_id"])
    assert {k: r[k] for k in ("status", "attempts", "next_retry_at", "expires_at")} == {
        "status": "pending",
        "attempts": 0,
        "next_retry_at": now,
        "expires_at": now + DAY_MS,
    }
    assert (r["dead_at"], r["dead_reason"], r["last_error"]) == (None, None, None)
    agent.close()


async def test_second_failure_uses_previous_attempts_for_backoff(server: Harness) -> None:
    """A row already sent once fails: next_retry_at = now + backoff(1) = 2 s, status stays sent."""
    mid = await setup_session(server)
    agent = await RawAgent.connect(server, "m1")
    await agent.receive_json()
    await reply(server, mid, "one")
    server.clock.advance(1)
    await reply(server, mid, "two")
    await agent.receive_json()
    await agent.receive_json()
    sent_at = (await command_row(server, (await server.commands(status="sent"))[0]["command_id"]))[
        "sent_at"
    ]
    server.hub.connected()["m1"].ws.get_extra_info("socket").shutdown(socket.SHUT_WR)
    server.clock.advance(MINUTE)
    now = server.clock.now_ms()
    await tick(server)  # re-sends "one" (lost on the broken socket), then "two" raises
    two = {r["command"]: r for r in await server.commands()}["two"]
    assert (two["status"], two["attempts"], two["sent_at"]) == ("sent", 2, sent_at)
    assert two["next_retry_at"] == now + 2_000
    assert "closing transport" in two["last_error"]
    agent.close()


# -- §6.1 reconnect ------------------------------------------------------------------------------


async def test_reconnect_puts_sent_rows_back_to_pending_and_resends(server: Harness) -> None:
    mid = await setup_session(server)
    ws, _ = await connect_booted(server, "m1")
    for i in range(15):
        await reply(server, mid, f"c{i}")
        server.clock.advance(1)
    assert [r["status"] for r in await server.commands()] == ["sent"] * 15
    await ws.close()
    assert [r["status"] for r in await server.commands()] == ["sent"] * 15  # close: no change
    server.clock.advance(5_000)
    now = server.clock.now_ms()
    ws, frames = await connect_booted(server, "m1")
    # All 15 went back to pending at once; the connect flush re-sent a batch of 10 (oldest first).
    assert [f["command"] for f in frames] == [f"c{i}" for i in range(10)]
    rows = sorted(await server.commands(), key=lambda r: r["created_at"])
    for r in rows[:10]:
        assert (r["status"], r["attempts"], r["sent_at"], r["next_retry_at"]) == (
            "sent",
            2,
            now,
            now + 60_000,
        )
    for r in rows[10:]:
        assert (r["status"], r["attempts"], r["next_retry_at"]) == ("pending", 1, now)
        assert r["sent_at"] < now
    # An ack triggers a flush: the 5 remaining pending rows go out.
    await ws.send_str(json.dumps({"type": "ack", "commandId": rows[0]["command_id"]}))
    frames = await sync(ws)
    assert [f["command"] for f in frames] == [f"c{i}" for i in range(10, 15)]
    await ws.close()


# -- §6.1 / §6.5 ack and results -------------------------------------------------------------------


async def test_ack_marks_acked_once_and_only_from_its_machine(server: Harness) -> None:
    mid = await setup_session(server)
    ws, _ = await connect_booted(server, "m1")
    other, _ = await connect_booted(server, "m2")
    await reply(server, mid, "go")
    frame = await receive_json(ws)
    # Another machine cannot ack it.
    await other.send_str(json.dumps({"type": "ack", "commandId": frame["commandId"]}))
    await sync(other)
    assert (await only_row(server))["status"] == "sent"

    server.clock.advance(10)
    acked_at = server.clock.now_ms()
    await ws.send_str(json.dumps({"type": "ack", "commandId": frame["commandId"]}))
    assert await sync(ws) == []
    r = await only_row(server)
    assert (r["status"], r["acked_at"], r["attempts"]) == ("acked", acked_at, 1)

    server.clock.advance(10)
    await ws.send_str(json.dumps({"type": "ack", "commandId": frame["commandId"]}))
    await sync(ws)
    assert await only_row(server) == r  # acked again: no change

    server.clock.advance(10 * MINUTE)
    await tick(server)
    assert await sync(ws) == []  # never re-sent
    await ws.close()
    await other.close()


async def test_result_implies_ack_for_sent_and_pending_rows(server: Harness) -> None:
    mid = await setup_session(server)
    for i in range(11):
        await reply(server, mid, f"c{i}")
        server.clock.advance(1)
    ws, frames = await connect_booted(server, "m1")
    assert len(frames) == 10  # batch per flush
    rows = sorted(await server.commands(), key=lambda r: r["created_at"])
    sent, pending = rows[0], rows[10]
    assert (sent["status"], pending["status"]) == ("sent", "pending")

    now = server.clock.now_ms()
    # The pending row first: its result acks it (and the flush that follows sends nothing).
    await ws.send_str(
        json.dumps(
            {
                "type": "commandResult",
                "success": False,
                "chatId": CHAT,
                "error": "boom",
                "commandId": pending["command_id"],
            }
        )
    )
    await ws.send_str(
        json.dumps(
            {
                "type": "commandResult",
                "success": True,
                "chatId": CHAT,
                "error": None,
                "commandId": sent["command_id"],
                "sessionId": "s1",
            }
        )
    )
    assert await sync(ws) == []
    r = await command_row(server, sent["command_id"])
    assert (r["status"], r["acked_at"], r["result"], r["result_error"], r["result_at"]) == (
        "acked",
        now,
        "ok",
        None,
        now,
    )
    r = await command_row(server, pending["command_id"])
    assert (r["status"], r["acked_at"], r["result"], r["result_error"], r["result_at"]) == (
        "acked",
        now,
        "failed",
        "boom",
        now,
    )
    assert r["attempts"] == 0
    await server.fake.wait_for(lambda: "Command failed: boom" in server.fake.messages_to(CHAT))
    await ws.close()


# -- §6.6 dead letters ---------------------------------------------------------------------------


async def test_poison_command_dies_60_s_after_the_tenth_send(server: Harness) -> None:
    mid = await setup_session(server, "s1", "m1", "api")
    ws, _ = await connect_booted(server, "m1")
    await reply(server, mid, "deploy now")
    frames = [await receive_json(ws)]
    for attempt in range(2, 11):
        server.clock.advance(MINUTE)
        await tick(server)
        frames += await sync(ws)
        assert (await only_row(server))["attempts"] == attempt
    assert len(frames) == 10 and all(f == frames[0] for f in frames)
    tenth = server.clock.now_ms()
    r = await only_row(server)
    assert (r["status"], r["sent_at"], r["next_retry_at"]) == ("sent", tenth, tenth + MINUTE)

    server.clock.advance(MINUTE - 1)
    await tick(server)
    assert await sync(ws) == []
    assert (await only_row(server))["status"] == "sent"

    server.clock.advance(1)
    await tick(server)
    assert await sync(ws) == []  # no 11th send
    r = await only_row(server)
    assert (r["status"], r["dead_reason"], r["dead_at"], r["attempts"]) == (
        "dead",
        "max_attempts",
        tenth + MINUTE,
        10,
    )
    text = "Command not delivered to api (no acknowledgement after 10 attempts): deploy now"
    await server.fake.wait_for(lambda: text in server.fake.messages_to(CHAT))

    # Dead rows are never sent again on their own, and the chat is told once.
    for _ in range(3):
        server.clock.advance(MINUTE)
        await tick(server)
    assert await sync(ws) == []
    await ws.close()
    ws, frames = await connect_booted(server, "m1")
    assert frames == []
    await reply(server, mid, "/help")
    await server.fake.wait_for(lambda: texts.HELP in server.fake.messages_to(CHAT))
    assert server.fake.messages_to(CHAT).count(text) == 1
    assert (await only_row(server))["status"] == "dead"
    await ws.close()


async def test_reconnect_never_sends_an_eleventh_time(server: Harness) -> None:
    """After the tenth send a reconnect re-arms the row (§6.1) but the flush skips it
    (attempts < 10, §6.3); being due with 10 attempts, the next tick dead-letters it."""
    mid = await setup_session(server)
    ws, _ = await connect_booted(server, "m1")
    await reply(server, mid, "poison")
    await receive_json(ws)
    for _ in range(9):
        server.clock.advance(MINUTE)
        await tick(server)
        assert len(await sync(ws)) == 1
    assert (await only_row(server))["attempts"] == 10
    await ws.close()
    server.clock.advance(1_000)
    now = server.clock.now_ms()
    ws, frames = await connect_booted(server, "m1")
    assert frames == []
    r = await only_row(server)
    assert (r["status"], r["attempts"], r["next_retry_at"]) == ("pending", 10, now)
    await tick(server)
    assert await sync(ws) == []
    r = await only_row(server)
    assert (r["status"], r["dead_reason"], r["attempts"]) == ("dead", "max_attempts", 10)
    await ws.close()


async def test_offline_command_expires_after_24_h(server: Harness) -> None:
    mid = await setup_session(server, "s1", "laptop")
    await reply(server, mid, "run tests")
    created = server.clock.now_ms()
    server.clock.advance(DAY_MS - 1)
    await tick(server)
    r = await only_row(server)
    assert (r["status"], r["attempts"]) == ("pending", 0)  # offline: no attempt is spent
    server.clock.advance(1)
    await tick(server)
    r = await only_row(server)
    assert (r["status"], r["dead_reason"], r["dead_at"], r["attempts"]) == (
        "dead",
        "expired",
        created + DAY_MS,
        0,
    )
    text = "Command not delivered to laptop (not delivered within 24 hours): run tests"
    await server.fake.wait_for(lambda: text in server.fake.messages_to(CHAT))

    # Reconnecting does not send a dead row, neither does the next tick.
    ws, frames = await connect_booted(server, "laptop")
    assert frames == []
    server.clock.advance(MINUTE)
    await tick(server)
    assert await sync(ws) == []
    assert (await only_row(server))["status"] == "dead"
    await ws.close()


async def test_dead_letter_preview(server: Harness) -> None:
    await server.register("s1", "m1", "box")
    sent = await server.notify("s1")
    commands = ["a" * 100, "b" * 101, "\U0001f600" * 60, "short"]
    for command in commands:
        await reply(server, sent["messageId"], command)
    # '' arrives through the Continue button.
    resp = await server.webhook(server.fake.make_callback(CHAT, f"cmd:{sent['token']}:continue"))
    assert resp.status == 200
    rows = await server.commands()
    assert sorted(r["command"] for r in rows) == sorted([*commands, ""])
    server.clock.advance(DAY_MS)
    await tick(server)
    prefix = "Command not delivered to box (not delivered within 24 hours): "
    expected = [
        prefix + "a" * 100,
        prefix + "b" * 100 + "…",
        prefix + "\U0001f600" * 50 + "…",  # 100 UTF-16 units, a pair never split
        prefix + "short",
        prefix + "(empty)",
    ]
    await server.fake.wait_for(lambda: all(t in server.fake.messages_to(CHAT) for t in expected))
    assert sorted(t for t in server.fake.messages_to(CHAT) if t.startswith(prefix)) == sorted(
        expected
    )


async def test_dead_letter_text_only_to_allowed_chat(server: Harness) -> None:
    await server.register("s1", "m1")
    now = server.clock.now_ms()
    # A row whose chat is (no longer) allowed, e.g. after ALLOWED_CHAT_IDS changed.
    await server.db.write(
        lambda c: q.enqueue(c, q.NewCommand("f" * 32, "m1", "s1", "secret", OTHER_CHAT), now)
    )
    server.clock.advance(DAY_MS)
    await tick(server)
    assert (await command_row(server, "f" * 32))["status"] == "dead"
    # A later, observable text to the allowed chat.
    await server.db.write(
        lambda c: q.enqueue(
            c, q.NewCommand("e" * 32, "m1", "s1", "visible", CHAT), server.clock.now_ms()
        )
    )
    server.clock.advance(DAY_MS)
    await tick(server)
    text = "Command not delivered to m1 (not delivered within 24 hours): visible"
    await server.fake.wait_for(lambda: text in server.fake.messages_to(CHAT))
    assert server.fake.messages_to(OTHER_CHAT) == []
    assert not any("secret" in m.get("text", "") for m in server.fake.sent)


async def test_late_ack_of_dead_row(server: Harness) -> None:
    mid = await setup_session(server, "s1", "laptop", "lab")
    await reply(server, mid, "run")
    server.clock.advance(DAY_MS)
    await tick(server)
    r = await only_row(server)
    assert r["status"] == "dead"
    ws, frames = await connect_booted(server, "laptop")
    assert frames == []
    now = server.clock.now_ms()
    await ws.send_str(json.dumps({"type": "ack", "commandId": r["command_id"]}))
    await sync(ws)
    r = await only_row(server)
    assert (r["status"], r["acked_at"]) == ("acked", now)
    await server.fake.wait_for(
        lambda: "Command reached lab after all." in server.fake.messages_to(CHAT)
    )
    await ws.close()


# -- §6.8 operator actions ------------------------------------------------------------------------


async def test_operator_retry(server: Harness) -> None:
    mid = await setup_session(server)
    await reply(server, mid, "go")
    r = await only_row(server)
    cid = r["command_id"]
    assert await admin_post(server, f"/admin/commands/{cid}/retry") == (
        409,
        {"error": "Command is not dead"},
    )
    assert await admin_post(server, f"/admin/commands/{'0' * 32}/retry") == (
        404,
        {"error": "Command not found"},
    )
    server.clock.advance(DAY_MS)
    await tick(server)
    assert (await only_row(server))["status"] == "dead"

    server.clock.advance(3_000)
    now = server.clock.now_ms()
    assert await admin_post(server, f"/admin/commands/{cid}/retry") == (200, {"ok": True})
    r = await only_row(server)
    assert {
        k: r[k]
        for k in (
            "status",
            "attempts",
            "next_retry_at",
            "expires_at",
            "dead_at",
            "dead_reason",
            "last_error",
            "created_at",
            "machine_id",
            "session_id",
        )
    } == {
        "status": "pending",
        "attempts": 0,
        "next_retry_at": now,
        "expires_at": now + DAY_MS,
        "dead_at": None,
        "dead_reason": None,
        "last_error": None,
        "created_at": now - 3_000 - DAY_MS,
        "machine_id": "m1",
        "session_id": "s1",
    }
    # Connected machine: a retry flushes at once.
    ws, frames = await connect_booted(server, "m1")
    assert [f["commandId"] for f in frames] == [cid]
    server.clock.advance(DAY_MS)
    await tick(server)  # sent once, never acked: expires again
    assert (await only_row(server))["dead_reason"] == "expired"
    await sync(ws)
    assert await admin_post(server, f"/admin/commands/{cid}/retry") == (200, {"ok": True})
    assert await receive_json(ws) == {**frames[0]}
    r = await only_row(server)
    assert (r["status"], r["attempts"]) == ("sent", 1)
    await ws.close()


async def test_operator_reassign(server: Harness) -> None:
    mid = await setup_session(server, "s1", "m1")
    await server.register("s2", "m2", "other")
    await reply(server, mid, "go")
    cid = (await only_row(server))["command_id"]
    body = {"sessionId": "s2"}
    assert await admin_post(server, f"/admin/commands/{'0' * 32}/reassign", body) == (
        404,
        {"error": "Command not found"},
    )
    assert await admin_post(server, f"/admin/commands/{cid}/reassign", {"sessionId": "nope"}) == (
        404,
        {"error": "Session not found"},
    )
    # A pending row can be reassigned.
    server.clock.advance(1_000)
    now = server.clock.now_ms()
    assert await admin_post(server, f"/admin/commands/{cid}/reassign", body) == (
        200,
        {"ok": True},
    )
    r = await only_row(server)
    assert {
        k: r[k]
        for k in ("status", "attempts", "next_retry_at", "expires_at", "machine_id", "session_id")
    } == {
        "status": "pending",
        "attempts": 0,
        "next_retry_at": now,
        "expires_at": now + DAY_MS,
        "machine_id": "m2",
        "session_id": "s2",
    }
    # A dead row too; the connected new machine receives it at once.
    server.clock.advance(DAY_MS)
    await tick(server)
    assert (await only_row(server))["dead_reason"] == "expired"
    ws, _ = await connect_booted(server, "m1")
    now = server.clock.now_ms()
    assert await admin_post(server, f"/admin/commands/{cid}/reassign", {"sessionId": "s1"}) == (
        200,
        {"ok": True},
    )
    r = await only_row(server)
    assert (r["status"], r["attempts"], r["machine_id"], r["session_id"], r["sent_at"]) == (
        "sent",
        1,
        "m1",
        "s1",
        now,
    )
    assert (r["dead_at"], r["dead_reason"], r["expires_at"]) == (None, None, now + DAY_MS)
    assert (await receive_json(ws))["commandId"] == cid
    # A sent row cannot.
    assert await admin_post(server, f"/admin/commands/{cid}/reassign", body) == (
        409,
        {"error": "Command is not pending or dead"},
    )
    await ws.close()


async def test_queue_cap_counts_pending_and_sent_only(server: Harness) -> None:
    mid = await setup_session(server, "s1", "m1", "box")
    now = server.clock.now_ms()

    def fill(c) -> None:
        for i in range(102):
            status = ("pending", "sent", "acked", "dead")[i % 4] if i < 8 else "pending"
            q.enqueue(c, q.NewCommand(f"{i:032x}", "m1", "s1", f"c{i}", CHAT), now)
            c.execute(
                "UPDATE command_queue SET status = ? WHERE command_id = ?", (status, f"{i:032x}")
            )

    await server.db.write(fill)  # 96 pending + 2 sent + 2 acked + 2 dead
    await reply(server, mid, "99th fits")
    await reply(server, mid, "100th fits")
    assert len(await server.commands()) == 104
    await reply(server, mid, "one too many")
    text = "Queue full for box (100 commands pending)."
    await server.fake.wait_for(lambda: text in server.fake.messages_to(CHAT))
    assert len(await server.commands()) == 104
    assert "one too many" not in {r["command"] for r in await server.commands()}


async def test_update_id_is_unique(server: Harness) -> None:
    """The same Telegram update never produces two rows (webhook redelivery)."""
    mid = await setup_session(server)
    update = server.fake.make_message(CHAT, "once", reply_to=mid)
    for _ in range(3):
        resp = await server.webhook(update)
        assert resp.status == 200
    rows = await server.commands()
    assert [(r["command"], r["update_id"]) for r in rows] == [("once", update["update_id"])]
