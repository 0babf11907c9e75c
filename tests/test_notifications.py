"""``POST /notifications/send`` (contract §8): validation order, token authority, splitting,
permanent and transient Telegram failures, the durable outbox and Telegram-off mode."""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import json
import re
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from ccr_box import limits
from ccr_box.server import keys
from ccr_box.textutil import TRUNCATION_MARKER, utf16_len
from tests.conftest import API_KEY, CHAT, OTHER_CHAT, Harness, make_config
from tests.fake_telegram import FakeTelegram
from tests.helpers_http import (
    expect_error,
    expect_json,
    messages_rows,
    outbox_rows,
    session_row,
)

MISSING = object()
MINTED = re.compile(r"^[A-Za-z0-9_-]{16}$")
REQUIRED = "sessionId, chatId, and text required"
A, B, C = "A" * 3000, "B" * 3000, "C" * 3000
THREE_CHUNKS = f"{A}\n\n{B}\n\n{C}"  # cuts after each "\n\n": 3002 + 3002 + 3000 units
MARKUP = {
    "inline_keyboard": [
        [
            {"text": "Continue", "callback_data": "cmd:TOKbtn:continue"},
            {"text": "Exit", "callback_data": "cmd:TOKbtn:exit"},
        ]
    ]
}


def body(**fields: Any) -> dict[str, Any]:
    base: dict[str, Any] = {"sessionId": "s1", "chatId": CHAT, "text": "hello"}
    base.update(fields)
    return {k: v for k, v in base.items() if v is not MISSING}


async def send(server: Harness, payload: Any, **kw: Any):
    return await server.post("/notifications/send", payload, **kw)


def send_calls(server: Harness) -> list[dict[str, Any]]:
    return server.fake.calls_of("sendMessage")


async def tick(server: Harness) -> None:
    async with asyncio.timeout(5):
        await server.app[keys.MAINTENANCE].tick()


async def nothing_happened(server: Harness) -> None:
    """No Telegram call, no mapping, no outbox row."""
    assert send_calls(server) == []
    assert await messages_rows(server) == []
    assert await outbox_rows(server) == []


class ScriptedTelegram(FakeTelegram):
    """The fake Bot API, plus a rule that answers chosen ``sendMessage`` payloads (e.g. the second
    chunk of a notification) itself: ``(status, description)`` for a Telegram-shaped error, or
    ``(status, body)`` for any JSON answer."""

    def __init__(self) -> None:
        super().__init__()
        self.refuse: Callable[[dict[str, Any]], tuple[int, Any] | None] | None = None

    async def _send_message(self, payload: dict[str, Any]) -> web.Response:
        verdict = self.refuse(payload) if self.refuse else None
        if verdict is None:
            return await super()._send_message(payload)
        status, answer = verdict
        if isinstance(answer, str):
            answer = {"ok": False, "error_code": status, "description": answer}
        return web.json_response(answer, status=status)


@pytest.fixture
async def scripted(start_server, tmp_path: Path) -> AsyncIterator[Harness]:
    async with ScriptedTelegram() as fake:
        harness = await start_server(make_config(tmp_path / "scripted", fake))
        harness.fake = fake
        await harness.register("s1", "m1")
        yield harness


@pytest.fixture
async def s1(server: Harness) -> Harness:
    await server.register("s1", "m1")
    return server


# -- §8.2 error rows, in order -------------------------------------------------------------------


async def test_unauthenticated_is_401_before_anything(s1: Harness) -> None:
    for headers in ({}, {"Authorization": "Bearer nope"}, {"X-API-Key": "nope"}):
        resp = await s1.client.post("/notifications/send", data=json.dumps(body()), headers=headers)
        await expect_error(resp, 401, "Unauthorized")
    resp = await s1.client.post("/notifications/send", data=b"{broken")
    await expect_error(resp, 401, "Unauthorized")
    await nothing_happened(s1)


@pytest.mark.parametrize("raw", [b"{broken", b"[]", b'"text"', b"7", b"null"])
async def test_invalid_json_is_400(s1: Harness, raw: bytes) -> None:
    await expect_error(await send(s1, raw), 400, "Invalid JSON body")
    await nothing_happened(s1)


