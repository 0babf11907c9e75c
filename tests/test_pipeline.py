"""The shared inbound pipeline (contract §7.2-§7.6, §7.8, §6.2) driven through the webhook."""

from __future__ import annotations

import asyncio
import copy
import dataclasses
import secrets

import pytest

from ccr_box import limits
from ccr_box.clock import ManualClock
from ccr_box.db import queue as q
from ccr_box.server import keys
from tests.conftest import CHAT, OTHER_CHAT, Harness, make_config
from tests.helpers_pipeline import (
    COMMAND_SENT,
    HELP,
    NO_LIVE,
    NO_SESSION,
    ONLY_TEXT,
    SESSION_EXPIRED,
    SESSION_NOT_FOUND,
    connect_agent,
    is_seen,
    mapped,
    offline,
    query,
    receive_json,
    settle,
    sql,
    sync_agent,
    texts_since,
    unknown,
)

USERNAME = "ccrbox_test_bot"


async def deliver(h: Harness, update: dict) -> None:
    resp = await h.webhook(update)
    assert resp.status == 200
    assert await resp.text() == "ok"


async def commands(h: Harness) -> list[tuple[str, str, str]]:
    """(session_id, command, chat_id) of every queued row, oldest first."""
    rows = await h.commands()
    return [(r["session_id"], r["command"], r["chat_id"]) for r in reversed(rows)]


async def reply(h: Harness, text: str | None, to: int, chat: str = CHAT, **kw) -> dict:
    update = h.fake.make_message(chat, text, reply_to=to, **kw)
    await deliver(h, update)
    return update


async def say(h: Harness, text: str | None, chat: str = CHAT, **kw) -> dict:
    update = h.fake.make_message(chat, text, **kw)
    await deliver(h, update)
    return update


async def press(h: Harness, data, chat: str = CHAT, **kw) -> dict:
    update = h.fake.make_callback(chat, data, **kw)
    await deliver(h, update)
    return update


def answers(h: Harness, update: dict) -> list[dict]:
    qid = update["callback_query"]["id"]
    return [a for a in h.fake.callback_answers if a["callback_query_id"] == qid]


def set_username(h: Harness, name: str | None = USERNAME) -> None:
    h.app[keys.STATE].telegram.username = name


@pytest.fixture
async def two_chats(start_server) -> Harness:
    return await start_server(allowed_chat_ids=(CHAT, OTHER_CHAT))


# -- dedup (§7.2 steps 1 and 5) -----------------------------------------------------------------


async def test_same_update_twice_makes_one_command(server: Harness) -> None:
    fake = server.fake
    mid, _ = await mapped(server)
    mark = len(fake.sent)
    update = fake.make_message(CHAT, "go on", reply_to=mid)
    await deliver(server, update)
    await deliver(server, copy.deepcopy(update))
    assert await commands(server) == [("sess-1", "go on", CHAT)]
    rows = await server.commands()
    assert rows[0]["update_id"] == update["update_id"]
    await settle(server)
    assert texts_since(fake, mark) == [offline("devbox"), HELP]


@pytest.mark.parametrize("update_id", [None, 0, -5, "17", True, 1.5])
async def test_updates_without_positive_update_id_skip_dedup(server: Harness, update_id) -> None:
    fake = server.fake
    mid, _ = await mapped(server)
    update = fake.make_message(CHAT, "again", reply_to=mid)
    if update_id is None:
        del update["update_id"]
    else:
        update["update_id"] = update_id
    await deliver(server, update)
    await deliver(server, copy.deepcopy(update))
    assert await commands(server) == [("sess-1", "again", CHAT)] * 2
    assert [r["update_id"] for r in await server.commands()] == [None, None]
    assert await query(server, "SELECT * FROM seen_updates") == []


async def test_concurrent_delivery_of_one_update_makes_one_command(server: Harness) -> None:
    fake = server.fake
    mid, _ = await mapped(server)
    mark = len(fake.sent)
    update = fake.make_message(CHAT, "only once", reply_to=mid)
    responses = await asyncio.gather(*(server.webhook(copy.deepcopy(update)) for _ in range(4)))
    assert [r.status for r in responses] == [200] * 4
    assert [await r.text() for r in responses] == ["ok"] * 4
    assert await commands(server) == [("sess-1", "only once", CHAT)]
    await settle(server)
    assert texts_since(fake, mark) == [offline("devbox"), HELP]


async def test_concurrent_delivery_of_one_callback_answers_once(server: Harness) -> None:
    _, token = await mapped(server)
    update = server.fake.make_callback(CHAT, f"cmd:{token}:yes")
    responses = await asyncio.gather(*(server.webhook(copy.deepcopy(update)) for _ in range(3)))
    assert [r.status for r in responses] == [200] * 3
    assert await commands(server) == [("sess-1", "y", CHAT)]
    await settle(server)
    assert answers(server, update) == [
        {"callback_query_id": update["callback_query"]["id"], "text": COMMAND_SENT}
    ]


