"""Security suite, part 2: a real ``ccr-box up`` at DEBUG does everything a server does, and no
secret (nor a recognisable piece of one) reaches its log, exception texts, process listing,
command output or responses; its files are private (contract §2.1, §10.2).

The secrets are random, so any 12-character piece of one found anywhere is a leak and not a
coincidence; this catches a secret cut in half by a log line's clipping, which masking the whole
value would miss.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import signal
import stat
import tomllib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import aiohttp
import pytest

from tests import figures
from tests.fake_telegram import FakeTelegram
from tests.helpers_proc import Proc, clean_env, run_ccr_box
from tests.helpers_security import raw_request

API_KEY = "K" + secrets.token_urlsafe(30)
BOT_TOKEN = "555111:" + secrets.token_urlsafe(27)
WEBHOOK_SECRET = "W" + secrets.token_urlsafe(30)
PATH_SECRET = "P" + secrets.token_urlsafe(30)
CHAT = "4242"
TIMEOUT = 10.0
PIECE = 12  # characters of a random secret that count as a leak


def pieces(secret: str) -> set[str]:
    """Every PIECE-long slice of the secret's random part, in raw and URL-encoded spellings."""
    body = secret.split(":", 1)[-1]
    found = {body[i : i + PIECE] for i in range(len(body) - PIECE + 1)}
    return found | {quote(secret, safe=""), quote(secret)}


def leaks(text: str, secret_values: list[str]) -> list[str]:
    """The lines of ``text`` holding a piece of a secret (pieces shown as <SECRET PIECE>)."""
    found = []
    all_pieces = sorted({p for s in secret_values for p in pieces(s)}, key=len, reverse=True)
    for line in text.splitlines():
        hits = [p for p in all_pieces if p in line]
        if hits:
            for piece in hits:
                line = line.replace(piece, "<SECRET PIECE>")
            found.append(line[:300])
    return found


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def modes(directory: Path) -> dict[str, int]:
    """File name -> permission bits of every regular file in ``directory``."""
    return {p.name: mode(p) for p in sorted(directory.iterdir()) if p.is_file()}


def proc_file(pid: int, name: str) -> bytes:
    return Path(f"/proc/{pid}/{name}").read_bytes()


def secrets_in_config(path: Path) -> list[str]:
    """String values of the config file's secret-looking keys (the first run may generate some)."""
    parsed = tomllib.loads(path.read_text(encoding="utf-8"))
    return [
        value
        for section in parsed.values()
        if isinstance(section, dict)
        for name, value in section.items()
        if isinstance(value, str) and len(value) >= PIECE and ("secret" in name or "key" in name)
    ]


@pytest.fixture
async def fake() -> AsyncIterator[FakeTelegram]:
    async with FakeTelegram(token=BOT_TOKEN) as fake:
        yield fake


@pytest.fixture
def env(tmp_path: Path, fake: FakeTelegram) -> dict[str, str]:
    home = tmp_path / "home"
    home.mkdir()
    return clean_env(
        HOME=str(home),
        CCR_BOX_CONFIG=str(tmp_path / "config" / "config.toml"),
        CCR_BOX_DATA_DIR=str(tmp_path / "data"),
        CCR_BOX_LOG_LEVEL="debug",
        CCR_API_KEY=API_KEY,
        TELEGRAM_BOT_TOKEN=BOT_TOKEN,
        TELEGRAM_API_BASE=fake.base_url,
        TELEGRAM_MODE="webhook",
        TELEGRAM_WEBHOOK_SECRET=WEBHOOK_SECRET,
        TELEGRAM_WEBHOOK_PATH_SECRET=PATH_SECRET,
        ALLOWED_CHAT_IDS=CHAT,
    )


class Client:
    """HTTP calls against the child; every response (head and body) is kept for the leak scan."""

    def __init__(self, http: aiohttp.ClientSession, base: str) -> None:
        self.http, self.base = http, base
        self.seen: list[str] = []
        self.requests = 0

    async def call(
        self, method: str, path: str, body: Any = None, headers: dict[str, str] | None = None
    ) -> tuple[int, str]:
        data = None if body is None else body if isinstance(body, bytes) else json.dumps(body)
        async with self.http.request(
            method, self.base + path, data=data, headers=headers or {}
        ) as resp:
            text = await resp.text()
            self.requests += 1
            self.seen.append(f"{resp.status} {dict(resp.headers)} {text}")
            return resp.status, text


