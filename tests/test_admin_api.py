"""The operator API ``/admin/...`` (contract §6.8)."""

from __future__ import annotations

import json
import re
from typing import Any

import pytest
from aiohttp import WSMsgType

from ccr_box import limits
from ccr_box.db import queue as q
from ccr_box.server import keys
from tests.conftest import CHAT, Harness
from tests.helpers_db import command_row
from tests.helpers_http import expect_error, expect_json
from tests.helpers_wait import until

COLUMNS = {
    "command_id",
    "machine_id",
    "session_id",
    "command_type",
    "command",
    "directory",
    "chat_id",
    "update_id",
    "status",
    "attempts",
    "created_at",
    "expires_at",
    "sent_at",
    "next_retry_at",
    "acked_at",
    "last_error",
    "dead_at",
    "dead_reason",
    "result",
    "result_error",
    "result_at",
}


async def enqueue(
    server: Harness, command_id: str, machine_id: str, session_id: str | None = "s1", **kw: Any
) -> None:
    cmd = q.NewCommand(command_id, machine_id, session_id, kw.pop("command", command_id), CHAT)
    now = server.clock.now_ms()
    await server.db.write(lambda c: q.enqueue(c, cmd, now))


async def get(server: Harness, path: str, status: int = 200) -> Any:
    return await expect_json(await server.client.get(path, headers=server.auth()), status)


async def receive_json(ws, timeout: float = 5.0) -> dict[str, Any]:
    msg = await ws.receive(timeout=timeout)
    assert msg.type == WSMsgType.TEXT, msg
    return json.loads(msg.data)


async def connect(server: Harness, machine_id: str):
    ws = await server.connect(machine_id)
    assert (await receive_json(ws))["type"] == "boot"
    return ws


async def make_dead(server: Harness, command_id: str, machine_id: str, **kw: Any) -> None:
    """A command that expired undelivered, moved to ``dead`` by the maintenance loop."""
    await enqueue(server, command_id, machine_id, **kw)
    server.clock.advance(limits.COMMAND_EXPIRY_MS)
    await server.app[keys.MAINTENANCE].tick()
    assert (await command_row(server, command_id))["status"] == "dead"


# -- GET /admin/status -------------------------------------------------------------------------


async def test_status_shape(server: Harness) -> None:
    status = await get(server, "/admin/status")
    assert list(status) == ["bootId", "startedAt", "telegram"]
    assert re.fullmatch(r"[0-9a-f]{8}", status["bootId"])
    assert status["startedAt"] == server.clock.now_ms()
    assert list(status["telegram"]) == ["mode", "state", "lastError", "allowedChats"]
    assert status["telegram"]["allowedChats"] == 1  # the harness allows one chat; never its id
    assert status["telegram"]["mode"] == "webhook"
    assert status["telegram"]["state"] in {"starting", "ok", "error", "conflict"}
    # The bootId is the one agents receive.
    ws = await server.connect("devbox")
    assert await receive_json(ws) == {"type": "boot", "bootId": status["bootId"]}
    await ws.close()


async def test_status_with_telegram_off(start_server) -> None:
    server = await start_server(bot_token="")
    server.clock.advance(10)
    status = await get(server, "/admin/status")
    assert status["telegram"] == {
        "mode": "webhook",
        "state": "off",
        "lastError": None,
        "allowedChats": 1,
    }
    assert status["startedAt"] == server.clock.now_ms() - 10


# -- GET /admin/machines -----------------------------------------------------------------------


async def test_machines_empty(server: Harness) -> None:
    assert await get(server, "/admin/machines") == []


