"""The maintenance loop (contract §6.7) and retention (§9): flush of every connected machine,
step isolation, retention ages and cadence, and the self-starting loop itself."""

from __future__ import annotations

import dataclasses
import json
import logging

from ccr_box.clock import SystemClock
from ccr_box.db import queue as q
from ccr_box.server import keys
from ccr_box.server.app import Options
from tests.conftest import CHAT, Harness, make_config
from tests.helpers_queue import (
    DAY_MS,
    connect_booted,
    receive_json,
    reply,
    sql,
    sync,
    tick,
)

HOUR_MS = 60 * 60 * 1000
MINUTE = 60_000


async def retention(h: Harness) -> None:
    await h.app[keys.MAINTENANCE].retention()


async def seen_ids(h: Harness) -> list[int]:
    return [r[0] for r in await sql(h, "SELECT update_id FROM seen_updates ORDER BY update_id")]


async def send_update(h: Harness, text: str = "/help") -> int:
    update = h.fake.make_message(CHAT, text)
    resp = await h.webhook(update)
    assert resp.status == 200
    return update["update_id"]


# -- §6.7 every tick: flush every connected machine -------------------------------------------------


async def test_tick_flushes_every_connected_machine(server: Harness) -> None:
    agents = {}
    for machine in ("m1", "m2"):
        await server.register(f"s-{machine}", machine)
        mid = (await server.notify(f"s-{machine}"))["messageId"]
        agents[machine], _ = await connect_booted(server, machine)
        await reply(server, mid, f"for {machine}")
        first = await receive_json(agents[machine])
        assert first["command"] == f"for {machine}"
    server.clock.advance(MINUTE)
    await tick(server)
    for machine, ws in agents.items():
        frames = await sync(ws)
        assert [f["command"] for f in frames] == [f"for {machine}"]
        await ws.close()
    assert sorted((r["machine_id"], r["attempts"]) for r in await server.commands()) == [
        ("m1", 2),
        ("m2", 2),
    ]


async def test_tick_without_connected_machines_sends_nothing(server: Harness) -> None:
    await server.register("s1", "m1")
    mid = (await server.notify("s1"))["messageId"]
    await reply(server, mid, "queued")
    for _ in range(3):
        server.clock.advance(MINUTE)
        await tick(server)
    rows = await server.commands()
    assert [(r["status"], r["attempts"], r["sent_at"]) for r in rows] == [("pending", 0, None)]


async def test_a_failing_step_does_not_stop_the_others(server: Harness, caplog) -> None:
    """A row the database cannot decode makes the dead-letter step raise on every tick; the flush
    and retention steps of the same tick still run."""
    caplog.set_level(logging.ERROR, logger="ccr_box.maintenance")
    old_update = await send_update(server)
    server.clock.advance(48 * HOUR_MS)
    now = server.clock.now_ms()
    await server.db.write(
        lambda c: c.execute(
            "INSERT INTO command_queue (command_id, machine_id, session_id, command, chat_id,"
            " created_at, expires_at, next_retry_at) VALUES (?, 'broken', 's0',"
            " CAST(x'ff' AS TEXT), ?, ?, ?, ?)",
            ("b" * 32, CHAT, now - DAY_MS, now, now - DAY_MS),  # expired: due
        )
    )
    await server.register("s1", "m1")
    mid = (await server.notify("s1"))["messageId"]
    ws, _ = await connect_booted(server, "m1")
    await reply(server, mid, "keep going")
    first = await receive_json(ws)

    server.clock.advance(MINUTE)  # a re-send is due; U is older than 48 h
    await tick(server)
    assert await sync(ws) == [first]  # flush ran
    assert old_update not in await seen_ids(server)  # retention ran
    status = await sql(server, "SELECT status FROM command_queue WHERE command_id = ?", "b" * 32)
    assert status == [("pending",)]  # the dead-letter step failed (and rolled back)
    assert any("maintenance step dead_letter failed" in rec.getMessage() for rec in caplog.records)
    await ws.close()


# -- §9 retention ----------------------------------------------------------------------------------


async def test_seen_updates_kept_48_h(server: Harness) -> None:
    u = await send_update(server)
    server.clock.advance(48 * HOUR_MS)
    await retention(server)
    assert u in await seen_ids(server)
    server.clock.advance(1)
    await retention(server)
    assert u not in await seen_ids(server)


async def test_acked_commands_kept_24_h_dead_commands_7_days(server: Harness) -> None:
    await server.register("s1", "m1")
    mid = (await server.notify("s1"))["messageId"]
    # One row that dies (offline, expires) ...
    await reply(server, mid, "will die")
    server.clock.advance(DAY_MS)
    await tick(server)
    dead_at = server.clock.now_ms()
    # ... and one that is acked.
    ws, _ = await connect_booted(server, "m1")
    await reply(server, mid, "will be acked")
    frame = await receive_json(ws)
    await ws.send_str(json.dumps({"type": "ack", "commandId": frame["commandId"]}))
    await sync(ws)
    await ws.close()
    statuses = {r["command"]: r["status"] for r in await server.commands()}
    assert statuses == {"will die": "dead", "will be acked": "acked"}

    server.clock.advance(DAY_MS)
    await retention(server)
    assert {r["command"] for r in await server.commands()} == {"will die", "will be acked"}
    server.clock.advance(1)
    await retention(server)
    assert {r["command"] for r in await server.commands()} == {"will die"}

    server.clock.set(dead_at + 7 * DAY_MS)
    await retention(server)
    assert {r["command"] for r in await server.commands()} == {"will die"}
    server.clock.advance(1)
    await retention(server)
    assert await server.commands() == []


