"""``/ws`` frames (§4.1-§4.4), acks and results (§6.1, §6.5), flush limits and re-sends (§6.3,
§6.4), over real sockets."""

from __future__ import annotations

import asyncio
import json
import re

import pytest
from aiohttp import WSMsgType

from ccr_box.server import keys, texts
from tests.conftest import CHAT, OTHER_CHAT, Harness, make_config
from tests.helpers_db import command_row
from tests.helpers_ws import (
    barrier,
    connect_booted,
    enqueue,
    receive_json,
    sync,
)

MAX_FRAME = 65_536
MIB = 1024 * 1024


def compact(obj: dict) -> str:
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False)


def padded(skeleton: str, total_bytes: int, *, multibyte: bool = True) -> str:
    """``skeleton`` with ``{pad}`` filled so the UTF-8 payload is exactly ``total_bytes``; with
    ``multibyte`` the pad is mostly 2-byte characters, so the text has far fewer characters
    than bytes (the limit counts bytes)."""
    need = total_bytes - len(skeleton.replace("{pad}", "").encode())
    pad = "é" * (need // 2) + "a" * (need % 2) if multibyte else "a" * need
    text = skeleton.replace("{pad}", pad)
    assert len(text.encode()) == total_bytes
    return text


def ack(command_id: object) -> str:
    return json.dumps({"type": "ack", "commandId": command_id})


# -- §4.1 boot ------------------------------------------------------------------------------------


async def test_boot_is_first_frame_and_stable_per_server(server: Harness, start_server, tmp_path):
    boot_ids = []
    for machine_id in ("alpha", "beta", "alpha"):
        ws = await server.connect(machine_id)
        msg = await ws.receive(timeout=5)
        assert msg.type == WSMsgType.TEXT
        boot = json.loads(msg.data)
        assert set(boot) == {"type", "bootId"} and boot["type"] == "boot"
        assert re.fullmatch(r"[0-9a-f]{8}", boot["bootId"])
        assert msg.data == compact(boot)
        boot_ids.append(boot["bootId"])
        await ws.close()
    assert len(set(boot_ids)) == 1

    other = await start_server(make_config(tmp_path / "other", server.fake))
    ws = await other.connect("alpha")
    other_boot = await receive_json(ws)
    assert other_boot["bootId"] != boot_ids[0]  # drawn per server start (1 in 2^32 to collide)
    await ws.close()


async def test_boot_comes_before_pending_commands(server: Harness) -> None:
    ids = await enqueue(server, "devbox", ["one", "two"])
    ws = await server.connect("devbox")
    assert (await receive_json(ws))["type"] == "boot"
    frames = [await receive_json(ws) for _ in ids]
    assert [f["commandId"] for f in frames] == ids
    await sync(ws)
    await ws.close()


# -- §4.3 ping / pong -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "ping",
    [
        '{"type":"ping","x":1}',
        '{"type":"ping"}',
        ' { "type" : "ping" , "ts" : 123, "nested": {"type": "ack"} } ',
        '{"x":[1,2],"type":"ping"}',
    ],
)
async def test_ping_gets_exact_compact_pong(server: Harness, ping: str) -> None:
    ws = await connect_booted(server, "devbox")
    await ws.send_str(ping)
    msg = await ws.receive(timeout=5)
    assert msg.type == WSMsgType.TEXT
    assert msg.data == '{"type":"pong"}'
    await ws.close()


async def test_every_ping_gets_its_own_pong(server: Harness) -> None:
    ws = await connect_booted(server, "devbox")
    for _ in range(5):
        await ws.send_str('{"type":"ping"}')
    for _ in range(5):
        assert (await ws.receive(timeout=5)).data == '{"type":"pong"}'
    await sync(ws)
    await ws.close()


# -- §4.4 inbound frame rules ---------------------------------------------------------------------

