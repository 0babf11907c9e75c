"""Telegram misbehaving (issue 11, fault suite): 5xx, 429 with ``retry_after``, hangs, slow
answers, dropped connections and lost answers, on the way out (notifications, pipeline texts) and
on the way in (``getUpdates`` long polling).

The fake Bot API (:mod:`tests.fake_telegram`) is a real HTTP server; the faults are real HTTP
answers, real timeouts and real closed connections. Time is a :class:`ManualClock` for the durable
outbox (its backoff and 429 waits are jumped over) and an injected ``sleep`` for the poller; only
the client's call timeouts are real and shortened to a few tenths of a second.

Checked: every notification chunk reaches Telegram exactly once and in order when Telegram never
saw the failed attempts; when Telegram did act but its answer was lost, the chunk is sent again
(at-least-once, contract §8.2) and never more than once again; every polled update is processed
exactly once and the offset only moves past processed updates.
"""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from collections.abc import AsyncIterator, Callable
from typing import Any

import aiohttp
import pytest

from ccr_box.server import keys, texts
from ccr_box.server.polling import Poller
from ccr_box.server.state import TelegramStatus
from ccr_box.telegram import TelegramAPI
from ccr_box.textutil import split_message
from tests.conftest import CHAT, Harness
from tests.fake_telegram import FakeTelegram
from tests.figures import record
from tests.helpers_http import messages_rows, outbox_rows

CALL_TIMEOUT_S = 0.5  # the client's per-call timeout (contract: 10 s)
SLOW_S = 0.05  # a slow answer that still comes in time (a tenth of the timeout)
TIMEOUT = 5.0
LONG = "\n\n".join(c * 3000 for c in "ABC")  # three chunks, cut after each "\n\n"


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


@pytest.fixture
async def s1(server: Harness) -> Harness:
    """A webhook-mode server with session ``s1``; its Telegram client gives up after 0.5 s."""
    await server.register("s1", "m1")
    server.app[keys.TELEGRAM].call_timeout_s = CALL_TIMEOUT_S
    server.app[keys.NOTIFIER].retry_delay_s = 0.01
    return server


async def notify(h: Harness, text: str) -> tuple[int, dict[str, Any]]:
    resp = await h.post("/notifications/send", {"sessionId": "s1", "chatId": CHAT, "text": text})
    return resp.status, await resp.json()


async def drain_outbox(h: Harness) -> int:
    """Run maintenance ticks, jumping the manual clock to each next due chunk, until the outbox is
    empty; returns the simulated time that took (ms)."""
    start = h.clock.now_ms()
    for _ in range(100):
        pending = [r for r in await outbox_rows(h) if r["status"] == "pending"]
        if not pending:
            return h.clock.now_ms() - start
        h.clock.set(max(h.clock.now_ms(), min(r["next_attempt_at"] for r in pending)))
        async with asyncio.timeout(TIMEOUT):
            await h.app[keys.MAINTENANCE].tick()
    raise AssertionError(f"outbox never drained: {pending}")


def require(condition: bool, what: str) -> None:
    """A precondition: a plain failure, never the expected failure of an xfail test."""
    if not condition:
        pytest.fail(f"precondition: {what}")


def chunks_of(text: str) -> list[str]:
    return [chunk.text for chunk in split_message(text)]


# -- outbound: notifications -------------------------------------------------------------------