async def test_machines_presence_and_counts(server: Harness) -> None:
    await server.register("s1", "devbox")
    await make_dead(server, "c-dead", "offline-m")
    await enqueue(server, "p1", "offline-m")
    await enqueue(server, "p2", "offline-m")
    await enqueue(server, "d1", "devbox")
    await enqueue(server, "d2", "devbox")
    server.clock.advance(1000)
    t1 = server.clock.now_ms()
    ws = await connect(server, "devbox")
    frames = [await receive_json(ws), await receive_json(ws)]
    assert [f["commandId"] for f in frames] == ["d1", "d2"]
    await ws.send_str(json.dumps({"type": "ack", "commandId": "d1"}))
    await ws.send_str(json.dumps({"type": "ping"}))
    assert await receive_json(ws) == {"type": "pong"}  # the ack was handled before the ping

    assert await get(server, "/admin/machines") == [
        {
            "machineId": "devbox",
            "connected": True,
            "connectedSince": t1,
            "lastDisconnectedAt": None,
            "pending": 0,
            "sent": 1,
            "dead": 0,
        },
        {
            "machineId": "offline-m",
            "connected": False,
            "connectedSince": None,
            "lastDisconnectedAt": None,
            "pending": 2,
            "sent": 0,
            "dead": 1,
        },
    ]

    server.clock.advance(500)
    await ws.close()

    async def disconnected() -> bool:
        rows = await get(server, "/admin/machines")
        return rows[0]["lastDisconnectedAt"] is not None

    await until(disconnected, "the machine's disconnection to be recorded")
    machines = await get(server, "/admin/machines")
    assert machines[0] == {
        "machineId": "devbox",
        "connected": False,
        "connectedSince": None,
        "lastDisconnectedAt": t1 + 500,
        "pending": 0,
        "sent": 1,
        "dead": 0,
    }


# -- GET /admin/commands -----------------------------------------------------------------------


