"""Disk trouble (issue 11, fault suite): a full filesystem, a read-only filesystem, a failing
fsync. Each must give a clear error in the log and a non-2xx answer to Telegram's webhook POST (so
Telegram delivers the update again) and to ``/notifications/send`` — never a 200 for a write that
did not happen, never a silent drop — and everything must work again once the trouble ends.

The faults are real, made with the kernel (these tests need root; each variant is skipped, with
the reason, where the machine cannot provide it):

- full: a 1 MiB tmpfs filled to its last page (``ENOSPC`` on the WAL append);
- read-only: an ext4 image on a loop device, forced read-only under the running server by the
  kernel's own error path (``/sys/fs/ext4/<dev>/trigger_fs_error`` with ``errors=remount-ro``);
- failing fsync: an ext4 image (no journal) on a loop device whose sparse backing file lives on a
  small tmpfs that is then filled: ``write()`` still succeeds (page cache) but the writeback fails,
  so ``fsync`` reports the error (``ENOSPC``, as the loop device passes it on) — a disk that
  accepts data and then cannot store it.

The database's public ``fsync`` parameter (``Database.open(..., fsync=...)``) injects an ``EIO``
for the group-commit semantics (``durable=True`` / ``durable=False``).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import inspect
import json
import os
import shutil
import signal
import sqlite3
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import WSMsgType

from ccr_box.db import Database, database_path
from ccr_box.db import sessions as sessions_db
from ccr_box.errors import DatabaseError
from ccr_box.server import keys, texts
from tests.conftest import API_KEY, CHAT, PATH_SECRET, WEBHOOK_SECRET, Harness, make_config
from tests.fake_telegram import FakeTelegram
from tests.figures import record
from tests.helpers_http import outbox_rows
from tests.helpers_proc import Proc, clean_env

TIMEOUT = 5.0
FULL = "database or disk is full"  # SQLite's words for SQLITE_FULL, in the logged traceback


def _run(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, timeout=30, check=False)


def _need_root_tools(*tools: str) -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root (mount, losetup)")
    missing = [tool for tool in tools if shutil.which(tool) is None]
    if missing:
        pytest.skip(f"needs {', '.join(missing)}")


def _fill(path: Path) -> int:
    """Append to ``path`` until ENOSPC (64 KiB, then page, then byte steps); bytes written."""
    written = 0
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        for step in (65536, 4096, 1):
            block = b"\0" * step
            while True:
                try:
                    written += os.write(fd, block)
                except OSError as exc:
                    assert exc.errno == errno.ENOSPC, exc
                    break
    finally:
        os.close(fd)
    return written


def _unmount(path: Path) -> None:
    if _run("umount", str(path)).returncode != 0:
        _run("umount", "-l", str(path))  # still busy: detach now, freed once closed


class Tmpfs:
    """A private tmpfs; :meth:`fill` takes every free page, :meth:`free` gives them back."""

    def __init__(self, path: Path, size: str) -> None:
        self.path = path
        self.size = size
        self.filler = path / ".filler"

    def mount(self) -> None:
        self.path.mkdir(parents=True, exist_ok=True)
        done = _run(
            "mount", "-t", "tmpfs", "-o", f"size={self.size},mode=0700", "tmpfs", str(self.path)
        )
        if done.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip() or done.returncode}")

    def fill(self) -> int:
        return _fill(self.filler)

    def free(self) -> None:
        self.filler.unlink(missing_ok=True)


class LoopExt4:
    """An ext4 image on a loop device. ``journal=False`` with the image on a small tmpfs gives the
    failing-fsync disk; ``errors=remount-ro`` gives the one the kernel turns read-only."""

    def __init__(self, image: Path, mount: Path, *, errors: str) -> None:
        self.image, self.mount, self.errors, self.device = image, mount, errors, ""

    def create(self, *, journal: bool, size_mb: int = 16) -> None:
        with open(self.image, "wb") as f:
            f.truncate(size_mb * 1024 * 1024)  # sparse: blocks are allocated as written
        features = [] if journal else ["-O", "^has_journal"]
        done = _run("mkfs.ext4", "-q", "-F", "-b", "4096", *features, str(self.image))
        if done.returncode != 0:
            pytest.skip(f"mkfs.ext4 failed: {done.stderr.strip()}")
        self.mount.mkdir(parents=True, exist_ok=True)
        self.attach()

    def attach(self) -> None:
        done = _run("losetup", "-f", "--show", str(self.image))
        if done.returncode != 0:
            pytest.skip(f"no loop device: {done.stderr.strip()}")
        self.device = done.stdout.strip()
        done = _run("mount", "-o", f"errors={self.errors}", self.device, str(self.mount))
        if done.returncode != 0:
            _run("losetup", "-d", self.device)
            self.device = ""
            pytest.skip(f"cannot mount ext4: {done.stderr.strip()}")

    def detach(self, *, strict: bool = False) -> None:
        """Unmount (which also drops the filesystem's page cache) and free the loop device.
        ``strict``: the unmount must really happen now (no lazy fallback)."""
        if self.device:
            if strict:
                done = _run("umount", str(self.mount))
                if done.returncode != 0:
                    pytest.fail(f"precondition: unmount {self.mount}: {done.stderr.strip()}")
            else:
                _unmount(self.mount)
            _run("losetup", "-d", self.device)
            self.device = ""

    def force_read_only(self) -> None:
        """The kernel's own error path: remounted read-only under its users (open files too)."""
        knob = Path("/sys/fs/ext4") / Path(self.device).name / "trigger_fs_error"
        if not knob.exists():
            pytest.skip(f"{knob} does not exist")
        knob.write_text("ccr-box fault test\n")

    def repair(self) -> None:
        """What an operator does after such an error: unmount, fsck, mount."""
        self.detach(strict=True)
        done = _run("e2fsck", "-fy", str(self.image))
        # 0: clean, 1: errors corrected (the forced error is recorded in the superblock)
        assert done.returncode in (0, 1), (done.returncode, done.stdout[-800:], done.stderr)
        self.attach()


@pytest.fixture
def tmpfs(tmp_path: Path) -> Iterator[Tmpfs]:
    """Request it *before* ``start_server``: fixtures are torn down in reverse, so the server
    (and its database) is closed before the unmount."""
    fs = Tmpfs(tmp_path / "tmpfs", "1m")
    fs.mount()
    try:
        yield fs
    finally:
        _unmount(fs.path)


@pytest.fixture
def read_only_disk(tmp_path: Path) -> Iterator[LoopExt4]:
    _need_root_tools("losetup", "mkfs.ext4", "e2fsck")
    disk = LoopExt4(tmp_path / "ext4.img", tmp_path / "ext4", errors="remount-ro")
    disk.create(journal=True)
    try:
        yield disk
    finally:
        disk.detach()


class FsyncFailingDisk(LoopExt4):
    """ext4 without a journal on a loop device whose sparse image sits on a small tmpfs."""

    def __init__(self, root: Path) -> None:
        self.backing = Tmpfs(root / "backing", "24m")
        super().__init__(self.backing.path / "disk.img", root / "disk", errors="continue")

    def break_(self) -> int:
        """From now on data written to new blocks cannot reach the disk: fsync fails. The
        backing tmpfs is filled, then a probe file takes whatever slack is left (a page the loop
        device already had) until an fsync of it fails; returns the bytes the backing took."""
        filled = self.backing.fill()
        probe = os.open(self.mount / ".probe", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        try:
            for _ in range(64):
                os.write(probe, b"\0" * 4096)
                try:
                    os.fsync(probe)
                except OSError:
                    return filled
        finally:
            os.close(probe)
        pytest.skip("filling the loop device's backing store did not make fsync fail")

    def heal(self) -> None:
        self.backing.free()
        (self.mount / ".probe").unlink(missing_ok=True)


@pytest.fixture
def fsync_failing_disk(tmp_path: Path) -> Iterator[FsyncFailingDisk]:
    """Request it before ``start_server`` (see ``tmpfs``)."""
    _need_root_tools("losetup", "mkfs.ext4")
    disk = FsyncFailingDisk(tmp_path)
    disk.backing.mount()
    try:
        disk.create(journal=False)
        yield disk
    finally:
        disk.detach()
        _unmount(disk.backing.path)


async def first_refused(
    post: Callable[[dict[str, Any]], Any], make: Callable[[str], dict[str, Any]]
) -> tuple[list[str], dict[str, Any]]:
    """POST replies until one is refused. A write may still fit in space the disk had already
    given out (its fsync then succeeds and 200 is right); returns the texts answered 200 and the
    first update answered 500."""
    accepted: list[str] = []
    for n in range(16):
        update = make(f"write {n}")
        status, _ = await post(update)
        if status == 500:
            return accepted, update
        require(status == 200, f"answered {status}")
        accepted.append(update["message"]["text"])
    pytest.fail("no write was refused although fsync fails")


def require(condition: bool, what: str) -> None:
    """A precondition: fails as a plain test failure, never as the expected failure of an
    ``xfail(raises=AssertionError)`` test (which only its final assertion may produce)."""
    if not condition:
        pytest.fail(f"precondition: {what}")


# -- clients ---------------------------------------------------------------------------------------


async def webhook_status(h: Harness, update: dict[str, Any]) -> tuple[int, str]:
    resp = await h.client.post(
        "/webhook/telegram",
        data=json.dumps(update),
        headers={"X-Telegram-Bot-Api-Secret-Token": WEBHOOK_SECRET},
    )
    return resp.status, await resp.text()


async def notify_status(h: Harness, text: str) -> tuple[int, Any]:
    resp = await h.post("/notifications/send", {"sessionId": "s1", "chatId": CHAT, "text": text})
    return resp.status, await resp.json()


async def seen(h: Harness, update_id: int) -> bool:
    def job(c: sqlite3.Connection) -> bool:
        with contextlib.closing(
            c.execute("SELECT 1 FROM seen_updates WHERE update_id = ?", (update_id,))
        ) as cur:
            return cur.fetchone() is not None

    return await h.db.read(job)


class Agent:
    """A CCR agent that reads commands up to a ping's pong and (optionally) acks them."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self.ws = ws
        self.received: list[tuple[str, str]] = []  # (commandId, text) per delivery

    @classmethod
    async def connect(cls, http: Any, url: str, machine_id: str) -> Agent:
        ws = await http.ws_connect(f"{url}/ws?machineId={machine_id}", protocols=("ccr", API_KEY))
        assert json.loads((await ws.receive(timeout=TIMEOUT)).data)["type"] == "boot"
        return cls(ws)

    async def sync(self, *, ack: bool = True) -> list[str]:
        """Read every command the server sent before the pong; returns their texts. Acks go out
        after the ping, so the next sync is when they are known to be processed."""
        await self.ws.send_str('{"type":"ping"}')
        got: list[str] = []
        while True:
            msg = await self.ws.receive(timeout=TIMEOUT)
            assert msg.type is WSMsgType.TEXT, msg
            frame = json.loads(msg.data)
            if frame["type"] == "pong":
                return got
            if frame["type"] == "command":
                got.append(frame["command"])
                self.received.append((frame["commandId"], frame["command"]))
                if ack:
                    await self.ws.send_str(
                        json.dumps({"type": "ack", "commandId": frame["commandId"]})
                    )

    def texts(self) -> list[str]:
        """Each command once (re-deliveries of the same commandId folded)."""
        return list(dict(self.received).values())


async def rows_by_text(h: Harness) -> dict[str, dict[str, Any]]:
    return {r["command"]: r for r in await h.commands()}


async def tick(h: Harness) -> None:
    async with asyncio.timeout(TIMEOUT):
        await h.app[keys.MAINTENANCE].tick()


# -- a full filesystem ---------------------------------------------------------------------------


async def test_full_disk_answers_non_2xx_and_recovers(
    tmpfs: Tmpfs, start_server, fake_telegram: FakeTelegram, caplog: pytest.LogCaptureFixture
) -> None:
    h = await start_server(make_config(tmpfs.path / "data", fake_telegram))
    fake = h.fake
    await h.register("s1", "m1")
    mid = (await h.notify("s1", "Claude stopped."))["messageId"]
    agent = await Agent.connect(h.client, "", "m1")
    assert (await webhook_status(h, fake.make_message(CHAT, "before", reply_to=mid)))[0] == 200
    assert await agent.sync(ack=False) == ["before"]  # delivered, ack held back

    filled = tmpfs.fill()
    update = fake.make_message(CHAT, "during", reply_to=mid)
    assert await webhook_status(h, update) == (500, "Internal server error")
    assert not await seen(h, update["update_id"])  # rolled back: Telegram's retry will count
    help_update = fake.make_message(CHAT, "/help")  # an update with texts only fails as well
    assert await webhook_status(h, help_update) == (500, "Internal server error")
    status, body = await notify_status(h, "notified while full")
    assert status == 500, body
    fake.fail_next("sendMessage", 502)  # Telegram down as well: the outbox cannot take it
    status, body = await notify_status(h, "queued while full")
    assert status == 500, body  # never 202: nothing was queued
    resp = await h.post("/sessions/register", {"sessionId": "s2", "machineId": "m1"})
    assert resp.status == 500
    # An ack that cannot be written: the command stays "sent" (it will be re-sent).
    await agent.ws.send_str(json.dumps({"type": "ack", "commandId": agent.received[0][0]}))
    assert await agent.sync() == []
    assert (await rows_by_text(h))["before"]["status"] == "sent"
    await tick(h)  # maintenance keeps running, its failures are logged
    async with h.client.get("/health") as resp:
        assert resp.status == 200
    assert FULL in caplog.text  # the log names the cause

    tmpfs.free()
    # Telegram delivers the two failed updates again; now they count, once.
    for again in (update, help_update, update):
        assert (await webhook_status(h, again))[0] == 200
    assert await agent.sync() == ["during"]
    await fake.wait_for(lambda: fake.messages_to(CHAT).count(texts.HELP) == 1)
    assert await outbox_rows(h) == []  # the 500 was honest: nothing was queued after all
    # The unacked command is re-sent (same commandId) after the 60 s re-send and acked.
    h.clock.advance(61_000)
    await tick(h)
    assert await agent.sync() == ["before"]
    await agent.sync()
    assert {t: r["status"] for t, r in (await rows_by_text(h)).items()} == {
        "before": "acked",
        "during": "acked",
    }
    assert sorted(agent.texts()) == ["before", "during"]
    status, body = await notify_status(h, "after the disk was freed")
    assert status == 200, body
    await agent.ws.close()
    shown_unrecorded = fake.messages_to(CHAT).count("notified while full")
    record(
        "disk_faults",
        fault="full",
        filled_bytes=filled,
        refused_writes=6,
        lost=0,
        duplicates=0,
        shown_but_unrecorded=shown_unrecorded,
    )


async def test_agent_connecting_while_the_disk_is_full_gets_a_clean_answer(
    tmpfs: Tmpfs, start_server, fake_telegram: FakeTelegram
) -> None:
    """Either answer is fine: a close frame (e.g. 1011, the agent backs off and reconnects), or
    boot and a working connection (the bookkeeping write is best effort). A WebSocket protocol
    error is not (an HTTP 500 written into the upgraded stream reads as one: 1002)."""
    h = await start_server(make_config(tmpfs.path / "data", fake_telegram))
    tmpfs.fill()
    ws = await h.connect("m1")
    msg = await ws.receive(timeout=TIMEOUT)
    if msg.type is WSMsgType.TEXT:  # boot
        await ws.send_str('{"type":"ping"}')
        msg = await ws.receive(timeout=TIMEOUT)
    assert msg.type in (WSMsgType.TEXT, WSMsgType.CLOSE), msg
    await ws.close()
    tmpfs.free()
    ws = await h.connect("m1")
    assert json.loads((await ws.receive(timeout=TIMEOUT)).data)["type"] == "boot"
    await ws.close()


async def test_a_notification_that_cannot_be_recorded_is_not_shown(
    tmpfs: Tmpfs, start_server, fake_telegram: FakeTelegram
) -> None:
    """Record before showing: otherwise the message is shown, the request answers 500, the
    daemon's retry shows it again and a reply to the first copy cannot route."""
    h = await start_server(make_config(tmpfs.path / "data", fake_telegram))
    await h.register("s1", "m1")
    tmpfs.fill()
    status, _ = await notify_status(h, "cannot be recorded")
    assert status == 500
    assert h.fake.messages_to(CHAT) == []
    tmpfs.free()
    status, _ = await notify_status(h, "recorded")
    assert status == 200
    assert h.fake.messages_to(CHAT) == ["recorded"]


# -- a read-only filesystem ----------------------------------------------------------------------


def server_env(tmp_path: Path, data_dir: Path, fake: FakeTelegram) -> dict[str, str]:
    return clean_env(
        CCR_BOX_CONFIG=str(tmp_path / "config.toml"),
        CCR_BOX_DATA_DIR=str(data_dir),
        CCR_API_KEY=API_KEY,
        TELEGRAM_BOT_TOKEN=fake.token,
        TELEGRAM_API_BASE=fake.base_url,
        TELEGRAM_MODE="webhook",
        TELEGRAM_WEBHOOK_SECRET=WEBHOOK_SECRET,
        TELEGRAM_WEBHOOK_PATH_SECRET=PATH_SECRET,
        ALLOWED_CHAT_IDS=CHAT,
    )


class Child:
    """A ``ccr-box up --headless --port 0`` child process and a client for it."""

    def __init__(self, proc: Proc, base: str, http: aiohttp.ClientSession) -> None:
        self.proc, self.base, self.http = proc, base, http

    @classmethod
    async def start(
        cls, procs: list[Proc], env: dict[str, str], http: aiohttp.ClientSession
    ) -> Child:
        proc = await Proc.start("up", "--headless", "--port", "0", env=env)
        procs.append(proc)
        port = await proc.listening_port()
        return cls(proc, f"http://127.0.0.1:{port}", http)

    async def post(self, path: str, body: Any) -> tuple[int, Any]:
        async with self.http.post(
            self.base + path, data=json.dumps(body), headers={"Authorization": f"Bearer {API_KEY}"}
        ) as resp:
            return resp.status, await resp.json()

    async def notify(self, text: str) -> tuple[int, Any]:
        return await self.post(
            "/notifications/send", {"sessionId": "s1", "chatId": CHAT, "text": text}
        )

    async def webhook(self, update: dict[str, Any]) -> tuple[int, str]:
        async with self.http.post(
            f"{self.base}/webhook/telegram/{PATH_SECRET}",
            data=json.dumps(update),
            headers={"X-Telegram-Bot-Api-Secret-Token": WEBHOOK_SECRET},
        ) as resp:
            return resp.status, await resp.text()

    async def commands(self) -> dict[str, dict[str, Any]]:
        async with self.http.get(
            f"{self.base}/admin/commands?limit=500", headers={"Authorization": f"Bearer {API_KEY}"}
        ) as resp:
            assert resp.status == 200
            return {r["command"]: r for r in await resp.json()}

    async def stop(self) -> int:
        self.proc.send_signal(signal.SIGTERM)
        return await self.proc.wait_exit()


async def test_read_only_filesystem_answers_non_2xx_and_recovers_after_repair(
    read_only_disk: LoopExt4, tmp_path: Path, procs: list[Proc], fake_telegram: FakeTelegram
) -> None:
    fake = fake_telegram
    env = server_env(tmp_path, read_only_disk.mount / "data", fake)
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=2 * TIMEOUT)) as http:
        server = await Child.start(procs, env, http)
        assert (await server.post("/sessions/register", {"sessionId": "s1", "machineId": "m1"}))[
            0
        ] == 200
        status, sent = await server.notify("Claude stopped.")
        assert status == 200, sent
        mid = sent["messageId"]
        agent = await Agent.connect(http, server.base, "m1")
        before = fake.make_message(CHAT, "before", reply_to=mid)
        assert (await server.webhook(before))[0] == 200
        assert await agent.sync() == ["before"]

        read_only_disk.force_read_only()
        during = fake.make_message(CHAT, "during", reply_to=mid)
        assert await server.webhook(during) == (500, "Internal server error")
        status, body = await server.notify("notified while read-only")
        assert status == 500, body
        status, body = await server.post(
            "/sessions/register", {"sessionId": "s2", "machineId": "m1"}
        )
        assert status == 500, body
        async with http.get(server.base + "/health") as resp:
            assert resp.status == 200  # liveness only
        assert server.proc.process.returncode is None  # alive
        await agent.ws.close()
        assert await server.stop() == 0, server.proc.stderr[-3000:]
        stderr = server.proc.stderr
        assert "database write failed" in stderr and "disk I/O error" in stderr, stderr[-2000:]

        # Starting on the read-only filesystem is refused in one clear line, no traceback.
        refused = await Proc.start("up", "--headless", "--port", "0", env=env)
        procs.append(refused)
        assert await refused.wait_exit() != 0, refused.stderr
        assert "cannot start the server" in refused.stderr, refused.stderr
        assert "Read-only file system" in refused.stderr
        assert "Traceback" not in refused.stderr

        read_only_disk.repair()
        server = await Child.start(procs, env, http)
        agent = await Agent.connect(http, server.base, "m1")
        assert (await server.webhook(during))[0] == 200  # Telegram's retry
        assert (await server.webhook(during))[0] == 200  # and a duplicate of it
        got = await agent.sync()
        await agent.sync()
        # "before" was acked just before the failure; that ack may not have been written, so it
        # may come again with the same commandId. "during" comes exactly once.
        assert got.count("during") == 1 and set(got) <= {"before", "during"}, got
        rows = await server.commands()
        assert sorted(rows) == ["before", "during"]
        assert all(r["status"] == "acked" for r in rows.values())
        status, body = await server.notify("after the repair")
        assert status == 200, body
        await agent.ws.close()
        assert await server.stop() == 0
    record("disk_faults", fault="read_only", refused_writes=3, lost=0, duplicates=0)


