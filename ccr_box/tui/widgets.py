"""Console building blocks: table rows made of plain ``Text`` cells, and the modal screens.

Labels, commands, errors and results come from untrusted sources: they are always wrapped in
``rich.text.Text`` (never parsed as markup), with control and bidi characters replaced.
"""

from __future__ import annotations

from typing import Any, ClassVar

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Button, Input, OptionList, Static
from textual.widgets.option_list import Option

from ccr_box.client.present import age, plain, shorten

Cells = list[Text]

MACHINE_COLUMNS = (
    ("machine", "Machine"),
    ("connected", "Connected"),
    ("since", "Since"),
    ("pending", "Pending"),
    ("sent", "Sent"),
    ("dead", "Dead"),
)
SESSION_COLUMNS = (
    ("label", "Label"),
    ("session", "Session ID"),
    ("machine", "Machine"),
    ("online", "Online"),
    ("activity", "Last activity"),
)
COMMAND_COLUMNS = (
    ("state", "State"),
    ("attempts", "Tries"),
    ("age", "Age"),
    ("machine", "Machine"),
    ("session", "Session"),
    ("text", "Text"),
    ("outcome", "Error / result"),
)


def cell(value: Any, style: str = "") -> Text:
    return Text(plain(value), style=style)


def machine_row(m: dict[str, Any], now: int) -> tuple[str, Cells]:
    key = str(m.get("machineId"))
    connected = bool(m.get("connected"))
    since = m.get("connectedSince") if connected else m.get("lastDisconnectedAt")
    dead = m.get("dead", 0)
    return key, [
        cell(key),
        cell("yes" if connected else "no", "green" if connected else "yellow"),
        cell(age(since, now)),
        cell(m.get("pending", 0)),
        cell(m.get("sent", 0)),
        cell(dead, "bold red" if dead else ""),
    ]


def session_row(s: dict[str, Any], now: int, online: set[str]) -> tuple[str, Cells]:
    key = str(s.get("session_id"))
    up = s.get("machine_id") in online
    return key, [
        cell(s.get("label")),
        cell(key),
        cell(s.get("machine_id")),
        cell("yes" if up else "no", "green" if up else "yellow"),
        cell(age(s.get("updated_at"), now)),
    ]


def outcome(c: dict[str, Any]) -> Any:
    return c.get("dead_reason") or c.get("result_error") or c.get("last_error") or c.get("result")


def command_row(c: dict[str, Any], now: int) -> tuple[str, Cells]:
    dead = c.get("status") == "dead"
    style = "red" if dead else ""
    return str(c.get("command_id")), [
        cell(c.get("status"), "bold red" if dead else ""),
        cell(c.get("attempts"), style),
        cell(age(c.get("created_at"), now), style),
        cell(c.get("machine_id"), style),
        cell(c.get("session_id"), style),
        cell(shorten(c.get("command"), 40), style),
        cell(shorten(outcome(c), 50), style),
    ]


# -- the header's Telegram line and the empty tables' next steps ----------------------------------

EMPTY_MACHINES = "No machines yet. On each machine: `ccr-box init --agent`, then `ccr-box agent`"
EMPTY_SESSIONS = (
    "No sessions yet: start Claude Code in tmux on a connected machine "
    "(hooks: `ccr-box hooks install`)"
)
EMPTY_COMMANDS = "No commands: reply to a notification in Telegram, or press s to send one"
EMPTY_COMMANDS_NO_TELEGRAM = (
    "No commands: select a session on the Sessions tab (2) and press s to send one"
)


def empty_hint(table: str, status_filter: str | None = None, telegram_off: bool = False) -> str:
    """What to do next when ``table`` has no rows."""
    if table == "machines":
        return EMPTY_MACHINES
    if table == "sessions":
        return EMPTY_SESSIONS
    if status_filter:
        return f"No {status_filter} commands. Press / to change the filter (empty = all)."
    return EMPTY_COMMANDS_NO_TELEGRAM if telegram_off else EMPTY_COMMANDS


def telegram_off(status: dict[str, Any] | None) -> bool:
    tg = status.get("telegram") if isinstance(status, dict) else None
    return isinstance(tg, dict) and tg.get("state") == "off"


