"""``ccr-box backup`` / ``restore`` and :mod:`ccr_box.db.backup` on real SQLite files.

The consistency test writes through the server's own :class:`Database` (group commit, WAL) while
backups run on other threads; the CLI tests run ``ccr-box up`` as a child process and back it up
from a second one.
"""

from __future__ import annotations

import asyncio
import signal
import sqlite3
import stat
from datetime import datetime
from pathlib import Path

import aiohttp
import pytest

from ccr_box.cli import main
from ccr_box.db import Database, database_path
from ccr_box.db import sessions as sessions_db
from ccr_box.db.backup import backup_database, inspect_database, restore_database
from ccr_box.db.schema import SCHEMA_VERSION
from ccr_box.errors import DatabaseBusyError, DatabaseError
from tests.conftest import API_KEY
from tests.fake_telegram import FakeTelegram
from tests.helpers_proc import Proc, clean_env, run_ccr_box

NOON = datetime(2026, 12, 2, 12, 0, 0)
AUTH = {"Authorization": f"Bearer {API_KEY}"}


def add_pair(i: int):
    """One transaction, two rows: a snapshot holds both or neither."""

    def job(conn: sqlite3.Connection) -> None:
        for side in ("a", "b"):
            sessions_db.upsert(conn, f"{side}-{i:06}", "m", None, i, max_sessions=10**9)

    return job


def session_ids(path: Path) -> list[str]:
    with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as conn:
        return [r[0] for r in conn.execute("SELECT session_id FROM sessions ORDER BY session_id")]


def sidecar(path: Path, suffix: str) -> Path:
    return Path(f"{path}{suffix}")


def leftovers(directory: Path) -> list[Path]:
    """Temporary files a backup or restore failed to clean up."""
    return list(directory.rglob("*.tmp"))


def assert_consistent_prefix(ids: list[str]) -> int:
    """The rows are exactly pairs 0..n-1: no torn transaction, no gap. Returns n."""
    n = len(ids) // 2
    assert ids == sorted([f"a-{i:06}" for i in range(n)] + [f"b-{i:06}" for i in range(n)])
    return n


async def test_backups_taken_during_writes_are_consistent_and_restorable(tmp_path: Path) -> None:
    db = await Database.open(tmp_path / "live" / "ccr-box.sqlite3")
    for i in range(100):
        await db.write(add_pair(i))
    written = 100
    done = asyncio.Event()

    async def keep_writing() -> None:
        nonlocal written
        while not done.is_set():
            await db.write(add_pair(written))
            written += 1

    async def take_backups() -> list[Path]:
        paths = []
        for k in range(5):
            target = tmp_path / f"backup-{k}.sqlite3"
            path, report = await asyncio.to_thread(backup_database, db.path, target)
            assert report.ok and report.schema_version == SCHEMA_VERSION
            paths.append(path)
        done.set()
        return paths

    try:
        _, paths = await asyncio.gather(keep_writing(), take_backups())
    finally:
        await db.close()

    counts = [assert_consistent_prefix(session_ids(p)) for p in paths]
    assert counts[0] >= 100 and counts == sorted(counts) and counts[-1] <= written
    for path in paths:
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        assert not sidecar(path, "-wal").exists()  # one self-contained file
        assert inspect_database(path, full=True).sessions == 2 * counts[paths.index(path)]

    # The last one restores over the live data and the server's Database opens it.
    restored, kept = restore_database(paths[-1], tmp_path / "live", now=NOON)
    assert kept == tmp_path / "live" / "ccr-box.sqlite3.before-restore-20261202-120000"
    assert assert_consistent_prefix(session_ids(kept)) == written
    reopened = await Database.open(restored)
    try:
        assert await reopened.read(sessions_db.count) == 2 * counts[-1]
    finally:
        await reopened.close()


async def test_restore_moves_the_old_wal_with_its_database(tmp_path: Path) -> None:
    source = await Database.open(tmp_path / "src" / "ccr-box.sqlite3")
    await source.write(add_pair(0))
    await source.close()
    backup, _ = backup_database(source.path, tmp_path / "b.sqlite3")

    live = tmp_path / "live"
    db = await Database.open(database_path(live))
    for i in range(3):
        await db.write(add_pair(i))
    await db.close()
    # A server killed with -9 leaves a WAL behind; replayed into the restored file it would
    # corrupt it, so it must travel with the file it belongs to.
    sidecar(database_path(live), "-wal").write_bytes(b"\0" * 4096)

    restored, kept = restore_database(backup, live, now=NOON)
    assert kept is not None
    assert sidecar(kept, "-wal").read_bytes() == b"\0" * 4096
    assert not sidecar(restored, "-wal").exists() and not sidecar(restored, "-shm").exists()
    assert session_ids(restored) == ["a-000000", "b-000000"]
    assert not leftovers(live)


async def test_restore_refuses_while_the_database_is_open(tmp_path: Path) -> None:
    db = await Database.open(tmp_path / "live" / "ccr-box.sqlite3")
    await db.write(add_pair(0))
    backup, _ = backup_database(db.path, tmp_path / "b.sqlite3")
    try:
        with pytest.raises(DatabaseBusyError, match="stop it first"):
            restore_database(backup, tmp_path / "live")
        assert await db.read(sessions_db.count) == 2
    finally:
        await db.close()


