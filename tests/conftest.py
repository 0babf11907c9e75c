"""Shared fixtures: a real ccr-box app on 127.0.0.1 (port 0), a fake Telegram, agent clients."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestClient, TestServer

from ccr_box.clock import Clock, ManualClock
from ccr_box.config import Config, ServerConfig, TelegramConfig
from ccr_box.server import keys
from ccr_box.server.app import Options, make_app
from tests.fake_telegram import FakeTelegram
from tests.helpers_proc import Proc

API_KEY = "test-api-key_0123456789"
WEBHOOK_SECRET = "webhook-secret_abc"
PATH_SECRET = "path-secret_xyz"
CHAT = "4242"
USER = "4242"
OTHER_CHAT = "999"


def make_config(data_dir: Path, fake: FakeTelegram | None, **telegram: Any) -> Config:
    tg = TelegramConfig(
        bot_token=fake.token if fake else "",
        mode="webhook",
        webhook_secret=WEBHOOK_SECRET,
        api_base=fake.base_url if fake else "https://api.telegram.org",
        allowed_chat_ids=(CHAT,),
    )
    return Config(
        server=ServerConfig(data_dir=data_dir, api_key=API_KEY),
        telegram=dataclasses.replace(tg, **telegram),
    )


class Harness:
    """One running server plus helpers that speak to it the way real clients do."""

    def __init__(self, client: TestClient, fake: FakeTelegram | None, clock: Clock) -> None:
        self.client = client
        self.fake = fake
        self.clock = clock

    @property
    def app(self):
        return self.client.server.app

    @property
    def db(self):
        return self.app[keys.DB]

    @property
    def hub(self):
        return self.app[keys.HUB]

    def url(self, path: str) -> str:
        return str(self.client.make_url(path))

    @staticmethod
    def auth(form: str = "bearer") -> dict[str, str]:
        if form == "bearer":
            return {"Authorization": f"Bearer {API_KEY}"}
        return {"X-API-Key": API_KEY}

    async def post(self, path: str, body: Any, **kw: Any) -> aiohttp.ClientResponse:
        headers = {**self.auth(), **kw.pop("headers", {})}
        data = body if isinstance(body, (bytes, str)) else json.dumps(body)
        return await self.client.post(path, data=data, headers=headers, **kw)

    async def register(self, session_id: str, machine_id: str, label: str | None = None) -> None:
        resp = await self.post(
            "/sessions/register", {"sessionId": session_id, "machineId": machine_id, "label": label}
        )
        assert resp.status == 200, await resp.text()

    async def notify(self, session_id: str, text: str = "Done.", **extra: Any) -> dict[str, Any]:
        resp = await self.post(
            "/notifications/send", {"sessionId": session_id, "chatId": CHAT, "text": text, **extra}
        )
        assert resp.status in (200, 202), await resp.text()
        return await resp.json()

    async def webhook(
        self, update: dict[str, Any], path: str = "/webhook/telegram"
    ) -> aiohttp.ClientResponse:
        """POST an update as Telegram does; returns once the flush it started has finished."""
        resp = await self.client.post(
            path,
            data=json.dumps(update),
            headers={"X-Telegram-Bot-Api-Secret-Token": WEBHOOK_SECRET},
        )
        await self.hub.settled()
        return resp

    async def connect(
        self, machine_id: str, *, protocols: tuple[str, ...] | None = None, **kw: Any
    ) -> aiohttp.ClientWebSocketResponse:
        """A WebSocket client exactly as existing CCR agents open it."""
        return await self.client.ws_connect(
            f"/ws?machineId={machine_id}",
            protocols=protocols if protocols is not None else ("ccr", API_KEY),
            **kw,
        )

    async def commands(self, **where: Any) -> list[dict[str, Any]]:
        from ccr_box.db import queue as q

        return await self.db.read(lambda c: q.list_commands(c, limit=500, **where))


@pytest.fixture
async def procs() -> AsyncIterator[list[Proc]]:
    """Every ccr-box child process a test starts; whatever still runs at the end is stopped."""
    started: list[Proc] = []
    yield started
    for proc in started:
        await proc.stop()


@pytest.fixture
async def fake_telegram() -> AsyncIterator[FakeTelegram]:
    async with FakeTelegram() as fake:
        yield fake


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


@pytest.fixture
async def start_server(tmp_path: Path, fake_telegram: FakeTelegram):
    """Factory: ``await start_server(config=..., clock=..., options=...)`` -> Harness."""
    clients: list[TestClient] = []

    async def start(
        config: Config | None = None,
        *,
        clock: Clock | None = None,
        options: Options | None = None,
        **telegram: Any,
    ) -> Harness:
        config = config or make_config(tmp_path / "data", fake_telegram, **telegram)
        clock = clock or ManualClock()
        options = options or Options(maintenance=False, telegram_inbound=False)
        app = make_app(config, clock=clock, options=options)
        client = TestClient(TestServer(app, host="127.0.0.1", port=0))
        await client.start_server()
        clients.append(client)
        return Harness(client, fake_telegram, clock)

    yield start
    for client in reversed(clients):
        await client.close()


@pytest.fixture
async def server(start_server) -> Harness:
    """A server in webhook mode with a manual clock; maintenance is driven by hand."""
    return await start_server()
