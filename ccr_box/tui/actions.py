"""The console's key actions (a mixin of :class:`ccr_box.tui.app.ConsoleApp`).

Each action checks the selection, asks through a dialog when needed, then hands the API call to
``ConsoleApp.act`` (a worker). Untrusted values are shown as plain ``Text`` only.
"""

from __future__ import annotations

from typing import Any

from rich.text import Text
from textual.widgets import DataTable, TabbedContent

from ccr_box.client.present import plain
from ccr_box.tui import widgets as w

STATES = ("pending", "sent", "acked", "dead")
TABLES = ("machines", "sessions", "commands")
HELP = """\
1-4      switch tab (Machines, Sessions, Commands, Events)
enter    details of the selected row
r        retry the selected dead command
a        reassign the selected pending/dead command to another session
u        unregister the selected session (asks first)
s        send a command to the selected session
/        filter commands by state (pending, sent, acked, dead; empty = all)
?        this help
q        quit"""


class ConsoleActions:
    # Provided by ConsoleApp / textual.App.
    rows: dict[str, dict[str, dict[str, Any]]]
    status_filter: str | None
    client: Any
    selected: Any
    act: Any
    mark: Any
    notify: Any
    push_screen: Any
    query_one: Any
    active: Any
    _show_state: Any

    def action_tab(self, n: int) -> None:
        name = ("machines", "sessions", "commands", "events")[n - 1]
        self.query_one(TabbedContent).active = f"{name}-tab"
        self.query_one(f"#{name}").focus()

    def action_retry(self) -> None:
        row = self.selected("commands")
        if row is None or row.get("status") != "dead":
            self.notify("Select a dead command on the Commands tab (3).", severity="warning")
            return
        cid = str(row["command_id"])
        self.act(lambda: self.client.retry(cid), f"Command {plain(cid)} queued again.")

    def action_reassign(self) -> None:
        row = self.selected("commands")
        if row is None or row.get("status") not in ("pending", "dead"):
            self.notify(
                "Select a pending or dead command on the Commands tab (3).", severity="warning"
            )
            return
        cid = str(row["command_id"])
        choices = [(k, w.session_choice(s)) for k, s in self.rows["sessions"].items()]
        if not choices:
            self.notify("No sessions to move it to.", severity="warning")
            return

        def chosen(session_id: str | None) -> None:
            if session_id:
                done = f"Command {plain(cid)} moved to session {plain(session_id)}."
                self.act(lambda: self.client.reassign(cid, session_id), done)

        title = Text(f"Move command {plain(cid)} to session:")
        self.push_screen(w.PickScreen(title, choices), chosen)

    def action_unregister(self) -> None:
        row = self.selected("sessions")
        if row is None:
            self.notify("Select a session on the Sessions tab (2).", severity="warning")
            return
        sid = str(row["session_id"])

        def confirmed(yes: bool | None) -> None:
            if yes:
                self.act(lambda: self.client.unregister(sid), f"Session {plain(sid)} removed.")

        question = Text(f"Remove session {plain(sid)} ({plain(row.get('label'))})?")
        self.push_screen(w.ConfirmScreen(question), confirmed)

    def action_send(self) -> None:
        row = self.selected("sessions")
        if row is None:
            self.notify("Select a session on the Sessions tab (2).", severity="warning")
            return
        sid = str(row["session_id"])

        def submitted(text: str | None) -> None:
            if text and text.strip():
                done = f"Command queued for session {plain(sid)}."
                self.act(lambda: self.client.send_command(sid, text), done)

        title = Text(f"Send a command to session {plain(sid)}:")
        self.push_screen(
            w.InputScreen(title, placeholder="text to type into Claude Code"), submitted
        )

    def action_filter(self) -> None:
        def submitted(text: str | None) -> None:
            if text is None:
                return
            state = text.strip().lower() or None
            if state is not None and state not in STATES:
                self.notify(f"Unknown state; use one of {', '.join(STATES)}.", severity="error")
                return
            self.status_filter = state
            self._show_state()
            self.mark({"commands"})

        self.action_tab(3)
        title = Text("Show commands in state (pending, sent, acked, dead; empty = all):")
        self.push_screen(w.InputScreen(title, value=self.status_filter or ""), submitted)

    def on_data_table_row_selected(self, _event: DataTable.RowSelected) -> None:
        self.action_details()

    def action_details(self) -> None:
        name = self.active()
        row = self.selected(name) if name in TABLES else None
        if row is not None:
            self.push_screen(
                w.TextScreen(Text(f"{name[:-1].title()} details"), w.details_text(row))
            )

    def action_help(self) -> None:
        self.push_screen(w.TextScreen(Text("Keys"), Text(HELP)))
