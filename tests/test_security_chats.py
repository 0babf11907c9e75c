"""Security suite: tokens and replies are bound to their chat, and nothing reaches Telegram for a
chat outside the allowlist, whoever asks (contract §7.4, §8.4, §8.5)."""

from __future__ import annotations

import json
from typing import Any

from ccr_box.server import keys
from tests.conftest import CHAT, OTHER_CHAT
from tests.helpers_security import seed
from tests.helpers_ws import connect_booted, receive_json

# -- tokens are bound to their chat (§7.4, §8.4) ----------------------------------------------


async def test_reply_and_token_from_another_chat_never_reach_the_session(start_server) -> None:
    """Chat B replies to chat A's notification by message id, and uses A's token: both fail,
    even though chat B is allowed and has a session of its own."""
    h = await start_server(allowed_chat_ids=(CHAT, OTHER_CHAT))
    fake = h.fake
    await h.register("s-a", "m-a")
    await h.register("s-b", "m-b")
    a = await h.notify("s-a", "for chat A")
    resp = await h.post(
        "/notifications/send", {"sessionId": "s-b", "chatId": OTHER_CHAT, "text": "for chat B"}
    )
    b = await resp.json()
    assert a["token"] != b["token"]

    await h.webhook(fake.make_message(OTHER_CHAT, "via reply id", reply_to=a["messageId"]))
    await h.webhook(fake.make_message(OTHER_CHAT, f"/cmd {a['token']} via token"))
    press = fake.make_callback(OTHER_CHAT, f"cmd:{a['token']}:yes", message_id=b["messageId"])
    await h.webhook(press)
    # And chat A cannot use chat B's token or message either.
    await h.webhook(fake.make_message(CHAT, f"/cmd {b['token']} back"))
    await h.webhook(fake.make_message(CHAT, "reply to B", reply_to=b["messageId"]))

    await h.app[keys.NOTIFIER].drain()
    assert await h.commands() == []
    answers = [
        c for c in fake.callback_answers if c["callback_query_id"] == press["callback_query"]["id"]
    ]
    assert [c.get("text") for c in answers] == ["Session expired"]
    # Control: the owner chat's token routes.
    await h.webhook(fake.make_message(CHAT, f"/cmd {a['token']} mine"))
    assert [(c["session_id"], c["command"]) for c in await h.commands()] == [("s-a", "mine")]


# -- the outbound allowlist (§8.5) -------------------------------------------------------------

SPOOFED_CHATS: list[Any] = [
    OTHER_CHAT,
    f"{CHAT}\n",
    f"{CHAT},{OTHER_CHAT}",
    f"+{CHAT}",
    f"{CHAT}.0",
    float(CHAT),
    True,
    "４２４２",  # fullwidth digits
    f"{CHAT}\u200b",
    int(CHAT) + 2**64,
    [CHAT],
    {"id": CHAT},
]


async def test_nothing_reaches_telegram_for_a_chat_outside_the_allowlist(start_server) -> None:
    h = await seed(start_server)
    fake = h.fake
    sent_before = len(fake.sent)
    for chat in SPOOFED_CHATS:
        resp = await h.post("/notifications/send", {"sessionId": "s1", "chatId": chat, "text": "x"})
        assert resp.status in (400, 403), (chat, resp.status)
    # Failure reports an agent addresses to a chat of its choosing (§6.5 step 2).
    agent = await connect_booted(h, "m-spoof")
    for chat in (OTHER_CHAT, int(OTHER_CHAT), f"{CHAT} ", -int(CHAT)):
        frame = {"type": "commandResult", "success": False, "chatId": chat, "error": "boom"}
        await agent.send_str(json.dumps(frame))
    await agent.send_str('{"type":"ping"}')
    assert await receive_json(agent) == {"type": "pong"}
    await agent.close()
    # Inbound from a chat outside the list: silent, whatever it asks for.
    await h.webhook(fake.make_message(OTHER_CHAT, "/help"))
    await h.webhook(fake.make_message(OTHER_CHAT, "/sessions"))
    # Control, last: an allowed chat's /help is answered, so the sends above would have landed.
    await h.webhook(fake.make_message(CHAT, "/help"))
    await fake.wait_for(lambda: len(fake.sent) > sent_before)
    await h.app[keys.NOTIFIER].drain()
    assert {str(m["chat_id"]) for m in fake.sent[sent_before:]} == {CHAT}
    assert len(fake.sent) == sent_before + 1