DROPPED = [
    "not json",
    "",
    "{",
    '{"type":"ping"',
    "[1, 2]",
    '"ping"',
    "null",
    "42",
    "true",
    "{}",
    '{"type":null}',
    '{"type":["ping"]}',
    '{"type":{"t":"ping"}}',
    '{"type":"PING"}',
    '{"type":"hello","x":1}',
    '{"type":"pong"}',
    '{"type":"boot","bootId":"abcdef01"}',
    '{"type":"command","commandId":"x","sessionId":"s","command":"c","chatId":"1"}',
    '{"type":"launch"}',
    '{"type":"ack"}',
    '{"type":"ack","commandId":null}',
    '{"type":"ack","commandId":123}',
    '{"type":"ack","commandId":""}',
    '{"type":"ack","commandId":["x"]}',
    '{"type":"ack","commandId":"' + "a" * 65 + '"}',
    '{"type":"commandResult"}',
    '{"type":"commandResult","success":"false","chatId":"4242","error":"x"}',
    '{"type":"commandResult","success":0,"chatId":"4242","error":"x"}',
    '{"type":"commandResult","success":null,"chatId":"4242"}',
]


async def test_unknown_and_malformed_frames_are_dropped(server: Harness) -> None:
    ws = await connect_booted(server, "devbox")
    for frame in DROPPED:
        await ws.send_str(frame)
    await sync(ws)  # still open, and not one reply (the server never sends error frames)
    await barrier(server)
    assert server.fake.messages_to(CHAT) == [texts.HELP]  # no "Command failed: x"
    await ws.close()


async def test_malformed_acks_leave_the_row_unacked(server: Harness) -> None:
    long_id, max_id = "c" * 65, "d" * 64
    ws = await connect_booted(server, "devbox")
    normal, long_row, max_row = await enqueue(
        server, "devbox", ["a", "b", "c"], command_ids=["e" * 32, long_id, max_id]
    )
    frames = [await receive_json(ws) for _ in range(3)]
    assert [f["commandId"] for f in frames] == [normal, long_id, max_id]
    for bad in ([normal], {"id": normal}, None, 7, normal.upper()):
        await ws.send_str(ack(bad))
    await ws.send_str(json.dumps({"type": "ack", "id": normal}))
    await ws.send_str(json.dumps({"type": "Ack", "commandId": normal}))
    await ws.send_str(ack(long_id))  # 65 characters: malformed, dropped
    await ws.send_str(ack(max_id))  # 64 characters: fine
    await sync(ws)
    assert (await command_row(server, normal))["status"] == "sent"
    assert (await command_row(server, long_row))["status"] == "sent"
    assert (await command_row(server, max_row))["status"] == "acked"
    await ws.close()


async def test_binary_frames_are_decoded_as_utf8(server: Harness) -> None:
    ws = await connect_booted(server, "devbox")
    await ws.send_bytes(b'{"type":"ping","x":1}')
    msg = await ws.receive(timeout=5)
    assert (msg.type, msg.data) == (WSMsgType.TEXT, '{"type":"pong"}')
    for undecodable in (b"\xff\xfe{", b'{"type":"ping","x":"\xc3"}', b"\x80"):
        await ws.send_bytes(undecodable)
    await sync(ws)

    [command_id] = await enqueue(server, "devbox", ["go"])
    assert (await receive_json(ws))["commandId"] == command_id
    await ws.send_bytes(ack(command_id).encode())
    await sync(ws)
    assert (await command_row(server, command_id))["status"] == "acked"
    await ws.close()