# -- allowlist (§7.2 step 2, §10.2) --------------------------------------------------------------


async def test_not_allowed_chat_is_silent_but_recorded(server: Harness) -> None:
    fake = server.fake
    mid, _ = await mapped(server)
    mark = len(fake.sent)
    u1 = await say(server, "/help", chat=OTHER_CHAT)
    u2 = await reply(server, "hi", mid, chat=OTHER_CHAT)
    u3 = await say(server, "hello", chat=OTHER_CHAT)
    for u in (u1, u2, u3):
        assert await is_seen(server, u["update_id"])
    assert await server.commands() == []
    await settle(server)
    assert texts_since(fake, mark) == [HELP]
    assert fake.messages_to(OTHER_CHAT) == []


async def test_not_allowed_chat_even_when_it_replies_to_a_mapped_message(server: Harness) -> None:
    """The mapping key is (chat, message): an unlisted chat gets nothing, whatever it replies to."""
    mid, token = await mapped(server)
    await reply(server, f"/cmd {token} x", mid, chat=OTHER_CHAT)
    assert await server.commands() == []


async def test_callback_from_not_allowed_chat_gets_an_empty_answer(server: Harness) -> None:
    fake = server.fake
    _, token = await mapped(server)
    mark = len(fake.sent)
    update = await press(server, f"cmd:{token}:yes", chat=OTHER_CHAT)
    await settle(server)
    assert answers(server, update) == [{"callback_query_id": update["callback_query"]["id"]}]
    assert await is_seen(server, update["update_id"])
    assert await server.commands() == []
    assert texts_since(fake, mark) == [HELP]


async def test_update_without_chat_is_not_allowed(server: Harness) -> None:
    update = server.fake.make_message(CHAT, "/help")
    del update["message"]["chat"]
    await deliver(server, update)
    assert await is_seen(server, update["update_id"])
    callback = server.fake.make_callback(CHAT, "cmd:x:yes")
    del callback["callback_query"]["message"]  # inline-mode message: no chat
    callback["callback_query"]["inline_message_id"] = "inl-1"
    await deliver(server, callback)
    await settle(server)
    assert server.fake.messages_to(CHAT) == [HELP]
    assert answers(server, callback) == [{"callback_query_id": callback["callback_query"]["id"]}]


async def test_user_allowlist(start_server) -> None:
    h = await start_server(allowed_user_ids=("77",))
    fake = h.fake
    mid, token = await mapped(h)
    blocked = await say(h, "/help")  # from 4242
    await reply(h, "not you", mid)
    cb = await press(h, f"cmd:{token}:yes")
    assert await is_seen(h, blocked["update_id"])
    assert await h.commands() == []
    await reply(h, "you", mid, from_id=77)
    assert await commands(h) == [("sess-1", "you", CHAT)]
    await settle(h, from_id=77)
    assert fake.messages_to(CHAT) == ["Done.", offline("devbox"), HELP]
    assert answers(h, cb) == [{"callback_query_id": cb["callback_query"]["id"]}]


async def test_user_allowlist_message_without_from(start_server) -> None:
    h = await start_server(allowed_user_ids=("77",))
    update = h.fake.make_message(CHAT, "/help")
    del update["message"]["from"]
    await deliver(h, update)
    await settle(h, from_id=77)
    assert h.fake.messages_to(CHAT) == [HELP]


async def test_integer_ids_are_converted_exactly(start_server) -> None:
    big_chat = "-1009007199254740993"  # not representable as a double
    big_user = "9007199254740993"
    h = await start_server(allowed_chat_ids=(big_chat,), allowed_user_ids=(big_user,))
    fake = h.fake
    mid, _ = await mapped(h, chat=big_chat)
    update = fake.make_message(big_chat, "hi", reply_to=mid, from_id=big_user)
    assert update["message"]["chat"]["id"] == int(big_chat)  # a JSON integer on the wire
    assert update["message"]["from"]["id"] == int(big_user)
    await deliver(h, update)
    rows = await h.commands()
    assert [(r["command"], r["chat_id"]) for r in rows] == [("hi", big_chat)]
    await fake.wait_for(lambda: offline("devbox") in fake.messages_to(big_chat))
    assert fake.sent[-1]["chat_id"] == big_chat
    # the neighbouring id (what a float conversion would give) is not allowed
    near = fake.make_message("-1009007199254740992", "/help", from_id=big_user)
    await deliver(h, near)
    await settle(h, chat=big_chat, from_id=big_user)
    assert fake.messages_to("-1009007199254740992") == []


# -- classification (§7.3) -------------------------------------------------------------------


