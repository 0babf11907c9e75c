"""Webhook throughput of ccr-box against an in-memory router, measured in the same run.

Both servers get the same traffic: Telegram-style replies to mapped messages POSTed to the
webhook by concurrent clients, spread over several machines, while one agent per machine acks
every command frame it receives. (Several machines because the contract caps a machine's queue
at 100 undelivered commands: a single machine flooded faster than it acks would be refused.) The
in-memory router does the same routing with dicts and no disk; ccr-box commits each update (dedup
row, command row, session touch) durably before answering 200. The result is a ratio
(ccr-box / in-memory); the target from issue 2 is >= 0.6.

    python scripts/bench_webhook.py [--updates 3000] [--concurrency 32] [--sync FULL|NORMAL]

Each server runs in its own process (one core each on a 2-core machine: server vs load).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing as mp
import secrets
import sys
import tempfile
import time
from pathlib import Path

import aiohttp
from aiohttp import web

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

API_KEY = "bench-key"
SECRET = "bench-secret"
CHAT = "4242"
MACHINES = [f"benchbox-{i}" for i in range(8)]
SESSIONS = [f"bench-session-{i}" for i in range(8)]
MESSAGE_IDS = [1000 + i for i in range(8)]  # reply to MESSAGE_IDS[i] -> SESSIONS[i] -> MACHINES[i]


# -- the baseline: an in-memory router with the same routes and frames ----------------------------


def make_memory_app() -> web.Application:
    mapping = {(CHAT, mid): sess for mid, sess in zip(MESSAGE_IDS, SESSIONS, strict=True)}
    sessions = dict(zip(SESSIONS, MACHINES, strict=True))
    seen: set[int] = set()
    queue: dict[str, dict] = {}
    sockets: dict[str, web.WebSocketResponse] = {}

    async def webhook(request: web.Request) -> web.Response:
        if request.headers.get("X-Telegram-Bot-Api-Secret-Token") != SECRET:
            return web.Response(status=401, text="Unauthorized")
        update = json.loads(await request.read())
        if update["update_id"] in seen:
            return web.Response(text="ok")
        seen.add(update["update_id"])
        message = update["message"]
        session = mapping[(str(message["chat"]["id"]), message["reply_to_message"]["message_id"])]
        command_id = secrets.token_hex(16)
        queue[command_id] = {"status": "pending"}
        ws = sockets.get(sessions[session])
        if ws is not None:
            await ws.send_str(
                json.dumps(
                    {
                        "type": "command",
                        "commandId": command_id,
                        "sessionId": session,
                        "command": message["text"],
                        "chatId": CHAT,
                    },
                    separators=(",", ":"),
                )
            )
            queue[command_id]["status"] = "sent"
        return web.Response(text="ok")

    async def ws_handler(request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse(protocols=("ccr",))
        await ws.prepare(request)
        sockets[request.query["machineId"]] = ws
        await ws.send_str(json.dumps({"type": "boot", "bootId": "00000000"}))
        async for msg in ws:
            frame = json.loads(msg.data)
            if frame.get("type") == "ack":
                queue[frame["commandId"]]["status"] = "acked"
            elif frame.get("type") == "ping":
                await ws.send_str('{"type":"pong"}')
        return ws

    app = web.Application()
    app.router.add_post("/webhook/telegram", webhook)
    app.router.add_get("/ws", ws_handler)
    return app


def make_ccr_box_app(data_dir: Path, sync: str) -> web.Application:
    from ccr_box.config import Config, ServerConfig, TelegramConfig
    from ccr_box.db import sessions as sessions_db
    from ccr_box.server import keys
    from ccr_box.server.app import Options, make_app

    config = Config(
        server=ServerConfig(data_dir=data_dir, api_key=API_KEY),
        telegram=TelegramConfig(mode="webhook", webhook_secret=SECRET, allowed_chat_ids=(CHAT,)),
    )
    app = make_app(config, options=Options(telegram_inbound=False, synchronous=sync))

    async def seed(app: web.Application) -> None:
        now = app[keys.CLOCK].now_ms()  # (a zero timestamp would be swept by retention)

        def job(c):
            for machine, session, mid in zip(MACHINES, SESSIONS, MESSAGE_IDS, strict=True):
                sessions_db.upsert(c, session, machine, "bench", now, max_sessions=1000)
                sessions_db.map_messages(c, [(CHAT, mid, session, f"tok{mid}")], now)

        await app[keys.DB].write(job)

    app.on_startup.append(seed)
    return app


def serve(kind: str, data_dir: str, sync: str, port_queue: mp.Queue) -> None:
    async def main() -> None:
        app = make_memory_app() if kind == "memory" else make_ccr_box_app(Path(data_dir), sync)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port_queue.put(site._server.sockets[0].getsockname()[1])
        await asyncio.Event().wait()

    asyncio.run(main())


# -- the load ------------------------------------------------------------------------------------


async def drive(port: int, updates: int, concurrency: int, first_update: int) -> float:
    base = f"http://127.0.0.1:{port}"
    acked = 0
    done = asyncio.Event()
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as http:

        async def agent(ws: aiohttp.ClientWebSocketResponse) -> None:
            nonlocal acked
            async for msg in ws:
                frame = json.loads(msg.data)
                if frame.get("type") == "command":
                    await ws.send_str(json.dumps({"type": "ack", "commandId": frame["commandId"]}))
                    acked += 1
                    if acked == updates:
                        done.set()

        sockets = [
            await http.ws_connect(f"{base}/ws?machineId={m}", protocols=("ccr", API_KEY))
            for m in MACHINES
        ]
        agents = [asyncio.create_task(agent(ws)) for ws in sockets]
        next_id = iter(range(first_update, first_update + updates))

        async def client() -> None:
            for update_id in next_id:
                reply_to = MESSAGE_IDS[update_id % len(MESSAGE_IDS)]
                body = {
                    "update_id": update_id,
                    "message": {
                        "message_id": update_id,
                        "date": 0,
                        "text": f"reply {update_id}",
                        "chat": {"id": int(CHAT), "type": "private"},
                        "from": {"id": int(CHAT), "is_bot": False, "first_name": "B"},
                        "reply_to_message": {
                            "message_id": reply_to,
                            "date": 0,
                            "chat": {"id": int(CHAT), "type": "private"},
                        },
                    },
                }
                async with http.post(
                    f"{base}/webhook/telegram",
                    data=json.dumps(body),
                    headers={"X-Telegram-Bot-Api-Secret-Token": SECRET},
                ) as resp:
                    assert resp.status == 200, await resp.text()

        started = time.perf_counter()
        await asyncio.gather(*(client() for _ in range(concurrency)))
        try:
            await asyncio.wait_for(done.wait(), 60)
        except TimeoutError:
            raise SystemExit(f"only {acked} of {updates} commands reached the agents") from None
        elapsed = time.perf_counter() - started
        for task in agents:
            task.cancel()
        for ws in sockets:
            await ws.close()
    return updates / elapsed


def measure(kind: str, args: argparse.Namespace) -> float:
    ports: mp.Queue = mp.Queue()
    with tempfile.TemporaryDirectory() as tmp:
        proc = mp.Process(target=serve, args=(kind, tmp, args.sync, ports), daemon=True)
        proc.start()
        try:
            port = ports.get(timeout=30)
            asyncio.run(drive(port, args.warmup, args.concurrency, 1))
            return asyncio.run(drive(port, args.updates, args.concurrency, 10_000_000))
        finally:
            proc.kill()
            proc.join()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--updates", type=int, default=3000)
    parser.add_argument("--warmup", type=int, default=300)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--sync", default="FULL", choices=["FULL", "NORMAL"])
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    memory, ccr = [], []
    for _ in range(args.rounds):  # interleaved, so machine noise hits both alike
        memory.append(measure("memory", args))
        ccr.append(measure("ccr-box", args))
    best_memory, best_ccr = max(memory), max(ccr)
    print(
        f"in-memory router : {best_memory:8.0f} replies/s (rounds: {', '.join(f'{x:.0f}' for x in memory)})"
    )
    print(
        f"ccr-box ({args.sync:<6}) : {best_ccr:8.0f} replies/s (rounds: {', '.join(f'{x:.0f}' for x in ccr)})"
    )
    ratio = best_ccr / best_memory
    print(f"ratio            : {ratio:.2f} (target >= 0.60)")
    return 0 if ratio >= 0.6 else 1


if __name__ == "__main__":
    raise SystemExit(main())