async def test_every_notification_chunk_reaches_telegram_once_in_order(s1: Harness) -> None:
    fake = s1.fake
    faults = 0

    def inject(kind: str) -> None:
        nonlocal faults
        if kind == "ok":
            return
        if kind.startswith("http"):
            fake.fail_next("sendMessage", int(kind[4:]))
            faults += 1
        elif kind == "429-wait":  # waited out inside the request (retry_after 0: no real wait)
            fake.fail_next("sendMessage", 429, retry_after=0, times=2)
            faults += 2
        elif kind == "429-long":  # longer than the request's 30 s budget: queued, honoured
            fake.fail_next("sendMessage", 429, retry_after=45)
            faults += 1
        elif kind == "429-exhausted":  # more 429s than the client retries
            fake.fail_next("sendMessage", 429, retry_after=0, times=4)
            faults += 4
        elif kind == "drop":
            fake.drop_connections_for("sendMessage")
            faults += 1
        elif kind == "hang":
            fake.hang_next("sendMessage")
            faults += 1
        elif kind == "slow":  # slower than usual, within the timeout
            fake.slow_next("sendMessage", SLOW_S)
            faults += 1
        elif kind == "second-chunk-500":
            fake.slow_next("sendMessage", 0)  # the first chunk passes
            fake.fail_next("sendMessage", 500)
            faults += 1
        else:
            raise AssertionError(kind)

    plan = [
        ("ok", 200),
        ("http500", 202),
        ("http502", 202),
        ("http503", 202),
        ("429-wait", 200),
        ("429-long", 202),
        ("429-exhausted", 202),
        ("drop", 202),
        ("hang", 202),
        ("slow", 200),
        ("second-chunk-500", 202),
    ]
    notes: list[str] = []
    for i, (kind, expected) in enumerate(plan):
        text = LONG if kind == "second-chunk-500" else f"note {i} ({kind})"
        inject(kind)
        status, body = await notify(s1, text)
        assert (status, body["ok"]) == (expected, True), (kind, status, body)
        assert body.get("queued", False) is (expected == 202), (kind, body)
        notes.append(text)

    # A burst with Telegram failing under it: the faults land on whichever call comes first.
    for kind in ("http500", "drop", "429-exhausted", "hang"):
        inject(kind)
    burst = [f"burst {i}" for i in range(8)]
    answers = await asyncio.gather(*(notify(s1, text) for text in burst))
    assert {status for status, _ in answers} <= {200, 202}
    notes += burst

    # Telegram keeps failing while the outbox retries in the background.
    for kind in ("http500", "hang", "drop", "http502", "429-long", "http500"):
        inject(kind)
    waited_ms = await drain_outbox(s1)

    # Every injected fault was used, and every chunk went out once, in order.
    assert fake.pending_faults("sendMessage") == 0
    sent = [m["text"] for m in fake.sent]
    expected = [chunk for text in notes for chunk in chunks_of(text)]
    assert Counter(sent) == Counter(expected)
    order = [sent.index(chunk) for chunk in chunks_of(LONG)]
    assert order == sorted(order)
    rows = await outbox_rows(s1)
    assert rows and all(r["status"] == "sent" for r in rows)
    # The 45 s 429 was honoured, not cut short.
    assert waited_ms >= 45_000
    # Every message is mapped to its session, so replies route.
    mapped = {m["message_id"] for m in await messages_rows(s1, "s1")}
    assert mapped == {m["message_id"] for m in fake.sent}
    last = fake.sent[-1]["message_id"]
    assert (await s1.webhook(fake.make_message(CHAT, "reply", reply_to=last))).status == 200
    assert [c["command"] for c in await s1.commands()] == ["reply"]
    record(
        "telegram_faults",
        direction="outbound",
        failures_injected=faults,
        notifications=len(notes),
        chunks=len(expected),
        delivered=len(sent),
        duplicates=len(sent) - len(set(sent)),
    )


async def test_a_lost_answer_is_sent_again_once(s1: Harness) -> None:
    """Telegram showed the message but the answer never arrived (connection closed after the
    call, or an answer slower than the client's timeout): §8.2 delivery is at-least-once, so the
    chunk goes out once more — and only once more."""
    fake = s1.fake
    fake.lose_answer_next("sendMessage")
    status, lost = await notify(s1, "lost answer")
    assert (status, lost["queued"]) == (202, True)
    fake.slow_next("sendMessage", CALL_TIMEOUT_S * 3)
    status, late = await notify(s1, "late answer")
    assert (status, late["queued"]) == (202, True)
    await drain_outbox(s1)
    assert (await notify(s1, "fine"))[0] == 200
    fake.fail_next("sendMessage", 500)  # in the request: not shown, queued
    status, _ = await notify(s1, "lost in the background")
    assert status == 202
    fake.lose_answer_next("sendMessage")  # the outbox's first try: shown, answer lost
    fake.fail_next("sendMessage", 429, retry_after=30)
    await drain_outbox(s1)

    assert fake.pending_faults("sendMessage") == 0
    sent = Counter(m["text"] for m in fake.sent)
    assert sent == {"lost answer": 2, "late answer": 2, "lost in the background": 2, "fine": 1}
    # The copy whose answer arrived is mapped and routes; so does the token (both copies).
    for text, result in (("lost answer", lost), ("late answer", late)):
        mapped = [m["message_id"] for m in fake.sent if m["text"] == text][-1]
        resp = await s1.webhook(fake.make_message(CHAT, f"re: {text}", reply_to=mapped))
        assert resp.status == 200
        resp = await s1.webhook(fake.make_message(CHAT, f"/cmd {result['token']} via {text}"))
        assert resp.status == 200
    commands = sorted(c["command"] for c in await s1.commands())
    assert commands == sorted(
        ["re: lost answer", "via lost answer", "re: late answer", "via late answer"]
    )
    record(
        "telegram_faults",
        direction="outbound-lost-answers",
        failures_injected=5,
        notifications=4,
        delivered=sum(sent.values()),
        duplicates_allowed=sum(n - 1 for n in sent.values()),
    )