async def test_non_text_reply_to_mapped_message(server: Harness) -> None:
    fake = server.fake
    mid, _ = await mapped(server)
    mark = len(fake.sent)
    await reply(server, None, mid, photo=[{"file_id": "p", "width": 1, "height": 1}])
    await reply(server, None, mid, sticker={"file_id": "s"})
    await settle(server)
    assert texts_since(fake, mark) == [ONLY_TEXT, ONLY_TEXT, HELP]
    assert await server.commands() == []


async def test_non_text_not_a_reply_to_a_mapped_message_is_silent(server: Harness) -> None:
    fake = server.fake
    await mapped(server)
    mark = len(fake.sent)
    await say(server, None, photo=[{"file_id": "p", "width": 1, "height": 1}])
    await say(server, None, new_chat_members=[{"id": 5, "is_bot": False, "first_name": "x"}])
    await reply(server, None, 987654, document={"file_id": "d"})  # reply to an unmapped message
    await settle(server)
    assert texts_since(fake, mark) == [HELP]


@pytest.mark.parametrize(
    ("text", "injected"),
    [
        ("//compact", "/compact"),
        ("//", "/"),
        ("/tmp/x fix this", "/tmp/x fix this"),
        ("/ leading", "/ leading"),
        ("/", "/"),
        ("fix it\nand test", "fix it\nand test"),
        (" spaced ", " spaced "),
    ],
)
async def test_texts_routed_verbatim(server: Harness, text: str, injected: str) -> None:
    mid, _ = await mapped(server)
    await reply(server, text, mid)
    assert await commands(server) == [("sess-1", injected, CHAT)]


async def test_routed_command_row_and_session_touch(server: Harness) -> None:
    mid, _ = await mapped(server)
    assert isinstance(server.clock, ManualClock)
    server.clock.advance(5000)
    now = server.clock.now_ms()
    update = await reply(server, "hello", mid)
    (row,) = await server.commands()
    assert len(row["command_id"]) == 32 and int(row["command_id"], 16) >= 0
    assert {k: row[k] for k in ("machine_id", "session_id", "command_type", "command")} == {
        "machine_id": "devbox",
        "session_id": "sess-1",
        "command_type": "execute",
        "command": "hello",
    }
    assert (row["chat_id"], row["update_id"], row["status"], row["attempts"]) == (
        CHAT,
        update["update_id"],
        "pending",
        0,
    )
    assert (row["created_at"], row["next_retry_at"], row["expires_at"]) == (
        now,
        now,
        now + 24 * 3600 * 1000,
    )
    sessions = await query(server, "SELECT updated_at FROM sessions WHERE session_id = 'sess-1'")
    assert sessions == [{"updated_at": now}]


# -- /cmd (§7.4, §7.6) --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("template", "command"),
    [
        ("/cmd {t} run tests", "run tests"),
        ("/cmd {t} line one\nline two\n\nthree", "line one\nline two\n\nthree"),
        ("/CMD {t} upper", "upper"),
        ("/Cmd {t} mixed", "mixed"),
        ("/cmd@ccrbox_test_bot {t} addressed", "addressed"),
        ("/cmd@CCRBOX_TEST_BOT {t} addressed loudly", "addressed loudly"),
        ("/cmd   {t}   spaced  out", "spaced  out"),
        ("/cmd\n{t}\nnewline separated", "newline separated"),
        ("/cmd {t} //compact", "//compact"),
    ],
)
async def test_cmd_form(server: Harness, template: str, command: str) -> None:
    set_username(server)
    _, token = await mapped(server)
    await say(server, template.format(t=token))
    assert await commands(server) == [("sess-1", command, CHAT)]


@pytest.mark.parametrize(
    "template", ["/cmd", "/cmd {t}", "/cmd {t} ", "/cmd  ", "/cmd@ccrbox_test_bot {t}"]
)
async def test_cmd_malformed_is_no_session(server: Harness, template: str) -> None:
    fake = server.fake
    _, token = await mapped(server)
    mark = len(fake.sent)
    await say(server, template.format(t=token))
    await settle(server)
    assert texts_since(fake, mark) == [NO_SESSION, HELP]
    assert await server.commands() == []


async def test_cmd_unknown_token_is_no_session(server: Harness) -> None:
    fake = server.fake
    await mapped(server)
    await say(server, "/cmd NOPE do it")
    await fake.wait_for(lambda: NO_SESSION in fake.messages_to(CHAT))
    assert await server.commands() == []


async def test_token_is_bound_to_its_chat(two_chats: Harness) -> None:
    h = two_chats
    fake = h.fake
    _, token = await mapped(h)
    await say(h, f"/cmd {token} from elsewhere", chat=OTHER_CHAT)
    cb = await press(h, f"cmd:{token}:yes", chat=OTHER_CHAT)
    await settle(h, chat=OTHER_CHAT)
    assert fake.messages_to(OTHER_CHAT) == [NO_SESSION, HELP]
    assert answers(h, cb) == [
        {"callback_query_id": cb["callback_query"]["id"], "text": SESSION_EXPIRED}
    ]
    assert await h.commands() == []


