"""ccr-box's entries in Claude Code's settings.json: install / uninstall / status (§11.4)."""

from __future__ import annotations

import json
import os
import shlex
import stat
import sys
from pathlib import Path

import pytest

from ccr_box.agent import settings as hs
from ccr_box.errors import ConfigError

EXE = "/opt/ccr box/bin/ccr-box"  # a space: the command must be shell-quoted
OLD_EXE = "/usr/local/bin/ccr-box"

OTHER_STOP = {"hooks": [{"type": "command", "command": "notify-send done"}]}
OTHER_PRE = {"matcher": "Bash", "hooks": [{"type": "command", "command": "guard.sh", "timeout": 3}]}


def existing_settings() -> dict:
    return {
        "permissions": {"allow": ["Bash(git status)"], "deny": []},
        "model": "opus",
        "hooks": {
            "PreToolUse": [OTHER_PRE],
            "Stop": [OTHER_STOP],
        },
        "env": {"FOO": "1"},
    }


def write(path: Path, data: object) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=4) + "\n")


def load(path: Path) -> dict:
    return json.loads(path.read_text())


def backups(path: Path) -> list[Path]:
    return sorted(path.parent.glob(f"{path.name}.bak-*"))


# -- paths & commands ------------------------------------------------------------------------


def test_scope_paths(tmp_path: Path) -> None:
    home, proj = tmp_path / "home", tmp_path / "proj"
    assert hs.settings_path(home=home) == home / ".claude" / "settings.json"
    assert hs.settings_path("project", project_dir=proj) == proj / ".claude" / "settings.json"
    assert hs.settings_path("local", project_dir=proj) == proj / ".claude" / "settings.local.json"
    with pytest.raises(ValueError):
        hs.settings_path("global", home=home)


@pytest.mark.parametrize("event", hs.EVENTS)
def test_hook_command_shape(event: str) -> None:
    cmd = hs.hook_command(event, EXE)
    assert shlex.split(cmd) == [EXE, "hook", event]
    assert hs.is_ccr_box_command(cmd)
    default = hs.hook_command(event)  # the running ccr-box (or python -m ccr_box)
    assert shlex.split(default)[-2:] == ["hook", event]
    assert os.path.isabs(shlex.split(default)[0])
    assert hs.is_ccr_box_command(default)


def test_hook_command_python_module_fallback(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "argv", ["/somewhere/ccr_box/__main__.py"])
    monkeypatch.setattr(hs.shutil, "which", lambda name: None)
    cmd = hs.hook_command("Stop")
    assert shlex.split(cmd) == [sys.executable, "-m", "ccr_box", "hook", "Stop"]
    assert hs.is_ccr_box_command(cmd)
    with pytest.raises(ValueError):
        hs.hook_command("PreToolUse")


@pytest.mark.parametrize(
    ("command", "ours"),
    [
        ("ccr-box hook Stop", True),
        ("/home/u/.local/bin/ccr-box hook SessionStart", True),
        ("'/opt/my tools/ccr-box' hook Notification", True),
        ("/usr/bin/python3 -m ccr_box hook SessionEnd", True),
        ("ccr-box hook", True),
        ("ccr-box server", False),
        ("ccr-box hook Stop --verbose", False),
        ("notify-send ccr-box hook Stop done", False),
        ("my-ccr-box-wrapper hook Stop", False),
        ("python -m other hook Stop", False),
        ("echo 'unbalanced", False),
        ("", False),
    ],
)
def test_is_ccr_box_command(command: str, ours: bool) -> None:
    assert hs.is_ccr_box_command(command) is ours


def test_desired_entries() -> None:
    entries = hs.desired_entries(EXE)
    assert list(entries) == list(hs.EVENTS)
    assert entries["SessionStart"]["matcher"] == "startup|resume|clear|compact"
    assert entries["SessionStart"]["hooks"][0]["timeout"] == 10
    assert entries["SessionEnd"]["hooks"][0]["timeout"] == 5
    assert "matcher" not in entries["SessionEnd"]
    for event in ("Stop", "Notification"):
        assert "matcher" not in entries[event]
        assert entries[event]["hooks"][0]["async"] is True
    for event, group in entries.items():
        (handler,) = group["hooks"]
        assert handler["type"] == "command"
        assert handler["command"] == hs.hook_command(event, EXE)


# -- install ---------------------------------------------------------------------------------