@pytest.mark.parametrize(
    "payload",
    [
        body(sessionId=MISSING),
        body(chatId=MISSING),
        body(text=MISSING),
        {},
        body(sessionId=""),
        body(sessionId=None),
        body(sessionId=5),
        body(sessionId=["s1"]),
        body(chatId=True),
        body(chatId=False),
        body(chatId=""),
        body(chatId=None),
        body(chatId=4242.0),
        body(chatId=[CHAT]),
        body(chatId={"id": CHAT}),
        body(text=""),
        body(text=None),
        body(text=5),
        body(text=["hello"]),
        body(text={"t": "x"}),
        # Step 3 comes before step 4 and step 5.
        body(chatId=True, replyMarkup="bad", token="bad token", entities="bad"),
        body(sessionId="unknown", text=""),
    ],
)
async def test_required_fields(s1: Harness, payload: dict[str, Any]) -> None:
    await expect_error(await send(s1, payload), 400, REQUIRED)
    await nothing_happened(s1)


@pytest.mark.parametrize(
    ("fields", "error"),
    [
        ({"replyMarkup": "x"}, "replyMarkup must be an object"),
        ({"replyMarkup": []}, "replyMarkup must be an object"),
        ({"replyMarkup": [[{"text": "a"}]]}, "replyMarkup must be an object"),
        ({"replyMarkup": 5}, "replyMarkup must be an object"),
        ({"replyMarkup": True}, "replyMarkup must be an object"),
        ({"token": ""}, "Invalid token"),
        ({"token": "has space"}, "Invalid token"),
        ({"token": "a.b"}, "Invalid token"),
        ({"token": "cmd:x"}, "Invalid token"),
        ({"token": "é"}, "Invalid token"),
        ({"token": "x" * 65}, "Invalid token"),
        ({"token": "abc\n"}, "Invalid token"),
        ({"token": 12345}, "Invalid token"),
        ({"token": True}, "Invalid token"),
        ({"token": ["abc"]}, "Invalid token"),
        ({"entities": {}}, "entities must be an array"),
        ({"entities": "bold"}, "entities must be an array"),
        ({"entities": 1}, "entities must be an array"),
        ({"entities": True}, "entities must be an array"),
        # Order inside step 4: replyMarkup, token, entities.
        ({"replyMarkup": "x", "token": "", "entities": {}}, "replyMarkup must be an object"),
        ({"token": "", "entities": {}}, "Invalid token"),
        # Step 4 comes before the session lookup (5) and the allowlist (6).
        ({"sessionId": "unknown", "chatId": OTHER_CHAT, "token": "a b"}, "Invalid token"),
    ],
)
async def test_optional_field_types(s1: Harness, fields: dict[str, Any], error: str) -> None:
    await expect_error(await send(s1, body(**fields)), 400, error)
    await nothing_happened(s1)


async def test_unknown_session_is_404_before_the_allowlist(s1: Harness) -> None:
    await expect_error(await send(s1, body(sessionId="nope")), 404, "Session not found")
    resp = await send(s1, body(sessionId="nope", chatId=OTHER_CHAT))
    await expect_error(resp, 404, "Session not found")
    resp = await send(s1, body(sessionId="S1"))  # ids are case-sensitive
    await expect_error(resp, 404, "Session not found")
    await nothing_happened(s1)


@pytest.mark.parametrize(
    "chat_id", [OTHER_CHAT, int(OTHER_CHAT), f" {CHAT}", f"{CHAT} ", f"0{CHAT}", "-4242", 0]
)
async def test_chat_not_in_allowlist_is_403(s1: Harness, chat_id: Any) -> None:
    before = await session_row(s1, "s1")
    s1.clock.advance(1000)
    resp = await send(s1, body(chatId=chat_id, token="abc", replyMarkup=MARKUP))
    # 403 (step 6) wins over the token mismatch (step 8).
    await expect_error(resp, 403, "Chat ID not allowed")
    await nothing_happened(s1)
    assert await session_row(s1, "s1") == before  # step 7 not reached: not touched


async def test_token_mismatch_is_400_after_touching_the_session(s1: Harness) -> None:
    s1.clock.advance(5000)
    resp = await send(s1, body(token="other", replyMarkup=MARKUP))
    await expect_error(resp, 400, "token does not match replyMarkup")
    await nothing_happened(s1)
    assert (await session_row(s1, "s1"))["updated_at"] == s1.clock.now_ms()


async def test_empty_allowlist_refuses_every_chat(start_server, tmp_path, fake_telegram) -> None:
    server = await start_server(make_config(tmp_path / "d", fake_telegram, allowed_chat_ids=()))
    await server.register("s1", "m1")
    await expect_error(await send(server, body()), 403, "Chat ID not allowed")
    assert fake_telegram.calls_of("sendMessage") == []