async def test_token_resolves_to_the_most_recent_mapping(server: Harness) -> None:
    await mapped(server, "sess-a", "devbox", token="shared-token")
    server.clock.advance(1000)
    await mapped(server, "sess-b", "laptop", token="shared-token")
    await say(server, "/cmd shared-token who")
    assert await commands(server) == [("sess-b", "who", CHAT)]


async def test_reply_resolution_beats_token(server: Harness) -> None:
    mid_a, _ = await mapped(server, "sess-a", "devbox")
    _, token_b = await mapped(server, "sess-b", "laptop")
    await reply(server, f"/cmd {token_b} to a", mid_a)
    assert await commands(server) == [("sess-a", "to a", CHAT)]


async def test_token_used_when_the_reply_is_not_mapped(server: Harness) -> None:
    _, token = await mapped(server)
    await reply(server, f"/cmd {token} via token", 55555)
    assert await commands(server) == [("sess-1", "via token", CHAT)]


async def test_any_mapped_message_works_as_reply_target(server: Harness) -> None:
    """Chunks of one notification all map to the session."""
    text = ("a" * 4000 + "\n\n") * 2
    await server.register("sess-1", "devbox")
    resp = await server.post(
        "/notifications/send", {"sessionId": "sess-1", "chatId": CHAT, "text": text}
    )
    assert resp.status == 200
    second = server.fake.sent[-1]["message_id"]
    await reply(server, "to the second chunk", second)
    assert await commands(server) == [("sess-1", "to the second chunk", CHAT)]


# -- /help, /start, unknown and foreign commands -------------------------------------------------


@pytest.mark.parametrize(
    "text",
    [
        "/help",
        "/start",
        "/HELP",
        "/Start",
        "/help extra words",
        "/start\npayload",
        "/help@ccrbox_test_bot",
    ],
)
async def test_help_text(server: Harness, text: str) -> None:
    set_username(server)
    fake = server.fake
    await say(server, text)
    await fake.wait_for(lambda: len(fake.sent) == 1)
    await server.app[keys.NOTIFIER].drain()
    assert fake.sent == [{"chat_id": CHAT, "text": HELP, "message_id": fake.sent[0]["message_id"]}]


@pytest.mark.parametrize(
    ("text", "name"),
    [("/foo", "foo"), ("/Foo bar", "Foo"), ("/foo@ccrbox_test_bot", "foo"), ("/cmdx T t", "cmdx")],
)
async def test_unknown_command(server: Harness, text: str, name: str) -> None:
    set_username(server)
    fake = server.fake
    mid, _ = await mapped(server)
    mark = len(fake.sent)
    await say(server, text)
    await reply(server, text, mid)  # also as a reply to a mapped message: not injected
    await settle(server)
    assert texts_since(fake, mark) == [unknown(name), unknown(name), HELP]
    assert await server.commands() == []


@pytest.mark.parametrize(
    "text", ["/foo@other_bot", "/help@other_bot", "/cmd@other_bot {t} x", "/sessions@Other_Bot"]
)
async def test_command_for_another_bot_is_silent(server: Harness, text: str) -> None:
    set_username(server)
    fake = server.fake
    mid, token = await mapped(server)
    mark = len(fake.sent)
    await say(server, text.format(t=token))
    await reply(server, text.format(t=token), mid)
    await settle(server)
    assert texts_since(fake, mark) == [HELP]
    assert await server.commands() == []


async def test_webhook_mode_calls_getme_and_never_polls(start_server) -> None:
    from ccr_box.server.app import Options

    h = await start_server(options=Options(maintenance=False, telegram_inbound=True))
    await h.fake.wait_for(lambda: h.fake.calls_of("getMe") != [])
    await settle(h)
    assert h.app[keys.POLLER] is None
    assert h.fake.calls_of("getUpdates") == []  # webhook mode never polls
    assert h.fake.calls_of("setWebhook") == []  # nor registers the webhook itself


@pytest.mark.parametrize("text", ["/launch devbox /srv/app fix it", "/kill sess-1"])
async def test_launch_and_kill_disabled_by_default(server: Harness, text: str) -> None:
    fake = server.fake
    await mapped(server)
    ws = await connect_agent(server, "devbox")
    mark = len(fake.sent)
    await say(server, text)
    await settle(server)
    name = text.split()[0][1:]
    assert texts_since(fake, mark) == [unknown(name), HELP]
    assert await server.commands() == []
    await ws.close()


# -- /launch and /kill enabled (§7.6, §4.2) -------------------------------------------------------