# -- a failing fsync -------------------------------------------------------------------------------


async def test_failing_fsync_refuses_every_write_until_a_restart(
    fsync_failing_disk: FsyncFailingDisk,
    start_server,
    fake_telegram: FakeTelegram,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """After a failed fsync the kernel may have dropped the unsynced pages while keeping them
    readable, so the database fail-stops: every write is refused (500) until a restart, even
    once the disk is healthy again; after the restart (a clean stop checkpoints what was
    visible) Telegram's retries go through and every command goes out once."""
    config = make_config(fsync_failing_disk.mount / "data", fake_telegram)
    h = await start_server(config)
    fake = h.fake
    await h.register("s1", "m1")
    mid = (await h.notify("s1", "Claude stopped."))["messageId"]
    agent = await Agent.connect(h.client, "", "m1")

    fsync_failing_disk.break_()
    accepted, refused = await first_refused(
        lambda u: webhook_status(h, u), lambda text: fake.make_message(CHAT, text, reply_to=mid)
    )
    status, body = await notify_status(h, "notified while unsynced")
    assert status == 500, body
    assert fake.messages_to(CHAT).count("notified while unsynced") == 0  # refused before sending
    assert "database sync failed" in caplog.text and "No space left on device" in caplog.text

    fsync_failing_disk.heal()
    assert (await webhook_status(h, refused))[0] == 500  # still: until restarted
    await agent.ws.close()
    await h.client.close()  # the operator restarts ccr-box

    h = await start_server(config)
    agent = await Agent.connect(h.client, "", "m1")
    assert (await webhook_status(h, refused))[0] == 200  # Telegram's retry
    after = fake.make_message(CHAT, "after", reply_to=mid)
    assert (await webhook_status(h, after))[0] == 200
    await agent.sync()
    await agent.sync()
    expected = sorted([*accepted, refused["message"]["text"], "after"])
    assert sorted(agent.texts()) == expected  # each once (the agent folds same-id re-sends)
    assert sorted(r["command"] for r in await h.commands()) == expected
    assert all(r["status"] == "acked" for r in await h.commands())
    assert (await notify_status(h, "synced again"))[0] == 200
    await agent.ws.close()
    record(
        "disk_faults",
        fault="fsync",
        accepted_before_refusal=len(accepted),
        refused_writes=3,
        restarts=1,
        lost=0,
        duplicates=0,
    )


async def test_a_retry_is_not_answered_200_while_its_first_attempt_is_not_on_disk(
    fsync_failing_disk: FsyncFailingDisk, start_server, fake_telegram: FakeTelegram
) -> None:
    h = await start_server(make_config(fsync_failing_disk.mount / "data", fake_telegram))
    fake = h.fake
    await h.register("s1", "m1")
    mid = (await h.notify("s1", "Claude stopped."))["messageId"]
    fsync_failing_disk.break_()
    _, refused = await first_refused(
        lambda u: webhook_status(h, u), lambda text: fake.make_message(CHAT, text, reply_to=mid)
    )
    """The refused update was committed all the same (visible, not on disk): Telegram's retry
    must not be a de-duplication hit answered 200 while the disk still cannot sync, or Telegram
    stops retrying an update that exists only in the page cache."""
    other = fake.make_message(CHAT, "another write", reply_to=mid)
    assert await webhook_status(h, other) == (500, "Internal server error")
    assert await webhook_status(h, refused) == (500, "Internal server error")


async def test_after_a_failed_fsync_a_crash_and_a_restart_lose_nothing_answered_200(
    fsync_failing_disk: FsyncFailingDisk,
    tmp_path: Path,
    procs: list[Proc],
    fake_telegram: FakeTelegram,
) -> None:
    """The hard case: the frames whose fsync failed stay readable in the page cache although they
    never reached the disk. The server crashes before a clean stop could checkpoint them, comes
    back (page cache intact, as after a process crash) and acknowledges a new write; then the
    machine loses power (page cache gone). Every write ever answered 200 must still be there."""
    fake = fake_telegram
    env = server_env(tmp_path, fsync_failing_disk.mount / "data", fake)
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=2 * TIMEOUT)) as http:
        server = await Child.start(procs, env, http)
        status, _ = await server.post("/sessions/register", {"sessionId": "s1", "machineId": "m1"})
        require(status == 200, "registered")
        mid = (await server.notify("Claude stopped."))[1]["messageId"]
        before = fake.make_message(CHAT, "before the failure", reply_to=mid)
        require((await server.webhook(before))[0] == 200, "answered 200 before")
        fsync_failing_disk.break_()
        accepted, refused = await first_refused(
            server.webhook, lambda text: fake.make_message(CHAT, text, reply_to=mid)
        )
        fsync_failing_disk.heal()
        # Fail-stop: no write is taken any more, even on the healed disk, until a restart.
        healed = fake.make_message(CHAT, "refused on the healed disk", reply_to=mid)
        require((await server.webhook(healed))[0] == 500, "refused until restarted")

        server.proc.send_signal(signal.SIGKILL)  # a crash: no checkpoint on the way out
        await server.proc.wait_exit()
        server = await Child.start(procs, env, http)  # page cache intact
        after = fake.make_message(CHAT, "answered 200 after the restart", reply_to=mid)
        require((await server.webhook(after))[0] == 200, "answered 200 after the restart")
        require((await server.webhook(refused))[0] == 200, "Telegram's retry is taken")

        server.proc.send_signal(signal.SIGKILL)
        await server.proc.wait_exit()
        fsync_failing_disk.detach(strict=True)  # the page cache is gone: a power cut
        fsync_failing_disk.attach()
        server = await Child.start(procs, env, http)
        rows = await server.commands()
        await server.stop()
    answered = {"before the failure", *accepted, "answered 200 after the restart"}
    answered.add(refused["message"]["text"])
    assert answered <= set(rows), sorted(answered - set(rows))
    record("disk_faults", fault="fsync_then_crash", crashes=2, lost=len(answered - set(rows)))


