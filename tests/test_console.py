"""``ccr-box console`` (Textual) driven by Pilot against a real in-process server."""

from __future__ import annotations

import html
import json
import re
import subprocess
import sys
from typing import Any

import pytest
from textual.app import App, ComposeResult
from textual.widgets import DataTable, Static

from ccr_box import limits
from ccr_box.cli import build_parser
from ccr_box.client.admin import AdminClient
from ccr_box.client.errors import EndpointMissing, ServerRefused
from ccr_box.db import queue as q
from ccr_box.server import keys
from ccr_box.server.app import Options
from ccr_box.server.polling import learn_identity
from ccr_box.tui import widgets as w
from ccr_box.tui.app import ConsoleApp, update_in_place
from tests.conftest import API_KEY, CHAT, Harness
from tests.helpers_db import command_row
from tests.helpers_wait import until
from tests.helpers_ws import connect_booted, receive_json


def make_app(server: Harness) -> ConsoleApp:
    return ConsoleApp(server.url("").rstrip("/"), API_KEY, poll_interval=0.1, max_backoff=0.5)


async def enqueue(server: Harness, command_id: str, machine_id: str, session_id: str) -> None:
    cmd = q.NewCommand(command_id, machine_id, session_id, f"text of {command_id}", CHAT)
    now = server.clock.now_ms()
    await server.db.write(lambda c: q.enqueue(c, cmd, now))


async def make_dead(server: Harness, command_id: str, machine_id: str, session_id: str) -> None:
    await enqueue(server, command_id, machine_id, session_id)
    server.clock.advance(limits.COMMAND_EXPIRY_MS)
    await server.app[keys.MAINTENANCE].tick()


def cells(app: ConsoleApp, table: str, key: str) -> list[str]:
    """The row's cell texts, or 7 empty strings while the row is not there yet."""
    if key not in app.table(table).rows:
        return [""] * 7
    return [c.plain for c in app.table(table).get_row(key)]


def has_row(app: ConsoleApp, table: str, key: str) -> bool:
    return key in app.table(table).rows


async def select(pilot: Any, app: ConsoleApp, tab: int, table: str, key: str) -> None:
    await pilot.press(str(tab))
    t = app.table(table)
    t.move_cursor(row=t.get_row_index(key))
    await pilot.pause()


async def test_tables_show_sessions_and_commands(server: Harness) -> None:
    await server.register("s1", "box-a", "my label")
    await enqueue(server, "c-1", "box-a", "s1")
    app = make_app(server)
    async with app.run_test(size=(160, 40)) as pilot:
        await until(lambda: has_row(app, "commands", "c-1"), "the command row", pause=pilot.pause)
        await until(lambda: has_row(app, "sessions", "s1"), "the session row", pause=pilot.pause)
        assert cells(app, "sessions", "s1")[:4] == ["my label", "s1", "box-a", "no"]
        row = cells(app, "commands", "c-1")
        assert (row[0], row[1], row[3], row[4], row[5]) == (
            "pending",
            "0",
            "box-a",
            "s1",
            "text of c-1",
        )
        await until(lambda: has_row(app, "machines", "box-a"), "the machine row", pause=pilot.pause)
        machine = cells(app, "machines", "box-a")
        assert (machine[0], machine[1], machine[3], machine[4], machine[5]) == (
            "box-a",
            "no",
            "1",
            "0",
            "0",
        )
        await until(lambda: app.live, "the event stream", pause=pilot.pause)
        assert not app.query_one("#banner").has_class("shown")


async def test_r_retries_the_selected_dead_command(server: Harness) -> None:
    await server.register("s1", "box-a")
    await make_dead(server, "c-dead", "box-a", "s1")
    app = make_app(server)
    async with app.run_test(size=(160, 40)) as pilot:
        await until(
            lambda: has_row(app, "commands", "c-dead"), "the dead command", pause=pilot.pause
        )
        assert app.table("commands").get_row("c-dead")[0].style == "bold red"
        await select(pilot, app, 3, "commands", "c-dead")
        await pilot.press("r")
        await until(
            lambda: has_status(server, "c-dead", "pending"),
            "the command to be pending",
            pause=pilot.pause,
        )
        await until(
            lambda: cells(app, "commands", "c-dead")[0] == "pending", "the table", pause=pilot.pause
        )