@pytest.mark.parametrize("binary", [False, True])
async def test_frames_over_64_kib_are_dropped_and_connection_stays_open(
    server: Harness, binary: bool
) -> None:
    ws = await connect_booted(server, "devbox")
    over, at_limit = await enqueue(server, "devbox", ["x", "y"])
    await receive_json(ws)
    await receive_json(ws)

    async def send(text: str) -> None:
        await (ws.send_bytes(text.encode()) if binary else ws.send_str(text))

    skeleton = '{"type":"ack","commandId":"%s","pad":"{pad}"}'
    await send(padded(skeleton % over, MAX_FRAME + 1))
    await send(padded('{"type":"ping","pad":"{pad}"}', MAX_FRAME + 1))  # no pong for it
    await send(padded(skeleton % at_limit, MAX_FRAME))
    await sync(ws)  # the very next frame is the pong of this ping: the big ping got none
    assert (await command_row(server, over))["status"] == "sent"
    assert (await command_row(server, at_limit))["status"] == "acked"

    # ASCII at the limit too (65,536 characters = 65,536 bytes).
    await send(padded('{"type":"ping","pad":"{pad}"}', MAX_FRAME, multibyte=False))
    assert (await ws.receive(timeout=5)).data == '{"type":"pong"}'
    await ws.close()


@pytest.mark.parametrize("compress", [0, 15])
async def test_frame_of_exactly_1_mib_is_dropped_not_closed(server: Harness, compress: int):
    ws = await connect_booted(server, "devbox", compress=compress)
    assert ws.compress == compress  # 15: permessage-deflate, as the node ws library offers
    await ws.send_str(padded('{"type":"ping","pad":"{pad}"}', MIB, multibyte=False))
    await sync(ws)
    assert ws.close_code is None
    await ws.close()


@pytest.mark.parametrize("compress", [0, 15])
@pytest.mark.parametrize("binary", [False, True])
async def test_frame_over_1_mib_closes_with_1009(server: Harness, binary: bool, compress: int):
    ws = await connect_booted(server, "devbox", compress=compress)
    assert ws.compress == compress
    payload = padded('{"type":"ping","pad":"{pad}"}', MIB + 1, multibyte=False)
    await (ws.send_bytes(payload.encode()) if binary else ws.send_str(payload))
    msg = await ws.receive(timeout=5)
    assert msg.type == WSMsgType.CLOSE
    assert msg.data == 1009
    assert ws.close_code == 1009


# -- §4.2 command frames --------------------------------------------------------------------------


async def test_command_frame_is_compact_and_exact(server: Harness) -> None:
    ws = await connect_booted(server, "devbox")
    [command_id] = await enqueue(server, "devbox", ['héllo "q" 😀\n'], session_id="sess-9")
    msg = await ws.receive(timeout=5)
    assert msg.type == WSMsgType.TEXT
    expected = {
        "type": "command",
        "commandId": command_id,
        "sessionId": "sess-9",
        "command": 'héllo "q" 😀\n',
        "chatId": CHAT,
    }
    assert json.loads(msg.data) == expected
    assert msg.data == compact(expected)
    await sync(ws)
    sent = await command_row(server, command_id)
    now = server.clock.now_ms()
    assert (sent["status"], sent["attempts"], sent["sent_at"]) == ("sent", 1, now)
    assert sent["next_retry_at"] == now + 60_000
    await ws.close()


# -- §4.3 / §6.5 acks -----------------------------------------------------------------------------


async def test_ack_only_counts_for_the_connections_machine(server: Harness) -> None:
    a = await connect_booted(server, "alpha")
    b = await connect_booted(server, "beta")
    [command_id] = await enqueue(server, "alpha", ["for alpha"])
    assert (await receive_json(a))["commandId"] == command_id
    await b.send_str(ack(command_id))
    await sync(b)
    unchanged = await command_row(server, command_id)
    assert (unchanged["status"], unchanged["acked_at"]) == ("sent", None)

    server.clock.advance(1_234)
    await a.send_str(ack(command_id))
    await sync(a)
    acked = await command_row(server, command_id)
    assert (acked["status"], acked["acked_at"]) == ("acked", server.clock.now_ms())
    await a.close()
    await b.close()


async def test_ack_of_a_pending_row_marks_it_acked(server: Harness) -> None:
    ws = await connect_booted(server, "devbox")
    [command_id] = await enqueue(server, "devbox", ["queued"], flush=False)
    await ws.send_str(ack(command_id))
    await sync(ws)  # and the flush after the ack had nothing to send
    got = await command_row(server, command_id)
    assert (got["status"], got["attempts"]) == ("acked", 0)
    await ws.close()