async def test_pending_and_sent_rows_and_machines_are_never_deleted(server: Harness) -> None:
    await server.register("s1", "m1")
    await server.register("s2", "m2")
    mid1 = (await server.notify("s1"))["messageId"]
    mid2 = (await server.notify("s2"))["messageId"]
    await reply(server, mid1, "pending one")
    ws, _ = await connect_booted(server, "m2")
    await reply(server, mid2, "sent one")
    await ws.close()
    assert sorted(r["status"] for r in await server.commands()) == ["pending", "sent"]
    server.clock.advance(365 * DAY_MS)
    await retention(server)  # retention alone: never touches pending/sent rows
    assert sorted(r["status"] for r in await server.commands()) == ["pending", "sent"]
    machines = await sql(server, "SELECT machine_id FROM machines")
    assert machines == [("m2",)]
    # Through the tick they go dead first (and stay visible for 7 days).
    await tick(server)
    assert sorted((r["status"], r["dead_reason"]) for r in await server.commands()) == [
        ("dead", "expired"),
        ("dead", "expired"),
    ]
    assert await sql(server, "SELECT machine_id FROM machines") == [("m2",)]


async def session_ids(h: Harness) -> list[str]:
    return [r[0] for r in await sql(h, "SELECT session_id FROM sessions ORDER BY session_id")]


async def message_rows(h: Harness) -> list[tuple[str, int]]:
    return await sql(h, "SELECT session_id, message_id FROM messages ORDER BY message_id")


async def test_idle_sessions_and_old_messages_expire_after_ttl(server: Harness) -> None:
    t0 = server.clock.now_ms()
    await server.register("idle", "m1")
    await server.register("busy", "m1")
    idle_msg = (await server.notify("idle"))["messageId"]
    busy_old = (await server.notify("busy"))["messageId"]
    server.clock.set(t0 + 7 * DAY_MS - HOUR_MS)
    busy_new = (await server.notify("busy"))["messageId"]  # activity: touches the session

    server.clock.set(t0 + 7 * DAY_MS)
    await retention(server)
    assert await session_ids(server) == ["busy", "idle"]
    assert await message_rows(server) == [
        ("idle", idle_msg),
        ("busy", busy_old),
        ("busy", busy_new),
    ]

    server.clock.advance(1)
    await retention(server)
    assert await session_ids(server) == ["busy"]  # idle: gone with its messages
    assert await message_rows(server) == [("busy", busy_new)]  # busy's old mapping aged out

    # A reply to the expired mapping no longer routes.
    await reply(server, busy_old, "late reply")
    await server.fake.wait_for(
        lambda: any(t.startswith("Could not find session") for t in server.fake.messages_to(CHAT))
    )
    assert await server.commands() == []


async def test_session_ttl_comes_from_config(start_server, tmp_path, fake_telegram) -> None:
    config = make_config(tmp_path / "data", fake_telegram)
    config = dataclasses.replace(
        config, server=dataclasses.replace(config.server, session_ttl_days=2)
    )
    h = await start_server(config)
    await h.register("s1", "m1")
    await h.notify("s1")
    h.clock.advance(2 * DAY_MS)
    await retention(h)
    assert await session_ids(h) == ["s1"]
    h.clock.advance(1)
    await retention(h)
    assert await session_ids(h) == []
    assert await message_rows(h) == []


async def test_retention_runs_at_first_tick(server: Harness) -> None:
    u = await send_update(server)
    server.clock.advance(48 * HOUR_MS + 1)
    await tick(server)
    assert u not in await seen_ids(server)


async def test_retention_runs_only_every_60_s(server: Harness) -> None:
    u = await send_update(server)
    server.clock.advance(48 * HOUR_MS - 10_000)
    await tick(server)  # first tick: retention runs, U is not old enough yet
    assert u in await seen_ids(server)
    server.clock.advance(30_000)  # U is now old enough, but retention ran 30 s ago
    await tick(server)
    assert u in await seen_ids(server)
    server.clock.advance(29_999)
    await tick(server)
    assert u in await seen_ids(server)
    server.clock.advance(1)  # 60 s since the last pass
    await tick(server)
    assert u not in await seen_ids(server)


# -- §6.7 the loop starts by itself -----------------------------------------------------------------


async def test_maintenance_loop_runs_by_itself(start_server) -> None:
    h = await start_server(
        clock=SystemClock(),
        options=Options(maintenance=True, maintenance_interval_s=0.01, telegram_inbound=False),
    )
    await h.register("s1", "m1", "box")

    def insert(command_id: str, text: str, created: int):
        return h.db.write(
            lambda c: q.enqueue(c, q.NewCommand(command_id, "m1", "s1", text, CHAT), created)
        )

    # A row that expired a moment ago: the loop dead-letters it without any trigger.
    await insert("a" * 32, "first", h.clock.now_ms() - DAY_MS)
    first = "Command not delivered to box (not delivered within 24 hours): first"
    await h.fake.wait_for(lambda: first in h.fake.messages_to(CHAT))
    # It keeps ticking: a second one later, too.
    await insert("b" * 32, "second", h.clock.now_ms() - DAY_MS)
    second = "Command not delivered to box (not delivered within 24 hours): second"
    await h.fake.wait_for(lambda: second in h.fake.messages_to(CHAT))
    assert h.fake.messages_to(CHAT).count(first) == 1

    # And it flushes connected machines: a row written without any flush reaches the agent.
    ws = await h.connect("m1")
    assert (await receive_json(ws))["type"] == "boot"
    await insert("c" * 32, "third", h.clock.now_ms())
    frame = await receive_json(ws)
    assert frame == {
        "type": "command",
        "commandId": "c" * 32,
        "sessionId": "s1",
        "command": "third",
        "chatId": CHAT,
    }
    await ws.close()