# -- success and token authority (§8.2, §8.4) --------------------------------------------------


async def test_success_mints_a_token_and_maps_the_message(s1: Harness) -> None:
    s1.clock.advance(2500)
    now = s1.clock.now_ms()
    resp = await send(s1, body(text="Claude stopped."))
    result = await expect_json(resp, 200)
    assert list(result) == ["ok", "messageId", "token"]
    assert result["ok"] is True
    token = result["token"]
    assert MINTED.fullmatch(token)
    assert len(base64.urlsafe_b64decode(token + "==")) == 12

    [call] = send_calls(s1)
    assert call == {"chat_id": CHAT, "text": "Claude stopped."}
    assert result["messageId"] == s1.fake.sent[-1]["message_id"]
    assert await messages_rows(s1) == [
        {
            "chat_id": CHAT,
            "message_id": result["messageId"],
            "session_id": "s1",
            "token": token,
            "created_at": now,
        }
    ]
    assert (await session_row(s1, "s1"))["updated_at"] == now
    assert await outbox_rows(s1) == []

    again = await expect_json(await send(s1, body()), 200)
    assert MINTED.fullmatch(again["token"]) and again["token"] != token
    assert again["messageId"] == result["messageId"] + 1


@pytest.mark.parametrize("token", ["abc", "x" * 64, "A-z_0-9", "-", "_"])
async def test_request_token_is_used(s1: Harness, token: str) -> None:
    result = await expect_json(await send(s1, body(token=token)), 200)
    assert result == {"ok": True, "messageId": result["messageId"], "token": token}
    assert [m["token"] for m in await messages_rows(s1)] == [token]


async def test_button_token_is_the_first_cmd_button(s1: Harness) -> None:
    markup = {
        "inline_keyboard": [
            [
                {"text": "url", "url": "https://example.com"},
                {"text": "empty token", "callback_data": "cmd::y"},
                {"text": "two parts", "callback_data": "cmd:short"},
            ],
            "not a row",
            [
                {"text": "other", "callback_data": "other:NOPE:y"},
                {"text": "CMD", "callback_data": "CMD:NOPE:y"},
                {"text": "first", "callback_data": "cmd:TOK1:continue"},
                {"text": "second", "callback_data": "cmd:TOK2:y"},
            ],
        ],
        "extra": "kept",
    }
    result = await expect_json(await send(s1, body(replyMarkup=markup)), 200)
    assert result["token"] == "TOK1"
    [call] = send_calls(s1)
    assert call["reply_markup"] == markup  # forwarded verbatim
    assert [m["token"] for m in await messages_rows(s1)] == ["TOK1"]


async def test_button_token_with_question_buttons(s1: Harness) -> None:
    markup = {"inline_keyboard": [[{"text": "A", "callback_data": "cmd:q-TOK:q0:extra"}]]}
    result = await expect_json(await send(s1, body(replyMarkup=markup)), 200)
    assert result["token"] == "q-TOK"


async def test_request_token_with_matching_or_foreign_buttons(s1: Harness) -> None:
    result = await expect_json(await send(s1, body(token="TOKbtn", replyMarkup=MARKUP)), 200)
    assert result["token"] == "TOKbtn"
    foreign = {"inline_keyboard": [[{"text": "x", "callback_data": "other:ZZZ:y"}]]}
    result = await expect_json(await send(s1, body(token="mine", replyMarkup=foreign)), 200)
    assert result["token"] == "mine"
    # No qualifying button and no token: minted.
    result = await expect_json(await send(s1, body(replyMarkup=foreign)), 200)
    assert MINTED.fullmatch(result["token"])
    # A later cmd button with another token does not matter: only the first counts.
    markup = {
        "inline_keyboard": [
            [{"text": "a", "callback_data": "cmd:FIRST:y"}],
            [{"text": "b", "callback_data": "cmd:SECOND:n"}],
        ]
    }
    result = await expect_json(await send(s1, body(token="FIRST", replyMarkup=markup)), 200)
    assert result["token"] == "FIRST"
    resp = await send(s1, body(token="SECOND", replyMarkup=markup))
    await expect_error(resp, 400, "token does not match replyMarkup")


