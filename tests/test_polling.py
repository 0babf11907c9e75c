"""Long polling (contract §7.7): the real poller against the fake Bot API.

Paths that wait (backoff, 409, 429) drive ``Poller`` directly with a recording ``sleep``; the rest
runs the server's own polling loop end to end.
"""

from __future__ import annotations

import copy
import json
from collections.abc import AsyncIterator

import aiohttp
import pytest

from ccr_box.server import keys
from ccr_box.server.app import Options
from ccr_box.server.polling import Poller
from ccr_box.telegram import TelegramAPI
from tests.conftest import CHAT, Harness
from tests.fake_telegram import FakeTelegram
from tests.helpers_pipeline import (
    HELP,
    admin_status,
    connect_agent,
    mapped,
    offline,
    receive_json,
    sql,
    sync_agent,
)

POLLING = Options(maintenance=False, telegram_inbound=True, poll_timeout=1)
ALLOWED = ["message", "callback_query"]


def polls(fake: FakeTelegram, start: int = 0) -> list[dict]:
    return [p for name, p in fake.calls[start:] if name == "getUpdates"]


async def wait_for_poll(fake: FakeTelegram, predicate, start: int = 0) -> None:
    await fake.wait_for(lambda: any(predicate(p) for p in polls(fake, start)))


# -- the server's own polling loop -------------------------------------------------------------


async def test_getme_first_then_status_ok(start_server) -> None:
    h = await start_server(mode="polling", options=POLLING)
    fake = h.fake
    await wait_for_poll(fake, lambda p: True)
    assert fake.calls[0][0] == "getMe"
    assert await admin_status(h) == {
        "bootId": h.app[keys.STATE].boot_id,
        "startedAt": h.clock.now_ms(),
        "telegram": {"mode": "polling", "state": "ok", "lastError": None, "allowedChats": 1},
    }
    assert h.app[keys.STATE].telegram.username == fake.username


async def test_update_reaches_agent_and_is_acked(start_server) -> None:
    h = await start_server(mode="polling", options=POLLING)
    fake = h.fake
    mid, _ = await mapped(h)
    ws = await connect_agent(h, "devbox")
    update = fake.push_update(fake.make_message(CHAT, "polled reply", reply_to=mid))
    frame = await receive_json(ws)
    assert set(frame) == {"type", "commandId", "sessionId", "command", "chatId"}
    assert (frame["type"], frame["sessionId"], frame["command"], frame["chatId"]) == (
        "command",
        "sess-1",
        "polled reply",
        CHAT,
    )
    await ws.send_str(json.dumps({"type": "ack", "commandId": frame["commandId"]}))
    await sync_agent(ws)
    (row,) = await h.commands()
    assert (row["command_id"], row["status"], row["update_id"]) == (
        frame["commandId"],
        "acked",
        update["update_id"],
    )
    await ws.close()


async def test_getupdates_parameters_and_offsets(start_server) -> None:
    h = await start_server(mode="polling", options=POLLING)
    fake = h.fake
    await wait_for_poll(fake, lambda p: True)
    first = polls(fake)[0]
    assert "offset" not in first
    u1 = fake.push_update(fake.make_message(CHAT, "/help"))
    u2 = fake.push_update(fake.make_message(CHAT, "/start"))
    await wait_for_poll(fake, lambda p: p.get("offset") == u2["update_id"] + 1)
    u3 = fake.push_update(fake.make_message(CHAT, "/help"))
    await wait_for_poll(fake, lambda p: p.get("offset") == u3["update_id"] + 1)
    await fake.wait_for(lambda: fake.messages_to(CHAT) == [HELP, HELP, HELP])
    calls = polls(fake)
    for payload in calls:
        assert payload["allowed_updates"] == ALLOWED
        assert payload["timeout"] == 1
        assert payload["limit"] == 100
    offsets = [p.get("offset") for p in calls]
    # no offset until something was processed; then always last processed + 1
    first = next(i for i, o in enumerate(offsets) if o is not None)
    assert offsets[:first] == [None] * first
    assert offsets[first] == u2["update_id"] + 1  # u1 and u2 came in one batch
    assert set(offsets[first:]) == {u2["update_id"] + 1, u3["update_id"] + 1}
    assert offsets[first:] == sorted(offsets[first:])
    assert u1["update_id"] + 1 == u2["update_id"]
    assert fake.updates == []  # everything confirmed


