"""``/ws``: upgrade checks (§3.2, §3.4), close handling (§4.5), replacement (§4.1), idle timeout,
shutdown and presence (§4.6), over real sockets."""

from __future__ import annotations

import asyncio
import json
import re
import struct

import pytest
from aiohttp import WSMsgType

from ccr_box import limits
from tests.conftest import API_KEY, CHAT, Harness
from tests.helpers_db import command_row
from tests.helpers_wait import skippable_loop_clock
from tests.helpers_ws import (
    CCR_PROTOCOL,
    OP_CLOSE,
    OP_TEXT,
    RawWS,
    admin_machines,
    connect_booted,
    current_connection,
    disconnected,
    enqueue,
    protocol_header,
    receive_json,
    sync,
)

JSON_TYPE = "application/json; charset=utf-8"
TEXT_TYPE = "text/plain; charset=utf-8"

# -- §3.2 step 1: Upgrade header ----------------------------------------------------------------


@pytest.mark.parametrize("upgrade", [None, "h2c", ""])
async def test_without_websocket_upgrade_is_426_json(server: Harness, upgrade: str | None) -> None:
    headers = {**server.auth(), "Sec-WebSocket-Protocol": f"ccr, {API_KEY}"}
    if upgrade is not None:
        headers["Upgrade"] = upgrade
    resp = await server.client.get("/ws?machineId=devbox", headers=headers)
    assert resp.status == 426
    assert resp.headers["Content-Type"] == JSON_TYPE
    assert await resp.json() == {"error": "WebSocket upgrade required"}


async def test_426_comes_before_machine_id_and_auth(server: Harness) -> None:
    resp = await server.client.get("/ws?machineId=bad_id")
    assert resp.status == 426
    assert await resp.json() == {"error": "WebSocket upgrade required"}


async def test_upgrade_header_is_case_insensitive(server: Harness) -> None:
    for value in ("WebSocket", "WEBSOCKET"):
        raw = await RawWS.open(server, "/ws?machineId=devbox", CCR_PROTOCOL, upgrade=value)
        assert raw.status == 101, raw.head
        await raw.close()


# -- §3.2 step 2 / §3.4: machineId ----------------------------------------------------------------

BAD_IDS = [
    "machineId=dev_box",
    "machineId=dev.box",
    "machineId=" + "a" * 65,
    "machineId=",
    "",
    "machineId=dev%20box",
    "machineId=devbox%0A",
    "machineId=d%C3%A9v",
    "machineid=devbox",
]


@pytest.mark.parametrize("query", BAD_IDS)
@pytest.mark.parametrize("with_credentials", [False, True])
async def test_bad_machine_id_is_400_text_before_auth(
    server: Harness, query: str, with_credentials: bool
) -> None:
    raw = await RawWS.open(server, f"/ws?{query}", CCR_PROTOCOL if with_credentials else [])
    assert raw.status == 400
    assert raw.header_values("content-type") == [TEXT_TYPE]
    assert raw.body == b"Invalid machine ID"
    await raw.close()


@pytest.mark.parametrize("machine_id", ["a" * 64, "A", "7", "-", "Dev-Box-01"])
async def test_valid_machine_ids_are_accepted(server: Harness, machine_id: str) -> None:
    ws = await connect_booted(server, machine_id)
    assert ws.protocol == "ccr"
    assert [m["machineId"] for m in await admin_machines(server)] == [machine_id]
    await ws.close()


# -- §3.2 step 3: credentials ---------------------------------------------------------------------

BAD_CREDENTIALS = [
    [],
    protocol_header("ccr"),
    protocol_header(f"ccr, {API_KEY}x"),
    protocol_header(f"ccr, {API_KEY[:-1]}"),
    protocol_header(f"{API_KEY}, ccr"),
    protocol_header(f"CCR, {API_KEY}"),
    protocol_header(f"ccr-x, {API_KEY}"),
    protocol_header(f"other, ccr, {API_KEY}"),
    protocol_header(API_KEY),
    [("Authorization", f"Bearer {API_KEY}x")],
    [("Authorization", f"Token {API_KEY}")],
    [("Authorization", f"Basic {API_KEY}")],
    [("Authorization", API_KEY)],
    [("X-API-Key", "wrong")],
    [("X-API-Key", f"Bearer {API_KEY}")],
]


