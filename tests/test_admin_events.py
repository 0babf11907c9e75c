"""The operator console's event stream and extra actions (``/admin/events``, §6.8 additions)."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import aiohttp
import pytest
from aiohttp import WSMsgType

from ccr_box import limits
from ccr_box.client.admin import AdminClient
from ccr_box.client.errors import ServerRefused
from ccr_box.db import queue as q
from ccr_box.server import events as ev
from ccr_box.server import keys
from tests.conftest import API_KEY, CHAT, Harness
from tests.helpers_db import command_row
from tests.helpers_http import expect_error, expect_json

# -- helpers --------------------------------------------------------------------------------------


async def frame(ws, timeout: float = 5.0) -> dict[str, Any]:
    msg = await ws.receive(timeout=timeout)
    assert msg.type == WSMsgType.TEXT, msg
    return json.loads(msg.data)


async def agent(server: Harness, machine_id: str):
    ws = await server.connect(machine_id)
    assert (await frame(ws))["type"] == "boot"
    return ws


async def stream(server: Harness, after: int | None = None, **kw: Any):
    """The console's stream, authenticated like a browser (subprotocol ``ccr, <key>``)."""
    query = "" if after is None else f"?after={after}"
    kw.setdefault("protocols", ("ccr", API_KEY))
    return await server.client.ws_connect(f"/admin/events/stream{query}", **kw)


async def events_of(server: Harness, kinds: set[str] | None = None, after: int = 0) -> list[dict]:
    resp = await server.client.get(f"/admin/events?after={after}&limit=1000", headers=server.auth())
    found = await expect_json(resp, 200)
    return [e for e in found if kinds is None or e["kind"] in kinds]


def bus(server: Harness) -> ev.EventBus:
    return server.app[keys.EVENTS]


async def enqueue(server: Harness, command_id: str, machine_id: str, session_id: str = "s1"):
    cmd = q.NewCommand(command_id, machine_id, session_id, f"cmd {command_id}", CHAT)
    now = server.clock.now_ms()
    await server.db.write(lambda c: q.enqueue(c, cmd, now))


async def kill(server: Harness, *command_ids: str) -> None:
    """Expire the given commands (only those) and let the maintenance tick dead-letter them."""
    await server.db.write(
        lambda c: c.executemany(
            "UPDATE command_queue SET expires_at = 0 WHERE command_id = ?",
            [(i,) for i in command_ids],
        )
    )
    await server.app[keys.MAINTENANCE].tick()
    for command_id in command_ids:
        assert (await command_row(server, command_id))["status"] == "dead"


async def post(server: Harness, path: str, body: Any = None, status: int = 200) -> Any:
    resp = await server.post(path, body if body is not None else {})
    return await expect_json(resp, status)


# -- auth -----------------------------------------------------------------------------------------

NEW_ROUTES = [
    ("GET", "/admin/events"),
    ("GET", "/admin/events/stream"),
    ("GET", "/admin/outbox"),
    ("POST", "/admin/machines/m1/retry-dead"),
    ("POST", "/admin/machines/m1/disconnect"),
    ("POST", "/admin/sessions/s1/move"),
    ("POST", "/admin/sessions/s1/commands"),
]


@pytest.mark.parametrize(("method", "path"), NEW_ROUTES)
async def test_every_new_route_requires_the_api_key(server: Harness, method: str, path: str):
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"X-API-Key": "wrong"}):
        resp = await server.client.request(method, path, headers=headers, json={"text": "x"})
        await expect_error(resp, 401, "Unauthorized")
    assert await events_of(server, {"action.send", "command.queued"}) == []


async def test_stream_refuses_a_bad_key_and_a_plain_get(server: Harness) -> None:
    with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
        await stream(server, protocols=("ccr", "wrong-key"))
    assert refused.value.status == 401
    with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
        await stream(server, protocols=())
    assert refused.value.status == 401
    resp = await server.client.get("/admin/events/stream", headers=server.auth())
    await expect_error(resp, 426, "WebSocket upgrade required")
    resp = await server.client.get("/admin/events/stream?after=x", headers=server.auth())
    await expect_error(resp, 426, "WebSocket upgrade required")


# -- GET /admin/events ----------------------------------------------------------------------------


