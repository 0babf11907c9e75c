"""Security suite, part 3: size limits that hold without buffering, and clients that are slow on
purpose (idle sockets, headers a byte at a time, agents and event streams that never read) do
not stall anyone else (contract §2.1, §4.4, §6.7).

Bounds of a few seconds below are liveness checks ("it completes at all, promptly"), not timing
measurements.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import signal
import socket
import struct
from collections.abc import AsyncIterator, Awaitable
from pathlib import Path
from typing import Any, TypeVar

import aiohttp
import pytest

from ccr_box import limits
from ccr_box.server import keys
from ccr_box.server.app import Options
from tests import figures
from tests.conftest import API_KEY, CHAT, PATH_SECRET, WEBHOOK_SECRET, Harness
from tests.fake_telegram import FakeTelegram
from tests.helpers_proc import Proc, clean_env
from tests.helpers_security import server_address
from tests.helpers_ws import connect_booted, enqueue, machine_history, receive_json

T = TypeVar("T")
PROMPT_S = 5.0  # "promptly": generous, a liveness bound
BIG_COMMAND = "€" * limits.MAX_COMMAND_LENGTH  # 30 KB of UTF-8 per frame


async def promptly(awaitable: Awaitable[T], what: str) -> T:
    try:
        return await asyncio.wait_for(awaitable, PROMPT_S)
    except TimeoutError:
        raise AssertionError(f"{what} did not complete within {PROMPT_S} s") from None


def handshake(target: str, protocol: str | None = f"ccr, {API_KEY}") -> bytes:
    key = base64.b64encode(os.urandom(16)).decode()
    lines = [
        f"GET {target} HTTP/1.1",
        "Host: 127.0.0.1",
        "Upgrade: websocket",
        "Connection: Upgrade",
        f"Sec-WebSocket-Key: {key}",
        "Sec-WebSocket-Version: 13",
    ]
    if protocol is not None:
        lines.append(f"Sec-WebSocket-Protocol: {protocol}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


async def open_socket(
    host: str, port: int, *, rcvbuf: int | None = None
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A TCP connection; ``rcvbuf`` shrinks the receive buffer (set before connecting)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    if rcvbuf is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    sock.setblocking(False)
    try:
        await asyncio.get_running_loop().sock_connect(sock, (host, port))
    except BaseException:
        sock.close()
        raise
    return await asyncio.open_connection(sock=sock)


async def non_reading_websocket(
    host: str, port: int, target: str, *, boot: bool = True
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """Complete a WebSocket handshake (and read the boot frame: the agent is attached), then
    never read again (a stopped or wedged agent)."""
    reader, writer = await open_socket(host, port, rcvbuf=4096)
    writer.write(handshake(target))
    await writer.drain()
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), PROMPT_S)
    assert b" 101 " in head.split(b"\r\n", 1)[0], head
    if boot:
        _, size = await asyncio.wait_for(reader.readexactly(2), PROMPT_S)
        frame = await asyncio.wait_for(reader.readexactly(size & 0x7F), PROMPT_S)
        assert json.loads(frame)["type"] == "boot"
    return reader, writer


async def close_all(writers: list[asyncio.StreamWriter]) -> None:
    for writer in writers:
        writer.close()
    for writer in writers:
        with contextlib.suppress(ConnectionError, OSError):
            await writer.wait_closed()


# -- an agent that stops reading --------------------------------------------------------------


async def test_an_agent_that_stops_reading_stalls_nobody_else(start_server) -> None:
    """Re-sends pile up on an agent that never reads (suspended, wedged); once its socket is
    full, a send to it would wait forever. The maintenance tick, the webhook and other agents
    must not wait with it: the stuck connection is dropped and its rows kept for later."""
    h = await start_server(options=Options(maintenance=False, telegram_inbound=False))
    h.hub.send_timeout_s = 0.5  # production: limits.WS_SEND_TIMEOUT_S
    host, port = server_address(h)
    await h.register("s-stuck", "stuck")
    await h.register("s-ok", "ok")
    _, stuck = await non_reading_websocket(host, port, "/ws?machineId=stuck")
    ok = await connect_booted(h, "ok")
    conn = h.hub.connected()["stuck"]
    ids = await enqueue(h, "stuck", [BIG_COMMAND] * 60, session_id="s-stuck", flush=False)
    maintenance = h.app[keys.MAINTENANCE]
    try:
        ticks = 0
        # Each tick re-sends up to ten 30 KB frames to it; several MB fill any socket buffer.
        while "stuck" in h.hub.connected() and ticks < 40:
            h.clock.advance(limits.RESEND_INTERVAL_MS + 1)
            await promptly(maintenance.tick(), f"maintenance tick {ticks}")
            ticks += 1
        assert "stuck" not in h.hub.connected(), "the stuck agent was never found out"
        # Everybody else carries on: a command for the healthy agent, a webhook, a tick.
        await enqueue(h, "ok", ["hello"], session_id="s-ok")
        frame = await promptly(receive_json(ok), "the healthy agent's command")
        assert frame["command"] == "hello"
        note = await h.notify("s-stuck", "for the stuck one")
        reply = h.fake.make_message(CHAT, "still there?", reply_to=note["messageId"])
        resp = await promptly(h.webhook(reply), "a webhook for the stuck machine")
        assert resp.status == 200
        await promptly(maintenance.tick(), "a tick after the drop")
        # Nothing was lost: no row counts as delivered; each waits (pending, sent) or was
        # reported dead (max attempts).
        rows = {r["command_id"]: r for r in await h.commands(machine_id="stuck")}
        assert set(ids) <= set(rows)
        assert {r["status"] for r in rows.values()} <= {"pending", "sent", "dead"}
    finally:
        await close_all([stuck])
        await ok.close()
    # Once the socket is really gone the connection is recorded as dropped for not reading.
    await promptly(conn.finished.wait(), "the stuck connection's end")
    history = await machine_history(h, "stuck")
    assert history is not None
    assert (history["last_close_code"], history["last_close_reason"]) == (4003, "Not reading")
    figures.record("security", slow_clients=1)


# -- size limits without buffering ------------------------------------------------------------


async def test_huge_declared_bodies_are_refused_without_being_read(server: Harness) -> None:
    """A 1 GiB Content-Length gets its 413 (or 401 without the key) at once: nothing is sent
    after the head, so a server that waited for the body would hang."""
    host, port = server_address(server)
    gib = str(1 << 30).encode()
    auth = b"Authorization: Bearer " + API_KEY.encode()
    secret = b"X-Telegram-Bot-Api-Secret-Token: " + WEBHOOK_SECRET.encode()
    cases = [
        ("/sessions/register", [auth], 413, b'{"error":"Request body too large"}'),
        ("/notifications/send", [auth], 413, b'{"error":"Request body too large"}'),
        ("/sessions/register", [], 401, b'{"error":"Unauthorized"}'),
        ("/webhook/telegram", [secret], 413, b"Request body too large"),
        ("/webhook/telegram", [], 401, b"Unauthorized"),
    ]
    for path, headers, status, body in cases:
        reader, writer = await open_socket(host, port)
        try:
            head = [f"POST {path} HTTP/1.1".encode(), b"Host: x", b"Content-Length: " + gib]
            writer.write(b"\r\n".join(head + headers) + b"\r\n\r\n" + b"{" * 1000)
            await writer.drain()
            answer = await promptly(reader.readuntil(b"\r\n\r\n"), f"{path} answer")
            assert answer.startswith(f"HTTP/1.1 {status} ".encode()), answer
            length = int(answer.lower().split(b"content-length:")[1].split(b"\r\n")[0])
            assert await reader.readexactly(length) == body
        finally:
            await close_all([writer])


async def test_endless_chunked_upload_gets_413_after_the_limit(server: Harness) -> None:
    """A chunked body that never ends: the answer comes once the limit is passed (the server
    stops reading there), while the client is still sending."""
    host, port = server_address(server)
    reader, writer = await open_socket(host, port)
    head = [
        b"POST /sessions/register HTTP/1.1",
        b"Host: x",
        b"Transfer-Encoding: chunked",
        b"Authorization: Bearer " + API_KEY.encode(),
    ]
    writer.write(b"\r\n".join(head) + b"\r\n\r\n")
    chunk = b"%x\r\n%s\r\n" % (64 * 1024, b" " * (64 * 1024))
    answer = asyncio.ensure_future(reader.readuntil(b"\r\n\r\n"))
    sent = 0
    try:
        while not answer.done() and sent < 4 * limits.MAX_HTTP_BODY:
            writer.write(chunk)
            sent += 64 * 1024
            with contextlib.suppress(ConnectionError):
                await asyncio.wait_for(writer.drain(), PROMPT_S)
            await asyncio.sleep(0)
        head_bytes = await promptly(answer, "the 413")
        assert head_bytes.startswith(b"HTTP/1.1 413 "), head_bytes
        assert sent <= 3 * limits.MAX_HTTP_BODY  # answered near the limit, not at the end
    finally:
        answer.cancel()
        await close_all([writer])


async def test_a_frame_header_claiming_a_huge_payload_closes_1009_at_once(
    server: Harness,
) -> None:
    """Only the frame header of a 1 TiB frame is sent: the server closes with 1009 without
    waiting for (or allocating) the payload."""
    host, port = server_address(server)
    reader, writer = await open_socket(host, port)
    try:
        writer.write(handshake("/ws?machineId=huge"))
        await writer.drain()
        head = await promptly(reader.readuntil(b"\r\n\r\n"), "the handshake")
        assert b" 101 " in head
        mask = os.urandom(4)
        writer.write(struct.pack("!BBQ", 0x81, 0x80 | 127, 1 << 40) + mask + b"x" * 100)
        await writer.drain()

        async def close_code() -> int:
            while True:
                b0, b1 = await reader.readexactly(2)
                n = b1 & 0x7F
                if n == 126:
                    (n,) = struct.unpack("!H", await reader.readexactly(2))
                elif n == 127:
                    (n,) = struct.unpack("!Q", await reader.readexactly(8))
                payload = await reader.readexactly(n)
                if b0 & 0x0F == 0x8:
                    return struct.unpack("!H", payload[:2])[0]

        assert await promptly(close_code(), "the close frame") == 1009
    finally:
        await close_all([writer])


# -- hundreds of slow clients against a real server process -----------------------------------

IDLE = 300
SLOWLORIS = 100
STUCK_AGENTS = 10
STUCK_STREAMS = 5


def open_sockets(pid: int) -> int:
    count = 0
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        with contextlib.suppress(FileNotFoundError):  # closed since the listing
            count += os.readlink(fd).startswith("socket:")
    return count


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


@pytest.fixture
async def fake() -> AsyncIterator[FakeTelegram]:
    async with FakeTelegram() as fake:
        yield fake


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads VmRSS from /proc")
async def test_slow_clients_do_not_stall_normal_traffic(tmp_path: Path, fake: FakeTelegram) -> None:
    env = clean_env(
        CCR_BOX_CONFIG=str(tmp_path / "config.toml"),
        CCR_BOX_DATA_DIR=str(tmp_path / "data"),
        CCR_BOX_LOG_LEVEL="info",
        CCR_API_KEY=API_KEY,
        TELEGRAM_BOT_TOKEN=fake.token,
        TELEGRAM_API_BASE=fake.base_url,
        TELEGRAM_MODE="webhook",
        TELEGRAM_WEBHOOK_SECRET=WEBHOOK_SECRET,
        # The first run writes a config with a generated path secret: pin it.
        TELEGRAM_WEBHOOK_PATH_SECRET=PATH_SECRET,
        ALLOWED_CHAT_IDS=CHAT,
    )
    hook = f"/webhook/telegram/{PATH_SECRET}"
    proc = await Proc.start("up", "--headless", "--port", "0", env=env)
    writers: list[asyncio.StreamWriter] = []
    background: list[asyncio.Task[Any]] = []
    stop_trickle = asyncio.Event()
    good = {"Authorization": f"Bearer {API_KEY}"}
    tg = {"X-Telegram-Bot-Api-Secret-Token": WEBHOOK_SECRET}
    try:
        port = await proc.listening_port()
        base = f"http://127.0.0.1:{port}"
        timeout = aiohttp.ClientTimeout(total=30)
        async with aiohttp.ClientSession(timeout=timeout) as http:

            async def post(path: str, body: Any, headers: dict[str, str]) -> tuple[int, Any]:
                async with http.post(base + path, data=json.dumps(body), headers=headers) as r:
                    return r.status, await r.text()

            # Warm up, then the baseline memory.
            assert (await post("/sessions/register", {"sessionId": "w", "machineId": "w"}, good))[0] == 200  # fmt: skip
            rss_before = rss_kib(proc.process.pid)

            # 300 connections that never send a byte.
            for _ in range(IDLE):
                writers.append((await open_socket("127.0.0.1", port))[1])
            # 100 requests whose headers arrive one byte at a time, forever.
            slow = []
            slow_readers = []
            for i in range(SLOWLORIS):
                reader, writer = await open_socket("127.0.0.1", port)
                writer.write(f"GET /health HTTP/1.1\r\nHost: x\r\nX-Slow-{i}: ".encode())
                writers.append(writer)
                slow.append(writer)
                slow_readers.append(reader)

            async def trickle() -> None:
                while not stop_trickle.is_set():
                    for writer in slow:
                        if not writer.is_closing():
                            writer.write(b"a")
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(stop_trickle.wait(), 0.05)

            trickler = asyncio.create_task(trickle())
            background.append(trickler)
            # Agents that never read, each with big commands on their way, and event streams
            # that never read while all of this produces events.
            for i in range(STUCK_AGENTS):
                machine = f"stuck-{i}"
                _, writer = await non_reading_websocket(
                    "127.0.0.1", port, f"/ws?machineId={machine}"
                )
                writers.append(writer)
                session = {"sessionId": f"s-{machine}", "machineId": machine}
                assert (await post("/sessions/register", session, good))[0] == 200
            for _ in range(STUCK_STREAMS):
                _, writer = await non_reading_websocket(
                    "127.0.0.1", port, "/admin/events/stream", boot=False
                )
                writers.append(writer)
            for i in range(STUCK_AGENTS):
                note = {"sessionId": f"s-stuck-{i}", "chatId": CHAT, "text": "n"}
                status, text = await post("/notifications/send", note, good)
                assert status == 200, text
                message_id = json.loads(text)["messageId"]
                for _ in range(5):
                    update = fake.make_message(CHAT, BIG_COMMAND, reply_to=message_id)
                    # Not awaited here: a reply for a stuck machine may take its time.
                    background.append(asyncio.create_task(post(hook, update, tg)))

            # While all of them hang on, normal traffic completes promptly (each step bounded).
            async with http.get(base + "/health") as r:
                assert (r.status, await r.text()) == (200, "ok")
            async with http.get(base + "/ready") as r:
                assert r.status == 200
            session = {"sessionId": "s-live", "machineId": "live"}
            assert (await promptly(post("/sessions/register", session, good), "register"))[0] == 200
            agent = await promptly(
                http.ws_connect(f"{base}/ws?machineId=live", protocols=("ccr", API_KEY)),
                "an agent's connect",
            )
            assert json.loads((await agent.receive(timeout=PROMPT_S)).data)["type"] == "boot"
            note = {"sessionId": "s-live", "chatId": CHAT, "text": "live"}
            status, text = await promptly(post("/notifications/send", note, good), "notify")
            assert status == 200, text
            reply = fake.make_message(CHAT, "go", reply_to=json.loads(text)["messageId"])
            assert await promptly(post(hook, reply, tg), "webhook") == (200, "ok")
            frame = json.loads((await agent.receive(timeout=PROMPT_S)).data)
            assert (frame["type"], frame["command"]) == ("command", "go")
            await agent.close()

            # They really are all held open by the server, still waiting...
            held = open_sockets(proc.process.pid)
            assert held >= IDLE + SLOWLORIS + STUCK_AGENTS + STUCK_STREAMS, held
            # ...memory stays reasonable with all of them still connected...
            grown_mib = (rss_kib(proc.process.pid) - rss_before) / 1024
            assert grown_mib < 150, f"server RSS grew by {grown_mib:.0f} MiB"
            assert proc.process.returncode is None
            # ...and a slow request that finally ends is answered.
            stop_trickle.set()
            await promptly(trickler, "the trickle's end")
            for reader, writer in list(zip(slow_readers, slow, strict=True))[:3]:
                writer.write(b"\r\n\r\n")
                answer = await promptly(reader.readuntil(b"\r\n\r\n"), "a slow request")
                assert answer.startswith(b"HTTP/1.1 200 "), answer

        stop_trickle.set()
        await close_all(writers)
        for task in background:
            task.cancel()
        await asyncio.gather(*background, return_exceptions=True)
        proc.send_signal(signal.SIGTERM)
        assert await proc.wait_exit(20) == 0
    finally:
        stop_trickle.set()
        for task in background:
            task.cancel()
        await close_all(writers)
        await proc.stop()
    figures.record(
        "security", slow_clients=IDLE + SLOWLORIS + STUCK_AGENTS + STUCK_STREAMS, requests=8
    )