async def test_bad_backup_targets_and_sources_fail_clearly_and_change_nothing(
    tmp_path: Path,
) -> None:
    with pytest.raises(DatabaseError, match="no database at"):
        backup_database(tmp_path / "none.sqlite3", tmp_path / "b.sqlite3")

    db = await Database.open(tmp_path / "live" / "ccr-box.sqlite3")
    await db.write(add_pair(0))
    try:
        taken = tmp_path / "taken.sqlite3"
        taken.write_bytes(b"keep me")
        with pytest.raises(DatabaseError, match="already exists; pass --force"):
            backup_database(db.path, taken)
        assert taken.read_bytes() == b"keep me"
        path, _ = backup_database(db.path, taken, force=True)
        assert session_ids(path) == ["a-000000", "b-000000"]

        with pytest.raises(DatabaseError, match=r"directory .* does not exist"):
            backup_database(db.path, tmp_path / "no" / "such" / "b.sqlite3")
        with pytest.raises(DatabaseError, match="is the live database itself"):
            backup_database(db.path, db.path)
        # A directory gets a timestamped file.
        (tmp_path / "dir").mkdir()
        path, _ = backup_database(db.path, tmp_path / "dir", now=NOON)
        assert path == tmp_path / "dir" / "ccr-box-20261202-120000.sqlite3"
        assert not leftovers(tmp_path)
    finally:
        await db.close()


async def test_garbage_and_too_new_backups_are_not_restored(tmp_path: Path) -> None:
    live = tmp_path / "live"
    db = await Database.open(database_path(live))
    await db.write(add_pair(0))
    await db.close()
    before = database_path(live).read_bytes()

    garbage = tmp_path / "garbage.sqlite3"
    garbage.write_bytes(b"this is not a database" * 200)
    with pytest.raises(DatabaseError, match="not a usable ccr-box database"):
        restore_database(garbage, live)

    newer = tmp_path / "newer.sqlite3"
    backup_database(database_path(live), newer)
    with sqlite3.connect(newer) as conn:
        conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    with pytest.raises(DatabaseError, match="newer than this ccr-box knows"):
        restore_database(newer, live)

    plain = tmp_path / "plain.sqlite3"
    with sqlite3.connect(plain) as conn:
        conn.execute("CREATE TABLE t (x)")
    with pytest.raises(DatabaseError, match="not a ccr-box database"):
        restore_database(plain, live)

    assert database_path(live).read_bytes() == before
    assert sorted(p.name for p in live.iterdir() if "before-restore" in p.name) == []


# --- the commands, against a running server -----------------------------------------------


@pytest.fixture
def env(tmp_path: Path, fake_telegram: FakeTelegram) -> dict[str, str]:
    return clean_env(
        CCR_BOX_CONFIG=str(tmp_path / "config.toml"),
        CCR_BOX_DATA_DIR=str(tmp_path / "data"),
        CCR_API_KEY=API_KEY,
        TELEGRAM_BOT_TOKEN=fake_telegram.token,
        TELEGRAM_API_BASE=fake_telegram.base_url,
        TELEGRAM_MODE="webhook",
        ALLOWED_CHAT_IDS="4242",
    )


async def register(base: str, session_id: str) -> None:
    async with aiohttp.ClientSession() as http:
        body = {"sessionId": session_id, "machineId": "m-1"}
        async with http.post(f"{base}/sessions/register", json=body, headers=AUTH) as resp:
            assert resp.status == 200, await resp.text()


async def session_list(base: str) -> list[str]:
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{base}/sessions", headers=AUTH) as resp:
            return sorted(row["session_id"] for row in await resp.json())


async def start_up(procs: list[Proc], env: dict[str, str]) -> tuple[Proc, str]:
    proc = await Proc.start("up", "--headless", "--port", "0", env=env)
    procs.append(proc)
    return proc, f"http://127.0.0.1:{await proc.listening_port()}"


async def test_backup_of_a_running_server_then_restore_after_it_stops(
    env: dict[str, str], procs: list[Proc], tmp_path: Path
) -> None:
    server, base = await start_up(procs, env)
    await register(base, "s-before")
    backups = tmp_path / "backups"
    backups.mkdir()

    done = await run_ccr_box("backup", str(backups), env=env)
    assert done.process.returncode == 0, done.stderr
    (backup,) = backups.iterdir()
    assert backup.name.startswith("ccr-box-") and backup.suffix == ".sqlite3"
    assert f"to {backup}" in done.stdout and "1 session" in done.stdout
    assert f"ccr-box restore {backup}" in done.stdout
    assert stat.S_IMODE(backup.stat().st_mode) == 0o600
    assert API_KEY not in done.stdout + done.stderr

    await register(base, "s-after")
    refused = await run_ccr_box("restore", str(backup), "--yes", env=env)
    assert refused.process.returncode == 1
    assert "a ccr-box server is using" in refused.stderr and "stop it first" in refused.stderr
    assert "Traceback" not in refused.stderr
    assert await session_list(base) == ["s-after", "s-before"]  # untouched

    server.send_signal(signal.SIGTERM)
    assert await server.wait_exit() == 0
    no_terminal = await run_ccr_box("restore", str(backup), env=env)
    assert no_terminal.process.returncode == 2 and "pass --yes" in no_terminal.stderr
    restored = await run_ccr_box("restore", str(backup), "--yes", env=env)
    assert restored.process.returncode == 0, restored.stderr
    assert "The previous database is in" in restored.stdout

    _, base = await start_up(procs, env)
    assert await session_list(base) == ["s-before"]


def test_cli_errors_are_plain_and_exit_1(tmp_path: Path, capsys) -> None:
    data = tmp_path / "data"
    code = main(["backup", str(tmp_path / "b.sqlite3"), "--data-dir", str(data)])
    assert code == 1
    assert f"no database at {data / 'ccr-box.sqlite3'}" in capsys.readouterr().err

    garbage = tmp_path / "garbage.sqlite3"
    garbage.write_bytes(b"x" * 5000)
    code = main(["restore", str(garbage), "--yes", "--data-dir", str(data)])
    err = capsys.readouterr().err
    assert code == 1 and "cannot be restored" in err and "not a readable database" in err
    assert not data.exists()