async def test_recent_events_list_after_and_limit(server: Harness) -> None:
    await server.register("s1", "m1", "api")
    await server.register("s2", "m2")
    resp = await server.post("/sessions/unregister", {"sessionId": "s2"})
    assert resp.status == 200
    found = await events_of(server)
    assert [(e["seq"], e["kind"]) for e in found] == [
        (1, "session.registered"),
        (2, "session.registered"),
        (3, "session.unregistered"),
    ]
    assert found[0] == {
        "seq": 1,
        "at": server.clock.now_ms(),
        "kind": "session.registered",
        "data": {"sessionId": "s1", "machineId": "m1", "label": "api"},
    }
    assert found[2]["data"] == {"sessionId": "s2", "existed": True}
    assert [e["seq"] for e in await events_of(server, after=1)] == [2, 3]
    resp = await server.client.get("/admin/events?after=0&limit=2", headers=server.auth())
    assert [e["seq"] for e in await expect_json(resp, 200)] == [1, 2]
    for query, error in (
        ("after=-1", "Invalid after"),
        ("after=abc", "Invalid after"),
        ("limit=0", "Invalid limit"),
        ("limit=1001", "Invalid limit"),
    ):
        resp = await server.client.get(f"/admin/events?{query}", headers=server.auth())
        await expect_error(resp, 400, error)


# -- the stream -----------------------------------------------------------------------------------


async def test_stream_replays_after_then_follows_a_reply_flow_in_order(server: Harness) -> None:
    fake = server.fake
    await server.register("sess-1", "devbox", "api")  # seq 1
    sent = await server.notify("sess-1", "Claude stopped. Continue?")  # seq 2
    ws_agent = await agent(server, "devbox")  # seq 3 machine.connected

    console = await stream(server, after=1)
    assert console.protocol == "ccr"
    replay = [await frame(console), await frame(console)]
    assert [(e["seq"], e["kind"]) for e in replay] == [
        (2, "notification.sent"),
        (3, "machine.connected"),
    ]
    assert replay[0]["data"] == {
        "sessionId": "sess-1",
        "chatId": CHAT,
        "token": sent["token"],
        "text": "Claude stopped. Continue?",
        "messageId": sent["messageId"],
    }
    assert replay[1]["data"] == {"machineId": "devbox"}

    update = fake.make_message(CHAT, "yes, go on", reply_to=sent["messageId"])
    assert (await server.webhook(update)).status == 200
    command = await frame(ws_agent)
    await ws_agent.send_str(json.dumps({"type": "ack", "commandId": command["commandId"]}))

    flow = [await frame(console) for _ in range(3)]
    assert [(e["seq"], e["kind"]) for e in flow] == [
        (4, "command.queued"),
        (5, "command.sent"),
        (6, "command.acked"),
    ]
    assert flow[0]["data"] == {
        "commandId": command["commandId"],
        "machineId": "devbox",
        "sessionId": "sess-1",
        "source": "telegram",
        "commandType": "execute",
        "chatId": CHAT,
        "text": "yes, go on",
    }
    assert flow[1]["data"] == {"machineId": "devbox", "commandIds": [command["commandId"]]}
    assert flow[2]["data"] == {"commandId": command["commandId"], "machineId": "devbox"}

    await ws_agent.send_str(
        json.dumps(
            {
                "type": "commandResult",
                "commandId": command["commandId"],
                "success": True,
                "chatId": CHAT,
            }
        )
    )
    result = await frame(console)
    assert result["kind"] == "command.result"
    assert result["data"] == {
        "commandId": command["commandId"],
        "machineId": "devbox",
        "result": "ok",
        "error": None,
    }
    await ws_agent.close()
    closed = await frame(console)
    assert closed["kind"] == "machine.disconnected"
    assert closed["data"] == {"machineId": "devbox", "code": 1000, "reason": ""}
    await console.close()


async def test_stream_with_header_auth_answers_ping_compactly(server: Harness) -> None:
    console = await stream(server, protocols=(), headers={"X-API-Key": API_KEY})
    assert console.protocol is None
    await console.send_str('{"type": "ping", "x": 1}')
    msg = await console.receive(timeout=5)
    assert msg.type == WSMsgType.TEXT and msg.data == '{"type":"pong"}'
    await server.register("s1", "m1")
    msg = await console.receive(timeout=5)
    assert json.loads(msg.data)["kind"] == "session.registered"
    assert ", " not in msg.data and ": " not in msg.data  # compact JSON
    await console.close()
    assert console.close_code == 1000


async def test_stream_without_after_replays_everything_kept(server: Harness) -> None:
    await server.register("s1", "m1")
    console = await stream(server, protocols=(), headers=server.auth())
    assert (await frame(console))["seq"] == 1
    await console.close()


