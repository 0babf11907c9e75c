"""TelegramAPI against a real (fake) Bot API server over HTTP."""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import AsyncIterator

import aiohttp
import pytest

from ccr_box.errors import TelegramError, TelegramPermanentError, TelegramTransientError
from ccr_box.telegram import (
    TelegramAPI,
    TelegramRateLimitedError,
    _scrub,
    is_other_poller_conflict,
    is_webhook_conflict,
)
from tests.fake_telegram import FakeTelegram


class RecordingSleep:
    """Injected sleep: records the requested delays and returns at once."""

    def __init__(self) -> None:
        self.delays: list[float] = []

    async def __call__(self, delay: float) -> None:
        self.delays.append(delay)


@pytest.fixture
async def fake() -> AsyncIterator[FakeTelegram]:
    async with FakeTelegram() as server:
        yield server


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


@pytest.fixture
def sleep() -> RecordingSleep:
    return RecordingSleep()


@pytest.fixture
def api(fake: FakeTelegram, http: aiohttp.ClientSession, sleep: RecordingSleep) -> TelegramAPI:
    return TelegramAPI(http, fake.token, base_url=fake.base_url + "/", sleep=sleep)


def assert_no_token(exc: BaseException, token: str) -> None:
    for text in (str(exc), repr(exc), str(exc.args)):
        assert token not in text
        assert "TEST-token" not in text
    assert exc.__cause__ is None
    assert exc.__context__ is None or exc.__suppress_context__


# -- success paths ---------------------------------------------------------------------------------


async def test_enabled_reflects_token(http: aiohttp.ClientSession) -> None:
    assert TelegramAPI(http, "1:abc").enabled
    disabled = TelegramAPI(http, "")
    assert not disabled.enabled
    with pytest.raises(TelegramPermanentError) as info:
        await disabled.get_me()
    assert info.value.status == 401


async def test_get_me(api: TelegramAPI, fake: FakeTelegram) -> None:
    me = await api.get_me()
    assert me["username"] == fake.username
    assert me["is_bot"] is True
    assert fake.calls == [("getMe", {})]


async def test_send_message_plain_text(api: TelegramAPI, fake: FakeTelegram) -> None:
    message = await api.send_message("42", "hello *world*")
    assert message["message_id"] == 1000
    assert message["text"] == "hello *world*"
    assert message["chat"]["id"] == 42
    (payload,) = fake.calls_of("sendMessage")
    assert payload == {"chat_id": "42", "text": "hello *world*"}
    assert "parse_mode" not in payload
    assert fake.sent == [{"chat_id": "42", "text": "hello *world*", "message_id": 1000}]
    assert fake.messages_to("42") == ["hello *world*"]


async def test_send_message_extra_fields_verbatim(api: TelegramAPI, fake: FakeTelegram) -> None:
    markup = {"inline_keyboard": [[{"text": "Yes", "callback_data": "cmd:tok:yes"}]]}
    entities = [{"type": "bold", "offset": 0, "length": 2}]
    second = await api.send_message("42", "first")
    message = await api.send_message(
        "42", "hi there", reply_markup=markup, entities=entities, message_thread_id=None
    )
    assert message["message_id"] == second["message_id"] + 1
    payload = fake.calls_of("sendMessage")[-1]
    assert payload == {
        "chat_id": "42",
        "text": "hi there",
        "reply_markup": markup,
        "entities": entities,
    }
    await api.send_message("-100", "topic", message_thread_id=7)
    assert fake.calls_of("sendMessage")[-1]["message_thread_id"] == 7


async def test_send_message_refuses_parse_mode(api: TelegramAPI, fake: FakeTelegram) -> None:
    with pytest.raises(TypeError):
        await api.send_message("42", "x", parse_mode="HTML")
    assert fake.calls == []


async def test_answer_callback_query(api: TelegramAPI, fake: FakeTelegram) -> None:
    await api.answer_callback_query("cbq-1", "Command sent")
    await api.answer_callback_query("cbq-2")
    assert fake.callback_answers == [
        {"callback_query_id": "cbq-1", "text": "Command sent"},
        {"callback_query_id": "cbq-2"},
    ]