def test_install_into_missing_file_creates_dir(tmp_path: Path) -> None:
    path = hs.settings_path(home=tmp_path)
    assert not path.parent.exists()
    plan = hs.install(path, EXE)
    assert plan.changed and plan.created and plan.backup is None
    assert plan.before == {}
    assert plan.added == list(hs.EVENTS) and plan.removed == []
    assert load(path) == {"hooks": {e: [g] for e, g in hs.desired_entries(EXE).items()}}
    text = path.read_text()
    assert text.endswith("}\n") and '\n  "hooks": {' in text  # 2-space indent
    assert stat.S_IMODE(path.stat().st_mode) == hs.NEW_FILE_MODE
    assert backups(path) == []
    assert [p.name for p in path.parent.iterdir()] == ["settings.json"]  # no temp file left
    assert "Created" in hs.describe(plan)
    assert hs.status(path, EXE) == dict.fromkeys(hs.EVENTS, "installed")


def test_install_keeps_other_settings_and_hooks_in_order(tmp_path: Path) -> None:
    path = hs.settings_path(home=tmp_path)
    write(path, existing_settings())
    plan = hs.install(path, EXE)
    assert plan.changed and not plan.created
    data = load(path)
    assert list(data) == ["permissions", "model", "hooks", "env"]
    assert data["permissions"] == existing_settings()["permissions"]
    assert data["model"] == "opus" and data["env"] == {"FOO": "1"}
    hooks = data["hooks"]
    assert list(hooks) == ["PreToolUse", "Stop", "SessionStart", "Notification", "SessionEnd"]
    assert hooks["PreToolUse"] == [OTHER_PRE]
    assert hooks["Stop"] == [OTHER_STOP, hs.desired_entries(EXE)["Stop"]]
    assert plan.before == existing_settings()
    assert plan.after == data


def test_install_twice_changes_nothing(tmp_path: Path) -> None:
    path = hs.settings_path(home=tmp_path)
    write(path, existing_settings())
    hs.install(path, EXE)
    first_bytes = path.read_bytes()
    past = 1_000_000_000
    os.utime(path, (past, past))
    n_backups = len(backups(path))
    plan = hs.install(path, EXE)
    assert not plan.changed and plan.added == [] and plan.removed == []
    assert plan.backup is None
    assert path.read_bytes() == first_bytes
    assert path.stat().st_mtime == past
    assert len(backups(path)) == n_backups
    assert "nothing changed" in hs.describe(plan)


def test_install_does_not_reformat_an_already_correct_file(tmp_path: Path) -> None:
    path = hs.settings_path(home=tmp_path)
    data = existing_settings()
    for event, group in hs.desired_entries(EXE).items():
        data["hooks"].setdefault(event, []).insert(0, group)  # ours first, other tools after
    write(path, data)  # 4-space indent: not our formatting
    original = path.read_bytes()
    assert not hs.install(path, EXE).changed
    assert path.read_bytes() == original


def test_install_backs_up_previous_content_and_keeps_mode(tmp_path: Path) -> None:
    path = hs.settings_path(home=tmp_path)
    write(path, existing_settings())
    path.chmod(0o640)
    original = path.read_bytes()
    plan = hs.install(path, EXE)
    assert plan.backup is not None and plan.backup.parent == path.parent
    assert plan.backup.name.startswith("settings.json.bak-")
    assert plan.backup.read_bytes() == original
    assert backups(path) == [plan.backup]
    assert stat.S_IMODE(path.stat().st_mode) == 0o640
    assert str(plan.backup) in hs.describe(plan)
    # A second change within the same second gets a distinct backup name.
    plan2 = hs.install(path, OLD_EXE)
    assert plan2.backup is not None and plan2.backup != plan.backup
    assert len(backups(path)) == 2


def test_outdated_entry_is_replaced_not_duplicated(tmp_path: Path) -> None:
    path = hs.settings_path(home=tmp_path)
    data = existing_settings()
    old = hs.desired_entries(OLD_EXE)
    data["hooks"]["Stop"] = [old["Stop"], OTHER_STOP]
    # An old ccr-box handler sharing a group with another tool's handler.
    data["hooks"]["SessionEnd"] = [
        {"hooks": [{"type": "command", "command": "logger bye"}, old["SessionEnd"]["hooks"][0]]}
    ]
    write(path, data)
    assert hs.status(path, EXE) == {
        "SessionStart": "missing",
        "Stop": "outdated",
        "Notification": "missing",
        "SessionEnd": "outdated",
    }
    plan = hs.install(path, EXE)
    assert plan.removed == ["Stop", "SessionEnd"]
    hooks = load(path)["hooks"]
    new = hs.desired_entries(EXE)
    assert hooks["Stop"] == [OTHER_STOP, new["Stop"]]
    assert hooks["SessionEnd"] == [
        {"hooks": [{"type": "command", "command": "logger bye"}]},
        new["SessionEnd"],
    ]
    assert hs.status(path, EXE) == dict.fromkeys(hs.EVENTS, "installed")
    text = hs.describe(plan)
    assert "updated: Stop, SessionEnd" in text and "added:   SessionStart, Notification" in text


