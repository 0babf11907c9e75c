"""Helpers shared by the HTTP route, notification and admin API tests."""

from __future__ import annotations

import dataclasses
import json
from contextlib import closing
from pathlib import Path
from typing import Any

import aiohttp

from ccr_box.config import Config
from tests.conftest import API_KEY, PATH_SECRET, WEBHOOK_SECRET, Harness, make_config
from tests.fake_telegram import FakeTelegram

JSON_CT = "application/json; charset=utf-8"
TEXT_CT = "text/plain; charset=utf-8"


async def expect_json(resp: aiohttp.ClientResponse, status: int) -> Any:
    """The response's JSON after checking status and the exact JSON content type."""
    text = await resp.text()
    assert resp.status == status, text
    assert resp.headers["Content-Type"] == JSON_CT
    return json.loads(text)


async def expect_error(resp: aiohttp.ClientResponse, status: int, error: str) -> None:
    """A contract error: exact status, exact ``{"error": ...}`` body, JSON content type."""
    assert await expect_json(resp, status) == {"error": error}


def config_with(
    data_dir: Path, fake: FakeTelegram | None, *, api_key: str = API_KEY, **telegram: Any
) -> Config:
    config = make_config(data_dir, fake, **telegram)
    return dataclasses.replace(config, server=dataclasses.replace(config.server, api_key=api_key))


def assert_no_secret(text: str, fake: FakeTelegram | None = None) -> None:
    secrets = [API_KEY, WEBHOOK_SECRET, PATH_SECRET]
    if fake is not None:
        secrets += [fake.token, fake.token.split(":", 1)[1]]
    for secret in secrets:
        assert secret not in text, f"secret {secret!r} leaked in {text[:200]!r}"


async def sql(harness: Harness, query: str, *params: Any) -> list[dict[str, Any]]:
    """Read the durable state the way an outside checker would (reader connection)."""

    def job(conn: Any) -> list[dict[str, Any]]:
        with closing(conn.execute(query, params)) as cur:
            return [dict(row) for row in cur.fetchall()]

    return await harness.db.read(job)


async def messages_rows(harness: Harness, session_id: str | None = None) -> list[dict[str, Any]]:
    if session_id is None:
        return await sql(harness, "SELECT * FROM messages ORDER BY message_id")
    return await sql(
        harness, "SELECT * FROM messages WHERE session_id = ? ORDER BY message_id", session_id
    )


async def outbox_rows(harness: Harness) -> list[dict[str, Any]]:
    return await sql(harness, "SELECT * FROM outbox ORDER BY id")


async def session_row(harness: Harness, session_id: str) -> dict[str, Any] | None:
    rows = await sql(harness, "SELECT * FROM sessions WHERE session_id = ?", session_id)
    return rows[0] if rows else None