@pytest.mark.parametrize("headers", BAD_CREDENTIALS)
async def test_missing_or_wrong_credentials_are_401_text(
    server: Harness, headers: list[tuple[str, str]]
) -> None:
    raw = await RawWS.open(server, "/ws?machineId=devbox", headers)
    assert raw.status == 401
    assert raw.header_values("content-type") == [TEXT_TYPE]
    assert raw.body == b"Unauthorized"
    assert API_KEY.encode() not in raw.head
    await raw.close()


async def test_key_in_query_string_is_not_accepted(server: Harness) -> None:
    for name in ("key", "apiKey", "api_key", "token"):
        raw = await RawWS.open(server, f"/ws?machineId=devbox&{name}={API_KEY}", [])
        assert (raw.status, raw.body) == (401, b"Unauthorized")
        await raw.close()


async def test_refused_upgrade_registers_no_machine(server: Harness) -> None:
    raw = await RawWS.open(server, "/ws?machineId=devbox", protocol_header("ccr, nope"))
    assert raw.status == 401
    await raw.close()
    assert await admin_machines(server) == []


# -- §3.2 step 4: the response's subprotocol -------------------------------------------------------


@pytest.mark.parametrize(
    "offered",
    [
        f"ccr, {API_KEY}",
        f"ccr,{API_KEY}",
        f"  ccr  ,   {API_KEY}   ",
        f",ccr,, ,{API_KEY},",
        f"ccr, {API_KEY}, extra",
    ],
)
async def test_subprotocol_auth_echoes_exactly_ccr(server: Harness, offered: str) -> None:
    raw = await RawWS.open(server, "/ws?machineId=devbox", protocol_header(offered))
    assert raw.status == 101, raw.head
    assert raw.header_values("sec-websocket-protocol") == ["ccr"]
    assert API_KEY.encode() not in raw.head
    opcode, payload = await raw.read_frame()
    assert opcode == OP_TEXT and json.loads(payload)["type"] == "boot"
    await raw.close()


async def test_aiohttp_agent_sees_protocol_ccr(server: Harness) -> None:
    ws = await server.connect("devbox")
    assert ws.protocol == "ccr"
    assert (await receive_json(ws))["type"] == "boot"
    await ws.close()


@pytest.mark.parametrize(
    "headers",
    [
        [("Authorization", f"Bearer {API_KEY}")],
        [("Authorization", f"bearer    {API_KEY}")],
        [("Authorization", f"BEARER {API_KEY}")],
        [("X-API-Key", API_KEY)],
        [("Authorization", "Bearer wrong"), ("X-API-Key", API_KEY)],
        [("Authorization", f"Bearer {API_KEY}"), ("X-API-Key", "wrong")],
    ],
)
async def test_header_auth_without_subprotocol_echoes_none(
    server: Harness, headers: list[tuple[str, str]]
) -> None:
    raw = await RawWS.open(server, "/ws?machineId=devbox", headers)
    assert raw.status == 101, raw.head
    assert raw.header_values("sec-websocket-protocol") == []
    opcode, payload = await raw.read_frame()
    assert opcode == OP_TEXT and json.loads(payload)["type"] == "boot"
    await raw.close()


async def test_header_auth_with_aiohttp_client(server: Harness) -> None:
    for headers in (server.auth("bearer"), server.auth("x-api-key")):
        ws = await server.client.ws_connect("/ws?machineId=devbox", headers=headers)
        assert ws.protocol is None
        assert (await receive_json(ws))["type"] == "boot"
        await sync(ws)
        await ws.close()


async def test_header_auth_and_offered_ccr_echoes_ccr(server: Harness) -> None:
    headers = [("X-API-Key", API_KEY), *protocol_header("ccr")]
    raw = await RawWS.open(server, "/ws?machineId=devbox", headers)
    assert raw.status == 101
    assert raw.header_values("sec-websocket-protocol") == ["ccr"]
    await raw.close()
    # Offered, but not ccr: nothing is echoed (the key authenticated by header).
    headers = [("X-API-Key", API_KEY), *protocol_header("chat, superchat")]
    raw = await RawWS.open(server, "/ws?machineId=devbox", headers)
    assert raw.status == 101
    assert raw.header_values("sec-websocket-protocol") == []
    await raw.close()


# -- §4.5 close handling --------------------------------------------------------------------------


