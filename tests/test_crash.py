"""Crash safety with a real ``ccr-box up`` process (contract §5, §7.2 step 5, §4.5).

The server runs as a child process (``python -m ccr_box up --headless --port 0``) against the fake
Telegram of this test process; it is SIGKILLed, restarted on the same data dir, stopped with SIGTERM.
"""

from __future__ import annotations

import asyncio
import json
import signal
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import WSMsgType

from tests.conftest import API_KEY, CHAT, PATH_SECRET, WEBHOOK_SECRET, Harness
from tests.fake_telegram import FakeTelegram
from tests.helpers_proc import Proc, clean_env

MACHINE = "crash-box"
TIMEOUT = 10.0


@pytest.fixture
def env(tmp_path: Path, fake_telegram: FakeTelegram) -> dict[str, str]:
    return clean_env(
        CCR_BOX_CONFIG=str(tmp_path / "config.toml"),
        CCR_BOX_DATA_DIR=str(tmp_path / "data"),
        CCR_API_KEY=API_KEY,
        TELEGRAM_BOT_TOKEN=fake_telegram.token,
        TELEGRAM_API_BASE=fake_telegram.base_url,
        TELEGRAM_MODE="webhook",
        TELEGRAM_WEBHOOK_SECRET=WEBHOOK_SECRET,
        # The first run writes a config with a generated path secret: pin it.
        TELEGRAM_WEBHOOK_PATH_SECRET=PATH_SECRET,
        ALLOWED_CHAT_IDS=CHAT,
    )


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=TIMEOUT)) as session:
        yield session


async def start_up(procs: list[Proc], env: dict[str, str]) -> tuple[Proc, str]:
    proc = await Proc.start("up", "--headless", "--port", "0", env=env)
    procs.append(proc)
    port = await proc.listening_port()
    return proc, f"http://127.0.0.1:{port}"


AUTH = {"Authorization": f"Bearer {API_KEY}"}


async def post_json(http: aiohttp.ClientSession, url: str, body: Any) -> tuple[int, Any]:
    async with http.post(url, data=json.dumps(body), headers=AUTH) as resp:
        return resp.status, await resp.json()


async def post_update(http: aiohttp.ClientSession, base: str, update: dict[str, Any]) -> str:
    headers = {"X-Telegram-Bot-Api-Secret-Token": WEBHOOK_SECRET}
    async with http.post(
        f"{base}/webhook/telegram/{PATH_SECRET}", data=json.dumps(update), headers=headers
    ) as resp:
        body = await resp.text()
        assert resp.status == 200, body
        return body


async def receive_json(ws: aiohttp.ClientWebSocketResponse) -> dict[str, Any]:
    msg = await ws.receive(timeout=TIMEOUT)
    assert msg.type == WSMsgType.TEXT, msg
    return json.loads(msg.data)


async def connect_agent(http: aiohttp.ClientSession, base: str) -> aiohttp.ClientWebSocketResponse:
    """Connect as a CCR agent; ``boot`` must be the very first frame (contract §4.1)."""
    ws = await http.ws_connect(f"{base}/ws?machineId={MACHINE}", protocols=("ccr", API_KEY))
    assert ws.protocol == "ccr"
    frame = await receive_json(ws)
    assert frame["type"] == "boot", frame
    assert len(frame["bootId"]) == 8
    return ws