async def test_integer_chat_id_is_a_decimal_string(s1: Harness) -> None:
    result = await expect_json(await send(s1, body(chatId=int(CHAT))), 200)
    [call] = send_calls(s1)
    assert call["chat_id"] == CHAT
    assert [(m["chat_id"], m["message_id"]) for m in await messages_rows(s1)] == [
        (CHAT, result["messageId"])
    ]


@pytest.mark.parametrize("chat", [-1001234567890123, 12345678901234567890123])
async def test_large_integer_chat_ids_convert_exactly(start_server, chat: int) -> None:
    server = await start_server(allowed_chat_ids=(str(chat),))
    await server.register("s1", "m1")
    result = await expect_json(await send(server, body(chatId=chat)), 200)
    assert send_calls(server)[0]["chat_id"] == str(chat)
    rows = await messages_rows(server)
    assert [(r["chat_id"], r["message_id"]) for r in rows] == [(str(chat), result["messageId"])]


async def test_payload_is_exact_and_never_has_parse_mode(s1: Harness) -> None:
    entities = [
        {"type": "bold", "offset": 0, "length": 5},
        {"type": "code", "offset": 6, "length": 5},
    ]
    payload = body(
        text="hello world",
        entities=entities,
        replyMarkup=MARKUP,
        parse_mode="HTML",
        parseMode="MarkdownV2",
        media=[{"key": "x"}],
        disable_notification=True,
    )
    await expect_json(await send(s1, payload), 200)
    [call] = send_calls(s1)
    assert call == {
        "chat_id": CHAT,
        "text": "hello world",
        "entities": entities,
        "reply_markup": MARKUP,
    }


async def test_null_optional_fields_count_as_absent(s1: Harness) -> None:
    result = await expect_json(
        await send(s1, body(replyMarkup=None, token=None, entities=None, media=None)), 200
    )
    assert MINTED.fullmatch(result["token"])
    assert send_calls(s1) == [{"chat_id": CHAT, "text": "hello"}]


async def test_text_is_sent_verbatim(s1: Harness) -> None:
    text = "  <b>not html</b> *not md* `x` \U0001f600\n\nend  "
    await expect_json(await send(s1, body(text=text)), 200)
    assert send_calls(s1)[0]["text"] == text


# -- splitting (§8.3) --------------------------------------------------------------------------


async def test_long_text_is_split_and_every_chunk_routes(s1: Harness) -> None:
    fake = s1.fake
    entities = [{"type": "bold", "offset": 2990, "length": 20}]
    result = await expect_json(
        await send(s1, body(text=THREE_CHUNKS, entities=entities, replyMarkup=MARKUP)), 200
    )
    assert result["token"] == "TOKbtn"
    calls = send_calls(s1)
    assert [c["text"] for c in calls] == [f"{A}\n\n", f"{B}\n\n", C]
    assert calls[0] == {
        "chat_id": CHAT,
        "text": f"{A}\n\n",
        "entities": [{"type": "bold", "offset": 2990, "length": 12}],
    }
    assert calls[1] == {
        "chat_id": CHAT,
        "text": f"{B}\n\n",
        "entities": [{"type": "bold", "offset": 0, "length": 8}],
    }
    assert calls[2] == {"chat_id": CHAT, "text": C, "reply_markup": MARKUP}
    ids = [m["message_id"] for m in fake.sent]
    assert result["messageId"] == ids[0]
    rows = await messages_rows(s1)
    assert [(r["message_id"], r["session_id"], r["token"]) for r in rows] == [
        (mid, "s1", "TOKbtn") for mid in ids
    ]

    # A reply to any chunk reaches the session.
    for n, mid in enumerate(ids):
        update = fake.make_message(CHAT, f"reply to chunk {n}", reply_to=mid)
        assert (await s1.webhook(update)).status == 200
    commands = await s1.commands()
    assert sorted(c["command"] for c in commands) == [f"reply to chunk {n}" for n in range(3)]
    assert {c["session_id"] for c in commands} == {"s1"}


async def test_more_than_ten_chunks_are_truncated(s1: Harness) -> None:
    text = ("x" * 4000 + "\n\n") * 12
    await expect_json(await send(s1, body(text=text)), 200)
    calls = send_calls(s1)
    assert len(calls) == limits.TELEGRAM_MAX_CHUNKS
    assert calls[-1]["text"].endswith(TRUNCATION_MARKER)
    assert all(utf16_len(c["text"]) <= limits.TELEGRAM_CHUNK for c in calls)
    assert len(await messages_rows(s1)) == 10