async def test_restart_does_not_duplicate_an_unconfirmed_update(start_server) -> None:
    h1 = await start_server(mode="polling", options=POLLING)
    fake = h1.fake
    mid, _ = await mapped(h1)
    update = fake.make_message(CHAT, "exactly once", reply_to=mid)
    redelivery = copy.deepcopy(update)
    fake.push_update(update)
    await fake.wait_for(lambda: offline("devbox") in fake.messages_to(CHAT))
    await h1.client.close()

    # Telegram still holds the update (as if the confirming getUpdates never arrived).
    fake.push_update(redelivery)
    mark = len(fake.calls)
    h2 = await start_server(mode="polling", options=POLLING)
    await wait_for_poll(fake, lambda p: p.get("offset") == update["update_id"] + 1, mark)
    assert "offset" not in polls(fake, mark)[0]
    rows = await h2.commands()
    assert [(r["command"], r["update_id"]) for r in rows] == [("exactly once", update["update_id"])]
    help_update = fake.push_update(fake.make_message(CHAT, "/help"))
    await wait_for_poll(fake, lambda p: p.get("offset") == help_update["update_id"] + 1, mark)
    await fake.wait_for(lambda: HELP in fake.messages_to(CHAT))
    assert fake.messages_to(CHAT) == ["Done.", offline("devbox"), HELP]


async def test_webhook_conflict_with_delete_webhook_deletes_and_continues(
    start_server, fake_telegram: FakeTelegram
) -> None:
    fake = fake_telegram
    fake.webhook = {"url": "https://example.invalid/hook", "secret_token": None}
    fake.push_update(fake.make_message(CHAT, "/help"))  # pending before the server starts
    h = await start_server(mode="polling", options=POLLING, delete_webhook=True)
    await fake.wait_for(lambda: fake.messages_to(CHAT) == [HELP])
    assert fake.webhook is None
    assert fake.calls_of("deleteWebhook") == [{"drop_pending_updates": False}]
    names = [name for name, _ in fake.calls]
    assert names[:4] == ["getMe", "getUpdates", "deleteWebhook", "getUpdates"]
    assert (await admin_status(h))["telegram"]["state"] == "ok"


# -- Poller driven directly (no real waiting) --------------------------------------------------


class Sleeps:
    def __init__(self) -> None:
        self.delays: list[float] = []

    async def __call__(self, seconds: float) -> None:
        self.delays.append(seconds)


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


def make_poller(
    h: Harness, http: aiohttp.ClientSession, sleeps: Sleeps, *, token: str | None = None, rand=1.0
) -> Poller:
    fake = h.fake
    api = TelegramAPI(http, token or fake.token, base_url=fake.base_url, sleep=sleeps)
    return Poller(
        api,
        h.app[keys.PIPELINE],
        h.app[keys.STATE].telegram,
        h.app[keys.CONFIG],
        h.clock,
        sleep=sleeps,
        rand=lambda: rand,
        poll_timeout=0,
    )


@pytest.fixture
async def borrowed(start_server) -> Harness:
    """A polling-mode server whose own poller is off: its pipeline and status are borrowed."""
    return await start_server(mode="polling")


async def test_5xx_backoff_doubles_with_jitter_and_resets(borrowed: Harness, http) -> None:
    fake = borrowed.fake
    sleeps = Sleeps()
    poller = make_poller(borrowed, http, sleeps)
    fake.fail_next("getUpdates", 500, times=8)
    for _ in range(8):
        assert await poller.poll_once() is True
    assert sleeps.delays == [1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 60.0, 60.0]
    status = await admin_status(borrowed)
    assert status["telegram"]["state"] == "error"
    assert "500" in status["telegram"]["lastError"]
    assert await poller.poll_once() is True  # success resets
    assert (await admin_status(borrowed))["telegram"] == {
        "mode": "polling",
        "state": "ok",
        "lastError": None,
        "allowedChats": 1,
    }
    fake.fail_next("getUpdates", 502)
    await poller.poll_once()
    assert sleeps.delays[-1] == 1.0


async def test_backoff_jitter_lower_bound(borrowed: Harness, http) -> None:
    sleeps = Sleeps()
    poller = make_poller(borrowed, http, sleeps, rand=0.0)
    borrowed.fake.fail_next("getUpdates", 503, times=3)
    for _ in range(3):
        await poller.poll_once()
    assert sleeps.delays == [0.5, 1.0, 2.0]


async def test_network_error_backs_off(borrowed: Harness, http) -> None:
    sleeps = Sleeps()
    poller = make_poller(borrowed, http, sleeps)
    borrowed.fake.drop_connections_for("getUpdates", times=2)
    assert await poller.poll_once() is True
    assert await poller.poll_once() is True
    assert sleeps.delays == [1.0, 2.0]
    assert (await admin_status(borrowed))["telegram"]["state"] == "error"


