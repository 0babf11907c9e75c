"""Issue 11's defects, each pinned: a client's bytes never make a 5xx, a traceback or a lost
connection (contract §2.1, §3, §4.4, §7.1), and shutdown closes every agent at once.

Each test here failed before its fix (deep JSON → 500, ids beyond 64 bits → 500, non-UTF-8
header bytes → 500, a deep frame killing /ws, tracebacks for client mistakes, a 0644 database,
a 10 s shutdown with clients that wait for the server to drop TCP).
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import os
import shutil
import signal
import stat
import struct
from pathlib import Path
from typing import Any

import pytest

from ccr_box.db import Database, database_path
from ccr_box.wire import BadJson, clip, decode_json
from tests.conftest import API_KEY, CHAT, PATH_SECRET, WEBHOOK_SECRET, Harness
from tests.helpers_proc import Proc, clean_env
from tests.helpers_security import raw_request, server_address
from tests.helpers_ws import connect_booted, enqueue, masked_frame, receive_json, sync

DEEP = b"[" * 1000 + b"]" * 1000
DEEP_OBJECT = b'{"a":' * 1000 + b"1" + b"}" * 1000
OUT_OF_RANGE = [2**63, 10**30, -(2**70)]
KEY = f"Bearer {API_KEY}".encode()

# Every JSON POST route with the credential it needs, and the error text it answers with.
JSON_ROUTES = [
    ("/sessions/register", b"Authorization: " + KEY, "json"),
    ("/sessions/unregister", b"Authorization: " + KEY, "json"),
    ("/notifications/send", b"Authorization: " + KEY, "json"),
    ("/admin/commands/c1/reassign", b"Authorization: " + KEY, "json"),
    ("/admin/sessions/s1/move", b"Authorization: " + KEY, "json"),
    ("/admin/sessions/s1/commands", b"Authorization: " + KEY, "json"),
    (
        f"/webhook/telegram/{PATH_SECRET}",
        f"X-Telegram-Bot-Api-Secret-Token: {WEBHOOK_SECRET}",
        "text",
    ),
]


def test_decoder_refuses_what_cannot_be_stored_or_sent() -> None:
    for raw in (
        DEEP,
        DEEP_OBJECT,
        b'{"a":NaN}',
        b'{"a":Infinity}',
        b'{"a":1e400}',
        b'{"a":"\\ud800"}',
        b'{"\\udfff":1}',
        b'{"a":"\xed\xa0\x80"}',  # a lone surrogate's raw bytes
        b"\xff\xfe{",
        b'{"a":' + b"9" * 5000 + b"}",
    ):
        with pytest.raises(BadJson):
            decode_json(raw)
    nested = b'{"a":' * 60 + b"1" + b"}" * 60  # deep enough for any real update
    assert decode_json(nested) is not None
    assert decode_json('{"t":"héllo \\u00e9 \\ud83d\\ude00"}') == {"t": "héllo é 😀"}


def test_clip_keeps_a_log_line_short_and_single() -> None:
    assert clip("9" * 70_000) == "9" * 80 + "…(+69920)"
    assert "\n" not in clip("a\nb\r\nc") and clip("a\nb") == "a b"
    assert clip("\udcff x") == "\\udcff x"


@pytest.mark.parametrize(("path", "header", "kind"), JSON_ROUTES)
@pytest.mark.parametrize("body", [DEEP, DEEP_OBJECT, b'{"a":NaN}', b'{"t":"\\ud800"}'])
async def test_undecodable_bodies_are_400_on_every_json_route(
    server: Harness, path: str, header: str | bytes, kind: str, body: bytes
) -> None:
    host, port = server_address(server)
    line = header if isinstance(header, bytes) else header.encode()
    resp = await raw_request(host, port, "POST", path, [line], body)
    assert resp.status == 400, resp.body
    if kind == "json":
        assert json.loads(resp.body) == {"error": "Invalid JSON body"}
    else:
        assert resp.body == b"Invalid JSON"


def reply_update(update_id: Any, reply_to: Any, text: str = "hello") -> dict[str, Any]:
    return {
        "update_id": update_id,
        "message": {
            "message_id": 7,
            "chat": {"id": int(CHAT), "type": "private"},
            "from": {"id": int(CHAT)},
            "text": text,
            "reply_to_message": {"message_id": reply_to, "chat": {"id": int(CHAT)}},
        },
    }


@pytest.mark.parametrize("value", OUT_OF_RANGE)
async def test_ids_beyond_64_bits_are_ignored_not_500(server: Harness, value: int) -> None:
    await server.register("s1", "m1")
    note = await server.notify("s1")
    # update_id out of range: processed without dedup (as an absent id), never a 500.
    resp = await server.webhook(reply_update(value, note["messageId"], "to the session"))
    assert resp.status == 200 and await resp.text() == "ok"
    assert [c["command"] for c in await server.commands()] == ["to the session"]
    # reply_to message id out of range: no session found, the user is told, nothing queued.
    resp = await server.webhook(reply_update(1000 + abs(value) % 1000, value, "lost"))
    assert resp.status == 200
    await server.fake.wait_for(lambda: any("Could not find session" in t for t in texts(server)))
    assert len(await server.commands()) == 1


def texts(server: Harness) -> list[str]:
    return [call["text"] for call in server.fake.calls_of("sendMessage")]


async def test_out_of_range_message_thread_id_is_dropped(server: Harness) -> None:
    update = reply_update(5, 424242, "x")
    update["message"].update(is_topic_message=True, message_thread_id=2**64)
    resp = await server.webhook(update)
    assert resp.status == 200
    await server.fake.wait_for(lambda: bool(texts(server)))
    assert "message_thread_id" not in server.fake.calls_of("sendMessage")[0]


@pytest.mark.parametrize(
    "header",
    [
        b"X-API-Key: \xff\xfe",
        b"Authorization: Bearer \xc3\x28",
        b"Authorization: Bearer " + API_KEY.encode() + b"\xe9",
        b"X-API-Key: " + API_KEY.encode("utf-8") + b"\x80",
    ],
)
async def test_non_utf8_api_key_bytes_are_401(server: Harness, header: bytes) -> None:
    host, port = server_address(server)
    resp = await raw_request(host, port, "POST", "/sessions/register", [header], b"{}")
    assert resp.status == 401
    assert json.loads(resp.body) == {"error": "Unauthorized"}
    assert (
        await server.db.read(lambda c: c.execute("SELECT count(*) FROM sessions").fetchone()[0])
        == 0
    )


async def test_latin1_bytes_of_a_latin1_key_still_do_not_match_its_utf8_form(
    start_server, tmp_path: Path
) -> None:
    # Compared as bytes: "é" sent as one latin-1 byte is not the key's UTF-8 "é".
    from tests.helpers_http import config_with

    server = await start_server(config_with(tmp_path / "d", None, api_key="clé-0123456789abcdef"))
    host, port = server_address(server)
    wrong = await raw_request(
        host, port, "GET", "/sessions", [b"X-API-Key: cl\xe9-0123456789abcdef"]
    )
    right = await raw_request(
        host, port, "GET", "/sessions", ["X-API-Key: clé-0123456789abcdef".encode()]
    )
    assert (wrong.status, right.status) == (401, 200)


async def test_non_utf8_webhook_secret_is_401(server: Harness) -> None:
    host, port = server_address(server)
    resp = await raw_request(
        host,
        port,
        "POST",
        f"/webhook/telegram/{PATH_SECRET}",
        [b"X-Telegram-Bot-Api-Secret-Token: \xe9\xff"],
        json.dumps(reply_update(1, 1)).encode(),
    )
    assert (resp.status, resp.body) == (401, b"Unauthorized")


async def test_non_utf8_subprotocol_is_401(server: Harness) -> None:
    host, port = server_address(server)
    resp = await raw_request(
        host,
        port,
        "GET",
        "/ws?machineId=m1",
        [b"Sec-WebSocket-Protocol: ccr, \xe9\xff"],
        upgrade=True,
    )
    assert resp.status == 401


async def test_subprotocol_split_over_two_header_lines_is_joined(server: Harness) -> None:
    host, port = server_address(server)
    lines = [b"Sec-WebSocket-Protocol: ccr", b"Sec-WebSocket-Protocol: " + API_KEY.encode()]
    resp = await raw_request(host, port, "GET", "/ws?machineId=m1", lines, upgrade=True)
    assert resp.status == 101
    assert resp.header("Sec-WebSocket-Protocol") == "ccr"


def errors(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.levelno >= logging.ERROR or r.exc_info]


@pytest.mark.parametrize(
    "frame",
    [
        DEEP.decode(),
        DEEP_OBJECT.decode(),
        '{"type":"ack","commandId":"\\ud800"}',
        '{"type":"commandResult","success":false,"commandId":"\\udfff","error":"x"}',
        '{"type":"ack","commandId":NaN}',
        '{"type":' + "[" * 900 + "]" * 900 + "}",
    ],
)
async def test_a_frame_never_breaks_the_connection(
    server: Harness, caplog: pytest.LogCaptureFixture, frame: str
) -> None:
    caplog.set_level(logging.DEBUG)
    ws = await connect_booted(server, "m1")
    await ws.send_str(frame)
    await ws.send_bytes(frame.encode("utf-8", "surrogatepass"))
    await sync(ws)  # still open, and every frame before the ping was handled
    [command_id] = await enqueue(server, "m1", ["after the garbage"])
    frame_in = await receive_json(ws)
    assert frame_in["commandId"] == command_id
    assert errors(caplog) == []
    await ws.close()


async def test_agent_leaving_right_after_the_upgrade_logs_no_error(
    server: Harness, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    host, port = server_address(server)
    key = base64.b64encode(os.urandom(16)).decode()
    for _ in range(5):
        _reader, writer = await asyncio.open_connection(host, port)
        writer.write(
            (
                "GET /ws?machineId=m9 HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n"
                f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
                f"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Protocol: ccr, {API_KEY}\r\n\r\n"
            ).encode()
        )
        await writer.drain()
        writer.transport.abort()  # RST right after the request, before or during the 101
    ws = await connect_booted(server, "m9")  # the server is fine and m9 can connect
    await ws.close()
    assert errors(caplog) == []


async def test_malformed_http_is_one_warning_without_traceback(
    server: Harness, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    host, port = server_address(server)
    for _ in range(3):
        reader, writer = await asyncio.open_connection(host, port)
        writer.write(b"GET / HTTP/1.1\r\nHost: x\r\nContent-Length: abc\r\n\r\n")
        await writer.drain()
        assert (await reader.read()).startswith(b"HTTP/1.0 400")
        writer.close()
    records = [r for r in caplog.records if r.name == "aiohttp.server"]
    assert records and all(r.levelno == logging.WARNING and not r.exc_info for r in records)
    assert len(records) == 1  # rate-limited: three bad requests, one line
    assert "rejected a malformed HTTP request" in records[0].getMessage()
    assert errors(caplog) == []


async def test_a_huge_denied_chat_id_makes_a_short_log_line(
    server: Harness, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    update = reply_update(9, 1)
    update["message"]["chat"]["id"] = "9" * 70_000
    resp = await server.webhook(update)
    assert resp.status == 200
    lines = [r.getMessage() for r in caplog.records if "ignored a message" in r.getMessage()]
    assert len(lines) == 1 and len(lines[0]) < 1000
    events = await (await server.client.get("/admin/events", headers=server.auth())).json()
    denied = [e for e in events if "telegram.denied" in json.dumps(e)]
    assert denied and len(json.dumps(denied)) < 2000


async def test_database_and_wal_files_are_private(tmp_path: Path) -> None:
    path = database_path(tmp_path / "data")
    db = await Database.open(path)
    try:
        await db.write(lambda c: c.execute("INSERT INTO seen_updates VALUES (1, 1)"))
        for suffix in ("", "-wal", "-shm"):
            mode = stat.S_IMODE(os.stat(f"{path}{suffix}").st_mode)
            assert mode == 0o600, (suffix, oct(mode))
    finally:
        await db.close()
    os.chmod(path, 0o644)  # a database left by an older version is tightened on open
    db = await Database.open(path)
    await db.close()
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600


# -- shutdown with clients that wait for the server to drop TCP -------------------------------


async def _patient_agent(port: int, machine_id: str) -> tuple[asyncio.StreamReader, Any]:
    """A WebSocket client that, like Node's, answers a close frame and then waits for the
    server to drop the TCP connection (it never closes first)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    key = base64.b64encode(os.urandom(16)).decode()
    writer.write(
        (
            f"GET /ws?machineId={machine_id} HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n"
            f"Sec-WebSocket-Protocol: ccr, {API_KEY}\r\n\r\n"
        ).encode()
    )
    await writer.drain()
    head = await reader.readuntil(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 101"), head
    return reader, writer


async def _answer_close(reader: asyncio.StreamReader, writer: Any) -> int:
    """Read frames until the server's close; answer it; return its code."""
    while True:
        first, second = await reader.readexactly(2)
        length = second & 0x7F
        if length == 126:
            (length,) = struct.unpack("!H", await reader.readexactly(2))
        payload = await reader.readexactly(length)
        if first & 0x0F == 0x8:
            writer.write(masked_frame(0x8, payload[:2]))
            await writer.drain()
            return int.from_bytes(payload[:2], "big")


@pytest.fixture
def up_env(tmp_path: Path) -> dict[str, str]:
    return clean_env(
        CCR_BOX_CONFIG=str(tmp_path / "config.toml"),
        CCR_BOX_DATA_DIR=str(tmp_path / "data"),
        CCR_API_KEY=API_KEY,
    )


async def test_shutdown_closes_patient_clients_at_once(
    procs: list[Proc], up_env: dict[str, str]
) -> None:
    proc = await Proc.start("up", "--headless", "--port", "0", env=up_env)
    procs.append(proc)
    port = await proc.listening_port()
    agents = [await _patient_agent(port, f"patient-{i}") for i in range(3)]
    for i in range(3):
        await proc.wait_line(f"machine connected machine=patient-{i}")
    proc.send_signal(signal.SIGTERM)
    codes = await asyncio.gather(*(_answer_close(r, w) for r, w in agents))
    assert codes == [1001, 1001, 1001]
    for reader, _writer in agents:  # the server drops TCP after the handshake, not on a timer
        assert await reader.read() == b""
    assert await proc.wait_exit() == 0
    # Before the fix aiohttp had stopped reading when the close went out: the answer was never
    # seen and each close waited out its timeout ("never answered the close").
    assert proc.stderr.count("(agent answered the close)") == 3
    assert "never answered" not in proc.stderr


@pytest.mark.skipif(shutil.which("node") is None, reason="node is not installed")
async def test_shutdown_with_nodes_own_websocket_client(
    procs: list[Proc], up_env: dict[str, str], tmp_path: Path
) -> None:
    script = tmp_path / "agent.mjs"
    script.write_text(
        "const [port, key] = process.argv.slice(2);\n"
        "const ws = new WebSocket(`ws://127.0.0.1:${port}/ws?machineId=node-1`, ['ccr', key]);\n"
        "ws.onmessage = (e) => console.log('frame ' + e.data);\n"
        "ws.onclose = (e) => console.log('close ' + e.code + ' ' + e.reason);\n"
    )
    proc = await Proc.start("up", "--headless", "--port", "0", env=up_env)
    procs.append(proc)
    port = await proc.listening_port()
    node = await asyncio.create_subprocess_exec(
        "node",
        "--experimental-websocket",  # Node 20; a no-op where WebSocket is built in
        str(script),
        str(port),
        API_KEY,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    try:
        assert node.stdout is not None
        first = await asyncio.wait_for(node.stdout.readline(), 15)
        if b"WebSocket is not defined" in first or b"bad option" in first:
            pytest.skip(f"this node has no WebSocket client: {first!r}")
        assert b'"type":"boot"' in first, first
        proc.send_signal(signal.SIGTERM)
        line = await asyncio.wait_for(node.stdout.readline(), 15)
        assert line.strip() == b"close 1001 Server shutting down"
        assert await proc.wait_exit() == 0
        assert "(agent answered the close)" in proc.stderr
    finally:
        if node.returncode is None:
            node.kill()
        await node.wait()


# -- long polling: one unreadable update must not hold up the rest ----------------------------


async def test_polling_skips_an_unreadable_update_and_goes_on(
    start_server, caplog: pytest.LogCaptureFixture
) -> None:
    from ccr_box.server.app import Options

    h = await start_server(
        mode="polling", options=Options(maintenance=False, telegram_inbound=True, poll_timeout=1)
    )
    fake = h.fake
    deep = fake.make_message(CHAT, "/help")
    nested: Any = "x"
    for _ in range(70):  # deeper than MAX_JSON_DEPTH: ccr-box cannot store or answer it
        nested = [nested]
    deep["message"]["entities_extra"] = nested
    surrogate = fake.make_message(CHAT, "/help")
    surrogate["message"]["text"] = "\ud800"
    fake.push_update(deep)
    fake.push_update(surrogate)
    good = fake.push_update(fake.make_message(CHAT, "/help"))
    # Before: the whole getUpdates answer was refused as "unparsable" forever and the offset
    # never moved past the deep update.
    await fake.wait_for(lambda: any(p.get("offset") == good["update_id"] + 1 for p in polls(fake)))
    await fake.wait_for(lambda: len(fake.messages_to(CHAT)) == 1)
    skipped = [r for r in caplog.records if "skipped an unreadable update" in r.getMessage()]
    assert len(skipped) == 2


async def test_polling_backs_off_when_a_batch_has_no_usable_update_id(
    start_server, caplog: pytest.LogCaptureFixture
) -> None:
    from ccr_box.server.app import Options

    h = await start_server(
        mode="polling", options=Options(maintenance=False, telegram_inbound=True, poll_timeout=1)
    )
    fake = h.fake
    await fake.wait_for(lambda: bool(polls(fake)))
    odd = fake.make_message(CHAT, "/help")
    odd["update_id"] = 2**64  # no usable id: Telegram would serve it again and again
    fake.updates.append(odd)
    fake.push_update({"update_id": 2**64 + 1})  # wakes the long poll
    await fake.wait_for(
        lambda: any("no usable update_id" in r.getMessage() for r in caplog.records)
    )
    served = len(polls(fake))
    assert served < 10  # before: about 500 getUpdates a second until another update came


def polls(fake: Any) -> list[dict[str, Any]]:
    return [p for name, p in fake.calls if name == "getUpdates"]