async def test_split_never_breaks_a_surrogate_pair(s1: Harness) -> None:
    text = "\U0001f600" * 3000  # 6000 UTF-16 units, no separator: hard cuts
    await expect_json(await send(s1, body(text=text)), 200)
    calls = send_calls(s1)
    assert len(calls) == 2
    assert [utf16_len(c["text"]) for c in calls] == [4096, 6000 - 4096]
    assert "".join(c["text"] for c in calls) == text


# -- permanent Telegram failures (§8.2) ----------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "description"),
    [
        (400, "Bad Request: chat not found"),
        (403, "Forbidden: bot was blocked by the user"),
        (400, "Bad Request: can't parse entities: Unsupported start tag"),
    ],
)
async def test_permanent_failure_on_first_chunk_is_502_and_stores_nothing(
    s1: Harness, status: int, description: str
) -> None:
    s1.clock.advance(1000)
    s1.fake.fail_next("sendMessage", status, description=description)
    resp = await send(s1, body(text=THREE_CHUNKS, replyMarkup=MARKUP))
    assert await expect_json(resp, 502) == {
        "error": "Telegram API error",
        "details": {"ok": False, "error_code": status, "description": description},
    }
    assert len(send_calls(s1)) == 1  # later chunks are not attempted
    assert await messages_rows(s1) == []
    assert await outbox_rows(s1) == []
    # Step 7 ran before the send.
    assert (await session_row(s1, "s1"))["updated_at"] == s1.clock.now_ms()


async def test_permanent_failure_on_a_later_chunk_keeps_earlier_mappings(scripted: Harness) -> None:
    fake = scripted.fake
    fake.refuse = lambda p: (
        (400, "Bad Request: message is too long") if p["text"][0] == "B" else None
    )
    resp = await send(scripted, body(text=THREE_CHUNKS, replyMarkup=MARKUP))
    assert await expect_json(resp, 502) == {
        "error": "Telegram API error",
        "details": {
            "ok": False,
            "error_code": 400,
            "description": "Bad Request: message is too long",
        },
    }
    assert [c["text"][0] for c in send_calls(scripted)] == ["A", "B"]
    [first] = fake.sent
    rows = await messages_rows(scripted)
    assert [(r["message_id"], r["token"]) for r in rows] == [(first["message_id"], "TOKbtn")]
    assert await outbox_rows(scripted) == []
    # The chunk that went out still routes.
    update = fake.make_message(CHAT, "answer", reply_to=first["message_id"])
    assert (await scripted.webhook(update)).status == 200
    assert [(c["session_id"], c["command"]) for c in await scripted.commands()] == [
        ("s1", "answer")
    ]


async def test_whitespace_only_text_is_refused_by_telegram(s1: Harness) -> None:
    resp = await send(s1, body(text="   \n "))
    assert await expect_json(resp, 502) == {
        "error": "Telegram API error",
        "details": {
            "ok": False,
            "error_code": 400,
            "description": "Bad Request: message text is empty",
        },
    }
    assert await messages_rows(s1) == [] and await outbox_rows(s1) == []


@pytest.mark.parametrize(
    "answer",
    [
        {"ok": False, "description": "Bad Request: odd answer"},
        {"ok": True},
        {"ok": "yes", "result": {"message_id": 5}},
    ],
)
async def test_200_answer_without_ok_result_is_502(scripted: Harness, answer: dict) -> None:
    scripted.fake.refuse = lambda p: (200, answer)
    resp = await send(scripted, body())
    assert await expect_json(resp, 502) == {"error": "Telegram API error", "details": answer}
    assert await messages_rows(scripted) == [] and await outbox_rows(scripted) == []


@pytest.mark.parametrize("message_id", [MISSING, None, "5", 0, 2**63, 10**30])
async def test_ok_answer_without_usable_message_id_counts_as_sent(
    scripted: Harness, message_id: Any
) -> None:
    # Telegram delivered the message but named no usable id (issue 11: this was a 500). It is
    # sent: never re-sent from the outbox; only a reply to it cannot be mapped.
    result = {"text": "no id"} if message_id is MISSING else {"message_id": message_id}
    scripted.fake.refuse = lambda p: (200, {"ok": True, "result": result})
    resp = await send(scripted, body())
    answer = await expect_json(resp, 200)
    assert answer["ok"] is True and answer["messageId"] is None
    assert await messages_rows(scripted) == [] and await outbox_rows(scripted) == []


# -- transient failures and the durable outbox (§8.2, §8.5) -----------------------------------