async def test_overflowing_subscriber_is_dropped_without_blocking(server: Harness) -> None:
    the_bus = bus(server)
    async with the_bus.subscribe() as slow:  # never read
        console = await stream(server, after=0)
        for i in range(ev.QUEUE_SIZE + 5):  # synchronous: neither reader runs in between
            the_bus.publish("test.burst", i=i)
        assert the_bus.subscriber_count == 0
        assert slow.qsize() == ev.QUEUE_SIZE + 1
        kept = [slow.get_nowait() for _ in range(ev.QUEUE_SIZE + 1)]
        assert [e["data"]["i"] for e in kept[:-1]] == list(range(ev.QUEUE_SIZE))
        assert kept[-1]["kind"] == "overflow"
        # The WebSocket subscriber overflowed too: it gets what it had, the marker, a 1013 close.
        received = []
        while True:
            msg = await console.receive(timeout=5)
            if msg.type != WSMsgType.TEXT:
                break
            received.append(json.loads(msg.data))
        assert received[-1]["kind"] == "overflow"
        assert [e["data"]["i"] for e in received[:-1]] == list(range(len(received) - 1))
        assert len(received) - 1 >= ev.QUEUE_SIZE
        assert console.close_code == 1013
    # The server carries on: new subscribers and the list still work.
    await server.register("s9", "m9")
    found = await events_of(server, {"session.registered"})
    assert found[-1]["data"]["sessionId"] == "s9"
    assert len(await events_of(server)) == ev.HISTORY  # the ring keeps the last 1000


async def test_shutdown_closes_the_stream_with_1001(start_server) -> None:
    server = await start_server()
    async with aiohttp.ClientSession() as session:
        console = await session.ws_connect(
            server.url("/admin/events/stream"), protocols=("ccr", API_KEY)
        )
        await server.register("s1", "m1")
        assert (await frame(console))["kind"] == "session.registered"
        closing = asyncio.ensure_future(console.receive(timeout=10))  # a console is reading
        await server.client.server.close()
        msg = await closing
        assert msg.type == WSMsgType.CLOSE
        assert (msg.data, msg.extra) == (1001, "Server shutting down")


# -- console send ---------------------------------------------------------------------------------


async def test_console_send_reaches_a_connected_agent(server: Harness) -> None:
    await server.register("s1", "m1", "api")
    await server.notify("s1", "Done.")
    ws = await agent(server, "m1")
    body = await post(server, "/admin/sessions/s1/commands", {"text": "run the tests"})
    assert body["ok"] is True and body["queued"] is False
    assert set(body) == {"ok", "commandId", "queued"}
    command = await frame(ws)
    assert command == {
        "type": "command",
        "commandId": body["commandId"],
        "sessionId": "s1",
        "command": "run the tests",
        "chatId": "console",
    }
    stored = await command_row(server, body["commandId"])
    assert (stored["chat_id"], stored["status"], stored["machine_id"]) == ("console", "sent", "m1")
    kinds = [
        (e["kind"], e["data"].get("source"))
        for e in await events_of(server, {"command.queued", "action.send", "command.sent"})
    ]
    assert kinds == [("command.queued", "console"), ("action.send", None), ("command.sent", None)]
    # A failed result of a console command sends nothing to Telegram ("console" is no chat).
    await ws.send_str(
        json.dumps(
            {
                "type": "commandResult",
                "commandId": body["commandId"],
                "success": False,
                "error": "boom",
                "chatId": "console",
            }
        )
    )
    await ws.send_str('{"type":"ping"}')
    assert await frame(ws) == {"type": "pong"}
    await server.app[keys.HUB].settled()
    await server.app[keys.NOTIFIER].drain()
    assert [c["text"] for c in server.fake.calls_of("sendMessage")] == ["Done."]
    await ws.close()


async def test_console_send_offline_and_errors(server: Harness) -> None:
    await server.register("s1", "m1", "api")
    body = await post(server, "/admin/sessions/s1/commands", {"text": ""})  # "Continue"
    assert body["queued"] is True
    assert (await command_row(server, body["commandId"]))["status"] == "pending"
    await expect_error(
        await server.post("/admin/sessions/nope/commands", {"text": "x"}), 404, "Session not found"
    )
    await expect_error(
        await server.post("/admin/sessions/s1/commands", {"text": 5}), 400, "text required"
    )
    await expect_error(await server.post("/admin/sessions/s1/commands", {}), 400, "text required")
    await expect_error(
        await server.post("/admin/sessions/s1/commands", {"text": "😀" * 5001}),
        400,
        "Command too long (10002 chars, max 10000)",
    )
    ok = await post(server, "/admin/sessions/s1/commands", {"text": "x" * 10_000})
    assert ok["queued"] is True
    for i in range(limits.MAX_QUEUE_PER_MACHINE - 2):
        await enqueue(server, f"fill{i}", "m1")
    await expect_error(
        await server.post("/admin/sessions/s1/commands", {"text": "x"}),
        409,
        "Queue full for api (100 commands pending).",
    )
    assert len(await server.commands(machine_id="m1")) == limits.MAX_QUEUE_PER_MACHINE