@pytest.fixture
async def enabled(start_server, tmp_path, fake_telegram) -> Harness:
    config = make_config(tmp_path / "data", fake_telegram)
    config = dataclasses.replace(
        config, server=dataclasses.replace(config.server, enable_launch=True)
    )
    return await start_server(config=config)


async def test_launch_to_connected_machine(enabled: Harness) -> None:
    h = enabled
    fake = h.fake
    ws = await connect_agent(h, "devbox")
    update = await say(h, "/launch devbox /srv/my app  fix the bug\nthen test")
    frame = await receive_json(ws)
    assert set(frame) == {"type", "commandId", "directory", "prompt", "chatId"}
    assert frame["type"] == "launch"
    assert (frame["directory"], frame["prompt"], frame["chatId"]) == (
        "/srv/my",
        "app  fix the bug\nthen test",
        CHAT,
    )
    await fake.wait_for(lambda: fake.messages_to(CHAT) == ["Launching on devbox in /srv/my..."])
    (row,) = await h.commands()
    assert (row["command_type"], row["session_id"], row["directory"], row["update_id"]) == (
        "launch",
        None,
        "/srv/my",
        update["update_id"],
    )
    assert row["command_id"] == frame["commandId"] and row["status"] == "sent"
    await ws.close()


async def test_launch_has_no_length_check(enabled: Harness) -> None:
    ws = await connect_agent(enabled, "devbox")
    prompt = "p" * 10_001
    await say(enabled, f"/launch devbox /srv {prompt}")
    frame = await receive_json(ws)
    assert frame["type"] == "launch" and frame["prompt"] == prompt
    await ws.close()


async def test_launch_to_offline_machine(enabled: Harness) -> None:
    fake = enabled.fake
    await say(enabled, "/launch devbox /srv go")
    await settle(enabled)
    assert fake.messages_to(CHAT) == ["devbox is not connected.", HELP]
    assert await enabled.commands() == []


async def test_kill(enabled: Harness) -> None:
    h = enabled
    fake = h.fake
    await mapped(h, "sess-1", "devbox", label="api")
    mark = len(fake.sent)
    await say(h, "/kill nope")
    await say(h, "/kill sess-1")  # machine offline
    ws = await connect_agent(h, "devbox")
    await say(h, "/KILL sess-1")
    frame = await receive_json(ws)
    assert set(frame) == {"type", "commandId", "sessionId", "chatId"}
    assert (frame["type"], frame["sessionId"], frame["chatId"]) == ("kill", "sess-1", CHAT)
    await settle(h)
    assert texts_since(fake, mark) == [
        "Session `nope` not found.",
        "devbox is not connected.",
        "Killing session `sess-1` on devbox...",
        HELP,
    ]
    (row,) = await h.commands()
    assert (row["command_type"], row["session_id"], row["command_id"]) == (
        "kill",
        "sess-1",
        frame["commandId"],
    )
    await ws.close()


# -- /sessions (§7.6) -------------------------------------------------------------------------


def block(label: str, machine: str, presence: str, age: str, token: str) -> str:
    return f"{label} · {machine} · {presence} · active {age} ago\n/cmd {token} …"


async def sessions_text(h: Harness, chat: str = CHAT) -> str:
    fake = h.fake
    await h.app[keys.NOTIFIER].drain()  # texts of earlier updates are out of the way
    before = len(fake.sent)
    await say(h, "/sessions", chat=chat)
    await fake.wait_for(lambda: len(fake.sent) > before)
    await h.app[keys.NOTIFIER].drain()
    (sent,) = fake.sent[before:]
    assert str(sent["chat_id"]) == chat
    return sent["text"]


async def test_sessions_none(server: Harness) -> None:
    assert await sessions_text(server) == NO_LIVE


async def test_sessions_format_order_labels_presence(two_chats: Harness) -> None:
    h = two_chats
    clock = h.clock
    _, tok_old = await mapped(h, "0123456789abcdef", "laptop")  # no label
    clock.advance(10_000)
    _, tok_api = await mapped(h, "sess-api", "devbox", label="api")
    clock.advance(5_000)
    await mapped(h, "sess-api", "devbox", label="api", token="newer-token")  # newest mapping
    _, tok_else = await mapped(h, "sess-elsewhere", "devbox", chat=OTHER_CHAT)  # other chat only
    await h.register("sess-unmapped", "devbox")  # no mapping at all
    clock.advance(3_000)
    ws = await connect_agent(h, "devbox")
    assert tok_api != "newer-token"
    assert await sessions_text(h) == (
        "Live sessions in this chat (2):\n\n"
        + block("api", "devbox", "online", "3s", "newer-token")
        + "\n\n"
        + block("01234567", "laptop", "offline", "18s", tok_old)
    )
    # a routed command makes its session the most recently active
    await h.webhook(h.fake.make_message(CHAT, f"/cmd {tok_old} hi"))
    clock.advance(61_000)
    assert await sessions_text(h) == (
        "Live sessions in this chat (2):\n\n"
        + block("01234567", "laptop", "offline", "1m", tok_old)
        + "\n\n"
        + block("api", "devbox", "online", "1m", "newer-token")
    )
    await ws.close()
    assert await sessions_text(h, OTHER_CHAT) == (
        "Live sessions in this chat (1):\n\n"
        + block("sess-els", "devbox", "offline", "1m", tok_else)
    )