def _queued(result: dict[str, Any], message_id: int | None) -> dict[str, Any]:
    return {"ok": True, "queued": True, "messageId": message_id, "token": result["token"]}


@pytest.mark.parametrize("failure", ["http500", "http502", "drop"])
async def test_transient_failure_queues_then_maintenance_delivers(
    s1: Harness, failure: str
) -> None:
    fake = s1.fake
    if failure == "drop":
        fake.drop_connections_for("sendMessage")
    else:
        fake.fail_next("sendMessage", int(failure[4:]))
    now = s1.clock.now_ms()
    resp = await send(s1, body(text="queued text", replyMarkup=MARKUP))
    result = await expect_json(resp, 202)
    assert result == _queued(result, None)
    assert result["token"] == "TOKbtn"
    assert await messages_rows(s1) == []
    [row] = await outbox_rows(s1)
    assert {k: row[k] for k in ("seq", "session_id", "chat_id", "token", "text", "status")} == {
        "seq": 0,
        "session_id": "s1",
        "chat_id": CHAT,
        "token": "TOKbtn",
        "text": "queued text",
        "status": "pending",
    }
    assert json.loads(row["reply_markup"]) == MARKUP
    assert row["entities"] is None
    assert row["attempts"] == 1 and row["last_error"]
    assert row["next_attempt_at"] == now + 1000  # backoff after the failed attempt
    assert_no_secret_in_row(row, fake)

    # Not before the backoff has passed.
    await tick(s1)
    assert len(send_calls(s1)) == 1
    s1.clock.advance(1000)
    await tick(s1)
    calls = send_calls(s1)
    assert len(calls) == 2
    assert calls[1] == {"chat_id": CHAT, "text": "queued text", "reply_markup": MARKUP}
    message_id = fake.sent[-1]["message_id"]
    [row] = await outbox_rows(s1)
    assert (row["status"], row["message_id"], row["sent_at"]) == (
        "sent",
        message_id,
        s1.clock.now_ms(),
    )
    assert [(m["message_id"], m["session_id"], m["token"]) for m in await messages_rows(s1)] == [
        (message_id, "s1", "TOKbtn")
    ]
    # Delivered once: later ticks send nothing more.
    s1.clock.advance(60_000)
    await tick(s1)
    assert len(send_calls(s1)) == 2
    # And a reply to the late message routes.
    update = fake.make_message(CHAT, "late reply", reply_to=message_id)
    assert (await s1.webhook(update)).status == 200
    assert [c["command"] for c in await s1.commands()] == ["late reply"]


def assert_no_secret_in_row(row: dict[str, Any], fake: FakeTelegram) -> None:
    dumped = json.dumps(row)
    assert fake.token not in dumped and API_KEY not in dumped


async def test_429_beyond_the_request_budget_queues_without_waiting(s1: Harness) -> None:
    now = s1.clock.now_ms()
    s1.fake.fail_next("sendMessage", 429, retry_after=31)
    async with asyncio.timeout(5):  # the request must not sleep 31 s
        resp = await send(s1, body(text="rate limited"))
    result = await expect_json(resp, 202)
    assert result == _queued(result, None)
    assert len(send_calls(s1)) == 1
    [row] = await outbox_rows(s1)
    assert row["status"] == "pending"
    assert row["next_attempt_at"] == now + 31_000  # Telegram's retry_after is honoured
    s1.clock.advance(30_000)
    await tick(s1)
    assert len(send_calls(s1)) == 1
    s1.clock.advance(1_000)
    await tick(s1)
    assert len(send_calls(s1)) == 2
    assert (await outbox_rows(s1))[0]["status"] == "sent"
    assert len(await messages_rows(s1)) == 1


async def test_429_within_budget_is_retried_in_the_request(s1: Harness) -> None:
    s1.fake.fail_next("sendMessage", 429, retry_after=0, times=2)
    result = await expect_json(await send(s1, body(text="retry me")), 200)
    assert [c["text"] for c in send_calls(s1)] == ["retry me"] * 3
    assert result["messageId"] == s1.fake.sent[-1]["message_id"]
    assert await outbox_rows(s1) == []


async def test_429_retries_exhausted_queues(s1: Harness) -> None:
    s1.fake.fail_next("sendMessage", 429, retry_after=0, times=4)
    result = await expect_json(await send(s1, body(text="retry me")), 202)
    assert result == _queued(result, None)
    assert len(send_calls(s1)) == 1 + limits.TELEGRAM_MAX_429_RETRIES
    assert len(await outbox_rows(s1)) == 1