async def test_webhook_methods(api: TelegramAPI, fake: FakeTelegram) -> None:
    await api.set_webhook("https://example.org/webhook/telegram/p", secret_token="s3cret_-X")
    assert fake.webhook == {
        "url": "https://example.org/webhook/telegram/p",
        "secret_token": "s3cret_-X",
        "allowed_updates": ["message", "callback_query"],
    }
    fake.push_update(fake.make_message("42", "hi"))
    info = await api.get_webhook_info()
    assert info["url"] == "https://example.org/webhook/telegram/p"
    assert info["pending_update_count"] == 1
    assert info["allowed_updates"] == ["message", "callback_query"]
    await api.delete_webhook()
    assert fake.webhook is None
    assert fake.calls_of("deleteWebhook") == [{"drop_pending_updates": False}]
    assert (await api.get_webhook_info())["url"] == ""
    assert len(fake.updates) == 1
    await api.delete_webhook(drop_pending_updates=True)
    assert fake.updates == []


# -- getUpdates -------------------------------------------------------------------------------------


async def test_get_updates_offset_and_allowed_updates(api: TelegramAPI, fake: FakeTelegram) -> None:
    first = fake.push_update(fake.make_message("42", "one"))
    second = fake.push_update(fake.make_callback("42", "cmd:tok:yes"))
    updates = await api.get_updates(None, timeout=0)
    assert [u["update_id"] for u in updates] == [first["update_id"], second["update_id"]]
    assert updates[1]["callback_query"]["data"] == "cmd:tok:yes"

    updates = await api.get_updates(second["update_id"] + 1, timeout=0)
    assert updates == []
    assert fake.updates == []  # confirmed by the offset

    payloads = fake.calls_of("getUpdates")
    assert "offset" not in payloads[0]
    assert payloads[1]["offset"] == second["update_id"] + 1
    for payload in payloads:
        assert payload["allowed_updates"] == ["message", "callback_query"]
        assert payload["limit"] == 100
    assert fake.allowed_updates == ["message", "callback_query"]


async def test_get_updates_long_poll_wakes_on_push(api: TelegramAPI, fake: FakeTelegram) -> None:
    fake.poll_wait_cap_s = 5.0
    poll = asyncio.create_task(api.get_updates(None))
    await fake.wait_for(lambda: len(fake.calls_of("getUpdates")) == 1)
    update = fake.push_update(fake.make_message("42", "late"))
    assert await asyncio.wait_for(poll, 2) == [update]
    assert fake.calls_of("getUpdates")[0]["timeout"] == 30


async def test_get_updates_empty_after_cap(api: TelegramAPI, fake: FakeTelegram) -> None:
    fake.poll_wait_cap_s = 0.05
    assert await api.get_updates(None) == []


async def test_get_updates_webhook_conflict(api: TelegramAPI, fake: FakeTelegram) -> None:
    await api.set_webhook("https://example.org/hook", secret_token="abc")
    with pytest.raises(TelegramPermanentError) as info:
        await api.get_updates(None, timeout=0)
    err = info.value
    assert err.status == 409
    assert is_webhook_conflict(err)
    assert not is_other_poller_conflict(err)


async def test_get_updates_other_poller_conflict(api: TelegramAPI, fake: FakeTelegram) -> None:
    fake.poll_wait_cap_s = 5.0
    first = asyncio.create_task(api.get_updates(None))
    await fake.wait_for(lambda: len(fake.calls_of("getUpdates")) == 1)
    second = asyncio.create_task(api.get_updates(None, timeout=0))
    with pytest.raises(TelegramPermanentError) as info:
        await asyncio.wait_for(first, 2)
    assert is_other_poller_conflict(info.value)
    assert not is_webhook_conflict(info.value)
    assert await second == []


def test_conflict_helpers_classify_only_409() -> None:
    desc = {"description": "Conflict: terminated by other getUpdates request; make sure..."}
    assert is_other_poller_conflict(TelegramPermanentError("getUpdates", 409, desc))
    assert not is_other_poller_conflict(TelegramPermanentError("getUpdates", 400, desc))
    assert not is_other_poller_conflict(TelegramTransientError("getUpdates", "timeout"))
    assert not is_webhook_conflict(ValueError("webhook is active"))


