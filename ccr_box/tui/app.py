"""``ccr-box console``: a Textual app attached to a running server through the admin API.

Two long-running workers do all I/O: ``refresher`` fetches the tables marked dirty, ``streamer``
follows ``/admin/events/stream`` (resuming after the last seen ``seq``) and marks tables dirty
per event. Without the stream (an older
server, or the connection is lost) the refresher polls every ``poll_interval`` seconds, backing
off while the server is unreachable. Results reach the UI as typed messages; tables are updated
in place (rows keyed by id, the cursor follows its row). A third worker, ``watcher``, reads
``/admin/status`` every ``poll_interval`` seconds for the header's Telegram line (its state is not
an event). An empty table says what to do next; ``notice`` (``ccr-box up``'s first-run message) is
shown under the header.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any, ClassVar

from rich.text import Text
from textual import work
from textual.app import App, ComposeResult
from textual.binding import Binding, BindingType
from textual.css.query import NoMatches
from textual.message import Message
from textual.widgets import DataTable, Footer, Log, Static, TabbedContent, TabPane

from ccr_box.client.admin import AdminClient
from ccr_box.client.errors import ClientError, EndpointMissing, ServerRefused, ServerUnavailable
from ccr_box.client.http import display_url
from ccr_box.client.present import plain
from ccr_box.tui import widgets as w
from ccr_box.tui.actions import ConsoleActions

TABLES = ("machines", "sessions", "commands")
REFRESH_KINDS = {
    "machine": {"machines"},  # the sessions' Online column follows
    "command": {"commands", "machines"},
    "session": {"sessions"},
}


class Loaded(Message):
    def __init__(self, table: str, rows: list[dict[str, Any]]) -> None:
        super().__init__()
        self.table, self.rows = table, rows


class StatusLoaded(Message):
    def __init__(self, status: dict[str, Any]) -> None:
        super().__init__()
        self.status = status


class LinkChanged(Message):
    """The HTTP side: ``ok`` or the reason it failed."""

    def __init__(self, ok: bool, text: str = "") -> None:
        super().__init__()
        self.ok, self.text = ok, text


class StreamChanged(Message):
    def __init__(self, live: bool, text: str = "") -> None:
        super().__init__()
        self.live, self.text = live, text


class EventArrived(Message):
    def __init__(self, frame: dict[str, Any]) -> None:
        super().__init__()
        self.frame = frame


class ActionDone(Message):
    def __init__(self, ok: bool, text: str) -> None:
        super().__init__()
        self.ok, self.text = ok, text


def operator_alert(kind: str, data: dict[str, Any]) -> tuple[str, str] | None:
    """A toast for events the operator must act on: (text, severity), or None."""
    if kind == "telegram.denied":
        who = data.get("chatTitle") or data.get("chatUsername") or data.get("fromName") or "?"
        allow = data.get("allowWith")
        return f"Ignored chat {data.get('chatId')} ({who}). To allow it: {allow}", "warning"
    if kind == "config.rejected":
        return f"Config edit rejected, previous config kept: {data.get('error')}", "error"
    if kind == "config.reloaded":
        text = "Config reloaded: " + (", ".join(data.get("changed") or []) or "nothing live")
        restart = ", ".join(data.get("needsRestart") or [])
        if restart:
            return f"{text} (restart needed for {restart})", "warning"
        return text, "information"
    return None


class ConsoleApp(ConsoleActions, App[None]):
    TITLE = "ccr-box console"
    CSS = """
    #top, #telegram { height: 1; background: $primary-background; padding: 0 1; }
    #notice { height: auto; background: $panel; color: $warning; padding: 0 1; }
    .empty { height: auto; padding: 1 1 0 1; color: $text-muted; display: none; }
    .empty.shown { display: block; }
    #banner { height: 1; background: $error; color: $text; padding: 0 1; display: none; }
    #banner.shown { display: block; }
    #tabs { height: 1fr; }
    DataTable, Log { height: 1fr; }
    """
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("r", "retry", "Retry"),
        Binding("a", "reassign", "Reassign"),
        Binding("u", "unregister", "Unregister"),
        Binding("s", "send", "Send"),
        Binding("slash", "filter", "Filter"),
        Binding("enter", "details", "Details"),
        Binding("question_mark", "help", "Help"),
        Binding("q", "quit", "Quit"),
        *[Binding(str(n), f"tab({n})", show=False) for n in range(1, 5)],
    ]

    def __init__(
        self,
        url: str,
        api_key: str,
        *,
        poll_interval: float = 2.0,
        max_backoff: float = 30.0,
        notice: str | None = None,
    ) -> None:
        super().__init__()
        self.client = AdminClient(url, api_key)
        self.notice = notice
        self.server_status: dict[str, Any] | None = None  # the last GET /admin/status
        self.loaded: set[str] = set()  # tables read at least once
        self.poll_interval, self.max_backoff = poll_interval, max_backoff
        self.rows: dict[str, dict[str, dict[str, Any]]] = {name: {} for name in TABLES}
        self.status_filter: str | None = None
        self.link_ok: bool | None = None
        self.link_text = "connecting…"
        self.live = False
        self.stream_text = ""
        self.last_seq = 0
        self.events: list[dict[str, Any]] = []
        self._dirty: set[str] = set(TABLES)
        self._wake = asyncio.Event()

    # -- layout ----------------------------------------------------------------------------------

    def compose(self) -> ComposeResult:
        yield Static(id="top")
        yield Static(id="telegram")
        if self.notice:
            yield Static(Text(self.notice), id="notice")
        yield Static(id="banner")
        with TabbedContent(id="tabs"):
            for name, title in (
                ("machines", "Machines"),
                ("sessions", "Sessions"),
                ("commands", "Commands"),
            ):
                with TabPane(title, id=f"{name}-tab"):
                    yield Static(id=f"{name}-empty", classes="empty")
                    yield DataTable(id=name, cursor_type="row", zebra_stripes=True)
            with TabPane("Events", id="events-tab"):
                yield Log(id="events", max_lines=2000)
        yield Footer()

    def on_mount(self) -> None:
        for name, columns in (
            ("machines", w.MACHINE_COLUMNS),
            ("sessions", w.SESSION_COLUMNS),
            ("commands", w.COMMAND_COLUMNS),
        ):
            table = self.table(name)
            for key, label in columns:
                table.add_column(label, key=key)
        self._show_state()
        self.refresher()
        self.streamer()
        self.watcher()

    async def on_unmount(self) -> None:
        # Stop the workers before closing their HTTP session: one still fetching would find it
        # closed (an agent's disconnect event often wakes the refresher just as the app exits).
        # Worker.wait() raises WorkerCancelled for a cancelled worker: gather them all anyway.
        stopping = self.workers.cancel_node(self)
        await asyncio.gather(*(worker.wait() for worker in stopping), return_exceptions=True)
        await self.client.close()

    def table(self, name: str) -> DataTable:
        return self.query_one(f"#{name}", DataTable)

    # -- workers ---------------------------------------------------------------------------------

    def mark(self, names: set[str] | tuple[str, ...]) -> None:
        self._dirty.update(names)
        self._wake.set()

    async def _fetch(self, name: str) -> list[dict[str, Any]]:
        if name == "machines":
            return await self.client.machines()
        if name == "sessions":
            return await self.client.sessions()
        return await self.client.commands(status=self.status_filter, limit=200)

    @work(group="refresh", exclusive=True)
    async def refresher(self) -> None:
        failures = 0
        while True:
            self._wake.clear()
            dirty, self._dirty = self._dirty, set()
            try:
                for name in (n for n in TABLES if n in dirty):
                    self.post_message(Loaded(name, await self._fetch(name)))
                failures = 0
                self.post_message(LinkChanged(True))
            except ServerUnavailable as exc:
                failures += 1
                self._dirty |= dirty
                self.post_message(LinkChanged(False, f"connection lost — reconnecting ({exc})"))
            except ServerRefused as exc:
                failures += 1
                self._dirty |= dirty
                self.post_message(LinkChanged(False, f"server refused: {exc.error}"))
            if self.live and not failures:
                delay = 30.0  # ages in the tables still move
            else:
                delay = min(self.poll_interval * 2 ** min(failures, 6), self.max_backoff)
            try:
                await asyncio.wait_for(self._wake.wait(), delay)
            except TimeoutError:
                self._dirty |= set(TABLES)

    @work(group="stream", exclusive=True)
    async def streamer(self) -> None:
        delay = self.poll_interval
        while True:
            missing = False
            try:
                async with self.client.stream(after=self.last_seq) as frames:
                    self.live, delay = True, self.poll_interval
                    self.post_message(StreamChanged(True))
                    self.mark(TABLES)  # whatever happened while we were away
                    async for frame in frames:
                        self.post_message(EventArrived(frame))
                text = "connection lost — reconnecting"
            except EndpointMissing:
                missing = True
                text = f"live events not available on this server — refreshing every {self.poll_interval:g} s"
            except ClientError:
                text = "connection lost — reconnecting"
            self.live = False
            self.post_message(StreamChanged(False, text))
            self.mark(TABLES)
            await asyncio.sleep(60.0 if missing else delay)
            delay = min(delay * 2, self.max_backoff)

    @work(group="status", exclusive=True)
    async def watcher(self) -> None:
        """``/admin/status`` for the Telegram line; failures are the refresher's to report."""
        failures = 0
        while True:
            try:
                self.post_message(StatusLoaded(await self.client.status()))
                failures = 0
            except ClientError:
                failures += 1
            await asyncio.sleep(min(self.poll_interval * 2 ** min(failures, 6), self.max_backoff))

    @work(group="actions")
    async def act(self, call: Callable[[], Awaitable[Any]], done: str) -> None:
        try:
            await call()
        except EndpointMissing:
            self.post_message(ActionDone(False, "not available on this server"))
        except ClientError as exc:
            self.post_message(ActionDone(False, str(exc)))
        else:
            self.post_message(ActionDone(True, done))
        self.mark(TABLES)

    # -- messages --------------------------------------------------------------------------------

    def on_loaded(self, message: Loaded) -> None:
        name = message.table
        key_of = {"machines": "machineId", "sessions": "session_id", "commands": "command_id"}[name]
        self.rows[name] = {str(r.get(key_of)): r for r in message.rows}
        self.loaded.add(name)
        try:
            self._render_table(name)
            if name == "machines":
                self._render_table("sessions")  # the Online column
        except NoMatches:  # a late message while the app shuts down
            pass

    def _render_table(self, name: str) -> None:
        now = int(time.time() * 1000)
        rows = self.rows[name].values()
        if name == "machines":
            built = [w.machine_row(r, now) for r in rows]
        elif name == "sessions":
            online = {k for k, m in self.rows["machines"].items() if m.get("connected")}
            built = [w.session_row(r, now, online) for r in rows]
        else:
            built = [w.command_row(r, now) for r in rows]
        update_in_place(self.table(name), built)
        self._show_hint(name)

    def _show_hint(self, name: str) -> None:
        """The next step above an empty table (once it has been read: not while connecting)."""
        hint = self.query_one(f"#{name}-empty", Static)
        empty = name in self.loaded and not self.rows[name]
        if empty:
            off = w.telegram_off(self.server_status)
            hint.update(Text(w.empty_hint(name, self.status_filter, off)))
        hint.set_class(empty, "shown")

    def on_status_loaded(self, message: StatusLoaded) -> None:
        self.server_status = message.status
        self._show_state()

    def on_link_changed(self, message: LinkChanged) -> None:
        self.link_ok, self.link_text = message.ok, message.text
        self._show_state()

    def on_stream_changed(self, message: StreamChanged) -> None:
        self.stream_text = message.text
        self._show_state()

    def on_event_arrived(self, message: EventArrived) -> None:
        frame = message.frame
        seq = frame.get("seq")
        if isinstance(seq, int):
            if seq <= self.last_seq:
                return  # already shown (catch-up and stream overlap)
            self.last_seq = seq
        self.events.append(frame)
        kind = str(frame.get("kind", ""))
        data = frame.get("data")
        line = f"#{seq} {kind} {plain(data if data is not None else '')}"
        for log in self.query("#events").results(Log):
            log.write_line(line)
        alert = operator_alert(kind, data if isinstance(data, dict) else {})
        if alert is not None:
            self.notify(alert[0], severity=alert[1], timeout=15, markup=False)
        family = kind.partition(".")[0]
        known = REFRESH_KINDS.get(family)
        self.mark(known if known is not None else set(TABLES))  # action.*, overflow, ...

    def on_action_done(self, message: ActionDone) -> None:
        self.notify(message.text, severity="information" if message.ok else "error", markup=False)

    def _show_state(self) -> None:
        try:
            self._show_state_now()
        except NoMatches:  # a late message while the app shuts down
            pass

    def _show_state_now(self) -> None:
        top = Text.assemble(("ccr-box console ", "bold"), display_url(self.client.base_url), "  ")
        if self.link_ok is False:
            top.append("unreachable", "bold red")
        elif self.link_ok is None:
            top.append("connecting…", "yellow")
        elif self.live:
            top.append("connected · live", "bold green")
        else:
            top.append(f"connected · refreshing every {self.poll_interval:g} s", "yellow")
        if self.status_filter:
            top.append(f"  filter: {self.status_filter}")
        self.query_one("#top", Static).update(top)
        self.query_one("#telegram", Static).update(w.telegram_line(self.server_status))
        for name in TABLES:
            self._show_hint(name)  # the filter or the Telegram state may change the words
        banner = self.query_one("#banner", Static)
        text = self.link_text if self.link_ok is False else ("" if self.live else self.stream_text)
        banner.update(Text(text))
        banner.set_class(bool(text), "shown")

    # -- actions ---------------------------------------------------------------------------------

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        if action != "quit" and len(self.screen_stack) > 1:
            return False  # a dialog is open: its own keys only
        return True

    def active(self) -> str:
        return self.query_one(TabbedContent).active.removesuffix("-tab")

    def selected(self, name: str) -> dict[str, Any] | None:
        """The row under the cursor of table ``name``, if that tab is showing."""
        if self.active() != name:
            return None
        key = cursor_key(self.table(name))
        return self.rows[name].get(key) if key is not None else None


def cursor_key(table: DataTable) -> str | None:
    if table.row_count == 0 or not table.is_valid_row_index(table.cursor_row):
        return None
    return table.ordered_rows[table.cursor_row].key.value


def update_in_place(table: DataTable, rows: list[tuple[str, list[Text]]]) -> None:
    """Make ``table`` show ``rows`` without clearing it: changed cells are updated, missing rows
    removed, new rows added; the cursor stays on the row (by key) it was on."""
    keep = cursor_key(table)
    wanted = dict(rows)
    for row_key in list(table.rows):
        if row_key.value not in wanted:
            table.remove_row(row_key)
    columns = list(table.columns)
    for key, cells in rows:
        if key in table.rows:
            old = table.get_row(key)
            for column, before, after in zip(columns, old, cells, strict=False):
                if not isinstance(before, Text) or (before.plain, before.style) != (
                    after.plain,
                    after.style,
                ):
                    table.update_cell(key, column, after, update_width=True)
        else:
            table.add_row(*cells, key=key)
    if keep is not None and keep in wanted:
        table.move_cursor(row=table.get_row_index(keep), scroll=False)