async def test_sessions_skips_deleted_sessions(server: Harness) -> None:
    await mapped(server, "sess-gone", "devbox")
    await sql(server, "DELETE FROM sessions WHERE session_id = 'sess-gone'")
    assert await sessions_text(server) == NO_LIVE


@pytest.mark.parametrize(
    ("elapsed_ms", "age"),
    [
        (0, "0s"),
        (59_999, "59s"),
        (60_000, "1m"),
        (3_599_999, "59m"),
        (3_600_000, "1h"),
        (48 * 3_600_000 - 1, "47h"),
        (48 * 3_600_000, "2d"),
        (9 * 86_400_000 + 5, "9d"),
    ],
)
async def test_sessions_age_units(server: Harness, elapsed_ms: int, age: str) -> None:
    _, token = await mapped(server, "sess-1", "devbox", label="api")
    server.clock.advance(elapsed_ms)
    assert await sessions_text(server) == (
        "Live sessions in this chat (1):\n\n" + block("api", "devbox", "offline", age, token)
    )


async def test_sessions_more_than_20(server: Harness) -> None:
    tokens = []
    for i in range(23):
        _, token = await mapped(server, f"session-{i:02d}", f"m{i:02d}", label=f"s{i:02d}")
        tokens.append(token)
        server.clock.advance(1000)
    text = await sessions_text(server)
    expected_blocks = [
        block(f"s{i:02d}", f"m{i:02d}", "offline", f"{23 - i}s", tokens[i])
        for i in range(22, 2, -1)
    ]
    assert text == (
        "Live sessions in this chat (23):\n\n" + "\n\n".join(expected_blocks) + "\n\n…and 3 more."
    )


async def test_sessions_with_long_labels_is_still_delivered(server: Harness) -> None:
    """20 blocks with 256-character labels exceed one Telegram message: the answer is split."""
    fake = server.fake
    labels = []
    for i in range(20):
        label = f"{i:02d}" + "L" * 254
        labels.append(label)
        await mapped(server, f"session-{i:02d}", "devbox", label=label)
        server.clock.advance(1000)
    before = len(fake.sent)
    await say(server, "/sessions")
    await settle(server)
    parts = texts_since(fake, before)[:-1]
    assert len(parts) >= 2
    assert all(len(p) <= 4096 for p in parts)
    joined = "".join(parts)
    assert joined.startswith("Live sessions in this chat (20):\n\n")
    for label in labels:
        assert label in joined


# -- routing texts (§7.4, §6.2) ----------------------------------------------------------------


async def test_no_session_texts(server: Harness) -> None:
    fake = server.fake
    await mapped(server)
    mark = len(fake.sent)
    await say(server, "hello")
    await reply(server, "to an unknown message", 4711)
    await settle(server)
    assert texts_since(fake, mark) == [NO_SESSION, NO_SESSION, HELP]
    assert await server.commands() == []


async def test_command_too_long_counts_utf16(server: Harness) -> None:
    fake = server.fake
    mid, token = await mapped(server)
    mark = len(fake.sent)
    exact = "😀" * 5000  # 5,000 code points, 10,000 UTF-16 units: accepted
    await reply(server, exact, mid)
    await reply(server, exact + "a", mid)
    await say(server, f"/cmd {token} {'é' * 10_001}")
    await settle(server)
    assert texts_since(fake, mark) == [
        offline("devbox"),
        "Command too long (10001 chars, max 10000)",
        "Command too long (10001 chars, max 10000)",
        HELP,
    ]
    assert await commands(server) == [("sess-1", exact, CHAT)]


async def test_session_row_missing(server: Harness) -> None:
    fake = server.fake
    mid, token = await mapped(server)
    await sql(server, "DELETE FROM sessions WHERE session_id = 'sess-1'")
    mark = len(fake.sent)
    await reply(server, "hello?", mid)
    await say(server, f"/cmd {token} hello?")
    await settle(server)
    assert texts_since(fake, mark) == [SESSION_NOT_FOUND, SESSION_NOT_FOUND, HELP]
    assert await server.commands() == []