# -- 429 ----------------------------------------------------------------------------------------------


async def test_429_retry_after_honoured(
    api: TelegramAPI, fake: FakeTelegram, sleep: RecordingSleep
) -> None:
    fake.fail_next("sendMessage", 429, times=2, retry_after=3)
    message = await api.send_message("42", "hi")
    assert message["message_id"] == 1000
    assert sleep.delays == [3, 3]
    assert len(fake.calls_of("sendMessage")) == 3
    assert len(fake.sent) == 1


async def test_429_without_retry_after_waits_one_second(
    api: TelegramAPI, fake: FakeTelegram, sleep: RecordingSleep
) -> None:
    fake.fail_next("getMe", 429)
    await api.get_me()
    assert sleep.delays == [1]


async def test_429_over_budget_raises_without_sleeping(
    api: TelegramAPI, fake: FakeTelegram, sleep: RecordingSleep
) -> None:
    fake.fail_next("sendMessage", 429, retry_after=31)
    with pytest.raises(TelegramTransientError) as info:
        await api.send_message("42", "hi")
    assert isinstance(info.value, TelegramRateLimitedError)
    assert info.value.retry_after == 31
    assert sleep.delays == []
    assert fake.sent == []


async def test_429_cumulative_wait_counts_against_budget(
    api: TelegramAPI, fake: FakeTelegram, sleep: RecordingSleep
) -> None:
    fake.fail_next("sendMessage", 429, times=2, retry_after=20)
    with pytest.raises(TelegramTransientError):
        await api.send_message("42", "hi")
    assert sleep.delays == [20]  # 20 + 20 > 30: the second wait is refused


async def test_429_no_budget_waits_as_told(
    api: TelegramAPI, fake: FakeTelegram, sleep: RecordingSleep
) -> None:
    fake.fail_next("sendMessage", 429, times=3, retry_after=120)
    await api.send_message("42", "hi", wait_budget_s=None)
    assert sleep.delays == [120, 120, 120]
    assert len(fake.sent) == 1


async def test_more_than_three_429_is_transient(
    api: TelegramAPI, fake: FakeTelegram, sleep: RecordingSleep
) -> None:
    fake.fail_next("sendMessage", 429, times=4, retry_after=1)
    with pytest.raises(TelegramTransientError):
        await api.send_message("42", "hi", wait_budget_s=None)
    assert sleep.delays == [1, 1, 1]
    assert len(fake.calls_of("sendMessage")) == 4
    assert fake.sent == []


# -- other failures -----------------------------------------------------------------------------------


@pytest.mark.parametrize("status", [500, 502])
async def test_5xx_is_transient(api: TelegramAPI, fake: FakeTelegram, status: int) -> None:
    fake.fail_next("sendMessage", status)
    with pytest.raises(TelegramTransientError) as info:
        await api.send_message("42", "hi")
    assert f"HTTP {status}" in str(info.value)
    assert info.value.method == "sendMessage"


async def test_400_is_permanent_with_payload(api: TelegramAPI, fake: FakeTelegram) -> None:
    fake.fail_next("sendMessage", 400, description="Bad Request: chat not found")
    with pytest.raises(TelegramPermanentError) as info:
        await api.send_message("42", "hi")
    err = info.value
    assert err.status == 400
    assert err.payload == {
        "ok": False,
        "error_code": 400,
        "description": "Bad Request: chat not found",
    }
    assert err.description == "Bad Request: chat not found"
    assert not err.retryable


async def test_fake_validation_is_permanent(api: TelegramAPI) -> None:
    with pytest.raises(TelegramPermanentError) as info:
        await api.send_message("42", "   ")
    assert info.value.description == "Bad Request: message text is empty"
    with pytest.raises(TelegramPermanentError) as info:
        await api.send_message("42", "😀" * 2049)  # 4098 UTF-16 units
    assert info.value.description == "Bad Request: message is too long"


async def test_wrong_token_is_permanent_401(
    fake: FakeTelegram, http: aiohttp.ClientSession
) -> None:
    api = TelegramAPI(http, "999:wrong-token", base_url=fake.base_url)
    with pytest.raises(TelegramPermanentError) as info:
        await api.get_me()
    assert info.value.status == 401
    assert fake.calls == []
    assert_no_token(info.value, "999:wrong-token")


