"""``ccr-box backup PATH`` and ``ccr-box restore PATH``: copies of the server database.

``backup`` runs while the server does (see :mod:`ccr_box.db.backup`); ``restore`` needs it stopped
and keeps the database it replaces. Exit codes: 0 done; 1 the copy or restore failed (the message
says why; nothing was changed); 2 bad usage, e.g. ``restore`` without a terminal and without --yes.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

COMMANDS: tuple[str, ...] = ("backup", "restore")

_DATA_DIR_HELP = "the server's data directory (default: server.data_dir, CCR_BOX_DATA_DIR)"


def add_parsers(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    backup = sub.add_parser(
        "backup",
        help="copy the live database to PATH (safe while the server runs)",
        description=(
            "Make a consistent, checked copy of the server database. PATH is a file, or a "
            "directory to write ccr-box-YYYYMMDD-HHMMSS.sqlite3 into. The server keeps running."
        ),
    )
    backup.add_argument("path", metavar="PATH", help="backup file or directory")
    backup.add_argument("--force", action="store_true", help="replace PATH if it exists")
    backup.add_argument("--data-dir", help=_DATA_DIR_HELP)

    restore = sub.add_parser(
        "restore",
        help="replace the database with a backup (stop the server first)",
        description=(
            "Check the backup, keep the current database as "
            "ccr-box.sqlite3.before-restore-YYYYMMDD-HHMMSS beside it, and move the backup in. "
            "Refuses while a server uses the database."
        ),
    )
    restore.add_argument("path", metavar="PATH", help="a file written by `ccr-box backup`")
    restore.add_argument("--data-dir", help=_DATA_DIR_HELP)
    restore.add_argument("--yes", "-y", action="store_true", help="do not ask for confirmation")


def run(args: argparse.Namespace) -> int:
    from ccr_box.config import load_machine_config

    data_dir = (
        Path(args.data_dir).expanduser()
        if args.data_dir
        else load_machine_config(args.config).server.data_dir
    )
    if args.command == "backup":
        return _backup(Path(args.path).expanduser(), data_dir, force=args.force)
    return _restore(Path(args.path).expanduser(), data_dir, assume_yes=args.yes)


def _backup(target: Path, data_dir: Path, *, force: bool) -> int:
    from ccr_box.db import database_path
    from ccr_box.db.backup import backup_database

    source = database_path(data_dir)
    written, report = backup_database(source, target, force=force)
    print(f"Backed up {source}")
    print(f"       to {written} ({report.summary()}, integrity ok).")
    print(f"Restore with: ccr-box restore {written}   (stop the server first)")
    return 0


def _restore(backup: Path, data_dir: Path, *, assume_yes: bool) -> int:
    from ccr_box.db import database_path
    from ccr_box.db.backup import inspect_database, restore_database

    found = inspect_database(backup, full=True)
    if found.problems:
        print(f"ccr-box: {backup} cannot be restored: {'; '.join(found.problems)}", file=sys.stderr)
        return 1
    target = database_path(data_dir)
    print(f"Restore {backup} ({found.summary()})")
    if target.exists():
        current = inspect_database(target)
        now = current.summary() if current.ok else "; ".join(current.problems)
        print(f"   over {target} ({now}); the current file is kept beside it.")
    else:
        print(f"   to {target} (no database there yet).")
    if not assume_yes:
        if not sys.stdin.isatty():
            print(
                "ccr-box: not on a terminal; pass --yes to restore without asking", file=sys.stderr
            )
            return 2
        if input("Restore? [y/N] ").strip().lower() not in ("y", "yes"):
            print("Nothing changed.")
            return 1
    restored, kept = restore_database(backup, data_dir)
    print(f"Restored {restored}.")
    if kept is not None:
        print(f"The previous database is in {kept}.")
    print("Start the server again: ccr-box up   (or: systemctl --user start ccr-box)")
    return 0