async def has_status(server: Harness, command_id: str, status: str) -> bool:
    return (await command_row(server, command_id))["status"] == status


async def test_u_with_confirmation_removes_the_session(server: Harness) -> None:
    await server.register("s1", "box-a", "one")
    await server.register("s2", "box-a", "two")
    app = make_app(server)
    async with app.run_test(size=(160, 40)) as pilot:
        await until(lambda: has_row(app, "sessions", "s2"), "the session", pause=pilot.pause)
        await select(pilot, app, 2, "sessions", "s2")
        await pilot.press("u")
        assert type(app.screen).__name__ == "ConfirmScreen"
        await pilot.press("n")  # no: nothing happens
        await pilot.press("u")
        await pilot.press("y")

        async def gone() -> bool:
            resp = await server.client.get("/sessions", headers=server.auth())
            return [s["session_id"] for s in await resp.json()] == ["s1"]

        await until(gone, "the session to be removed", pause=pilot.pause)
        await until(lambda: not has_row(app, "sessions", "s2"), "the row to go", pause=pilot.pause)
        assert has_row(app, "sessions", "s1")


async def test_a_reassigns_to_the_picked_session(server: Harness) -> None:
    await server.register("s1", "box-a", "one")
    await server.register("s2", "box-b", "two")
    await enqueue(server, "c-1", "box-a", "s1")
    app = make_app(server)
    async with app.run_test(size=(160, 40)) as pilot:
        await until(lambda: has_row(app, "sessions", "s2"), "the sessions", pause=pilot.pause)
        await until(lambda: has_row(app, "commands", "c-1"), "the command", pause=pilot.pause)
        await select(pilot, app, 3, "commands", "c-1")
        await pilot.press("a")
        picker = app.screen
        assert isinstance(picker, w.PickScreen)
        for _ in range(picker.keys.index("s2")):
            await pilot.press("down")
        await pilot.press("enter")

        async def moved() -> bool:
            rows = await server.commands()
            return [(r["session_id"], r["machine_id"]) for r in rows] == [("s2", "box-b")]

        await until(moved, "the command to move", pause=pilot.pause)
        await until(
            lambda: cells(app, "commands", "c-1")[3] == "box-b", "the table", pause=pilot.pause
        )


async def test_ack_from_an_agent_shows_without_restart(server: Harness) -> None:
    await server.register("s1", "box-a")
    app = make_app(server)
    async with app.run_test(size=(160, 40)) as pilot:
        ws = await connect_booted(server, "box-a")
        await until(
            lambda: cells(app, "machines", "box-a")[1] == "yes", "online", pause=pilot.pause
        )
        await enqueue(server, "c-1", "box-a", "s1")
        await server.hub.flush("box-a")
        frame = await receive_json(ws)
        assert frame["type"] == "command" and frame["commandId"] == "c-1"
        await until(lambda: has_row(app, "commands", "c-1"), "the command", pause=pilot.pause)
        await ws.send_str(json.dumps({"type": "ack", "commandId": "c-1"}))
        await until(lambda: cells(app, "commands", "c-1")[0] == "acked", "acked", pause=pilot.pause)
        await ws.close()