async def test_client_close_code_and_reason_are_reciprocated(server: Harness) -> None:
    raw = await RawWS.open(server, "/ws?machineId=devbox", CCR_PROTOCOL)
    assert raw.status == 101
    assert (await raw.read_frame())[0] == OP_TEXT  # boot
    conn = current_connection(server, "devbox")
    await raw.send_frame(OP_CLOSE, struct.pack("!H", 4321) + b"bye")
    assert await raw.read_frame() == (OP_CLOSE, struct.pack("!H", 4321) + b"bye")
    await raw.close()
    history = await disconnected(server, conn, 4321)
    assert history["last_close_reason"] == "bye"


async def test_aiohttp_client_close_code_is_echoed(server: Harness) -> None:
    ws = await connect_booted(server, "devbox")
    await ws.close(code=4321, message=b"bye")
    assert ws.close_code == 4321


async def test_client_close_without_code_gets_1000(server: Harness) -> None:
    raw = await RawWS.open(server, "/ws?machineId=devbox", CCR_PROTOCOL)
    await raw.read_frame()  # boot
    conn = current_connection(server, "devbox")
    await raw.send_frame(OP_CLOSE, b"")
    opcode, payload = await raw.read_frame()
    assert opcode == OP_CLOSE
    assert payload[:2] == struct.pack("!H", 1000)
    assert payload[2:] == b""
    await raw.close()
    await disconnected(server, conn, 1000)

    ws = await connect_booted(server, "devbox")
    await ws.close()
    assert ws.close_code == 1000


async def test_unicode_close_reason_is_echoed(server: Harness) -> None:
    raw = await RawWS.open(server, "/ws?machineId=devbox", CCR_PROTOCOL)
    await raw.read_frame()
    reason = "heartbeat-timeout ✓".encode()
    await raw.send_frame(OP_CLOSE, struct.pack("!H", 4001) + reason)
    assert await raw.read_frame() == (OP_CLOSE, struct.pack("!H", 4001) + reason)
    await raw.close()


async def test_close_does_not_change_queue_rows(server: Harness) -> None:
    ws = await connect_booted(server, "devbox")
    [command_id] = await enqueue(server, "devbox", ["run"])
    assert (await receive_json(ws))["commandId"] == command_id
    before = await command_row(server, command_id)
    conn = current_connection(server, "devbox")
    await ws.close(code=4001, message=b"heartbeat-timeout")
    await disconnected(server, conn, 4001)
    assert await command_row(server, command_id) == before
    assert before["status"] == "sent"


# -- §4.1 step 2: replacement -------------------------------------------------------------------


async def test_new_connection_replaces_old_one(server: Harness) -> None:
    old = await connect_booted(server, "devbox")
    old_conn = current_connection(server, "devbox")
    new = await connect_booted(server, "devbox")
    msg = await old.receive(timeout=5)
    assert msg.type == WSMsgType.CLOSE
    assert (msg.data, msg.extra) == (4000, "Replaced by new connection")
    assert old.close_code == 4000
    # The old connection's close has been handled server-side by now...
    history = await disconnected(server, old_conn, 4000)
    assert history["last_close_reason"] == "Replaced by new connection"
    # ...and did not remove the new one: still connected, commands still flow to it.
    machines = await admin_machines(server)
    assert [(m["machineId"], m["connected"]) for m in machines] == [("devbox", True)]
    [command_id] = await enqueue(server, "devbox", ["after replacement"])
    frame = await receive_json(new)
    assert (frame["commandId"], frame["command"]) == (command_id, "after replacement")
    await sync(new)
    await new.send_str(json.dumps({"type": "ack", "commandId": command_id}))
    await sync(new)
    assert (await command_row(server, command_id))["status"] == "acked"
    await new.close()


async def test_replacement_chain_keeps_the_newest(server: Harness) -> None:
    conns = [await connect_booted(server, "devbox") for _ in range(3)]
    for ws in conns[:2]:
        msg = await ws.receive(timeout=5)
        assert (msg.type, msg.data) == (WSMsgType.CLOSE, 4000)
    await sync(conns[2])
    assert [m["connected"] for m in await admin_machines(server)] == [True]
    [command_id] = await enqueue(server, "devbox", ["x"])
    assert (await receive_json(conns[2]))["commandId"] == command_id
    await conns[2].close()


async def test_other_machines_are_not_replaced(server: Harness) -> None:
    a = await connect_booted(server, "alpha")
    b = await connect_booted(server, "beta")
    await sync(a)
    await sync(b)
    assert {m["machineId"]: m["connected"] for m in await admin_machines(server)} == {
        "alpha": True,
        "beta": True,
    }
    await a.close()
    await b.close()


# -- §4.5 idle timeout ----------------------------------------------------------------------------

