"""The one way ccr-box writes a file the user owns: :func:`atomic_write`.

The config file, Claude Code's ``settings.json`` (and its backups) and the systemd units all go
through it, so they share one set of rules: readers see the old file or the new one, never half of
each; the data is on disk (file and directory fsynced) before the call returns; a failed write
leaves no temporary file behind; and the mode is chosen explicitly, never by the umask.
"""

from __future__ import annotations

import contextlib
import os
import stat
import tempfile
from pathlib import Path

NEW_FILE_MODE = 0o600  # user files often carry secrets: private unless the caller says otherwise
_O_BINARY = getattr(os, "O_BINARY", 0)


def atomic_write(
    path: Path | str, data: bytes | str, *, mode: int | None = None, exclusive: bool = False
) -> None:
    """Replace (or create) ``path`` with ``data`` atomically and durably.

    ``data`` that is a ``str`` is written as UTF-8 exactly as given (no newline translation). The
    bytes go to a private temporary file in the same directory, which is flushed, fsynced, given
    its mode, then renamed over ``path`` (``os.replace``); the directory is fsynced afterwards so
    the rename survives a crash. On any error the temporary file is removed and ``path`` is left as
    it was.

    The mode is ``mode`` when given, else the mode of the file being replaced, else 0600.
    A symlink at ``path`` is kept: the file it points to is replaced. The parent directory must
    exist (callers that create it choose its mode themselves).

    ``exclusive=True`` never replaces anything: :class:`FileExistsError` when ``path`` exists
    (even as a dangling symlink). The complete file then appears through a hard link, which fails
    if the name is taken; where hard links are unsupported (some network or FUSE file systems) it
    is created with ``O_EXCL`` and written in place instead.
    """
    payload = data.encode("utf-8") if isinstance(data, str) else bytes(data)
    target = Path(path) if exclusive else Path(os.path.realpath(path))
    if mode is None:
        mode = NEW_FILE_MODE
        if not exclusive:
            with contextlib.suppress(FileNotFoundError):
                mode = stat.S_IMODE(target.stat().st_mode)
    fd, name = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    temp = Path(name)
    try:
        try:
            _write_all(fd, payload)
            os.chmod(temp, mode)  # explicit: mkstemp's 0600 and the umask never decide
            os.fsync(fd)
        finally:
            os.close(fd)
        if exclusive:
            _link_new(temp, target, payload, mode)
        else:
            os.replace(temp, target)
    finally:
        with contextlib.suppress(FileNotFoundError):
            temp.unlink()  # gone after os.replace; the spare name after a hard link or a failure
    fsync_directory(target.parent)


def fsync_directory(directory: Path | str) -> None:
    """Make a rename in ``directory`` durable (POSIX); skipped where directories cannot be opened."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _link_new(temp: Path, target: Path, payload: bytes, mode: int) -> None:
    try:
        os.link(temp, target)
    except FileExistsError:
        raise
    except OSError:  # no hard links here: create the name exclusively and write it in place
        fd = os.open(target, os.O_CREAT | os.O_EXCL | os.O_WRONLY | _O_BINARY, mode)
        try:
            try:
                _write_all(fd, payload)
                os.chmod(target, mode)
                os.fsync(fd)
            finally:
                os.close(fd)
        except BaseException:
            with contextlib.suppress(OSError):
                target.unlink()  # ours (created exclusively above) and incomplete
            raise


def _write_all(fd: int, payload: bytes) -> None:
    view = memoryview(payload)
    while view:
        view = view[os.write(fd, view) :]