async def fill_queue(h: Harness, machine_id: str, count: int) -> None:
    def job(conn) -> None:
        for i in range(count):
            q.enqueue(
                conn,
                q.NewCommand(
                    command_id=secrets.token_hex(16),
                    machine_id=machine_id,
                    session_id="sess-1",
                    command=f"filler {i}",
                    chat_id=CHAT,
                ),
                h.clock.now_ms(),
            )

    await h.db.write(job)


@pytest.mark.parametrize(("label", "target"), [("api", "api"), (None, "devbox")])
async def test_queue_full(server: Harness, label, target) -> None:
    fake = server.fake
    mid, token = await mapped(server, label=label)
    await fill_queue(server, "devbox", limits.MAX_QUEUE_PER_MACHINE - 1)
    mark = len(fake.sent)
    await reply(server, "the hundredth", mid)  # 99 pending: accepted
    await reply(server, "one too many", mid)
    cb = await press(server, f"cmd:{token}:continue")
    await settle(server)
    full = f"Queue full for {target} (100 commands pending)."
    assert texts_since(fake, mark) == [offline(target), full, full, HELP]
    assert answers(server, cb) == [{"callback_query_id": cb["callback_query"]["id"], "text": full}]
    rows = await server.commands()
    assert len(rows) == 100 and rows[0]["command"] == "the hundredth"


async def test_acked_and_dead_rows_do_not_count_toward_the_cap(server: Harness) -> None:
    mid, _ = await mapped(server)
    await fill_queue(server, "devbox", 100)
    await sql(server, "UPDATE command_queue SET status = 'acked' WHERE command LIKE 'filler 1%'")
    await sql(server, "UPDATE command_queue SET status = 'dead' WHERE command = 'filler 0'")
    await reply(server, "room now", mid)
    assert (await server.commands())[0]["command"] == "room now"


async def test_offline_notice_uses_label(server: Harness) -> None:
    fake = server.fake
    mid, _ = await mapped(server, label="my-api")
    await reply(server, "go", mid)
    await settle(server)
    assert fake.messages_to(CHAT)[1:] == [offline("my-api"), HELP]


async def test_connected_machine_gets_frame_and_chat_gets_no_text(server: Harness) -> None:
    fake = server.fake
    mid, token = await mapped(server)
    ws = await connect_agent(server, "devbox")
    mark = len(fake.sent)
    update = await reply(server, "do it", mid)
    frame = await receive_json(ws)
    assert set(frame) == {"type", "commandId", "sessionId", "command", "chatId"}
    assert (frame["type"], frame["sessionId"], frame["command"], frame["chatId"]) == (
        "command",
        "sess-1",
        "do it",
        CHAT,
    )
    cb = await press(server, f"cmd:{token}:exit")
    frame2 = await receive_json(ws)
    assert frame2["command"] == "/exit"
    await ws.send_str(f'{{"type":"ack","commandId":"{frame["commandId"]}"}}')
    await sync_agent(ws)
    await settle(server)
    assert texts_since(fake, mark) == [HELP]
    assert answers(server, cb) == [
        {"callback_query_id": cb["callback_query"]["id"], "text": COMMAND_SENT}
    ]
    rows = {r["command_id"]: r for r in await server.commands()}
    assert rows[frame["commandId"]]["status"] == "acked"
    assert rows[frame["commandId"]]["update_id"] == update["update_id"]
    assert rows[frame2["commandId"]]["status"] == "sent"
    await ws.close()


# -- callbacks (§7.5) ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("action", "command"),
    [
        ("continue", ""),
        ("yes", "y"),
        ("no", "n"),
        ("exit", "/exit"),
        ("y", "y"),
        ("n", "n"),
        ("q0", "q0"),
        ("q12", "q12"),
        ("a:b", "a:b"),
        ("Continue", "Continue"),
        ("", ""),
    ],
)
async def test_valid_callback(server: Harness, action: str, command: str) -> None:
    fake = server.fake
    _, token = await mapped(server)
    mark = len(fake.sent)
    cb = await press(server, f"cmd:{token}:{action}")
    await settle(server)
    assert answers(server, cb) == [
        {"callback_query_id": cb["callback_query"]["id"], "text": COMMAND_SENT}
    ]
    assert await commands(server) == [("sess-1", command, CHAT)]
    assert texts_since(fake, mark) == [offline("devbox"), HELP]


@pytest.mark.parametrize(
    ("data", "answer"),
    [
        ("personal:x", None),
        ("personal:TOKEN:yes", None),
        ("", None),
        (None, None),
        (123, None),
        ("CMD:{t}:yes", None),
        ("cmd", None),
        ("cmd:", SESSION_EXPIRED),
        ("cmd:{t}", SESSION_EXPIRED),
        ("cmd::yes", SESSION_EXPIRED),
        ("cmd:unknown-token:yes", SESSION_EXPIRED),
    ],
)
async def test_callback_rejections(server: Harness, data, answer) -> None:
    fake = server.fake
    _, token = await mapped(server)
    mark = len(fake.sent)
    if isinstance(data, str):
        data = data.format(t=token)
    cb = await press(server, data)
    await settle(server)
    expected = {"callback_query_id": cb["callback_query"]["id"]}
    if answer is not None:
        expected["text"] = answer
    assert answers(server, cb) == [expected]
    assert texts_since(fake, mark) == [HELP]
    assert await server.commands() == []
    assert await is_seen(server, cb["update_id"])


