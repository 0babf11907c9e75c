"""End to end over real sockets: register, notify, reply as Telegram, agent receives and acks."""

from __future__ import annotations

import json

from aiohttp import WSMsgType

from tests.conftest import CHAT, Harness


async def receive_json(ws, timeout: float = 5.0) -> dict:
    msg = await ws.receive(timeout=timeout)
    assert msg.type == WSMsgType.TEXT, msg
    return json.loads(msg.data)


async def test_reply_reaches_agent_and_is_acked(server: Harness) -> None:
    fake = server.fake
    await server.register("sess-1", "devbox", "api")
    sent = await server.notify("sess-1", "Claude stopped. Continue?")
    assert sent["ok"] is True and isinstance(sent["messageId"], int)

    ws = await server.connect("devbox")
    assert ws.protocol == "ccr"
    boot = await receive_json(ws)
    assert boot["type"] == "boot" and len(boot["bootId"]) == 8

    update = fake.make_message(CHAT, "yes, go on", reply_to=sent["messageId"])
    resp = await server.webhook(update)
    assert resp.status == 200 and await resp.text() == "ok"

    frame = await receive_json(ws)
    assert frame["type"] == "command"
    assert frame["sessionId"] == "sess-1"
    assert frame["command"] == "yes, go on"
    assert frame["chatId"] == CHAT
    assert len(frame["commandId"]) == 32

    rows = await server.commands()
    assert [r["status"] for r in rows] == ["sent"]

    await ws.send_str(json.dumps({"type": "ack", "commandId": frame["commandId"]}))
    await ws.send_str(json.dumps({"type": "ping"}))
    assert await receive_json(ws) == {"type": "pong"}
    rows = await server.commands()
    assert rows[0]["status"] == "acked" and rows[0]["acked_at"] is not None
    await ws.close()


async def test_offline_machine_gets_notice_then_delivery_on_connect(server: Harness) -> None:
    fake = server.fake
    await server.register("sess-2", "laptop", None)
    sent = await server.notify("sess-2")
    resp = await server.webhook(fake.make_message(CHAT, "run tests", reply_to=sent["messageId"]))
    assert resp.status == 200
    await fake.wait_for(lambda: "Command queued - laptop is offline." in fake.messages_to(CHAT))
    rows = await server.commands()
    assert rows[0]["status"] == "pending"

    ws = await server.connect("laptop")
    assert (await receive_json(ws))["type"] == "boot"
    frame = await receive_json(ws)
    assert frame["command"] == "run tests"
    await ws.close()