async def test_429_waits_retry_after(borrowed: Harness, http) -> None:
    fake = borrowed.fake
    sleeps = Sleeps()
    poller = make_poller(borrowed, http, sleeps)
    fake.fail_next("getUpdates", 429, retry_after=7, times=4)
    assert await poller.poll_once() is True
    # three waits inside the client's own 429 retries, then the poller waits once more
    assert sleeps.delays == [7.0, 7.0, 7.0, 7.0]
    assert len(polls(fake)) == 4
    fake.fail_next("getUpdates", 429, retry_after=3)
    assert await poller.poll_once() is True
    assert sleeps.delays[4:] == [3.0]
    assert len(polls(fake)) == 6  # retried, then answered


async def test_other_poller_conflict_backs_off_30s(borrowed: Harness, http) -> None:
    sleeps = Sleeps()
    poller = make_poller(borrowed, http, sleeps)
    borrowed.fake.fail_next("getUpdates", 409)  # "terminated by other getUpdates request"
    assert await poller.poll_once() is True
    assert sleeps.delays == [30.0]
    telegram = (await admin_status(borrowed))["telegram"]
    assert telegram["state"] == "conflict"
    assert "another process" in telegram["lastError"]


async def test_webhook_conflict_reports_and_retries_every_60s(borrowed: Harness, http) -> None:
    fake = borrowed.fake
    fake.webhook = {"url": "https://example.invalid/hook", "secret_token": None}
    sleeps = Sleeps()
    poller = make_poller(borrowed, http, sleeps)
    assert await poller.poll_once() is True
    assert await poller.poll_once() is True
    assert sleeps.delays == [60.0, 60.0]
    telegram = (await admin_status(borrowed))["telegram"]
    assert telegram["state"] == "conflict"
    assert "deleteWebhook" in telegram["lastError"]
    assert fake.calls_of("deleteWebhook") == []
    assert fake.webhook is not None


async def test_webhook_conflict_with_delete_webhook(start_server, http) -> None:
    h = await start_server(mode="polling", delete_webhook=True)
    fake = h.fake
    fake.webhook = {"url": "https://example.invalid/hook", "secret_token": None}
    update = fake.push_update(fake.make_message(CHAT, "/help"))
    sleeps = Sleeps()
    poller = make_poller(h, http, sleeps)
    assert await poller.poll_once() is True  # 409 -> deleteWebhook, no waiting
    assert fake.calls_of("deleteWebhook") == [{"drop_pending_updates": False}]
    assert sleeps.delays == []
    assert await poller.poll_once() is True  # pending update kept and processed
    assert poller.offset == update["update_id"] + 1
    await fake.wait_for(lambda: fake.messages_to(CHAT) == [HELP])
    # a webhook set again later is reported, not deleted in a loop
    fake.webhook = {"url": "https://example.invalid/hook", "secret_token": None}
    assert await poller.poll_once() is True
    assert len(fake.calls_of("deleteWebhook")) == 1
    assert sleeps.delays == [60.0]


async def test_delete_webhook_failure_does_not_kill_polling(start_server, http) -> None:
    h = await start_server(mode="polling", delete_webhook=True)
    fake = h.fake
    fake.webhook = {"url": "https://example.invalid/hook", "secret_token": None}
    fake.fail_next("deleteWebhook", 500)
    sleeps = Sleeps()
    poller = make_poller(h, http, sleeps)
    assert await poller.poll_once() is True  # must not raise: the loop would die
    assert len(sleeps.delays) == 1
    assert await poller.poll_once() is True  # 409 again -> deleteWebhook again, succeeds
    assert len(fake.calls_of("deleteWebhook")) == 2
    assert fake.webhook is None
    assert await poller.poll_once() is True
    assert (await admin_status(h))["telegram"]["state"] == "ok"


async def test_bad_token_stops_the_poller(borrowed: Harness, http) -> None:
    sleeps = Sleeps()
    poller = make_poller(borrowed, http, sleeps, token="999:not-the-token")
    await poller.run()  # returns: getMe answered 401
    telegram = (await admin_status(borrowed))["telegram"]
    assert telegram["state"] == "error"
    assert "invalid bot token" in telegram["lastError"]
    assert polls(borrowed.fake) == []
    assert sleeps.delays == []