# -- the group commit's durability contract (Database.write) -------------------------------------

HAS_FSYNC_SEAM = "fsync" in inspect.signature(Database.open).parameters


class Fsync:
    """The ``fsync`` a Database calls: counts calls; fails with EIO while ``failing``."""

    def __init__(self) -> None:
        self.calls = 0
        self.failing = False
        self.gate: asyncio.Event | None = None  # when set, a call waits for it (worker thread)
        self.entered = asyncio.Event()  # a call is in progress
        self._loop = asyncio.get_running_loop()

    def __call__(self, fd: int) -> None:
        self.calls += 1
        self._loop.call_soon_threadsafe(self.entered.set)
        if self.gate is not None:
            asyncio.run_coroutine_threadsafe(self.gate.wait(), self._loop).result(TIMEOUT)
        if self.failing:
            raise OSError(errno.EIO, os.strerror(errno.EIO))
        os.fsync(fd)


def touch(session_id: str, now: int = 1) -> Callable[[sqlite3.Connection], None]:
    def job(c: sqlite3.Connection) -> None:
        sessions_db.upsert(c, session_id, "m1", None, now, max_sessions=1000)

    return job


async def count_sessions(db: Database) -> int:
    def job(c: sqlite3.Connection) -> int:
        with contextlib.closing(c.execute("SELECT COUNT(*) FROM sessions")) as cur:
            return int(cur.fetchone()[0])

    return await db.read(job)