async def test_ack_runs_a_flush_even_for_an_acked_row(server: Harness) -> None:
    ws = await connect_booted(server, "devbox")
    [first] = await enqueue(server, "devbox", ["first"])
    assert (await receive_json(ws))["commandId"] == first
    await ws.send_str(ack(first))
    await sync(ws)
    acked_at = (await command_row(server, first))["acked_at"]

    [second] = await enqueue(server, "devbox", ["second"], flush=False)
    await ws.send_str(ack("f" * 32))  # unknown id: no row matched, no flush
    await sync(ws)
    assert (await command_row(server, second))["status"] == "pending"

    server.clock.advance(500)
    await ws.send_str(ack(first))  # already acked: no change, but a flush runs
    frame = await receive_json(ws)
    assert (frame["type"], frame["commandId"]) == ("command", second)
    again = await command_row(server, first)
    assert (again["status"], again["acked_at"]) == ("acked", acked_at)
    await ws.close()


async def test_ack_from_another_machine_does_not_flush(server: Harness) -> None:
    a = await connect_booted(server, "alpha")
    b = await connect_booted(server, "beta")
    [alpha_row] = await enqueue(server, "alpha", ["a"])
    await receive_json(a)
    [beta_row] = await enqueue(server, "beta", ["b"], flush=False)
    await b.send_str(ack(alpha_row))
    await sync(b)
    assert (await command_row(server, beta_row))["status"] == "pending"
    await a.close()
    await b.close()


# -- §6.5 results ---------------------------------------------------------------------------------


def result(**fields: object) -> str:
    return json.dumps({"type": "commandResult", **fields})


async def test_success_result_stores_ok_and_acks_without_message(server: Harness) -> None:
    ws = await connect_booted(server, "devbox")
    [command_id] = await enqueue(server, "devbox", ["run"])
    await receive_json(ws)
    server.clock.advance(2_000)
    await ws.send_str(result(commandId=command_id, success=True, error=None, chatId=CHAT))
    await sync(ws)
    got = await command_row(server, command_id)
    now = server.clock.now_ms()
    assert (got["status"], got["acked_at"]) == ("acked", now)
    assert (got["result"], got["result_error"], got["result_at"]) == ("ok", None, now)
    await barrier(server)
    assert [m for m in server.fake.messages_to(CHAT) if m.startswith("Command")] == []
    await ws.close()


async def test_failure_result_stores_failed_tells_chat_once(server: Harness) -> None:
    fake = server.fake
    ws = await connect_booted(server, "devbox")
    [command_id] = await enqueue(server, "devbox", ["run"])
    await receive_json(ws)
    await ws.send_str(ack(command_id))
    await sync(ws)
    acked_at = (await command_row(server, command_id))["acked_at"]

    server.clock.advance(3_000)
    # The frame's chatId is ignored when the row is known: the row's chat is told.
    await ws.send_str(result(commandId=command_id, success=False, error="boom", chatId=OTHER_CHAT))
    await fake.wait_for(lambda: "Command failed: boom" in fake.messages_to(CHAT))
    got = await command_row(server, command_id)
    assert (got["status"], got["acked_at"]) == ("acked", acked_at)
    assert (got["result"], got["result_error"]) == ("failed", "boom")
    assert got["result_at"] == server.clock.now_ms()

    server.clock.advance(1_000)
    await ws.send_str(result(commandId=command_id, success=False, error="again", chatId=CHAT))
    await ws.send_str(result(commandId=command_id, success=True, chatId=CHAT))
    await sync(ws)
    await barrier(server)
    assert [m for m in fake.messages_to(CHAT) if m.startswith("Command")] == [
        "Command failed: boom"
    ]
    assert fake.messages_to(OTHER_CHAT) == []
    assert await command_row(server, command_id) == got
    await ws.close()