async def test_a_debug_run_leaks_no_secret_and_keeps_its_files_private(
    tmp_path: Path, fake: FakeTelegram, env: dict[str, str]
) -> None:
    good = {"Authorization": f"Bearer {API_KEY}"}
    tg = {"X-Telegram-Bot-Api-Secret-Token": WEBHOOK_SECRET}
    hook = f"/webhook/telegram/{PATH_SECRET}"
    outputs: list[str] = []

    proc = await Proc.start("up", "--headless", "--port", "0", env=env)
    try:
        port = await proc.listening_port()
        base = f"http://127.0.0.1:{port}"
        cmdline = proc_file(proc.process.pid, "cmdline").decode(errors="replace")
        timeout = aiohttp.ClientTimeout(total=TIMEOUT)
        async with aiohttp.ClientSession(timeout=timeout) as http:
            c = Client(http, base)
            await fake.wait_for(lambda: len(fake.calls_of("getMe")) == 1)

            # An agent, a session, notifications (sent, refused by Telegram, queued).
            ws = await http.ws_connect(f"{base}/ws?machineId=box", protocols=("ccr", API_KEY))
            assert json.loads((await ws.receive(timeout=TIMEOUT)).data)["type"] == "boot"
            assert (await c.call("POST", "/sessions/register", {"sessionId": "s", "machineId": "box", "label": "lab"}, good))[0] == 200  # fmt: skip
            note = {"sessionId": "s", "chatId": CHAT, "text": "Done."}
            status, text = await c.call("POST", "/notifications/send", note, good)
            assert status == 200, text
            message_id = json.loads(text)["messageId"]
            fake.fail_next("sendMessage", 400, description="Bad Request: chat not found")
            assert (await c.call("POST", "/notifications/send", note, good))[0] == 502

            # Webhook: a reply that becomes a command for the agent, which acks and fails it.
            update = fake.make_message(CHAT, "run the tests", reply_to=message_id)
            assert await c.call("POST", hook, update, tg) == (200, "ok")
            frame = json.loads((await ws.receive(timeout=TIMEOUT)).data)
            assert frame["type"] == "command"
            await ws.send_str(json.dumps({"type": "ack", "commandId": frame["commandId"]}))
            result = {
                "type": "commandResult",
                "commandId": frame["commandId"],
                "sessionId": "s",
                "success": False,
                "error": "tmux target not found",
                "chatId": CHAT,
            }
            await ws.send_str(json.dumps(result))
            await fake.wait_for(
                lambda: any("Command failed" in t for t in fake.messages_to(CHAT)), TIMEOUT
            )
            # Bot commands and a callback.
            assert await c.call("POST", hook, fake.make_message(CHAT, "/sessions"), tg) == (200, "ok")  # fmt: skip
            press = fake.make_callback(CHAT, "cmd:nope:yes")
            assert await c.call("POST", hook, press, tg) == (200, "ok")

            # Admin API, event stream, observability.
            for path in (
                "/admin/machines",
                "/admin/commands",
                "/admin/status",
                "/admin/events",
                "/admin/outbox",
                "/sessions",
                "/metrics",
            ):
                assert (await c.call("GET", path, headers=good))[0] == 200, path
            assert (await c.call("GET", "/ready"))[0] == 200
            assert (await c.call("GET", "/health"))[0] == 200
            cmd = {"text": "from the console"}
            assert (await c.call("POST", "/admin/sessions/s/commands", cmd, good))[0] == 200
            retry = f"/admin/commands/{frame['commandId']}/retry"
            assert (await c.call("POST", retry, headers=good))[0] == 409
            stream = await http.ws_connect(
                f"{base}/admin/events/stream", protocols=("ccr", API_KEY)
            )
            assert json.loads((await stream.receive(timeout=TIMEOUT)).data)["seq"] >= 1
            await stream.close()
            await ws.close()

            # Telegram unreachable for a moment: the notification is queued (outbox).
            fake.drop_connections_for("sendMessage")
            assert (await c.call("POST", "/notifications/send", note, good))[0] == 202

            # Wrong credentials of every kind, last (the eleventh starts a throttle block).
            for protocols in (("ccr", API_KEY + "x"), ("ccr", WEBHOOK_SECRET)):
                with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
                    await http.ws_connect(f"{base}/ws?machineId=box", protocols=protocols)
                assert refused.value.status == 401
            failures = [
                ("GET", "/sessions", None, {"Authorization": "Bearer wrong"}),
                ("GET", "/sessions", None, {"X-API-Key": API_KEY + "x"}),
                ("GET", "/sessions", None, {"X-API-Key": API_KEY[:-1]}),
                ("GET", f"/sessions?key={API_KEY}&token={BOT_TOKEN}", None, {}),
                ("GET", "/metrics", None, {"Authorization": f"Basic {API_KEY}"}),
                ("POST", hook, update, {"X-Telegram-Bot-Api-Secret-Token": WEBHOOK_SECRET + "x"}),
                ("POST", f"{hook}x", update, tg),
                ("POST", f"/webhook/telegram/{PATH_SECRET[:-1]}", update, tg),
                ("GET", "/admin/status", None, {"X-API-Key": WEBHOOK_SECRET}),
                ("GET", "/admin/status", None, {"X-API-Key": BOT_TOKEN}),
                ("GET", "/sessions", None, {"Authorization": f"Bearer {API_KEY}0"}),
            ]
            statuses = [(await c.call(*f))[0] for f in failures]
            # Two /ws failures and nine here make eleven: a block of at least 250 ms follows,
            # growing with each further failure, so a slow machine still sees the 429 soon.
            assert statuses[:9] == [401] * 9, statuses
            while 429 not in statuses and len(statuses) < 30:
                statuses.append((await c.call("GET", "/sessions", None, {"X-API-Key": "x"}))[0])
            assert 429 in statuses, statuses
            # Bytes aiohttp's client will not send: a key with a stray byte, control characters
            # (refused by the HTTP parser, whose error message quotes the offending line).
            key = API_KEY.encode()
            for headers in (
                [b"X-API-Key: " + key + b"\xe9"],
                [b"X-API-Key: " + key + b"\x7f"],
                [b"Authorization: Bearer " + key + b"\r"],
                [b"X-Telegram-Bot-Api-Secret-Token: " + WEBHOOK_SECRET.encode() + b"\x00"],
            ):
                resp = await raw_request("127.0.0.1", port, "GET", "/sessions", headers)
                assert resp.status in (400, 429)
            await proc.wait_line("authentication failures from 127.0.0.1")

        # Commands run beside the server, with the same environment.
        for args in (("config", "show"), ("config", "show", "--json"), ("config", "path")):
            done = await run_ccr_box(*args, env=env)
            assert done.process.returncode == 0, done.stderr
            outputs.append(done.stdout + done.stderr)
        assert "<redacted>" in outputs[0]
        doctor_env = {**env, "CCR_BOX_PORT": str(port)}
        done = await run_ccr_box("doctor", "--server", env=doctor_env, timeout=30)
        assert done.process.returncode in (0, 1), done.stderr
        assert "Telegram" in done.stdout or "telegram" in done.stdout, done.stdout
        outputs.append(done.stdout + done.stderr)
        backups = tmp_path / "backups"
        backups.mkdir()
        done = await run_ccr_box("backup", str(backups), env=env)
        assert done.process.returncode == 0, done.stderr
        outputs.append(done.stdout + done.stderr)
        # The process listing shows no secret (the environment may hold them; argv must not).
        assert leaks(cmdline, [API_KEY, BOT_TOKEN, WEBHOOK_SECRET, PATH_SECRET]) == []

        proc.send_signal(signal.SIGTERM)
        assert await proc.wait_exit() == 0
    finally:
        await proc.stop()

    log = proc.stderr + proc.stdout
    # The log saw it all, so the absence checks below mean something.
    for expected in (
        " DEBUG ",
        "Telegram sendMessage -> 400",
        "GET /sessions 401",
        "GET /ws 401",
        "POST /webhook/telegram/*** 401",
        "GET /sessions 429",
        "rejected a malformed HTTP request",
    ):
        assert expected in log, expected

    # Secrets: the four from the environment plus any the first run generated into the file.
    config_path = Path(env["CCR_BOX_CONFIG"])
    generated = secrets_in_config(config_path)
    all_secrets = [API_KEY, BOT_TOKEN, WEBHOOK_SECRET, PATH_SECRET, *generated]
    found = {
        "server log": leaks(log, all_secrets),
        "commands": leaks("\n".join(outputs), all_secrets),
        "responses": leaks("\n".join(c.seen), all_secrets),
    }
    assert found == {"server log": [], "commands": [], "responses": []}
    assert "Traceback" not in log

    # Private files: config 0600, data directory 0700, database and its companions 0600.
    data_dir = Path(env["CCR_BOX_DATA_DIR"])
    assert mode(config_path) == 0o600
    assert mode(data_dir) == 0o700
    files = {**modes(data_dir), **modes(backups)}
    assert "ccr-box.sqlite3" in files and len(modes(backups)) == 1
    assert {name: oct(bits) for name, bits in files.items() if bits != 0o600} == {}
    figures.record("security", requests=c.requests + 4, secrets_leaked=0)