async def test_transient_failure_on_a_later_chunk_queues_the_rest(scripted: Harness) -> None:
    fake = scripted.fake
    fake.refuse = lambda p: (500, "Internal Server Error") if p["text"][0] == "B" else None
    entities = [{"type": "italic", "offset": 3000, "length": 10}]
    resp = await send(scripted, body(text=THREE_CHUNKS, replyMarkup=MARKUP, entities=entities))
    result = await expect_json(resp, 202)
    first_id = fake.sent[0]["message_id"]
    assert result == {"ok": True, "queued": True, "messageId": first_id, "token": "TOKbtn"}
    assert [c["text"][0] for c in send_calls(scripted)] == ["A", "B"]
    assert [m["message_id"] for m in await messages_rows(scripted)] == [first_id]
    rows = await outbox_rows(scripted)
    assert [(r["seq"], r["text"][0], r["status"]) for r in rows] == [
        (1, "B", "pending"),
        (2, "C", "pending"),
    ]
    assert [r["reply_markup"] for r in rows] == [None, json.dumps(MARKUP)]
    assert json.loads(rows[0]["entities"]) == [{"type": "italic", "offset": 0, "length": 8}]
    assert rows[1]["entities"] is None
    assert rows[0]["notification_id"] == rows[1]["notification_id"]

    fake.refuse = None
    scripted.clock.advance(1000)
    await tick(scripted)
    calls = send_calls(scripted)
    assert [c["text"][0] for c in calls] == ["A", "B", "B", "C"]
    assert "reply_markup" not in calls[2]
    assert calls[3]["reply_markup"] == MARKUP
    assert calls[2]["entities"] == [{"type": "italic", "offset": 0, "length": 8}]
    assert [r["status"] for r in await outbox_rows(scripted)] == ["sent", "sent"]
    rows = await messages_rows(scripted)
    assert [r["token"] for r in rows] == ["TOKbtn"] * 3
    assert [r["message_id"] for r in rows] == [m["message_id"] for m in fake.sent]


async def test_background_429_reschedules_without_stalling_maintenance(s1: Harness) -> None:
    s1.fake.fail_next("sendMessage", 500)
    await expect_json(await send(s1, body(text="one")), 202)
    s1.clock.advance(1000)
    s1.fake.fail_next("sendMessage", 429, retry_after=120)
    await tick(s1)  # would take 120 s if the tick slept out the 429
    [row] = await outbox_rows(s1)
    assert row["status"] == "pending"
    assert row["attempts"] == 2
    assert row["next_attempt_at"] == s1.clock.now_ms() + 120_000
    s1.clock.advance(119_000)
    await tick(s1)
    assert len(send_calls(s1)) == 2
    s1.clock.advance(1_000)
    await tick(s1)
    assert len(send_calls(s1)) == 3
    assert (await outbox_rows(s1))[0]["status"] == "sent"


async def test_background_backoff_grows_after_each_failure(s1: Harness) -> None:
    s1.fake.fail_next("sendMessage", 500, times=4)
    await expect_json(await send(s1, body(text="flaky")), 202)
    # The request's attempt failed (1 s); then 2 s, 4 s, 8 s after each background failure.
    for attempts, delay in [(2, 2000), (3, 4000), (4, 8000)]:
        row = (await outbox_rows(s1))[0]
        s1.clock.set(row["next_attempt_at"])
        await tick(s1)
        row = (await outbox_rows(s1))[0]
        assert (row["attempts"], row["next_attempt_at"] - s1.clock.now_ms()) == (attempts, delay)
    s1.clock.set(row["next_attempt_at"])
    await tick(s1)
    assert (await outbox_rows(s1))[0]["status"] == "sent"
    assert len(send_calls(s1)) == 5


async def test_background_outage_stops_the_round(s1: Harness) -> None:
    await s1.register("s2", "m2")
    s1.fake.fail_next("sendMessage", 500, times=2)
    await expect_json(await send(s1, body(text="first")), 202)
    await expect_json(await send(s1, body(sessionId="s2", text="second")), 202)
    s1.clock.advance(1000)
    s1.fake.fail_next("sendMessage", 502)
    await tick(s1)
    # The first row failed again; the second was not tried in the same round.
    assert [c["text"] for c in send_calls(s1)] == ["first", "second", "first"]
    s1.clock.advance(2000)
    await tick(s1)
    assert [c["text"] for c in send_calls(s1)][3:] == ["first", "second"]
    assert [r["status"] for r in await outbox_rows(s1)] == ["sent", "sent"]