async def test_result_for_a_row_in_a_chat_not_allowed_sends_nothing(server: Harness) -> None:
    ws = await connect_booted(server, "devbox")
    [command_id] = await enqueue(server, "devbox", ["run"], chat_id=OTHER_CHAT)
    await receive_json(ws)
    await ws.send_str(result(commandId=command_id, success=False, error="boom", chatId=CHAT))
    await sync(ws)
    assert (await command_row(server, command_id))["result"] == "failed"
    await barrier(server)
    assert [m for m in server.fake.messages_to(CHAT) if m.startswith("Command")] == []
    assert server.fake.messages_to(OTHER_CHAT) == []
    await ws.close()


@pytest.mark.parametrize(
    ("error", "expected"),
    [
        ("x" * 1000, "x" * 1000),
        ("x" * 1001, "x" * 1000),
        ("😀" * 600, "😀" * 500),
        ("a" + "😀" * 600, "a" + "😀" * 499),
        ("é" * 1500, "é" * 1000),
    ],
)
async def test_failure_error_is_cut_to_1000_utf16_units(
    server: Harness, error: str, expected: str
) -> None:
    fake = server.fake
    ws = await connect_booted(server, "devbox")
    await ws.send_str(result(success=False, error=error, chatId=CHAT))
    await fake.wait_for(
        lambda: any(m.startswith("Command failed: ") for m in fake.messages_to(CHAT))
    )
    assert fake.messages_to(CHAT) == [f"Command failed: {expected}"]
    await ws.close()


@pytest.mark.parametrize(
    "error_fields",
    [{}, {"error": None}, {"error": ""}, {"error": 123}, {"error": ["x"]}, {"error": {"m": 1}}],
)
async def test_failure_without_usable_error_says_unknown_error(
    server: Harness, error_fields: dict
) -> None:
    fake = server.fake
    ws = await connect_booted(server, "devbox")
    await ws.send_str(result(success=False, chatId=CHAT, **error_fields))
    await fake.wait_for(lambda: fake.messages_to(CHAT) != [])
    assert fake.messages_to(CHAT) == ["Command failed: Unknown error"]
    await ws.close()


async def test_result_without_command_id_uses_frame_chat(server: Harness) -> None:
    fake = server.fake
    ws = await connect_booted(server, "devbox")
    await ws.send_str(result(success=False, error="numeric chat", chatId=int(CHAT)))
    await fake.wait_for(lambda: "Command failed: numeric chat" in fake.messages_to(CHAT))
    await ws.send_str(result(success=False, error="other chat", chatId=OTHER_CHAT))
    await ws.send_str(result(success=False, error="other chat num", chatId=int(OTHER_CHAT)))
    await ws.send_str(result(success=False, error="no chat"))
    await ws.send_str(result(success=False, error="null chat", chatId=None))
    await ws.send_str(result(success=True, chatId=CHAT))
    await ws.send_str(result(success=True, error=None, chatId=CHAT, sessionId="s"))
    await sync(ws)
    await barrier(server)
    assert [m for m in fake.messages_to(CHAT) if m.startswith("Command")] == [
        "Command failed: numeric chat"
    ]
    assert fake.messages_to(OTHER_CHAT) == []
    await ws.close()


async def test_empty_command_id_or_chat_id_count_as_absent(server: Harness) -> None:
    fake = server.fake
    ws = await connect_booted(server, "devbox")
    await ws.send_str(result(commandId="", success=False, error="uncorrelated", chatId=CHAT))
    await fake.wait_for(lambda: "Command failed: uncorrelated" in fake.messages_to(CHAT))
    [command_id] = await enqueue(server, "devbox", ["run"])
    await receive_json(ws)
    await ws.send_str(result(commandId=command_id, success=False, error="row chat", chatId=""))
    await fake.wait_for(lambda: "Command failed: row chat" in fake.messages_to(CHAT))
    got = await command_row(server, command_id)
    assert (got["status"], got["result"], got["result_error"]) == ("acked", "failed", "row chat")
    await ws.close()


