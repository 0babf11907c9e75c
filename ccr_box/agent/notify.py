"""Texts the agent and its hooks send through ``/notifications/send`` (contract §11.4)."""

from __future__ import annotations

import json
from pathlib import Path, PurePath

STOP = "🤖 Stop"
NEEDS_INPUT = "❓ Needs input"
FALLBACK_BODY = "Task completed"
TRANSCRIPT_TAIL_BYTES = 2 * 1024 * 1024  # scan at most the last 2 MiB of a transcript
# The server sends at most 10 chunks of 4,096 (§8.3) and takes at most 1 MiB of JSON: a longer body
# is clipped here so the footer survives and the request is never refused.
MAX_BODY_CHARS = 30_000


def short_cwd(cwd: str | None) -> str:
    """The last two path segments of ``cwd`` (``~`` style paths stay readable)."""
    if not cwd:
        return "?"
    parts = [p for p in PurePath(cwd).parts if p not in ("/", "")]
    return "/".join(parts[-2:]) if parts else cwd


def clip_body(body: str, limit: int = MAX_BODY_CHARS) -> str:
    """A body short enough for one request (a huge one would be refused with 413 and lost).

    Keeps the beginning and, larger, the end (where Claude's question usually is).
    """
    if len(body) <= limit:
        return body
    head = limit // 3
    tail = limit - head
    omitted = len(body) - head - tail
    return f"{body[:head]}\n\n[… {omitted} characters omitted …]\n\n{body[-tail:]}"


def notification_text(kind: str, label: str, body: str, cwd: str | None, machine_id: str) -> str:
    return (
        f"{kind}: {label}\n\n{body}\n\n📂 {short_cwd(cwd)} · 🖥 {machine_id}\n"
        "↩️ Reply to this message to answer"
    )


def interrupted_text(command: str, machine_id: str) -> str:
    preview = command if len(command) <= 500 else command[:500] + "…"
    return (
        f"⚠️ A reply may not have been delivered to {machine_id}: the agent restarted while "
        f"typing it, so it was not typed again.\n\n{preview or '(empty)'}\n\n"
        "↩️ Reply to this message to send it again"
    )


def last_assistant_text(transcript_path: str | None) -> str | None:
    """The last assistant text in a Claude Code JSONL transcript, scanning backwards."""
    if not transcript_path:
        return None
    path = Path(transcript_path).expanduser()
    try:
        with path.open("rb") as fh:
            fh.seek(0, 2)
            size = fh.tell()
            fh.seek(max(size - TRANSCRIPT_TAIL_BYTES, 0))
            lines = fh.read().splitlines()
    except OSError:
        return None
    for raw in reversed(lines):
        text = _assistant_text(raw)
        if text:
            return text
    return None


def _assistant_text(raw: bytes) -> str | None:
    try:
        entry = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        return None
    if not isinstance(entry, dict) or entry.get("type") != "assistant":
        return None
    if entry.get("isSidechain") is True:  # a sub-agent's turn, not Claude's answer to the user
        return None
    message = entry.get("message")
    content = message.get("content") if isinstance(message, dict) else None
    if isinstance(content, str):
        return content.strip() or None
    if isinstance(content, list):
        texts = [
            part.get("text", "")
            for part in content
            if isinstance(part, dict) and part.get("type") == "text"
        ]
        joined = "\n".join(t for t in texts if isinstance(t, str)).strip()
        return joined or None
    return None