async def test_background_permanent_failure_fails_the_whole_notification(
    scripted: Harness,
) -> None:
    fake = scripted.fake
    fake.refuse = lambda p: (500, "Internal Server Error")
    await expect_json(await send(scripted, body(text=THREE_CHUNKS)), 202)
    assert len(await outbox_rows(scripted)) == 3
    fake.refuse = lambda p: (403, "Forbidden: bot was blocked by the user")
    scripted.clock.advance(1000)
    await tick(scripted)
    rows = await outbox_rows(scripted)
    assert [r["status"] for r in rows] == ["failed"] * 3
    assert "bot was blocked" in rows[0]["last_error"]
    fake.refuse = None
    scripted.clock.advance(600_000)
    await tick(scripted)
    assert len(send_calls(scripted)) == 2  # the request's try and the background one
    assert await messages_rows(scripted) == []


async def test_outbox_respects_a_reloaded_allowlist(s1: Harness) -> None:
    s1.fake.fail_next("sendMessage", 500)
    await expect_json(await send(s1, body(text="later")), 202)
    ref = s1.app[keys.CONFIG]
    ref.current = dataclasses.replace(
        ref.current, telegram=dataclasses.replace(ref.current.telegram, allowed_chat_ids=())
    )
    s1.clock.advance(1000)
    await tick(s1)
    assert len(send_calls(s1)) == 1
    assert [r["status"] for r in await outbox_rows(s1)] == ["failed"]


# -- Telegram off (§8.2) -----------------------------------------------------------------------


async def test_telegram_off_queues_every_notification(start_server) -> None:
    server = await start_server(bot_token="")
    await server.register("s1", "m1")
    now = server.clock.now_ms()
    resp = await send(server, body(text=THREE_CHUNKS, replyMarkup=MARKUP))
    result = await expect_json(resp, 202)
    assert result == {"ok": True, "queued": True, "messageId": None, "token": "TOKbtn"}
    resp = await send(server, body(text="short"))
    minted = await expect_json(resp, 202)
    assert minted == _queued(minted, None) and MINTED.fullmatch(minted["token"])

    rows = await outbox_rows(server)
    assert [(r["seq"], r["status"], r["attempts"], r["last_error"]) for r in rows] == [
        (0, "pending", 0, None),
        (1, "pending", 0, None),
        (2, "pending", 0, None),
        (0, "pending", 0, None),
    ]
    assert [r["token"] for r in rows] == ["TOKbtn"] * 3 + [minted["token"]]
    assert [r["next_attempt_at"] for r in rows] == [now] * 4
    assert [r["reply_markup"] is not None for r in rows] == [False, False, True, False]
    assert await messages_rows(server) == []
    await tick(server)
    assert server.fake.calls == []  # nothing goes to Telegram at all
    assert [r["status"] for r in await outbox_rows(server)] == ["pending"] * 4


async def test_telegram_off_still_validates(start_server) -> None:
    server = await start_server(bot_token="")
    await server.register("s1", "m1")
    await expect_error(await send(server, body(sessionId="x")), 404, "Session not found")
    await expect_error(await send(server, body(chatId=OTHER_CHAT)), 403, "Chat ID not allowed")
    resp = await send(server, body(token="abc", replyMarkup=MARKUP))
    await expect_error(resp, 400, "token does not match replyMarkup")
    await expect_error(await send(server, body(text="")), 400, REQUIRED)
    assert await outbox_rows(server) == []


async def test_queued_notification_survives_a_restart_and_goes_out_with_a_token(
    start_server,
) -> None:
    off = await start_server(bot_token="")
    await off.register("s1", "m1")
    queued = await expect_json(
        await send(off, body(text="kept for later", replyMarkup=MARKUP)), 202
    )
    await off.client.close()

    on = await start_server()  # same data directory, now with a bot token
    assert await outbox_rows(on) != []
    await tick(on)
    [call] = send_calls(on)
    assert call == {"chat_id": CHAT, "text": "kept for later", "reply_markup": MARKUP}
    message_id = on.fake.sent[-1]["message_id"]
    assert [(m["message_id"], m["token"]) for m in await messages_rows(on)] == [
        (message_id, queued["token"])
    ]
    assert [r["status"] for r in await outbox_rows(on)] == ["sent"]