async def test_result_naming_another_machines_row_changes_nothing(server: Harness) -> None:
    fake = server.fake
    a = await connect_booted(server, "alpha")
    b = await connect_booted(server, "beta")
    [command_id] = await enqueue(server, "alpha", ["a"])
    await receive_json(a)
    before = await command_row(server, command_id)
    await b.send_str(result(commandId=command_id, success=False, error="spoof", chatId=CHAT))
    # Not this machine's row: uncorrelated, so only the failure report with the frame's chat.
    await fake.wait_for(lambda: "Command failed: spoof" in fake.messages_to(CHAT))
    await sync(b)
    assert await command_row(server, command_id) == before
    await a.close()
    await b.close()


# -- §6.1 late ack / result of a dead row ---------------------------------------------------------


async def kill_row(server: Harness, machine_id: str, label: str | None, command: str) -> str:
    """A row of an offline machine that expires: maintenance moves it to ``dead``."""
    await server.register("sess-d", machine_id, label)
    [command_id] = await enqueue(server, machine_id, [command], session_id="sess-d")
    server.clock.advance(24 * 3600 * 1000)
    await server.app[keys.MAINTENANCE].tick()
    target = label or machine_id
    notice = f"Command not delivered to {target} (not delivered within 24 hours): {command}"
    await server.fake.wait_for(lambda: notice in server.fake.messages_to(CHAT))
    assert (await command_row(server, command_id))["status"] == "dead"
    return command_id


@pytest.mark.parametrize(("label", "target"), [("api", "api"), (None, "devbox")])
async def test_late_ack_of_dead_row(server: Harness, label: str | None, target: str) -> None:
    fake = server.fake
    command_id = await kill_row(server, "devbox", label, "late one")
    ws = await connect_booted(server, "devbox")
    await sync(ws)  # a dead row is never sent again
    server.clock.advance(10)
    await ws.send_str(ack(command_id))
    await fake.wait_for(lambda: f"Command reached {target} after all." in fake.messages_to(CHAT))
    got = await command_row(server, command_id)
    assert (got["status"], got["acked_at"]) == ("acked", server.clock.now_ms())
    # A second ack is an ack of an acked row: no second message.
    await ws.send_str(ack(command_id))
    await sync(ws)
    await barrier(server)
    assert fake.messages_to(CHAT).count(f"Command reached {target} after all.") == 1
    await ws.close()


async def test_late_result_of_dead_row(server: Harness) -> None:
    fake = server.fake
    command_id = await kill_row(server, "devbox", "api", "late two")
    ws = await connect_booted(server, "devbox")
    await ws.send_str(result(commandId=command_id, success=False, error="nope", chatId=CHAT))
    await fake.wait_for(
        lambda: (
            {"Command reached api after all.", "Command failed: nope"}
            <= set(fake.messages_to(CHAT))
        )
    )
    got = await command_row(server, command_id)
    assert (got["status"], got["result"], got["result_error"]) == ("acked", "failed", "nope")
    await ws.close()


# -- §6.3 flush limits and §6.1 re-sends ----------------------------------------------------------