# -- retry-dead, move, disconnect -----------------------------------------------------------------


async def test_retry_dead_revives_the_machines_dead_rows(server: Harness) -> None:
    await server.register("s1", "m1")
    for cid in ("a", "b", "c"):
        await enqueue(server, cid, "m1")
    await enqueue(server, "other", "m2")
    await kill(server, "a", "b", "other")
    dead_events = await events_of(server, {"command.dead"})
    assert [(e["data"]["commandId"], e["data"]["reason"]) for e in dead_events] == [
        ("a", "expired"),
        ("b", "expired"),
        ("other", "expired"),
    ]
    ws = await agent(server, "m1")  # flushes "c" at once
    assert (await frame(ws))["commandId"] == "c"
    assert await post(server, "/admin/machines/m1/retry-dead") == {"ok": True, "retried": 2}
    assert [(await frame(ws))["commandId"] for _ in range(2)] == ["a", "b"]
    assert (await command_row(server, "a"))["status"] == "sent"
    assert (await command_row(server, "other"))["status"] == "dead"
    assert await post(server, "/admin/machines/m1/retry-dead") == {"ok": True, "retried": 0}
    assert await post(server, "/admin/machines/ghost/retry-dead") == {"ok": True, "retried": 0}
    actions = await events_of(server, {"action.retry_dead"})
    assert [e["data"] for e in actions] == [
        {"machineId": "m1", "retried": 2, "commandIds": ["a", "b"]},
        {"machineId": "m1", "retried": 0, "commandIds": []},
        {"machineId": "ghost", "retried": 0, "commandIds": []},
    ]
    await ws.close()


async def test_move_session_takes_pending_and_dead_rows_along(server: Harness) -> None:
    await server.register("s1", "old", "api")
    await server.register("s2", "old")
    await enqueue(server, "p1", "old", "s1")
    await enqueue(server, "d1", "old", "s1")
    await enqueue(server, "x1", "old", "s2")
    await kill(server, "d1")
    ws = await agent(server, "new")
    body = await post(server, "/admin/sessions/s1/move", {"machineId": "new"})
    assert body == {
        "ok": True,
        "sessionId": "s1",
        "machineId": "new",
        "pendingMoved": 1,
        "deadMoved": 1,
    }
    assert (await frame(ws))["commandId"] == "p1"  # flushed to the new machine at once
    assert [
        (r["machine_id"], r["status"]) for r in [await command_row(server, i) for i in ("p1", "d1")]
    ] == [
        ("new", "sent"),
        ("new", "dead"),
    ]
    assert (await command_row(server, "x1"))["machine_id"] == "old"
    sessions = await expect_json(await server.client.get("/sessions", headers=server.auth()), 200)
    assert {s["session_id"]: s["machine_id"] for s in sessions} == {"s1": "new", "s2": "old"}
    # Repeating it is harmless.
    again = await post(server, "/admin/sessions/s1/move", {"machineId": "new"})
    assert (again["pendingMoved"], again["deadMoved"]) == (0, 0)
    # A retry-dead on the new machine now revives the moved dead row there.
    assert await post(server, "/admin/machines/new/retry-dead") == {"ok": True, "retried": 1}
    assert (await frame(ws))["commandId"] == "d1"
    moves = await events_of(server, {"action.move_session"})
    assert moves[0]["data"] == {
        "sessionId": "s1",
        "machineId": "new",
        "fromMachineId": "old",
        "pendingMoved": 1,
        "deadMoved": 1,
    }
    await expect_error(
        await server.post("/admin/sessions/nope/move", {"machineId": "new"}),
        404,
        "Session not found",
    )
    for bad in ({}, {"machineId": ""}, {"machineId": 3}):
        await expect_error(
            await server.post("/admin/sessions/s1/move", bad), 400, "machineId required"
        )
    await expect_error(
        await server.post("/admin/sessions/s1/move", {"machineId": "m" * 257}),
        400,
        "machineId too long",
    )
    await ws.close()


