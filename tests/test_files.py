"""ccr_box.files.atomic_write: the one writer of the user's files."""

from __future__ import annotations

import os
import stat
import sys
from pathlib import Path

import pytest

from ccr_box.files import atomic_write

POSIX = sys.platform != "win32"
posix_only = pytest.mark.skipif(not POSIX, reason="POSIX modes and directory fsync")


def mode_of(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def names(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir())


def test_new_file_is_private_and_complete(tmp_path: Path) -> None:
    path = tmp_path / "new.bin"
    data = os.urandom(3 * 1024 * 1024 + 17)  # larger than any single write
    old_umask = os.umask(0)  # a permissive umask decides nothing
    try:
        atomic_write(path, data)
    finally:
        os.umask(old_umask)
    assert path.read_bytes() == data
    if POSIX:
        assert mode_of(path) == 0o600
    assert names(tmp_path) == ["new.bin"]


def test_text_is_utf8_exactly_as_given(tmp_path: Path) -> None:
    path = tmp_path / "t.txt"
    atomic_write(path, "ünï\r\nline\n")
    assert path.read_bytes() == "ünï\r\nline\n".encode()


@posix_only
def test_mode_of_the_replaced_file_is_kept_unless_one_is_given(tmp_path: Path) -> None:
    path = tmp_path / "f"
    path.write_text("old")
    path.chmod(0o640)
    atomic_write(path, "new")
    assert (path.read_text(), mode_of(path)) == ("new", 0o640)
    atomic_write(path, "newer", mode=0o644)
    assert (path.read_text(), mode_of(path)) == ("newer", 0o644)
    atomic_write(tmp_path / "given", "x", mode=0o604)
    assert mode_of(tmp_path / "given") == 0o604


@posix_only
def test_a_symlink_stays_and_its_target_is_replaced(tmp_path: Path) -> None:
    real = tmp_path / "dotfiles" / "real.json"
    real.parent.mkdir()
    real.write_text("{}")
    real.chmod(0o640)
    link = tmp_path / "link.json"
    link.symlink_to(real)
    atomic_write(link, '{"a": 1}')
    assert link.is_symlink() and real.read_text() == '{"a": 1}' and mode_of(real) == 0o640
    assert names(real.parent) == ["real.json"] and names(tmp_path) == ["dotfiles", "link.json"]


@posix_only
def test_file_and_directory_are_fsynced(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    synced: list[str] = []
    real_fsync = os.fsync

    def spy(fd: int) -> None:
        synced.append("dir" if stat.S_ISDIR(os.fstat(fd).st_mode) else "file")
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", spy)
    atomic_write(tmp_path / "f", b"data")
    assert synced == ["file", "dir"]


# --- failures leave the old file and no temporary file ---------------------------------------


def test_data_that_cannot_be_encoded_writes_nothing(tmp_path: Path) -> None:
    path = tmp_path / "f"
    path.write_text("old")
    with pytest.raises(UnicodeEncodeError):
        atomic_write(path, "good start, then a lone surrogate: \ud800")
    assert path.read_text() == "old"
    assert names(tmp_path) == ["f"]


def test_a_missing_parent_directory_is_an_error_not_created(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        atomic_write(tmp_path / "no" / "such" / "f", b"x")
    assert names(tmp_path) == []


def test_a_failing_fsync_keeps_the_old_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "f"
    path.write_text("old")

    def dying_disk(fd: int) -> None:
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(os, "fsync", dying_disk)
    with pytest.raises(OSError, match="Input/output"):
        atomic_write(path, "new")
    assert path.read_text() == "old"
    assert names(tmp_path) == ["f"]


def test_a_failing_rename_leaves_no_temporary_file(tmp_path: Path) -> None:
    occupied = tmp_path / "dir"
    (occupied / "inside").mkdir(parents=True)  # a non-empty directory cannot be renamed over
    with pytest.raises(OSError):
        atomic_write(occupied, b"x")
    assert names(tmp_path) == ["dir"] and names(occupied) == ["inside"]


# --- exclusive: never replace -----------------------------------------------------------------


def test_exclusive_creates_once_and_never_replaces(tmp_path: Path) -> None:
    path = tmp_path / "f"
    atomic_write(path, "first", exclusive=True)
    if POSIX:
        assert mode_of(path) == 0o600
    with pytest.raises(FileExistsError):
        atomic_write(path, "second", exclusive=True)
    assert path.read_text() == "first"
    assert names(tmp_path) == ["f"]


@posix_only
def test_exclusive_refuses_a_dangling_symlink(tmp_path: Path) -> None:
    link = tmp_path / "link"
    link.symlink_to(tmp_path / "nowhere")
    with pytest.raises(FileExistsError):
        atomic_write(link, "x", exclusive=True)
    assert names(tmp_path) == ["link"]


def test_exclusive_without_hard_links(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def no_link(src: object, dst: object) -> None:
        raise PermissionError("hard links not supported")

    monkeypatch.setattr(os, "link", no_link)
    path = tmp_path / "f"
    atomic_write(path, "content", mode=0o640, exclusive=True)
    assert path.read_text() == "content"
    if POSIX:
        assert mode_of(path) == 0o640
    assert names(tmp_path) == ["f"]
    with pytest.raises(FileExistsError):
        atomic_write(path, "other", exclusive=True)
    assert path.read_text() == "content"

    real_fsync = os.fsync
    calls = []

    def second_fsync_fails(fd: int) -> None:
        calls.append(fd)
        if len(calls) == 2:  # the first is the temporary file's, the second the direct write's
            raise OSError(5, "Input/output error")
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", second_fsync_fails)
    with pytest.raises(OSError, match="Input/output"):
        atomic_write(tmp_path / "g", "content", exclusive=True)
    assert names(tmp_path) == ["f"]  # the half-written file is removed, not left in place