async def test_unknown_method_is_permanent_404(api: TelegramAPI) -> None:
    with pytest.raises(TelegramPermanentError) as info:
        await api.call("noSuchMethod", {"a": 1})
    assert info.value.status == 404
    assert info.value.description == "Not Found"


async def test_dropped_connection_is_transient(api: TelegramAPI, fake: FakeTelegram) -> None:
    fake.drop_connections_for("sendMessage")
    with pytest.raises(TelegramTransientError) as info:
        await api.send_message("42", "hi")
    assert "network error" in str(info.value)
    assert_no_token(info.value, fake.token)
    assert (await api.send_message("42", "again"))["text"] == "again"


async def test_closed_port_is_transient(http: aiohttp.ClientSession) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    token = "777:closed-port-token"
    api = TelegramAPI(http, token, base_url=f"http://127.0.0.1:{port}")
    with pytest.raises(TelegramTransientError) as info:
        await api.get_me()
    assert info.value.retryable
    assert_no_token(info.value, token)


async def test_timeout_is_transient(fake: FakeTelegram, http: aiohttp.ClientSession) -> None:
    api = TelegramAPI(http, fake.token, base_url=fake.base_url, call_timeout_s=0.2)
    fake.hang_next("sendMessage")
    with pytest.raises(TelegramTransientError) as info:
        await api.send_message("42", "hi")
    assert "timeout" in str(info.value)
    assert_no_token(info.value, fake.token)


async def test_ok_false_is_permanent(http: aiohttp.ClientSession) -> None:
    """A 200 answer with ``ok`` false or without ``result`` is a failure."""
    from aiohttp import web

    answers = [{"ok": False, "description": "weird"}, {"ok": True}, "not json"]

    async def handler(request: web.Request) -> web.Response:
        answer = answers.pop(0)
        if isinstance(answer, str):
            return web.Response(text=answer)
        return web.json_response(answer)

    app = web.Application()
    app.router.add_post("/{tail:.*}", handler)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        api = TelegramAPI(http, "5:tok", base_url=f"http://127.0.0.1:{runner.addresses[0][1]}")
        with pytest.raises(TelegramPermanentError) as info:
            await api.get_me()
        assert info.value.status == 200
        assert info.value.payload == {"ok": False, "description": "weird"}
        with pytest.raises(TelegramPermanentError):
            await api.get_me()
        with pytest.raises(TelegramTransientError):
            await api.get_me()
    finally:
        await runner.cleanup()


# -- secrecy --------------------------------------------------------------------------------------------


def test_scrub_replaces_raw_and_encoded_token() -> None:
    token = "123:ab-c"
    text = "http://x/bot123:ab-c/getMe and http://x/bot123%3Aab-c/getMe"
    assert _scrub(text, token) == "http://x/bot<token>/getMe and http://x/bot<token>/getMe"
    assert _scrub("nothing", "") == "nothing"


async def test_token_never_in_errors_or_logs(
    api: TelegramAPI,
    fake: FakeTelegram,
    http: aiohttp.ClientSession,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    errors: list[TelegramError] = []
    fake.fail_next("sendMessage", 429, retry_after=1)
    fake.fail_next("sendMessage", 400)
    fake.fail_next("getMe", 500)
    fake.drop_connections_for("answerCallbackQuery")
    for call in (
        lambda: api.send_message("42", "hi"),
        api.get_me,
        lambda: api.answer_callback_query("q"),
        lambda: TelegramAPI(
            http,
            fake.token,
            base_url="http://[::1",  # invalid URL: aiohttp echoes it
        ).get_me(),
    ):
        with pytest.raises(TelegramError) as info:
            await call()
        errors.append(info.value)
    await api.get_updates(None, timeout=0)
    assert len(errors) == 4
    for err in errors:
        assert_no_token(err, fake.token)
    assert repr(api).count("TEST-token") == 0
    assert any(r.name == "ccr_box.telegram" for r in caplog.records)
    for record in caplog.records:
        assert fake.token not in record.getMessage()
        assert "TEST-token" not in record.getMessage()
