"""Webhook transport (contract §3.3, §7.1): checks in order, status codes and exact bodies."""

from __future__ import annotations

import asyncio
import json

import pytest

from tests.conftest import CHAT, PATH_SECRET, WEBHOOK_SECRET, Harness
from tests.helpers_pipeline import HELP, is_seen, mapped, query, settle, sql, texts_since

MIB = 1024 * 1024
HEADER = "X-Telegram-Bot-Api-Secret-Token"


async def post_raw(h: Harness, body: bytes | str, path: str = "/webhook/telegram", **headers: str):
    return await h.client.post(path, data=body, headers=headers)


async def expect_text(resp, status: int, text: str) -> None:
    assert resp.status == status
    assert await resp.text() == text
    assert resp.headers["Content-Type"] == "text/plain; charset=utf-8"


def update_bytes(h: Harness, text: str = "/help") -> tuple[int, bytes]:
    update = h.fake.make_message(CHAT, text)
    return update["update_id"], json.dumps(update).encode()


# -- secret header ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {HEADER: "wrong"},
        {HEADER: ""},
        {HEADER: WEBHOOK_SECRET + "x"},
        {HEADER: WEBHOOK_SECRET[:-1]},
        {HEADER: WEBHOOK_SECRET.upper()},
    ],
    ids=["missing", "wrong", "empty", "longer", "prefix", "case"],
)
async def test_bad_secret_header_is_401_and_nothing_processed(server: Harness, headers) -> None:
    update_id, body = update_bytes(server)
    resp = await post_raw(server, body, **headers)
    await expect_text(resp, 401, "Unauthorized")
    assert not await is_seen(server, update_id)
    assert server.fake.sent == []


async def test_correct_secret_is_200_ok_and_processed(server: Harness) -> None:
    update_id, body = update_bytes(server)
    resp = await post_raw(server, body, **{HEADER: WEBHOOK_SECRET})
    await expect_text(resp, 200, "ok")
    assert await is_seen(server, update_id)
    await server.fake.wait_for(lambda: server.fake.messages_to(CHAT) == [HELP])


@pytest.mark.parametrize("presented", ["", "anything", None])
async def test_configured_empty_secret_rejects_everything(start_server, presented) -> None:
    h = await start_server(webhook_secret="")
    update_id, body = update_bytes(h)
    headers = {} if presented is None else {HEADER: presented}
    resp = await post_raw(h, body, **headers)
    await expect_text(resp, 401, "Unauthorized")
    assert not await is_seen(h, update_id)


async def test_secret_is_checked_before_the_body(server: Harness) -> None:
    too_big = b"{" + b" " * MIB + b"}"
    await expect_text(await post_raw(server, too_big, **{HEADER: "nope"}), 401, "Unauthorized")
    await expect_text(await post_raw(server, b"not json", **{HEADER: "nope"}), 401, "Unauthorized")


# -- path secret --------------------------------------------------------------------------------


async def test_path_secret_exact_path_accepted(start_server) -> None:
    h = await start_server(webhook_path_secret=PATH_SECRET)
    update_id, body = update_bytes(h)
    resp = await post_raw(h, body, f"/webhook/telegram/{PATH_SECRET}", **{HEADER: WEBHOOK_SECRET})
    await expect_text(resp, 200, "ok")
    assert await is_seen(h, update_id)


@pytest.mark.parametrize(
    "path",
    [
        "/webhook/telegram",
        "/webhook/telegram/",
        "/webhook/telegram/other",
        f"/webhook/telegram/{PATH_SECRET}x",
        f"/webhook/telegram/{PATH_SECRET[:-1]}",
        f"/webhook/telegram/{PATH_SECRET}/extra",
        f"/webhook/telegram/{PATH_SECRET.upper()}",
    ],
)
async def test_path_secret_other_paths_401(start_server, path: str) -> None:
    h = await start_server(webhook_path_secret=PATH_SECRET)
    update_id, body = update_bytes(h)
    resp = await post_raw(h, body, path, **{HEADER: WEBHOOK_SECRET})
    await expect_text(resp, 401, "Unauthorized")
    assert not await is_seen(h, update_id)


async def test_path_secret_still_needs_the_header(start_server) -> None:
    h = await start_server(webhook_path_secret=PATH_SECRET)
    _, body = update_bytes(h)
    resp = await post_raw(h, body, f"/webhook/telegram/{PATH_SECRET}", **{HEADER: "wrong"})
    await expect_text(resp, 401, "Unauthorized")


@pytest.mark.parametrize(
    "path",
    [
        "/webhook/telegram",
        "/webhook/telegram/",
        "/webhook/telegram/anything",
        "/webhook/telegram/a/b",
    ],
)
async def test_without_path_secret_any_suffix_accepted(server: Harness, path: str) -> None:
    update_id, body = update_bytes(server)
    resp = await post_raw(server, body, path, **{HEADER: WEBHOOK_SECRET})
    await expect_text(resp, 200, "ok")
    assert await is_seen(server, update_id)