async def test_disconnect_closes_the_agent_socket(server: Harness) -> None:
    ws = await agent(server, "m1")
    closing = asyncio.ensure_future(ws.receive(timeout=5))  # an agent is always reading
    assert await post(server, "/admin/machines/m1/disconnect") == {"ok": True, "disconnected": True}
    msg = await closing
    assert msg.type == WSMsgType.CLOSE
    assert (msg.data, msg.extra) == (1000, "Disconnected by operator")
    assert not server.hub.is_connected("m1")
    assert await post(server, "/admin/machines/m1/disconnect") == {
        "ok": True,
        "disconnected": False,
    }
    found = await events_of(server, {"machine.disconnected", "action.disconnect"})
    assert [(e["kind"], e["data"]) for e in found] == [
        (
            "machine.disconnected",
            {"machineId": "m1", "code": 1000, "reason": "Disconnected by operator"},
        ),
        ("action.disconnect", {"machineId": "m1", "disconnected": True}),
        ("action.disconnect", {"machineId": "m1", "disconnected": False}),
    ]


async def test_retry_and_reassign_are_recorded(server: Harness) -> None:
    await server.register("s1", "m1")
    await server.register("s2", "m2")
    await enqueue(server, "a", "m1")
    await kill(server, "a")
    assert await post(server, "/admin/commands/a/retry") == {"ok": True}
    assert await post(server, "/admin/commands/a/reassign", {"sessionId": "s2"}) == {"ok": True}
    found = await events_of(server, {"action.retry", "action.reassign"})
    assert [(e["kind"], e["data"]) for e in found] == [
        ("action.retry", {"commandId": "a", "machineId": "m1"}),
        ("action.reassign", {"commandId": "a", "sessionId": "s2", "machineId": "m2"}),
    ]


# -- outbox ---------------------------------------------------------------------------------------


async def test_outbox_rows_are_visible_without_telegram(start_server) -> None:
    server = await start_server(bot_token="")
    await server.register("s1", "m1")
    long = "word " * 100
    resp = await server.post(
        "/notifications/send", {"sessionId": "s1", "chatId": CHAT, "text": long}
    )
    body = await expect_json(resp, 202)
    rows = await expect_json(await server.client.get("/admin/outbox", headers=server.auth()), 200)
    assert [(r["session_id"], r["chat_id"], r["status"], r["token"]) for r in rows] == [
        ("s1", CHAT, "pending", body["token"])
    ]
    assert rows[0]["text"] == long
    sent = await server.client.get("/admin/outbox?status=sent&limit=5", headers=server.auth())
    assert await expect_json(sent, 200) == []
    for query, error in (("status=nope", "Invalid status"), ("limit=501", "Invalid limit")):
        resp = await server.client.get(f"/admin/outbox?{query}", headers=server.auth())
        await expect_error(resp, 400, error)
    queued = await events_of(server, {"notification.queued"})
    assert queued[0]["data"] == {
        "sessionId": "s1",
        "chatId": CHAT,
        "token": body["token"],
        "text": long[:200],
        "messageId": None,
        "chunksQueued": 1,
    }


# -- the admin client -----------------------------------------------------------------------------


async def test_admin_client_speaks_the_new_endpoints(server: Harness) -> None:
    await server.register("a/b", "m1", "api")  # a sessionId with a slash travels quoted
    ws = await agent(server, "m1")
    base = str(server.client.make_url("")).rstrip("/")
    async with AdminClient(base, API_KEY) as admin:
        async with admin.stream(after=0) as follow:
            first = await anext(follow)
            assert (first["seq"], first["kind"]) == (1, "session.registered")
            sent = await admin.send_command("a/b", "hello")
            assert sent["queued"] is False
            assert (await frame(ws))["command"] == "hello"
            assert (await anext(follow))["kind"] == "machine.connected"
            queued = await anext(follow)
            assert (queued["kind"], queued["data"]["source"]) == ("command.queued", "console")
            assert await admin.retry_dead("m1") == {"ok": True, "retried": 0}
            moved = await admin.move_session("a/b", "m2")
            assert (moved["sessionId"], moved["machineId"]) == ("a/b", "m2")
            assert await admin.disconnect("m2") == {"ok": True, "disconnected": False}
            assert await admin.outbox(status="pending") == []
            kinds = [e["kind"] for e in await admin.events(after=first["seq"])]
            assert kinds == [
                "machine.connected",
                "command.queued",
                "action.send",
                "command.sent",
                "action.retry_dead",
                "action.move_session",
                "action.disconnect",
            ]
        with pytest.raises(ServerRefused) as refused:
            await admin.send_command("nope", "x")
        assert (refused.value.status, refused.value.error) == (404, "Session not found")
    async with AdminClient(base, "wrong") as admin:
        with pytest.raises(ServerRefused) as refused:
            async with admin.stream():
                pass
        assert (refused.value.status, str(refused.value)) == (401, "Unauthorized")
    await ws.close()