async def test_a_reply_to_the_copy_whose_answer_was_lost_routes(s1: Harness) -> None:
    fake = s1.fake
    markup = {"inline_keyboard": [[{"text": "Continue", "callback_data": "cmd:TOKlost:continue"}]]}
    fake.lose_answer_next("sendMessage")
    resp = await s1.post(
        "/notifications/send",
        {"sessionId": "s1", "chatId": CHAT, "text": "twice", "replyMarkup": markup},
    )
    require(resp.status == 202, "queued")
    await drain_outbox(s1)
    first, second = (m for m in fake.sent if m["text"] == "twice")
    require(
        second["message_id"] in {m["message_id"] for m in await messages_rows(s1)},
        "the copy whose answer arrived is mapped",
    )
    # The user replies to the first copy; Telegram quotes it whole, keyboard included.
    quoted = {
        "message_id": first["message_id"],
        "from": {"id": fake.bot_id, "is_bot": True, "first_name": "ccr-box test"},
        "chat": {"id": int(CHAT), "type": "private", "first_name": "Tester"},
        "date": 1,
        "text": "twice",
        "reply_markup": markup,
    }
    update = fake.make_message(CHAT, "answer to the first copy", reply_to=quoted)
    require((await s1.webhook(update)).status == 200, "answered 200")
    assert [c["command"] for c in await s1.commands()] == ["answer to the first copy"]


async def test_pipeline_texts_are_retried_then_given_up_without_blocking(
    s1: Harness, caplog: pytest.LogCaptureFixture
) -> None:
    """A bot text (here /help) survives two transient failures; three in a row are logged and
    dropped (§8.5: "retried in the background a few times and then logged"); the webhook's 200
    never waits for Telegram."""
    fake = s1.fake
    notifier = s1.app[keys.NOTIFIER]
    fake.fail_next("sendMessage", 502)
    fake.drop_connections_for("sendMessage")
    async with asyncio.timeout(CALL_TIMEOUT_S):  # answered before Telegram was even tried
        assert (await s1.webhook(fake.make_message(CHAT, "/help"))).status == 200
    await fake.wait_for(lambda: fake.messages_to(CHAT) == [texts.HELP])
    assert len(fake.calls_of("sendMessage")) == 3

    fake.fail_next("sendMessage", 500)
    fake.hang_next("sendMessage")
    fake.drop_connections_for("sendMessage")
    async with asyncio.timeout(CALL_TIMEOUT_S):
        assert (await s1.webhook(fake.make_message(CHAT, "/help"))).status == 200
    await fake.wait_for(lambda: fake.pending_faults("sendMessage") == 0)
    await notifier.drain()
    assert fake.messages_to(CHAT) == [texts.HELP]  # the second one was given up
    assert len(fake.calls_of("sendMessage")) == 6
    assert any("giving up on a text" in r.getMessage() for r in caplog.records)
    record("telegram_faults", direction="pipeline-texts", failures_injected=5, delivered=1)


async def test_a_callback_answer_survives_transient_failures(s1: Harness) -> None:
    """§7.5: every callback query is answered, or the button's spinner keeps turning. A 502 and
    a dropped connection are retried; the answer arrives once."""
    fake = s1.fake
    markup = {"inline_keyboard": [[{"text": "Continue", "callback_data": "cmd:TOKcb:continue"}]]}
    resp = await s1.post(
        "/notifications/send",
        {"sessionId": "s1", "chatId": CHAT, "text": "Continue?", "replyMarkup": markup},
    )
    assert resp.status == 200
    mid = (await resp.json())["messageId"]
    fake.fail_next("answerCallbackQuery", 502)
    fake.drop_connections_for("answerCallbackQuery")
    update = fake.make_callback(CHAT, "cmd:TOKcb:continue", message_id=mid)
    assert (await s1.webhook(update)).status == 200
    await fake.wait_for(lambda: len(fake.callback_answers) == 1)
    await s1.app[keys.NOTIFIER].drain()
    assert [a.get("text") for a in fake.callback_answers] == ["Command sent"]
    assert len(fake.calls_of("answerCallbackQuery")) == 3
    assert [c["command"] for c in await s1.commands()] == [""]  # continue = just Enter
    record("telegram_faults", direction="callback-answers", failures_injected=2, delivered=1)


# -- inbound: long polling -----------------------------------------------------------------------