async def test_wrong_method_is_405_json(server: Harness) -> None:
    resp = await server.client.get("/webhook/telegram", headers={HEADER: WEBHOOK_SECRET})
    assert resp.status == 405
    assert await resp.json() == {"error": "Method not allowed"}
    assert "POST" in resp.headers["Allow"]


# -- body -----------------------------------------------------------------------------------


async def test_body_over_1_mib_is_413(server: Harness) -> None:
    body = b'{"update_id": 5, "pad": "' + b"x" * MIB + b'"}'
    resp = await post_raw(server, body, **{HEADER: WEBHOOK_SECRET})
    await expect_text(resp, 413, "Request body too large")
    assert not await is_seen(server, 5)


async def test_body_of_exactly_1_mib_is_accepted(server: Harness) -> None:
    head, tail = b'{"update_id": 6, "pad": "', b'"}'
    body = head + b"x" * (MIB - len(head) - len(tail)) + tail
    assert len(body) == MIB
    resp = await post_raw(server, body, **{HEADER: WEBHOOK_SECRET})
    await expect_text(resp, 200, "ok")
    assert await is_seen(server, 6)


async def test_body_over_1_mib_chunked_is_413(server: Harness) -> None:
    async def chunks():
        yield b'{"update_id": 7, "pad": "'
        for _ in range(17):
            yield b"x" * 65536
        yield b'"}'

    resp = await server.client.post(
        "/webhook/telegram", data=chunks(), headers={HEADER: WEBHOOK_SECRET}
    )
    await expect_text(resp, 413, "Request body too large")
    assert not await is_seen(server, 7)


@pytest.mark.parametrize(
    "body",
    [
        b"",
        b"{",
        b"not json",
        b"[]",
        b'[{"update_id": 1}]',
        b'"x"',
        b"1",
        b"null",
        b"true",
        b"\xff\xfe",
    ],
)
async def test_malformed_or_non_object_json_is_400(server: Harness, body: bytes) -> None:
    resp = await post_raw(server, body, **{HEADER: WEBHOOK_SECRET})
    await expect_text(resp, 400, "Invalid JSON")


async def test_json_parsed_whatever_the_content_type(server: Harness) -> None:
    update_id, body = update_bytes(server)
    resp = await post_raw(
        server,
        body,
        **{HEADER: WEBHOOK_SECRET, "Content-Type": "application/x-www-form-urlencoded"},
    )
    await expect_text(resp, 200, "ok")
    assert await is_seen(server, update_id)


async def test_empty_object_is_200_ok(server: Harness) -> None:
    await expect_text(await post_raw(server, b"{}", **{HEADER: WEBHOOK_SECRET}), 200, "ok")


# -- internal error -----------------------------------------------------------------------------


async def test_internal_error_is_500_and_redelivery_is_processed(server: Harness) -> None:
    fake = server.fake
    message_id, _ = await mapped(server)
    mark = len(fake.sent)
    update = fake.make_message(CHAT, "run the tests", reply_to=message_id)
    await sql(server, "ALTER TABLE command_queue RENAME TO command_queue_hidden")

    resp = await server.webhook(update)
    assert resp.status == 500
    body = await resp.text()
    assert "command_queue" not in body and "Traceback" not in body
    assert not await is_seen(server, update["update_id"])  # rolled back: Telegram re-delivers

    await sql(server, "ALTER TABLE command_queue_hidden RENAME TO command_queue")
    resp = await server.webhook(update)
    await expect_text(resp, 200, "ok")
    assert await is_seen(server, update["update_id"])
    rows = await server.commands()
    assert [(r["command"], r["update_id"]) for r in rows] == [
        ("run the tests", update["update_id"])
    ]
    await settle(server)
    assert texts_since(fake, mark) == ["Command queued - devbox is offline.", HELP]


async def test_internal_error_in_a_batch_does_not_undo_other_updates(server: Harness) -> None:
    """Two concurrent updates: the one that fails is rolled back alone."""
    fake = server.fake
    message_id, _ = await mapped(server)
    await sql(server, "ALTER TABLE command_queue RENAME TO command_queue_hidden")
    failing = fake.make_message(CHAT, "x", reply_to=message_id)
    fine = fake.make_message(CHAT, "/help")
    r1, r2 = await asyncio.gather(server.webhook(failing), server.webhook(fine))
    assert (r1.status, r2.status) == (500, 200)
    assert not await is_seen(server, failing["update_id"])
    assert await is_seen(server, fine["update_id"])
    await sql(server, "ALTER TABLE command_queue_hidden RENAME TO command_queue")
    assert await query(server, "SELECT COUNT(*) AS n FROM command_queue") == [{"n": 0}]