async def test_commands_newest_first_with_default_and_max_limit(server: Harness) -> None:
    cmds = [
        q.NewCommand(f"c{i:03d}", "m1" if i % 2 else "m2", "s1", f"cmd {i}", CHAT)
        for i in range(limits.MAX_SESSIONS // 2 + 10)  # 510 rows
    ]
    start = server.clock.now_ms()

    def fill(conn: Any) -> None:
        for i, cmd in enumerate(cmds):
            q.enqueue(conn, cmd, start + i)

    await server.db.write(fill)
    rows = await get(server, "/admin/commands")
    assert len(rows) == 100
    assert [r["command_id"] for r in rows] == [f"c{i:03d}" for i in range(509, 409, -1)]
    assert set(rows[0]) == COLUMNS
    assert rows[0] == await command_row(server, "c509")

    assert len(await get(server, "/admin/commands?limit=500")) == 500
    assert len(await get(server, "/admin/commands?limit=")) == 100
    three = await get(server, "/admin/commands?limit=3")
    assert [r["command_id"] for r in three] == ["c509", "c508", "c507"]
    m2 = await get(server, "/admin/commands?machineId=m2&limit=2")
    assert [r["command_id"] for r in m2] == ["c508", "c506"]
    assert await get(server, "/admin/commands?machineId=nobody") == []


@pytest.mark.parametrize(
    "limit",
    ["0", "501", "-1", "abc", "1.5", "1e2", "²", "٣", " 5", "5 ", "10000000000000000000000"],
)
async def test_commands_invalid_limit(server: Harness, limit: str) -> None:
    resp = await server.client.get(
        "/admin/commands", params={"limit": limit}, headers=server.auth()
    )
    await expect_error(resp, 400, "Invalid limit")


@pytest.mark.parametrize("status", ["bogus", "PENDING", "Dead", "pending,sent", "failed"])
async def test_commands_invalid_status(server: Harness, status: str) -> None:
    resp = await server.client.get(
        "/admin/commands", params={"status": status}, headers=server.auth()
    )
    await expect_error(resp, 400, "Invalid status")


async def test_commands_status_filter(server: Harness) -> None:
    await server.register("s1", "devbox")
    await make_dead(server, "dead1", "devbox")
    await enqueue(server, "acked1", "devbox")
    await enqueue(server, "sent1", "devbox")
    server.clock.advance(1)
    ws = await connect(server, "devbox")
    assert {(await receive_json(ws))["commandId"] for _ in range(2)} == {"acked1", "sent1"}
    await ws.send_str(json.dumps({"type": "ack", "commandId": "acked1"}))
    await ws.send_str(json.dumps({"type": "ping"}))
    assert await receive_json(ws) == {"type": "pong"}
    await ws.close()
    await enqueue(server, "pending1", "other")

    async def ids(query: str) -> list[str]:
        return [r["command_id"] for r in await get(server, f"/admin/commands{query}")]

    assert await ids("?status=dead") == ["dead1"]
    assert await ids("?status=acked") == ["acked1"]
    assert await ids("?status=sent") == ["sent1"]
    assert await ids("?status=pending") == ["pending1"]
    assert await ids("?status=pending&machineId=devbox") == []
    assert sorted(await ids("?status=")) == ["acked1", "dead1", "pending1", "sent1"]


# -- POST /admin/commands/<id>/retry -----------------------------------------------------------


async def post(server: Harness, path: str, body: Any = None):
    return await server.post(path, body if body is not None else b"")


async def test_retry_unknown_command_is_404(server: Harness) -> None:
    resp = await post(server, "/admin/commands/nope/retry")
    await expect_error(resp, 404, "Command not found")


async def test_retry_refuses_live_commands(server: Harness) -> None:
    await server.register("s1", "devbox")
    await enqueue(server, "pend", "offline")
    await enqueue(server, "acked", "devbox")
    await enqueue(server, "sent", "devbox")
    ws = await connect(server, "devbox")
    assert {(await receive_json(ws))["commandId"] for _ in range(2)} == {"acked", "sent"}
    await ws.send_str(json.dumps({"type": "ack", "commandId": "acked"}))
    await ws.send_str(json.dumps({"type": "ping"}))
    assert await receive_json(ws) == {"type": "pong"}
    for command_id, status in [("pend", "pending"), ("acked", "acked"), ("sent", "sent")]:
        before = await command_row(server, command_id)
        assert before["status"] == status
        resp = await post(server, f"/admin/commands/{command_id}/retry")
        await expect_error(resp, 409, "Command is not dead")
        assert await command_row(server, command_id) == before
    await ws.close()


async def test_retry_revives_a_dead_command(server: Harness) -> None:
    await server.register("s1", "laptop", "L")
    await make_dead(server, "c1", "laptop", command="run tests")
    dead = await command_row(server, "c1")
    assert (dead["dead_reason"], dead["dead_at"]) == ("expired", server.clock.now_ms())

    server.clock.advance(7000)
    now = server.clock.now_ms()
    resp = await post(server, "/admin/commands/c1/retry")
    assert await expect_json(resp, 200) == {"ok": True}
    revived = await command_row(server, "c1")
    assert revived == {
        **dead,
        "status": "pending",
        "attempts": 0,
        "next_retry_at": now,
        "expires_at": now + limits.COMMAND_EXPIRY_MS,
        "dead_at": None,
        "dead_reason": None,
        "last_error": None,
    }
    # A second retry: no longer dead.
    await expect_error(await post(server, "/admin/commands/c1/retry"), 409, "Command is not dead")
    # Delivered when the machine connects.
    ws = await connect(server, "laptop")
    frame = await receive_json(ws)
    assert frame == {
        "type": "command",
        "commandId": "c1",
        "sessionId": "s1",
        "command": "run tests",
        "chatId": CHAT,
    }
    await ws.close()


async def test_retry_flushes_at_once_to_a_connected_machine(server: Harness) -> None:
    await server.register("s1", "devbox")
    ws = await connect(server, "devbox")
    frame = None
    # Sent once, never acked: after 24 h it expires and goes dead with attempts = 1.
    await enqueue(server, "c1", "devbox")
    await server.hub.flush("devbox")
    frame = await receive_json(ws)
    assert frame["commandId"] == "c1"
    await ws.close()
    server.clock.advance(limits.COMMAND_EXPIRY_MS)
    await server.app[keys.MAINTENANCE].tick()
    dead = await command_row(server, "c1")
    assert (dead["status"], dead["attempts"]) == ("dead", 1)

    ws = await connect(server, "devbox")
    resp = await post(server, "/admin/commands/c1/retry")
    assert await expect_json(resp, 200) == {"ok": True}
    frame = await receive_json(ws)
    assert frame["commandId"] == "c1"
    after = await command_row(server, "c1")
    assert (after["status"], after["attempts"]) == ("sent", 1)
    await ws.close()


# -- POST /admin/commands/<id>/reassign --------------------------------------------------------


async def test_reassign_errors(server: Harness) -> None:
    await server.register("s1", "devbox")
    await server.register("s2", "laptop")
    await enqueue(server, "pend", "offline")
    path = "/admin/commands/pend/reassign"
    await expect_error(
        await post(server, "/admin/commands/nope/reassign", {"sessionId": "s2"}),
        404,
        "Command not found",
    )
    await expect_error(
        await post(server, "/admin/commands/nope/reassign", {"sessionId": "nope"}),
        404,
        "Command not found",
    )
    await expect_error(await post(server, path, {"sessionId": "nope"}), 404, "Session not found")
    await expect_error(await post(server, path, b"{bad"), 400, "Invalid JSON body")
    await expect_error(await post(server, path, [1]), 400, "Invalid JSON body")
    await expect_error(await post(server, path, {}), 400, "sessionId required")
    await expect_error(await post(server, path, {"sessionId": 5}), 400, "sessionId required")
    assert (await command_row(server, "pend"))["machine_id"] == "offline"

    # sent and acked rows cannot be reassigned.
    await enqueue(server, "acked", "devbox")
    await enqueue(server, "sent", "devbox")
    ws = await connect(server, "devbox")
    assert {(await receive_json(ws))["commandId"] for _ in range(2)} == {"acked", "sent"}
    await ws.send_str(json.dumps({"type": "ack", "commandId": "acked"}))
    await ws.send_str(json.dumps({"type": "ping"}))
    assert await receive_json(ws) == {"type": "pong"}
    for command_id in ("acked", "sent"):
        before = await command_row(server, command_id)
        resp = await post(server, f"/admin/commands/{command_id}/reassign", {"sessionId": "s2"})
        await expect_error(resp, 409, "Command is not pending or dead")
        assert await command_row(server, command_id) == before
    await ws.close()


async def test_reassign_pending_moves_it_to_the_sessions_machine(server: Harness) -> None:
    await server.register("s1", "old-box")
    await server.register("s2", "new-box")
    await enqueue(server, "c1", "old-box", command="make test")
    before = await command_row(server, "c1")
    server.clock.advance(3000)
    now = server.clock.now_ms()
    resp = await post(server, "/admin/commands/c1/reassign", {"sessionId": "s2", "extra": 1})
    assert await expect_json(resp, 200) == {"ok": True}
    assert await command_row(server, "c1") == {
        **before,
        "session_id": "s2",
        "machine_id": "new-box",
        "status": "pending",
        "attempts": 0,
        "next_retry_at": now,
        "expires_at": now + limits.COMMAND_EXPIRY_MS,
    }
    # The old machine no longer gets it; the new one does.
    old = await connect(server, "old-box")
    await old.send_str(json.dumps({"type": "ping"}))
    assert await receive_json(old) == {"type": "pong"}
    new = await connect(server, "new-box")
    frame = await receive_json(new)
    assert (frame["commandId"], frame["sessionId"], frame["command"]) == ("c1", "s2", "make test")
    await old.close()
    await new.close()


async def test_reassign_dead_flushes_to_a_connected_machine(server: Harness) -> None:
    await server.register("s1", "gone-box")
    await server.register("s2", "devbox")
    await make_dead(server, "c1", "gone-box")
    ws = await connect(server, "devbox")
    resp = await post(server, "/admin/commands/c1/reassign", {"sessionId": "s2"})
    assert await expect_json(resp, 200) == {"ok": True}
    frame = await receive_json(ws)
    assert (frame["commandId"], frame["sessionId"]) == ("c1", "s2")
    after = await command_row(server, "c1")
    assert (after["status"], after["machine_id"], after["dead_reason"]) == ("sent", "devbox", None)
    machines = {m["machineId"]: m for m in await get(server, "/admin/machines")}
    # gone-box has no rows left and never connected: it is not listed any more.
    assert list(machines) == ["devbox"] and machines["devbox"]["sent"] == 1
    await ws.close()