async def test_reply_survives_sigkill_and_redelivery_is_deduplicated(
    env: dict[str, str],
    procs: list[Proc],
    http: aiohttp.ClientSession,
    fake_telegram: FakeTelegram,
) -> None:
    first, base = await start_up(procs, env)
    status, body = await post_json(
        http, f"{base}/sessions/register", {"sessionId": "s-1", "machineId": MACHINE}
    )
    assert (status, body) == (200, {"ok": True, "sessionId": "s-1", "machineId": MACHINE})
    status, sent = await post_json(
        http,
        f"{base}/notifications/send",
        {"sessionId": "s-1", "chatId": CHAT, "text": "Claude stopped. Continue?"},
    )
    assert status == 200 and sent["ok"] is True, sent
    update = fake_telegram.make_message(CHAT, "survive the crash", reply_to=sent["messageId"])
    assert await post_update(http, base, update) == "ok"

    # 200 means committed: kill -9 before any agent connected.
    first.send_signal(signal.SIGKILL)
    assert await first.wait_exit() == -signal.SIGKILL

    second, base = await start_up(procs, env)
    assert base != ""
    ws = await connect_agent(http, base)
    frame = await receive_json(ws)
    assert frame["type"] == "command"
    assert frame["command"] == "survive the crash"
    assert frame["sessionId"] == "s-1"
    assert frame["chatId"] == CHAT
    assert len(frame["commandId"]) == 32
    await ws.send_str(json.dumps({"type": "ack", "commandId": frame["commandId"]}))

    # Telegram re-delivers the same update after the crash: 200, no second command.
    assert await post_update(http, base, update) == "ok"
    await ws.send_str(json.dumps({"type": "ping"}))
    assert await receive_json(ws) == {"type": "pong"}

    async with http.get(f"{base}/admin/commands", headers=AUTH) as resp:
        assert resp.status == 200
        rows = await resp.json()
    assert [(r["command_id"], r["status"], r["command"]) for r in rows] == [
        (frame["commandId"], "acked", "survive the crash")
    ]
    assert rows[0]["update_id"] == update["update_id"]
    assert rows[0]["attempts"] == 1
    await ws.close()

    second.send_signal(signal.SIGTERM)
    assert await second.wait_exit() == 0


async def test_second_server_on_same_data_dir_refuses_to_start(
    env: dict[str, str], procs: list[Proc], http: aiohttp.ClientSession
) -> None:
    first, base = await start_up(procs, env)
    second = await Proc.start("up", "--headless", "--port", "0", env=env)
    procs.append(second)
    code = await second.wait_exit()
    assert code != 0
    assert "another ccr-box server is already using" in second.stderr
    assert "Traceback" not in second.stderr
    assert not any("ccr-box listening on" in line for line in second.lines)
    # The first one is unaffected.
    async with http.get(f"{base}/health") as resp:
        assert (resp.status, await resp.text()) == (200, "ok")
    first.send_signal(signal.SIGTERM)
    assert await first.wait_exit() == 0


async def test_sigterm_closes_agents_with_1001_and_exits_zero(
    env: dict[str, str], procs: list[Proc], http: aiohttp.ClientSession
) -> None:
    proc, base = await start_up(procs, env)
    ws = await connect_agent(http, base)
    await ws.send_str(json.dumps({"type": "ping"}))
    assert await receive_json(ws) == {"type": "pong"}

    proc.send_signal(signal.SIGTERM)
    msg = await ws.receive(timeout=TIMEOUT)
    assert msg.type == WSMsgType.CLOSE
    assert (msg.data, msg.extra) == (1001, "Server shutting down")
    assert await proc.wait_exit() == 0
    assert ws.close_code == 1001
    assert "Traceback" not in proc.stderr
    assert " ERROR " not in proc.stderr
    assert proc.lines[-1].endswith("ccr_box.server: stopped")


async def test_boot_is_the_first_frame_even_when_a_flush_races_the_attach(server: Harness) -> None:
    """In-process: flushes (what every maintenance tick runs) are started the moment the hub
    knows the new connection, before attach has committed and sent boot; none may overtake it."""
    await server.register("s-race", "racer")
    sent = await server.notify("s-race")
    resp = await server.webhook(
        server.fake.make_message(CHAT, "queued while offline", reply_to=sent["messageId"])
    )
    assert resp.status == 200

    ws = await server.connect("racer")
    for _ in range(10_000):  # attach runs right after the upgrade; a few loop turns at most
        if server.hub.is_connected("racer"):
            break
        await asyncio.sleep(0)
    assert server.hub.is_connected("racer")
    assert not server.hub.connected()["racer"].booted.is_set()  # the race window is open
    flushes = [asyncio.create_task(server.hub.flush("racer")) for _ in range(5)]
    frames = [await receive_json(ws), await receive_json(ws)]
    await asyncio.gather(*flushes)
    assert [f["type"] for f in frames] == ["boot", "command"]
    assert frames[1]["command"] == "queued while offline"
    await ws.close()