# The server's own idle timeout (120 s): the tests skip the event loop's clock past it instead of
# waiting it out, so a loaded machine can neither make them slow nor close a connection early.
IDLE_S = limits.WS_IDLE_TIMEOUT_S


async def test_silent_client_is_closed_with_4002(server: Harness) -> None:
    skip = skippable_loop_clock()
    ws = await connect_booted(server, "devbox")
    conn = current_connection(server, "devbox")
    skip(IDLE_S)
    msg = await ws.receive(timeout=5)
    assert msg.type == WSMsgType.CLOSE
    assert (msg.data, msg.extra) == (4002, "Idle timeout")
    assert ws.close_code == 4002
    history = await disconnected(server, conn, 4002)
    assert history["last_close_reason"] == "Idle timeout"
    assert [m["connected"] for m in await admin_machines(server)] == [False]


async def test_pinging_client_stays_open(server: Harness) -> None:
    skip = skippable_loop_clock()
    # autoping off: the client sees the server's pong, proof that the ping was read.
    ws = await connect_booted(server, "devbox", autoping=False)
    for _ in range(3):  # twice the idle timeout in all, never 2/3 of it without a frame
        skip(IDLE_S * 2 / 3)
        await sync(ws)  # an application-level ping is a frame
    for _ in range(3):  # protocol-level pings count as frames too
        skip(IDLE_S * 2 / 3)
        await ws.ping()
        msg = await ws.receive(timeout=5)
        assert msg.type == WSMsgType.PONG, msg
    await sync(ws)
    assert ws.close_code is None and not ws.closed
    assert [m["connected"] for m in await admin_machines(server)] == [True]
    await ws.close()


# -- §4.5 shutdown --------------------------------------------------------------------------------


async def test_server_shutdown_closes_agents_with_1001(server: Harness) -> None:
    a = await connect_booted(server, "alpha")
    b = await connect_booted(server, "beta")
    receives = [asyncio.create_task(ws.receive(timeout=10)) for ws in (a, b)]
    await server.client.server.close()
    for task in receives:
        msg = await task
        assert msg.type == WSMsgType.CLOSE
        assert (msg.data, msg.extra) == (1001, "Server shutting down")
    assert (a.close_code, b.close_code) == (1001, 1001)


# -- §4.6 presence --------------------------------------------------------------------------------


async def test_admin_machines_presence(server: Harness) -> None:
    fake = server.fake
    assert await admin_machines(server) == []
    connected_at = server.clock.now_ms()
    ws = await connect_booted(server, "devbox")
    assert await admin_machines(server) == [
        {
            "machineId": "devbox",
            "connected": True,
            "connectedSince": connected_at,
            "lastDisconnectedAt": None,
            "pending": 0,
            "sent": 0,
            "dead": 0,
        }
    ]
    server.clock.advance(5_000)
    conn = current_connection(server, "devbox")
    await ws.close()
    await disconnected(server, conn, 1000)
    assert await admin_machines(server) == [
        {
            "machineId": "devbox",
            "connected": False,
            "connectedSince": None,
            "lastDisconnectedAt": connected_at + 5_000,
            "pending": 0,
            "sent": 0,
            "dead": 0,
        }
    ]
    # Enqueue uses the same definition: a reply now is queued with the offline notice.
    await server.register("sess-1", "devbox", None)
    sent = await server.notify("sess-1")
    resp = await server.webhook(fake.make_message(CHAT, "go", reply_to=sent["messageId"]))
    assert resp.status == 200
    await fake.wait_for(lambda: "Command queued - devbox is offline." in fake.messages_to(CHAT))

    server.clock.advance(1_000)
    ws = await server.connect("devbox")
    assert (await receive_json(ws))["type"] == "boot"
    frame = await receive_json(ws)
    assert frame["command"] == "go"
    await sync(ws)  # the flush that sent it has recorded it by now
    [machine] = await admin_machines(server)
    assert machine["connected"] is True
    assert machine["connectedSince"] == connected_at + 6_000
    assert machine["lastDisconnectedAt"] == connected_at + 5_000
    assert (machine["pending"], machine["sent"]) == (0, 1)
    await ws.close()


async def test_boot_id_matches_admin_status(server: Harness) -> None:
    ws = await server.connect("devbox")
    boot = await receive_json(ws)
    resp = await server.client.get("/admin/status", headers=server.auth())
    assert (await resp.json())["bootId"] == boot["bootId"]
    assert re.fullmatch(r"[0-9a-f]{8}", boot["bootId"])
    await ws.close()