async def test_markup_in_labels_is_shown_literally(server: Harness) -> None:
    await server.register("s1", "box-a", "[bold]x[/]")
    app = make_app(server)
    async with app.run_test(size=(160, 40)) as pilot:
        await until(lambda: has_row(app, "sessions", "s1"), "the session", pause=pilot.pause)
        await pilot.press("2")
        await pilot.pause()
        assert cells(app, "sessions", "s1")[0] == "[bold]x[/]"
        assert "[bold]x[/]" in app.export_screenshot()
        app.table("sessions").focus()
        await pilot.press("enter")  # details
        assert isinstance(app.screen, w.TextScreen)
        assert "label: [bold]x[/]" in app.screen.body.plain
        await pilot.press("escape")
        await pilot.press("question_mark")
        assert isinstance(app.screen, w.TextScreen)
        await pilot.press("escape")
        assert not isinstance(app.screen, w.TextScreen)


async def test_unreachable_server_shows_the_banner(server: Harness) -> None:
    app = ConsoleApp("http://127.0.0.1:9", API_KEY, poll_interval=0.1, max_backoff=0.2)
    async with app.run_test(size=(160, 40)) as pilot:
        await until(lambda: app.link_ok is False, "the link state", pause=pilot.pause)
        assert app.link_text.startswith("connection lost — reconnecting")
        assert app.query_one("#banner").has_class("shown")


class TableApp(App[None]):
    def compose(self) -> ComposeResult:
        yield DataTable()

    def on_mount(self) -> None:
        for key, label in w.SESSION_COLUMNS:
            self.query_one(DataTable).add_column(label, key=key)


async def test_update_in_place_keeps_the_cursor_row() -> None:
    app = TableApp()
    async with app.run_test() as pilot:
        table = app.query_one(DataTable)
        rows = [w.session_row({"session_id": k, "machine_id": "m"}, 0, set()) for k in "abc"]
        update_in_place(table, rows)
        table.move_cursor(row=2)
        await pilot.pause()
        first = table.get_row("c")[0]
        update_in_place(table, [rows[1], rows[2]])  # "a" went away above the cursor
        assert [r.key.value for r in table.ordered_rows] == ["b", "c"]
        assert table.ordered_rows[table.cursor_row].key.value == "c"
        assert table.get_row("c")[0] is first  # unchanged cells are not rewritten


