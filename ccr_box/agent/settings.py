"""Install, remove and inspect ccr-box's hook entries in Claude Code's ``settings.json`` (§11.4).

Claude Code reads ``{"hooks": {<Event>: [<matcher group>, ...]}}`` where a matcher group is
``{"matcher"?: str, "hooks": [{"type": "command", "command": str, "timeout"?: seconds,
"async"?: bool}, ...]}``. ccr-box owns exactly the command handlers whose command has the shape
``<...ccr-box | ... -m ccr_box> hook [<Event>]``; everything else in the file (other keys, other
tools' groups and handlers, their order) is left untouched. The file is only rewritten when its
content changes, after a timestamped backup, atomically and with its previous mode.
"""

from __future__ import annotations

import copy
import json
import os
import shlex
import shutil
import stat
import sys
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, TypeGuard

from ccr_box.errors import ConfigError
from ccr_box.files import atomic_write

EVENTS = ("SessionStart", "Stop", "Notification", "SessionEnd")
SESSION_START_MATCHER = "startup|resume|clear|compact"
NEW_FILE_MODE = 0o600  # user settings often carry secrets in "env"
_SCOPES = {"user", "project", "local"}

# Parsed JSON: the file is whatever the user (or another tool) wrote, checked where it is read.
JsonObject = dict[str, Any]
JsonArray = list[Any]


@dataclass
class Plan:
    """What ``install``/``uninstall`` did (or found nothing to do)."""

    path: Path
    changed: bool
    before: JsonObject
    after: JsonObject
    added: list[str]  # events whose ccr-box entry was added or rewritten
    removed: list[str]  # events from which ccr-box handlers were removed
    backup: Path | None = None  # copy of the previous file, when one existed and was changed
    action: str = "install"  # "install" | "uninstall"
    created: bool = False  # the file did not exist before


def settings_path(
    scope: str = "user", *, home: Path | None = None, project_dir: Path | None = None
) -> Path:
    """Claude Code's settings file for ``scope`` ("user", "project" or "local")."""
    if scope not in _SCOPES:
        raise ValueError(f"unknown settings scope {scope!r} (expected user, project or local)")
    if scope == "user":
        return (home if home is not None else Path.home()) / ".claude" / "settings.json"
    base = project_dir if project_dir is not None else Path.cwd()
    name = "settings.json" if scope == "project" else "settings.local.json"
    return base / ".claude" / name


def _default_prefix() -> str:
    """Absolute, shell-quoted way to run this ccr-box, usable without PATH."""
    argv0 = sys.argv[0] if sys.argv else ""
    if Path(argv0).name in ("ccr-box", "ccr-box.exe") and os.path.isfile(argv0):
        # abspath, not resolve: keep a stable entry-point symlink (~/.local/bin/ccr-box).
        return shlex.quote(os.path.abspath(argv0))
    found = shutil.which("ccr-box")
    if found:
        return shlex.quote(os.path.abspath(found))
    return f"{shlex.quote(sys.executable)} -m ccr_box"


def hook_command(event: str, executable: str | None = None) -> str:
    """The command line Claude Code runs for ``event``: ``<ccr-box> hook <event>``."""
    if event not in EVENTS:
        raise ValueError(f"unknown hook event {event!r} (expected one of {', '.join(EVENTS)})")
    prefix = shlex.quote(executable) if executable else _default_prefix()
    return f"{prefix} hook {event}"


def desired_entries(executable: str | None = None) -> dict[str, JsonObject]:
    """Event -> the matcher group ccr-box installs for it."""
    entries: dict[str, JsonObject] = {}
    for event in EVENTS:
        handler: dict[str, Any] = {"type": "command", "command": hook_command(event, executable)}
        if event == "SessionStart":
            handler["timeout"] = 10
        elif event == "SessionEnd":
            handler["timeout"] = 5
        else:
            handler["async"] = True
        group: dict[str, Any] = {"hooks": [handler]}
        if event == "SessionStart":
            group = {"matcher": SESSION_START_MATCHER, **group}
        entries[event] = group
    return entries


def is_ccr_box_command(command: str) -> bool:
    """True for ``<anything>/ccr-box hook [Event]`` or ``<python> -m ccr_box hook [Event]``."""
    if not isinstance(command, str):
        return False
    try:
        tokens = shlex.split(command)
    except ValueError:
        return False
    if "hook" not in tokens:
        return False
    i = len(tokens) - 1 - tokens[::-1].index("hook")
    tail = tokens[i + 1 :]
    if len(tail) > 1 or (tail and not tail[0].isidentifier()):
        return False
    head = tokens[:i]
    if not head:
        return False
    if head[-1].replace("\\", "/").rsplit("/", 1)[-1] in ("ccr-box", "ccr-box.exe"):
        return True
    return len(head) >= 3 and head[-2:] == ["-m", "ccr_box"]


def _is_ours(handler: object) -> TypeGuard[JsonObject]:
    """True for a handler object whose command runs ccr-box's hook (so it is a JSON object)."""
    command = handler.get("command") if isinstance(handler, dict) else None
    return isinstance(command, str) and is_ccr_box_command(command)


# -- reading ---------------------------------------------------------------------------------