def test_changed_flags_make_entry_outdated(tmp_path: Path) -> None:
    path = hs.settings_path(home=tmp_path)
    hs.install(path, EXE)
    data = load(path)
    del data["hooks"]["Notification"][0]["hooks"][0]["async"]
    write(path, data)
    assert hs.status(path, EXE)["Notification"] == "outdated"
    plan = hs.install(path, EXE)
    assert plan.added == ["Notification"] and plan.removed == ["Notification"]
    assert hs.status(path, EXE)["Notification"] == "installed"
    assert len(load(path)["hooks"]["Notification"]) == 1


# -- uninstall -------------------------------------------------------------------------------


def test_uninstall_removes_only_ours(tmp_path: Path) -> None:
    path = hs.settings_path(home=tmp_path)
    write(path, existing_settings())
    hs.install(path, EXE)
    plan = hs.uninstall(path)
    assert plan.changed and plan.backup is not None
    assert sorted(plan.removed) == sorted(hs.EVENTS)
    assert load(path) == existing_settings()
    assert list(load(path)) == ["permissions", "model", "hooks", "env"]
    assert hs.status(path, EXE) == dict.fromkeys(hs.EVENTS, "missing")
    assert "removed:" in hs.describe(plan)


def test_install_then_uninstall_round_trip_drops_hooks_key(tmp_path: Path) -> None:
    path = hs.settings_path(home=tmp_path)
    write(path, {"model": "sonnet"})
    hs.install(path, EXE)
    hs.uninstall(path)
    assert load(path) == {"model": "sonnet"}


def test_uninstall_without_our_entries_changes_nothing(tmp_path: Path) -> None:
    path = hs.settings_path(home=tmp_path)
    write(path, existing_settings())
    original = path.read_bytes()
    plan = hs.uninstall(path)
    assert not plan.changed and plan.removed == [] and plan.backup is None
    assert path.read_bytes() == original
    assert backups(path) == []
    assert "nothing changed" in hs.describe(plan)

    missing = tmp_path / "nowhere" / "settings.json"
    assert not hs.uninstall(missing).changed
    assert not missing.parent.exists()


# -- status & errors -------------------------------------------------------------------------


def test_status_missing_file(tmp_path: Path) -> None:
    assert hs.status(tmp_path / "settings.json", EXE) == dict.fromkeys(hs.EVENTS, "missing")


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        ('{"model": "opus",', "is not valid JSON"),
        ("[1, 2]", "top level is not a JSON object"),
        ('{"hooks": []}', '"hooks" is not a JSON object'),
        ('{"hooks": {"Stop": {"oops": 1}}}', '"hooks.Stop" is not a JSON array'),
    ],
)
def test_bad_file_raises_and_is_untouched(tmp_path: Path, content: str, problem: str) -> None:
    path = hs.settings_path(home=tmp_path)
    path.parent.mkdir(parents=True)
    path.write_text(content)
    for op in (hs.install, hs.uninstall, hs.status):
        with pytest.raises(ConfigError) as info:
            op(path)
        assert problem in str(info.value)
        assert str(path) in str(info.value)
    assert path.read_text() == content
    assert [p.name for p in path.parent.iterdir()] == ["settings.json"]


def test_project_and_local_scopes(tmp_path: Path) -> None:
    proj = tmp_path / "proj"
    proj.mkdir()
    project = hs.settings_path("project", project_dir=proj)
    local = hs.settings_path("local", project_dir=proj)
    hs.install(local, EXE)
    assert local.exists() and not project.exists()
    assert hs.status(local, EXE) == dict.fromkeys(hs.EVENTS, "installed")
    assert hs.status(project, EXE) == dict.fromkeys(hs.EVENTS, "missing")


def test_symlinked_settings_stay_a_symlink(tmp_path: Path) -> None:
    real = tmp_path / "dotfiles" / "claude-settings.json"
    write(real, {"model": "opus"})
    path = hs.settings_path(home=tmp_path / "home")
    path.parent.mkdir(parents=True)
    path.symlink_to(real)
    plan = hs.install(path, EXE)
    assert path.is_symlink()
    assert load(real)["model"] == "opus" and "hooks" in load(real)
    assert plan.backup is not None and plan.backup.parent == real.parent
