"""Every user-facing Telegram text (contract §7.8), so wording lives in one place."""

from __future__ import annotations

from typing import Any

from ccr_box.textutil import cut_preview, truncate_utf16

HELP = (
    "ccr-box forwards your replies to Claude Code sessions.\n"
    "\n"
    "Reply to a notification to send text to its session.\n"
    "/cmd TOKEN text - send text to the session TOKEN belongs to.\n"
    "//command - start with two slashes to send a /command to Claude (e.g. //compact).\n"
    "/sessions - list the live sessions in this chat.\n"
    "/help - show this help."
)
NO_SESSION = (
    "Could not find session for this message. Please reply to a recent notification or use "
    "/cmd TOKEN command format."
)
SESSION_NOT_FOUND = "Session not found"
ONLY_TEXT = "Only text messages can be sent to a session."
SESSION_EXPIRED = "Session expired"
COMMAND_SENT = "Command sent"
NO_LIVE_SESSIONS = "No live sessions in this chat."
DEAD_REASONS = {
    "max_attempts": "no acknowledgement after 10 attempts",
    "expired": "not delivered within 24 hours",
}


def target(session: dict[str, Any] | None, machine_id: str) -> str:
    """``<target>``: the session's label if it has one, else the machineId."""
    label = session.get("label") if session else None
    return label if label else machine_id


def too_long(length: int) -> str:
    return f"Command too long ({length} chars, max 10000)"


def queue_full(target_name: str, count: int) -> str:
    return f"Queue full for {target_name} ({count} commands pending)."


def queued_offline(target_name: str) -> str:
    return f"Command queued - {target_name} is offline."


def command_failed(error: object) -> str:
    text = truncate_utf16(error, 1000) if isinstance(error, str) and error else "Unknown error"
    return f"Command failed: {text}"


def dead_letter(target_name: str, reason: str, command: str) -> str:
    why = DEAD_REASONS.get(reason, reason)
    return f"Command not delivered to {target_name} ({why}): {cut_preview(command, 100)}"


def reached_after_all(target_name: str) -> str:
    return f"Command reached {target_name} after all."


def unknown_command(name: str) -> str:
    return f"Unknown command: /{name}\n{HELP}"


def not_connected(machine_id: str) -> str:
    return f"{machine_id} is not connected."


def launching(machine_id: str, directory: str) -> str:
    return f"Launching on {machine_id} in {directory}..."


def kill_unknown(session_id: str) -> str:
    return f"Session `{session_id}` not found."


def killing(session_id: str, machine_id: str) -> str:
    return f"Killing session `{session_id}` on {machine_id}..."


def age(ms: int) -> str:
    seconds = max(ms, 0) // 1000
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m"
    if seconds < 48 * 3600:
        return f"{seconds // 3600}h"
    return f"{seconds // 86400}d"


def live_sessions(rows: list[dict[str, Any]], online: set[str], now: int, limit: int = 20) -> str:
    """The ``/sessions`` answer (§7.6); ``rows`` newest activity first."""
    if not rows:
        return NO_LIVE_SESSIONS
    blocks = []
    for row in rows[:limit]:
        label = row["label"] or row["session_id"][:8]
        presence = "online" if row["machine_id"] in online else "offline"
        blocks.append(
            f"{label} · {row['machine_id']} · {presence} · active {age(now - row['updated_at'])} ago"
            f"\n/cmd {row['token']} …"
        )
    text = f"Live sessions in this chat ({len(rows)}):\n\n" + "\n\n".join(blocks)
    if len(rows) > limit:
        text += f"\n\n…and {len(rows) - limit} more."
    return text