@pytest.mark.skipif(not HAS_FSYNC_SEAM, reason="Database.open has no fsync parameter yet")
async def test_durable_writes_are_fsynced_and_a_failed_fsync_stops_all_writes(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = database_path(tmp_path / "data")
    fsync = Fsync()
    db = await Database.open(path, fsync=fsync)
    try:
        await db.write(touch("a"))
        assert fsync.calls == 1
        await db.write(touch("b"), durable=False)  # bookkeeping: committed, not fsynced
        assert fsync.calls == 1

        fsync.failing = True
        with pytest.raises(DatabaseError, match=r"database sync failed.*Input/output error"):
            await db.write(touch("c"))
        assert "fsync of the database failed" in caplog.text
        fsync.failing = False
        # Fail-stop: nothing more is written, not even bookkeeping, healthy disk or not.
        for durable in (False, True):
            with pytest.raises(DatabaseError, match="database sync failed"):
                await db.write(touch("d"), durable=durable)
        assert fsync.calls == 2
    finally:
        await db.close()
    db = await Database.open(path, fsync=fsync)  # the restart
    try:
        await db.write(touch("e"))
        # The batch whose fsync failed had been committed: it is there after the restart (a
        # webhook answered 500 for it; Telegram's retry then finds the update done).
        assert await count_sessions(db) == 4  # a, b, c, e
    finally:
        await db.close()
    record("disk_faults", fault="fsync_injected", fsyncs=fsync.calls, refused_writes=3)


@pytest.mark.skipif(not HAS_FSYNC_SEAM, reason="Database.open has no fsync parameter yet")
async def test_answers_follow_commit_order_through_a_slow_fsync(tmp_path: Path) -> None:
    """A non-durable write committed after a durable one is not answered before that one's
    fsync: answers never overtake, so nobody learns of a later write before an earlier one is
    on disk. Durable writes arriving during the fsync share the next one."""
    fsync = Fsync()
    db = await Database.open(database_path(tmp_path / "data"), fsync=fsync)
    try:
        fsync.gate = asyncio.Event()
        durable = asyncio.create_task(db.write(touch("a")))
        await asyncio.wait_for(fsync.entered.wait(), TIMEOUT)  # committed, fsync in flight
        batches = db.batches
        bookkeeping = asyncio.create_task(db.write(touch("b"), durable=False))
        later = [asyncio.create_task(db.write(touch(f"c{i}"))) for i in range(5)]
        done, _ = await asyncio.wait({bookkeeping, *later}, timeout=0.1)
        assert db.batches > batches  # the later writes were committed meanwhile...
        assert not done and not durable.done()  # ...but nobody hears before "a" is on disk
        fsync.gate.set()
        fsync.gate = None
        await asyncio.wait_for(asyncio.gather(durable, bookkeeping, *later), TIMEOUT)
        assert fsync.calls == 2  # one for "a", one shared by the five that came meanwhile
    finally:
        await db.close()