def test_console_is_a_command_and_the_cli_does_not_import_textual() -> None:
    args = build_parser().parse_args(["console", "--url", "http://x:1"])
    assert (args.command, args.url) == ("console", "http://x:1")
    code = (
        "import sys, ccr_box.cli; ccr_box.cli.build_parser();"
        "print(any(m == 'textual' or m.startswith('textual.') for m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout == "False\n"


async def test_s_sends_a_command_to_the_selected_session(server: Harness) -> None:
    await server.register("s1", "box-a", "one")
    app = make_app(server)
    async with app.run_test(size=(160, 40)) as pilot:
        await until(lambda: has_row(app, "sessions", "s1"), "the session", pause=pilot.pause)
        await select(pilot, app, 2, "sessions", "s1")
        await pilot.press("s")
        assert isinstance(app.screen, w.InputScreen)
        await pilot.press(*"hi [b]", "enter")

        async def queued() -> bool:
            rows = await server.commands()
            return [(r["session_id"], r["command"]) for r in rows] == [("s1", "hi [b]")]

        await until(queued, "the command to be queued", pause=pilot.pause)


async def test_missing_endpoints_are_told_apart_from_refusals(server: Harness) -> None:
    # Under this prefix the server routes nothing: each call gets the router's own 404, as an
    # older server answers for an endpoint it lacks; still a refusal with its text.
    async with AdminClient(server.url("/older").rstrip("/"), API_KEY) as client:
        with pytest.raises(EndpointMissing) as missing:
            await client.send_command("s1", "hi")
        assert (missing.value.status, str(missing.value)) == (404, "Not found")
    async with AdminClient(server.url("").rstrip("/"), API_KEY) as client:
        with pytest.raises(ServerRefused) as refused:
            await client.send_command("nope", "hi")
        assert (refused.value.status, refused.value.error) == (404, "Session not found")
        assert not isinstance(refused.value, EndpointMissing)  # a refusal, not a missing endpoint
    # A server without the event stream (here: not ccr-box at all) answers its handshake 404.
    async with AdminClient(server.fake.base_url.rstrip("/"), API_KEY) as client:
        with pytest.raises(EndpointMissing):
            async with client.stream():
                pass


async def test_denied_chat_shows_a_toast_with_the_line_that_allows_it(server: Harness) -> None:
    app = make_app(server)
    async with app.run_test(notifications=True) as pilot:  # Pilot hides toasts unless asked
        await until(lambda: app.live, "the live stream", pause=pilot.pause)
        update = server.fake.make_message("999", "hi", from_id=999)
        resp = await server.webhook(update)
        assert resp.status == 200

        def toast() -> str:
            """The denied-chat toast as the screen renders it ("" until it is shown)."""
            toasts = [str(widget.render()) for widget in app.screen.query("Toast")]
            return next((t for t in toasts if t.startswith("Ignored chat 999")), "")

        await until(toast, "the denied-chat toast", pause=pilot.pause)
        assert toast().endswith(f'allowed_chat_ids = ["{CHAT}", "999"]')


# -- the header's Telegram line, empty tables, the first-run notice ---------------------------------


def shown(app: ConsoleApp, selector: str) -> str:
    """What the widget renders now, as plain text ("" while it is hidden)."""
    widget = app.query_one(selector, Static)
    return str(widget.render()) if widget.display else ""


def telegram_shown(app: ConsoleApp) -> str:
    return shown(app, "#telegram")


_SVG_TEXT = re.compile(r'<text [^>]*clip-path="url\(#terminal-\d+-line-(\d+)\)">([^<]*)</text>')


def screen_lines(app: ConsoleApp) -> list[str]:
    """The screen as plain lines, read back from ``export_screenshot()`` (one SVG text element
    per styled run, each tagged with its line)."""
    lines: dict[int, str] = {}
    for number, run in _SVG_TEXT.findall(app.export_screenshot()):
        lines[int(number)] = lines.get(int(number), "") + html.unescape(run)
    return [lines[n].replace("\xa0", " ").rstrip() for n in sorted(lines)]


async def test_header_shows_telegram_off_and_the_allowed_chat_count(start_server) -> None:
    server = await start_server(bot_token="")
    app = make_app(server)
    async with app.run_test(size=(160, 40)) as pilot:
        await until(lambda: "off" in telegram_shown(app), "the Telegram line", pause=pilot.pause)
        assert telegram_shown(app) == (
            "Telegram: off (no bot token: console only; `ccr-box init` adds a bot) · 1 allowed chat"
        )
        assert any(line.strip().startswith("Telegram: off (") for line in screen_lines(app))


async def test_header_shows_webhook_then_the_last_error_in_plain_words(server: Harness) -> None:
    app_state = server.app[keys.STATE].telegram
    assert await learn_identity(server.app[keys.TELEGRAM], app_state, server.clock)
    app = make_app(server)
    async with app.run_test(size=(160, 40)) as pilot:
        await until(
            lambda: "webhook" in telegram_shown(app), "the webhook state", pause=pilot.pause
        )
        assert telegram_shown(app) == "Telegram: webhook · 1 allowed chat"
        # The token is revoked while the console runs: the header follows without a restart.
        server.fake.fail_next("getMe", 401)
        assert not await learn_identity(server.app[keys.TELEGRAM], app_state, server.clock)
        await until(lambda: "invalid" in telegram_shown(app), "the error", pause=pilot.pause)
        assert telegram_shown(app) == "Telegram: invalid bot token (Unauthorized) · 1 allowed chat"
        assert server.fake.token not in telegram_shown(app)


async def test_header_shows_polling_ok(start_server) -> None:
    options = Options(maintenance=False, telegram_inbound=True, poll_timeout=1)
    server = await start_server(mode="polling", options=options)
    app = make_app(server)
    async with app.run_test(size=(160, 40)) as pilot:
        await until(lambda: "polling ok" in telegram_shown(app), "polling ok", pause=pilot.pause)
        assert telegram_shown(app) == "Telegram: polling ok · 1 allowed chat"


async def test_header_says_when_no_chat_is_allowed(start_server) -> None:
    server = await start_server(allowed_chat_ids=(), allowed_user_ids=())
    app = make_app(server)
    async with app.run_test(size=(160, 40)) as pilot:
        await until(lambda: "chat" in telegram_shown(app), "the chat count", pause=pilot.pause)
        assert telegram_shown(app).endswith("· no allowed chat (set telegram.allowed_chat_ids)")


async def test_empty_tables_say_what_to_do_next_until_rows_arrive(server: Harness) -> None:
    app = make_app(server)
    async with app.run_test(size=(160, 40)) as pilot:
        await until(lambda: shown(app, "#machines-empty"), "the machines hint", pause=pilot.pause)
        assert shown(app, "#machines-empty") == (
            "No machines yet. On each machine: `ccr-box init --agent`, then `ccr-box agent`"
        )
        await pilot.press("2")
        await until(lambda: shown(app, "#sessions-empty"), "the sessions hint", pause=pilot.pause)
        assert shown(app, "#sessions-empty") == (
            "No sessions yet: start Claude Code in tmux on a connected machine "
            "(hooks: `ccr-box hooks install`)"
        )
        await pilot.press("3")
        await until(lambda: shown(app, "#commands-empty"), "the commands hint", pause=pilot.pause)
        assert shown(app, "#commands-empty") == (
            "No commands: reply to a notification in Telegram, or press s to send one"
        )
        hint = "No commands: reply to a notification in Telegram, or press s to send one"
        assert hint in "\n".join(screen_lines(app))  # on screen, above the empty table

        # Rows arrive: the hints go.
        ws = await connect_booted(server, "box-a")
        await server.register("s1", "box-a")
        await enqueue(server, "c-1", "box-a", "s1")
        await server.hub.flush("box-a")
        await until(lambda: has_row(app, "commands", "c-1"), "the command", pause=pilot.pause)
        await until(lambda: has_row(app, "machines", "box-a"), "the machine", pause=pilot.pause)
        await until(lambda: has_row(app, "sessions", "s1"), "the session", pause=pilot.pause)
        for table in ("machines", "sessions", "commands"):
            assert shown(app, f"#{table}-empty") == "", table
        await ws.close()


async def test_empty_commands_hint_follows_the_filter_and_telegram_off(start_server) -> None:
    server = await start_server(bot_token="")
    app = make_app(server)
    async with app.run_test(size=(160, 40)) as pilot:
        await until(lambda: "off" in telegram_shown(app), "the Telegram line", pause=pilot.pause)
        await until(
            lambda: "Sessions tab" in shown(app, "#commands-empty"), "the hint", pause=pilot.pause
        )
        assert shown(app, "#commands-empty") == (
            "No commands: select a session on the Sessions tab (2) and press s to send one"
        )
        await pilot.press("slash", *"dead", "enter")
        await until(
            lambda: "dead" in shown(app, "#commands-empty"), "the filter hint", pause=pilot.pause
        )
        assert shown(app, "#commands-empty") == (
            "No dead commands. Press / to change the filter (empty = all)."
        )


async def test_a_notice_is_shown_under_the_header(server: Harness) -> None:
    notice = "First run: created /tmp/x/config.toml with freshly generated secrets (mode 0600)."
    app = ConsoleApp(server.url("").rstrip("/"), API_KEY, poll_interval=0.1, notice=notice)
    async with app.run_test(size=(160, 40)) as pilot:
        await pilot.pause()
        assert shown(app, "#notice") == notice
    plain = make_app(server)
    async with plain.run_test(size=(160, 40)) as pilot:
        await pilot.pause()
        assert not plain.query("#notice")  # no notice, no empty line