@pytest.mark.skipif(not Path("/proc/self/cmdline").exists(), reason="needs /proc")
async def test_a_running_database_keeps_wal_and_shm_private(
    tmp_path: Path, fake: FakeTelegram, env: dict[str, str]
) -> None:
    """While the server runs, SQLite's -wal and -shm exist; they hold the same data."""
    proc = await Proc.start("up", "--headless", "--port", "0", env=env)
    try:
        port = await proc.listening_port()
        async with aiohttp.ClientSession() as http:
            body = json.dumps({"sessionId": "s", "machineId": "m"})
            headers = {"X-API-Key": API_KEY}
            url = f"http://127.0.0.1:{port}/sessions/register"
            async with http.post(url, data=body, headers=headers) as resp:
                assert resp.status == 200
        files = modes(Path(env["CCR_BOX_DATA_DIR"]))
        assert {"ccr-box.sqlite3", "ccr-box.sqlite3-wal", "ccr-box.sqlite3-shm"} <= set(files)
        assert {name: oct(bits) for name, bits in files.items() if bits != 0o600} == {}
        environ = proc_file(proc.process.pid, "environ")
        assert API_KEY.encode() in environ  # the check above looks at the right process
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(proc.wait_exit(), TIMEOUT) == 0
    finally:
        await proc.stop()