def telegram_line(status: dict[str, Any] | None) -> Text:
    """``Telegram: polling ok · 1 allowed chat`` from ``GET /admin/status`` (None: not yet read).

    ``off``, ``polling ok`` / ``polling starting…``, ``webhook``, or the server's last error in
    plain words; then the allowed-chat count (absent on servers that do not report it).
    """
    line = Text("Telegram: ", style="bold")
    tg = status.get("telegram") if isinstance(status, dict) else None
    if not isinstance(tg, dict):
        line.append("checking…", "yellow")
        return line
    state, mode, error = tg.get("state"), tg.get("mode"), tg.get("lastError")
    if state == "off":
        line.append("off", "yellow")
        line.append(" (no bot token: console only; `ccr-box init` adds a bot)")
    elif state in ("error", "conflict"):
        line.append(plain(error) if error else f"{plain(state)}", "bold red")
    elif mode == "webhook":
        line.append("webhook", "green" if state == "ok" else "")
        if state != "ok":
            line.append(" (bot not checked yet)")
    elif state == "ok":
        line.append("polling ok", "green")
    else:
        line.append(f"{plain(mode)} starting…", "yellow")
    chats = tg.get("allowedChats")
    if isinstance(chats, int) and not isinstance(chats, bool):
        if chats == 0:
            line.append(" · no allowed chat", "yellow")
            if state != "off":
                line.append(" (set telegram.allowed_chat_ids)")
        else:
            line.append(f" · {chats} allowed chat{'s' if chats != 1 else ''}")
    return line


def session_choice(s: dict[str, Any]) -> Text:
    label = plain(s.get("label")) or "(no label)"
    return Text(f"{label} — {plain(s.get('session_id'))} @ {plain(s.get('machine_id'))}")


def details_text(row: dict[str, Any]) -> Text:
    """Every field of an API row, one per line; values are kept whole (newlines indented)."""
    out = Text()
    for name, value in row.items():
        out.append(f"{name}: ", style="bold")
        shown = "" if value is None else str(value)
        out.append(shown.replace("\n", "\n    ") + "\n")
    return out


class Dialog(ModalScreen[Any]):
    DEFAULT_CSS = """
    Dialog { align: center middle; }
    Dialog > Vertical {
        width: 80%; max-width: 100; height: auto; max-height: 80%;
        border: thick $primary; background: $surface; padding: 1 2;
    }
    Dialog .title { text-style: bold; margin-bottom: 1; }
    Dialog Horizontal { height: auto; margin-top: 1; }
    Dialog VerticalScroll { height: auto; max-height: 20; }
    Dialog OptionList { height: auto; max-height: 15; }
    """
    BINDINGS: ClassVar[list[BindingType]] = [Binding("escape", "cancel", "Cancel")]

    def action_cancel(self) -> None:
        self.dismiss(None)


class ConfirmScreen(Dialog):
    """``True`` on yes (``y`` or the button), ``False`` on no/escape."""

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("y", "answer(True)", "Yes"),
        Binding("n,escape", "answer(False)", "No"),
    ]

    def __init__(self, question: Text) -> None:
        super().__init__()
        self.question = question

    def compose(self) -> ComposeResult:
        with Vertical():
            yield Static(self.question, classes="title")
            with Horizontal():
                yield Button("Yes (y)", id="yes", variant="error")
                yield Button("No (n)", id="no")

    def on_button_pressed(self, event: Button.Pressed) -> None:
        self.dismiss(event.button.id == "yes")

    def action_answer(self, value: bool) -> None:
        self.dismiss(value)


class InputScreen(Dialog):
    """The submitted text, or ``None`` on escape."""

    def __init__(self, title: Text, placeholder: str = "", value: str = "") -> None:
        super().__init__()
        self.title_text, self.placeholder, self.value = title, placeholder, value

    def compose(self) -> ComposeResult:
        with Vertical():
            yield Static(self.title_text, classes="title")
            yield Input(value=self.value, placeholder=self.placeholder)

    def on_input_submitted(self, event: Input.Submitted) -> None:
        self.dismiss(event.value)


class PickScreen(Dialog):
    """One of ``keys`` (the chosen line's), or ``None`` on escape."""

    def __init__(self, title: Text, choices: list[tuple[str, Text]]) -> None:
        super().__init__()
        self.title_text = title
        self.keys = [key for key, _ in choices]
        self.prompts = [prompt for _, prompt in choices]

    def compose(self) -> ComposeResult:
        with Vertical():
            yield Static(self.title_text, classes="title")
            yield OptionList(*[Option(prompt) for prompt in self.prompts])

    def on_option_list_option_selected(self, event: OptionList.OptionSelected) -> None:
        self.dismiss(self.keys[event.option_index])


class TextScreen(Dialog):
    """Details of a row, or the help: read, then escape/enter/q."""

    BINDINGS: ClassVar[list[BindingType]] = [Binding("escape,enter,q", "cancel", "Close")]

    def __init__(self, title: Text, body: Text) -> None:
        super().__init__()
        self.title_text, self.body = title, body

    def compose(self) -> ComposeResult:
        with Vertical():
            yield Static(self.title_text, classes="title")
            with VerticalScroll():
                yield Static(self.body)