class Sleeps:
    """The poller's and the client's ``sleep``: records each delay, returns at once."""

    def __init__(self) -> None:
        self.delays: list[float] = []

    async def __call__(self, delay: float) -> None:
        self.delays.append(delay)
        await asyncio.sleep(0)


async def agent(h: Harness, machine_id: str) -> tuple[aiohttp.ClientWebSocketResponse, Counter]:
    """A CCR agent that acks every command; returns its socket and the commands it received."""
    ws = await h.connect(machine_id)
    received: Counter[str] = Counter()

    async def read() -> None:
        async for msg in ws:
            frame = json.loads(msg.data)
            if frame.get("type") == "command":
                received[frame["command"]] += 1
                await ws.send_str(json.dumps({"type": "ack", "commandId": frame["commandId"]}))

    asyncio.get_running_loop().create_task(read())
    return ws, received


async def test_polling_processes_every_update_once_through_getupdates_faults(
    s1: Harness, http: aiohttp.ClientSession
) -> None:
    fake: FakeTelegram = s1.fake
    fake.poll_wait_cap_s = 0.05
    mid = (await s1.notify("s1", "Claude stopped."))["messageId"]
    ws, received = await agent(s1, "m1")
    sleeps = Sleeps()
    api = TelegramAPI(
        http,
        fake.token,
        base_url=fake.base_url,
        sleep=sleeps,
        call_timeout_s=CALL_TIMEOUT_S,
        poll_http_timeout_s=CALL_TIMEOUT_S,
    )
    status = TelegramStatus(mode="polling", state="starting")
    poller = Poller(
        api,
        s1.app[keys.PIPELINE],
        status,
        s1.app[keys.CONFIG],
        s1.clock,
        sleep=sleeps,
        rand=lambda: 1.0,  # backoff without jitter: 1, 2, 4 ... s
        poll_timeout=1,
    )
    fake.fail_next("getMe", 502)  # start-up: getMe is retried too
    fake.drop_connections_for("getMe")
    faults = 2
    plan: list[tuple[str, Callable[[], None], int]] = [
        ("500", lambda: fake.fail_next("getUpdates", 500), 1),
        ("502", lambda: fake.fail_next("getUpdates", 502), 1),
        ("429", lambda: fake.fail_next("getUpdates", 429, retry_after=3), 1),
        ("429x4", lambda: fake.fail_next("getUpdates", 429, retry_after=5, times=4), 4),
        ("drop", lambda: fake.drop_connections_for("getUpdates"), 1),
        ("hang", lambda: fake.hang_next("getUpdates"), 1),
        ("lost answer", lambda: fake.lose_answer_next("getUpdates"), 1),
        ("slow", lambda: fake.slow_next("getUpdates", SLOW_S), 1),
        ("too slow", lambda: fake.slow_next("getUpdates", CALL_TIMEOUT_S * 2), 1),
    ]
    pushed: list[dict[str, Any]] = []
    task = asyncio.create_task(poller.run())
    try:
        for name, inject, count in plan:
            inject()
            faults += count
            for n in range(3):
                update = fake.make_message(CHAT, f"{name} #{n}", reply_to=mid)
                pushed.append(fake.push_update(update))
            last = pushed[-1]["update_id"]
            await fake.wait_for(lambda last=last: poller.offset == last + 1, TIMEOUT)
        # One more poll confirms the last batch to Telegram.
        await fake.wait_for(
            lambda: any(p.get("offset") == last + 1 for p in fake.calls_of("getUpdates"))
        )
        await fake.wait_for(lambda: sum(received.values()) >= len(pushed))
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await ws.close()

    assert fake.pending_faults("getUpdates") == fake.pending_faults("getMe") == 0
    rows = await s1.commands()
    assert sorted(r["update_id"] for r in rows) == [u["update_id"] for u in pushed]
    assert all(r["status"] == "acked" for r in rows)
    assert received == Counter(u["message"]["text"] for u in pushed)  # each once
    offsets = [p["offset"] for p in fake.calls_of("getUpdates") if "offset" in p]
    assert offsets == sorted(offsets)  # never backwards
    assert fake.updates == []  # all confirmed
    # Telegram's waits were honoured; errors backed off (1, 2 s: each success resets).
    assert sleeps.delays.count(3.0) == 1 and sleeps.delays.count(5.0) == 4
    assert {1.0, 2.0} <= set(sleeps.delays)
    assert status.state == "ok"
    record(
        "telegram_faults",
        direction="inbound-polling",
        failures_injected=faults,
        updates=len(pushed),
        processed_once=sum(1 for n in received.values() if n == 1),
        duplicates=sum(n - 1 for n in received.values()),
    )