async def test_flush_sends_at_most_10_and_keeps_at_most_20_in_flight(server: Harness) -> None:
    ws = await connect_booted(server, "devbox")
    ids = await enqueue(server, "devbox", [f"c{i}" for i in range(25)], flush=False)
    hub = server.hub
    assert await hub.flush("devbox") == 10
    received = [(await receive_json(ws))["commandId"] for _ in range(10)]
    await sync(ws)  # nothing more came from that flush
    assert received == ids[:10]
    assert await hub.flush("devbox") == 10
    received += [(await receive_json(ws))["commandId"] for _ in range(10)]
    assert received == ids[:20]
    assert await hub.flush("devbox") == 0  # 20 in flight
    await server.app[keys.MAINTENANCE].tick()
    await sync(ws)
    rows = {r["command_id"]: r for r in await server.commands(machine_id="devbox")}
    assert [rows[i]["status"] for i in ids] == ["sent"] * 20 + ["pending"] * 5
    assert [rows[i]["attempts"] for i in ids] == [1] * 20 + [0] * 5

    server.clock.advance(59_999)  # not yet due: still in flight
    assert await hub.flush("devbox") == 0
    await sync(ws)

    server.clock.advance(2)  # 60,001 ms after the sends: re-sent, oldest first, 10 at a time
    await server.app[keys.MAINTENANCE].tick()
    resent = [await receive_json(ws) for _ in range(10)]
    await sync(ws)
    assert [f["commandId"] for f in resent] == ids[:10]
    assert [f["command"] for f in resent] == [f"c{i}" for i in range(10)]
    assert await hub.flush("devbox") == 10
    resent = [(await receive_json(ws))["commandId"] for _ in range(10)]
    assert resent == ids[10:20]
    assert await hub.flush("devbox") == 0
    rows = {r["command_id"]: r for r in await server.commands(machine_id="devbox")}
    assert [rows[i]["attempts"] for i in ids] == [2] * 20 + [0] * 5
    assert {rows[i]["sent_at"] for i in ids[:20]} == {server.clock.now_ms()}

    # Acks free in-flight slots; each ack's flush fills them again, oldest pending first.
    for command_id in ids[:3]:
        await ws.send_str(ack(command_id))
    frames = [(await receive_json(ws))["commandId"] for _ in range(3)]
    assert frames == ids[20:23]
    await sync(ws)
    await ws.close()


async def test_concurrent_flushes_never_send_a_row_twice(server: Harness) -> None:
    ws = await connect_booted(server, "devbox")
    ids = await enqueue(server, "devbox", [f"c{i}" for i in range(15)], flush=False)
    counts = await asyncio.gather(*(server.hub.flush("devbox") for _ in range(4)))
    assert sorted(counts) == [0, 0, 5, 10]
    received = [(await receive_json(ws))["commandId"] for _ in range(15)]
    await sync(ws)
    assert received == ids
    await ws.close()


async def test_enqueue_for_connected_machine_is_sent_at_once(server: Harness) -> None:
    fake = server.fake
    await server.register("sess-1", "devbox", "api")
    sent = await server.notify("sess-1")
    ws = await connect_booted(server, "devbox")
    resp = await server.webhook(fake.make_message(CHAT, "do it", reply_to=sent["messageId"]))
    assert resp.status == 200
    frame = await receive_json(ws)
    assert (frame["command"], frame["sessionId"], frame["chatId"]) == ("do it", "sess-1", CHAT)
    await ws.close()


@pytest.mark.parametrize("how", ["replace", "reconnect"])
async def test_sent_rows_are_resent_at_once_on_a_new_connection(server: Harness, how: str) -> None:
    old = await connect_booted(server, "devbox")
    ids = await enqueue(server, "devbox", ["one", "two"])
    assert [(await receive_json(old))["commandId"] for _ in ids] == ids
    await sync(old)
    [acked] = await enqueue(server, "devbox", ["three"])
    await receive_json(old)
    await old.send_str(ack(acked))
    await sync(old)
    if how == "reconnect":
        await old.close()
        assert old.close_code == 1000
    server.clock.advance(1_000)  # far less than the 60 s re-send interval

    new = await server.connect("devbox")
    frames = [await receive_json(new) for _ in range(3)]
    assert frames[0]["type"] == "boot"
    assert [(f["type"], f["commandId"]) for f in frames[1:]] == [("command", i) for i in ids]
    await sync(new)
    rows = {r["command_id"]: r for r in await server.commands(machine_id="devbox")}
    now = server.clock.now_ms()
    for command_id in ids:
        assert (rows[command_id]["status"], rows[command_id]["attempts"]) == ("sent", 2)
        assert rows[command_id]["sent_at"] == now
    assert rows[acked]["status"] == "acked"
    if how == "replace":
        msg = await old.receive(timeout=5)
        assert (msg.type, msg.data, msg.extra) == (
            WSMsgType.CLOSE,
            4000,
            "Replaced by new connection",
        )
    await new.close()