def _read(path: Path) -> tuple[bytes | None, JsonObject]:
    """(raw bytes or None when missing, parsed object). Raises ConfigError on bad content."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return None, {}
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(str(path), f"is not valid UTF-8: {exc}") from None
    if not text.strip():
        return raw, {}
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConfigError(str(path), f"is not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError(str(path), "the top level is not a JSON object")
    if "hooks" in data and not isinstance(data["hooks"], dict):
        raise ConfigError(str(path), '"hooks" is not a JSON object')
    return raw, data


def _event_list(path: Path, hooks: JsonObject, event: str) -> JsonArray | None:
    groups = hooks.get(event)
    if groups is not None and not isinstance(groups, list):
        raise ConfigError(str(path), f'"hooks.{event}" is not a JSON array')
    return groups


def _strip_ours(groups: JsonArray) -> tuple[JsonArray, bool]:
    """Groups without ccr-box handlers (groups emptied by that are dropped), and whether any went."""
    kept: JsonArray = []
    removed = False
    for group in groups:
        handlers = group.get("hooks") if isinstance(group, dict) else None
        if not isinstance(handlers, list) or not any(_is_ours(h) for h in handlers):
            kept.append(group)
            continue
        removed = True
        rest = [h for h in handlers if not _is_ours(h)]
        if rest:
            kept.append({**group, "hooks": rest})
    return kept, removed


def _our_groups(groups: JsonArray) -> JsonArray:
    return [
        g
        for g in groups
        if isinstance(g, dict)
        and isinstance(g.get("hooks"), list)
        and any(_is_ours(h) for h in g["hooks"])
    ]


# -- writing ---------------------------------------------------------------------------------


def _backup_name(path: Path) -> Path:
    base = path.with_name(f"{path.name}.bak-{datetime.now():%Y%m%d-%H%M%S}")
    candidate, n = base, 0
    while candidate.exists():
        n += 1
        candidate = base.with_name(f"{base.name}-{n}")
    return candidate


def _write(path: Path, data: JsonObject, previous: bytes | None) -> Path | None:
    """Back up the previous content (if any), then replace ``path`` atomically. Returns backup."""
    target = path.resolve() if path.is_symlink() else path  # keep dotfile symlinks intact
    target.parent.mkdir(parents=True, exist_ok=True)
    mode = stat.S_IMODE(target.stat().st_mode) if previous is not None else NEW_FILE_MODE
    backup = None
    if previous is not None:
        backup = _backup_name(target)
        atomic_write(backup, previous, mode=mode, exclusive=True)
    atomic_write(target, json.dumps(data, indent=2, ensure_ascii=False) + "\n", mode=mode)
    return backup


def _finish(
    path: Path, raw: bytes | None, before: JsonObject, after: JsonObject, **kw: Any
) -> Plan:
    changed = after != before
    backup = _write(path, after, raw) if changed else None
    return Plan(path, changed, before, after, backup=backup, created=changed and raw is None, **kw)


# -- operations ------------------------------------------------------------------------------


def install(path: Path, executable: str | None = None) -> Plan:
    """Make ``path`` run ccr-box for every event in EVENTS; nothing else changes."""
    raw, data = _read(path)
    before = copy.deepcopy(data)
    after = copy.deepcopy(data)
    hooks = after.setdefault("hooks", {})
    added: list[str] = []
    removed: list[str] = []
    for event, wanted in desired_entries(executable).items():
        groups = _event_list(path, hooks, event) or []
        if _our_groups(groups) == [wanted]:
            continue  # already exactly right, wherever it sits
        kept, had_ours = _strip_ours(groups)
        hooks[event] = [*kept, copy.deepcopy(wanted)]
        added.append(event)
        if had_ours:
            removed.append(event)
    return _finish(path, raw, before, after, added=added, removed=removed, action="install")


def uninstall(path: Path) -> Plan:
    """Remove every ccr-box handler from ``path`` (and groups/events left empty by that)."""
    raw, data = _read(path)
    before = copy.deepcopy(data)
    after = copy.deepcopy(data)
    hooks = after.get("hooks")
    removed: list[str] = []
    if isinstance(hooks, dict):
        for event in list(hooks):
            groups = _event_list(path, hooks, event)
            if not groups:
                continue
            kept, had_ours = _strip_ours(groups)
            if not had_ours:
                continue
            removed.append(event)
            if kept:
                hooks[event] = kept
            else:
                del hooks[event]
        if removed and not hooks:
            del after["hooks"]
    return _finish(path, raw, before, after, added=[], removed=removed, action="uninstall")


def status(path: Path, executable: str | None = None) -> dict[str, str]:
    """Event -> "installed" | "missing" | "outdated" (present, but not exactly what we install)."""
    _, data = _read(path)
    hooks = data.get("hooks") or {}
    result: dict[str, str] = {}
    for event, wanted in desired_entries(executable).items():
        ours = _our_groups(_event_list(path, hooks, event) or [])
        if not ours:
            result[event] = "missing"
        else:
            result[event] = "installed" if ours == [wanted] else "outdated"
    return result


def describe(plan: Plan) -> str:
    """Human summary of a Plan for the CLI."""
    if not plan.changed:
        if plan.action == "uninstall":
            return f"No ccr-box hooks in {plan.path}; nothing changed."
        return f"ccr-box hooks already up to date in {plan.path}; nothing changed."
    lines = [f"{'Created' if plan.created else 'Updated'} {plan.path}:"]
    updated = [e for e in plan.added if e in plan.removed]
    new = [e for e in plan.added if e not in plan.removed]
    gone = [e for e in plan.removed if e not in plan.added]
    if new:
        lines.append(f"  added:   {', '.join(new)}")
    if updated:
        lines.append(f"  updated: {', '.join(updated)}")
    if gone:
        lines.append(f"  removed: {', '.join(gone)}")
    if plan.backup is not None:
        lines.append(f"Backup of the previous file: {plan.backup}")
    return "\n".join(lines)