async def test_getme_transient_failure_is_retried(borrowed: Harness, http) -> None:
    fake = borrowed.fake
    fake.fail_next("getMe", 500, times=2)
    fake.fail_next("getUpdates", 401)  # then stop the loop so run() returns
    sleeps = Sleeps()
    poller = make_poller(borrowed, http, sleeps)
    await poller.run()
    assert [name for name, _ in fake.calls] == ["getMe", "getMe", "getMe", "getUpdates"]
    assert sleeps.delays == [1.0, 2.0]
    assert borrowed.app[keys.STATE].telegram.username == fake.username


async def test_failing_update_retried_with_backoff_then_skipped(borrowed: Harness, http) -> None:
    h = borrowed
    fake = h.fake
    mid, _ = await mapped(h)
    bad = fake.push_update(fake.make_message(CHAT, "cannot be stored", reply_to=mid))
    after = fake.push_update(fake.make_message(CHAT, "/help"))
    await sql(h, "ALTER TABLE command_queue RENAME TO command_queue_hidden")
    sleeps = Sleeps()
    poller = make_poller(h, http, sleeps)
    for _ in range(4):
        assert await poller.poll_once() is True
        assert poller.offset is None  # the batch stopped at the failing update
    assert sleeps.delays == [1.0, 2.0, 4.0, 8.0]  # 1 s doubling
    assert fake.messages_to(CHAT) == ["Done."]  # the next update waited behind it
    assert await poller.poll_once() is True  # fifth failure: logged and skipped
    assert sleeps.delays == [1.0, 2.0, 4.0, 8.0]
    assert poller.offset == after["update_id"] + 1
    await fake.wait_for(lambda: fake.messages_to(CHAT) == ["Done.", HELP])
    await sql(h, "ALTER TABLE command_queue_hidden RENAME TO command_queue")
    assert await h.commands() == []
    assert bad["update_id"] + 1 == after["update_id"]
    assert await poller.poll_once() is True
    assert polls(fake)[-1]["offset"] == after["update_id"] + 1


async def test_recovered_update_resets_the_failure_count(borrowed: Harness, http) -> None:
    h = borrowed
    fake = h.fake
    mid, _ = await mapped(h)
    first = fake.push_update(fake.make_message(CHAT, "first", reply_to=mid))
    await sql(h, "ALTER TABLE command_queue RENAME TO command_queue_hidden")
    sleeps = Sleeps()
    poller = make_poller(h, http, sleeps)
    for _ in range(3):
        await poller.poll_once()
    await sql(h, "ALTER TABLE command_queue_hidden RENAME TO command_queue")
    await poller.poll_once()  # processed now
    assert poller.offset == first["update_id"] + 1
    assert [r["command"] for r in await h.commands()] == ["first"]
    second = fake.push_update(fake.make_message(CHAT, "second", reply_to=mid))
    await sql(h, "ALTER TABLE command_queue RENAME TO command_queue_hidden")
    await poller.poll_once()
    assert sleeps.delays == [1.0, 2.0, 4.0, 1.0]  # a new update starts again at 1 s
    assert poller.offset == first["update_id"] + 1
    await sql(h, "ALTER TABLE command_queue_hidden RENAME TO command_queue")
    await poller.poll_once()
    assert poller.offset == second["update_id"] + 1


@pytest.mark.parametrize("status", [401, 404])
async def test_getupdates_token_rejected_stops(borrowed: Harness, http, status: int) -> None:
    sleeps = Sleeps()
    poller = make_poller(borrowed, http, sleeps)
    borrowed.fake.fail_next("getUpdates", status)
    assert await poller.poll_once() is False
    assert sleeps.delays == []
    telegram = (await admin_status(borrowed))["telegram"]
    assert (telegram["state"], telegram["lastError"]) == ("error", "invalid bot token")


async def test_other_4xx_backs_off(borrowed: Harness, http) -> None:
    sleeps = Sleeps()
    poller = make_poller(borrowed, http, sleeps)
    borrowed.fake.fail_next("getUpdates", 400, times=2, description="Bad Request: odd")
    assert await poller.poll_once() is True
    assert await poller.poll_once() is True
    assert sleeps.delays == [1.0, 2.0]
    assert (await admin_status(borrowed))["telegram"]["state"] == "error"


async def test_polling_mode_without_token_is_off(start_server) -> None:
    h = await start_server(mode="polling", options=POLLING, bot_token="")
    assert h.app[keys.POLLER] is None
    assert (await admin_status(h))["telegram"] == {
        "mode": "polling",
        "state": "off",
        "lastError": None,
        "allowedChats": 1,
    }
    assert h.fake.calls == []