async def test_callback_errors_answered_and_sent_to_chat(server: Harness) -> None:
    fake = server.fake
    _, token = await mapped(server)
    mark = len(fake.sent)
    too_long = await press(server, f"cmd:{token}:" + "x" * 10_001)
    await sql(server, "DELETE FROM sessions WHERE session_id = 'sess-1'")
    missing = await press(server, f"cmd:{token}:yes")
    await settle(server)
    long_text = "Command too long (10001 chars, max 10000)"
    assert answers(server, too_long) == [
        {"callback_query_id": too_long["callback_query"]["id"], "text": long_text}
    ]
    assert answers(server, missing) == [
        {"callback_query_id": missing["callback_query"]["id"], "text": SESSION_NOT_FOUND}
    ]
    assert texts_since(fake, mark) == [long_text, SESSION_NOT_FOUND, HELP]
    assert await server.commands() == []


async def test_every_callback_answered_exactly_once(server: Harness) -> None:
    fake = server.fake
    _, token = await mapped(server)
    datas = [
        f"cmd:{token}:yes",
        "personal:x",
        "cmd:x",
        f"cmd:{token}:" + "y" * 10_001,
        "cmd:nope:n",
    ]
    updates = [await press(server, d) for d in datas]
    await deliver(server, copy.deepcopy(updates[0]))  # re-delivery: not answered again
    await settle(server)
    ids = [a["callback_query_id"] for a in fake.callback_answers]
    assert sorted(ids) == sorted(u["callback_query"]["id"] for u in updates)


async def test_each_press_is_a_new_command(server: Harness) -> None:
    _, token = await mapped(server)
    await press(server, f"cmd:{token}:continue")
    await press(server, f"cmd:{token}:continue")
    assert await commands(server) == [("sess-1", "", CHAT), ("sess-1", "", CHAT)]
    assert not any(name.startswith("edit") for name, _ in server.fake.calls)


# -- topics, other update types, outbound allowlist -------------------------------------------


async def test_topic_messages_carry_thread_id(server: Harness) -> None:
    fake = server.fake
    mid, token = await mapped(server)
    mark = len(fake.sent)
    topic = {"is_topic_message": True, "message_thread_id": 77}
    await say(server, "/help", **topic)
    await say(server, "no session", **topic)
    await reply(server, "queued", mid, **topic)
    await say(server, "/help", message_thread_id=5)  # a thread in a non-forum chat: no topic
    cb = fake.make_callback(CHAT, f"cmd:{token}:yes")
    cb["callback_query"]["message"].update(topic)
    await deliver(server, cb)
    await settle(server)
    sent = fake.sent[mark:]
    assert [(m["text"], m.get("message_thread_id")) for m in sent] == [
        (HELP, 77),
        (NO_SESSION, 77),
        (offline("devbox"), 77),
        (HELP, None),
        (offline("devbox"), 77),
        (HELP, None),
    ]
    for m in sent:
        assert set(m) <= {"chat_id", "text", "message_thread_id", "message_id"}


async def test_pipeline_texts_are_plain(server: Harness) -> None:
    fake = server.fake
    await say(server, "/foo")
    await settle(server)
    for m in fake.sent:
        assert set(m) == {"chat_id", "text", "message_id"}


@pytest.mark.parametrize("kind", ["edited_message", "channel_post", "my_chat_member", "poll"])
async def test_other_update_types_recorded_and_silent(server: Harness, kind: str) -> None:
    fake = server.fake
    mid, _ = await mapped(server)
    inner = fake.make_message(CHAT, "edited text", reply_to=mid)
    update = {"update_id": inner["update_id"], kind: inner["message"]}
    await deliver(server, update)
    assert await is_seen(server, update["update_id"])
    await settle(server)
    assert fake.messages_to(CHAT) == ["Done.", HELP]
    assert await server.commands() == []


async def test_outbound_texts_only_to_allowed_chats(server: Harness) -> None:
    notifier = server.app[keys.NOTIFIER]
    notifier.send_text(OTHER_CHAT, "leak?")
    notifier.send_text(None, "nobody")
    notifier.send_text(CHAT, "fine")
    await notifier.drain()
    assert [(m["chat_id"], m["text"]) for m in server.fake.sent] == [(CHAT, "fine")]
