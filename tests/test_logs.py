"""Logging hygiene (contract §2.1, §8.5, §10.2): no secret in any log line; masked access log."""

from __future__ import annotations

import io
import json
import logging
import signal
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from urllib.parse import quote

import aiohttp
import pytest
from aiohttp import WSServerHandshakeError

from ccr_box.logs import MASK, SecretMasker, masked_path, setup_logging
from tests.fake_telegram import FakeTelegram
from tests.helpers_proc import Proc, clean_env

API_KEY = "logs-api-key_K3yK3yK3y"
BOT_TOKEN = "555111:logs-bot-token_T0kT0k"
WEBHOOK_SECRET = "logs-webhook-secret_W3bW3b"
PATH_SECRET = "logs-path-secret_P4thP4th"
SECRETS = (API_KEY, BOT_TOKEN, WEBHOOK_SECRET, PATH_SECRET)
CHAT = "4242"
TIMEOUT = 10.0


def spellings(secret: str) -> set[str]:
    return {secret, quote(secret, safe=""), quote(secret)}


# --- a real server, debug logging, everything that could leak ------------------------------------


@pytest.fixture
async def fake() -> AsyncIterator[FakeTelegram]:
    async with FakeTelegram(token=BOT_TOKEN) as fake:
        yield fake


@pytest.fixture
async def server(tmp_path: Path, fake: FakeTelegram) -> AsyncIterator[tuple[Proc, str]]:
    env = clean_env(
        CCR_BOX_CONFIG=str(tmp_path / "config.toml"),
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
    proc = await Proc.start("up", "--headless", "--port", "0", env=env)
    try:
        port = await proc.listening_port()
        yield proc, f"http://127.0.0.1:{port}"
    finally:
        await proc.stop()


async def test_logs_never_contain_secrets_and_mask_the_webhook_path(
    server: tuple[Proc, str], fake: FakeTelegram
) -> None:
    proc, base = server
    good = {"Authorization": f"Bearer {API_KEY}"}
    timeout = aiohttp.ClientTimeout(total=TIMEOUT)
    async with aiohttp.ClientSession(timeout=timeout) as http:

        async def post(path: str, body: object, headers: dict[str, str]) -> tuple[int, str]:
            async with http.post(base + path, data=json.dumps(body), headers=headers) as resp:
                return resp.status, await resp.text()

        # getMe at start-up (webhook mode) went through the token URL.
        await fake.wait_for(lambda: len(fake.calls_of("getMe")) == 1)

        # Authentication failures, including a key offered where keys are never accepted.
        assert (await post("/sessions/register", {}, {"Authorization": "Bearer wrong"}))[0] == 401
        assert (await post("/sessions/register", {}, {"X-API-Key": API_KEY + "x"}))[0] == 401
        async with http.get(f"{base}/sessions?apiKey={API_KEY}&key={API_KEY}") as resp:
            assert resp.status == 401
        with pytest.raises(WSServerHandshakeError) as refused:
            await http.ws_connect(f"{base}/ws?machineId=box", protocols=("ccr", "bad-key"))
        assert refused.value.status == 401
        ws = await http.ws_connect(f"{base}/ws?machineId=box", protocols=("ccr", API_KEY))
        assert json.loads((await ws.receive(timeout=TIMEOUT)).data)["type"] == "boot"
        await ws.close()

        # A session and a notification that works, then Telegram refusing one.
        status, _ = await post("/sessions/register", {"sessionId": "s", "machineId": "box"}, good)
        assert status == 200
        note = {"sessionId": "s", "chatId": CHAT, "text": "Done."}
        status, body = await post("/notifications/send", note, good)
        assert status == 200, body
        message_id = json.loads(body)["messageId"]
        fake.fail_next("sendMessage", 400, description="Bad Request: chat not found")
        status, body = await post("/notifications/send", note, good)
        assert (status, json.loads(body)["error"]) == (502, "Telegram API error")

        # The webhook: wrong header, wrong path, then right; a pipeline text Telegram refuses.
        hook = f"/webhook/telegram/{PATH_SECRET}"
        update = fake.make_message(CHAT, "run the tests", reply_to=message_id)
        tg = {"X-Telegram-Bot-Api-Secret-Token": WEBHOOK_SECRET}
        assert await post(hook, update, {"X-Telegram-Bot-Api-Secret-Token": "nope"}) == (
            401,
            "Unauthorized",
        )
        assert await post(f"/webhook/telegram/{PATH_SECRET}x", update, tg) == (401, "Unauthorized")
        fake.fail_next("sendMessage", 403, description="Forbidden: bot was blocked by the user")
        assert await post(hook, update, tg) == (200, "ok")
        await proc.wait_line("Telegram refused a text to chat 4242")
        await proc.wait_line(f"POST /webhook/telegram/{MASK} 200")

        # Last (its outbox retry runs in the background and must not eat an injected failure).
        fake.drop_connections_for("sendMessage")
        status, body = await post("/notifications/send", note, good)
        assert (status, json.loads(body)["queued"]) == (202, True)

    proc.send_signal(signal.SIGTERM)
    assert await proc.wait_exit() == 0
    log = proc.stderr + proc.stdout

    # The log did see all of it (so the absence checks below mean something)...
    assert " DEBUG " in log
    assert "Telegram getMe -> 200" in log
    assert "Telegram sendMessage -> 400" in log
    assert "Telegram sendMessage -> 403" in log
    assert "Telegram sendMessage -> network error" in log
    assert f"POST /webhook/telegram/{MASK} 401" in log
    assert f"POST /webhook/telegram/{MASK} 200" in log
    assert "GET /sessions 401" in log
    assert "POST /sessions/register 401" in log
    assert "GET /ws 401" in log
    assert "POST /notifications/send 502" in log
    assert "POST /notifications/send 202" in log
    # ...and no secret, in any spelling, anywhere.
    for secret in SECRETS:
        for spelled in spellings(secret):
            assert spelled not in log, f"{secret!r} leaked into the log"
    assert "apiKey=" not in log  # the access log has no query strings
    assert "Traceback" not in log
    # First run with token and chats from the environment: no "fill in" advice.
    assert "ccr-box: created" in log and "Fill in" not in log


# --- SecretMasker and friends --------------------------------------------------------------------


@pytest.fixture
def masked_logger() -> Iterator[tuple[logging.Logger, io.StringIO]]:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logging.Formatter("%(levelname)s %(message)s"))
    handler.addFilter(SecretMasker([BOT_TOKEN, API_KEY, "", "abc", "abcdef"]))
    logger = logging.getLogger("tests.logs.masker")
    logger.propagate = False
    logger.setLevel(logging.DEBUG)
    logger.addHandler(handler)
    yield logger, stream
    logger.removeHandler(handler)


def test_masker_masks_message_args_and_encoded_spellings(
    masked_logger: tuple[logging.Logger, io.StringIO],
) -> None:
    logger, stream = masked_logger
    logger.info("token %s in args", BOT_TOKEN)
    logger.info(f"key {API_KEY} in the message itself")
    logger.info("url http://x/bot%s/getMe", quote(BOT_TOKEN, safe=""))
    logger.info("dict %r", {"key": API_KEY, "n": 1})
    assert stream.getvalue().splitlines() == [
        f"INFO token {MASK} in args",
        f"INFO key {MASK} in the message itself",
        f"INFO url http://x/bot{MASK}/getMe",
        f"INFO dict {{'key': '{MASK}', 'n': 1}}",
    ]


def test_masker_masks_the_longest_secret_first_and_ignores_empty_ones(
    masked_logger: tuple[logging.Logger, io.StringIO],
) -> None:
    logger, stream = masked_logger
    logger.info("x%sx and xabcx", "abcdef")
    logger.info("nothing secret here")
    assert stream.getvalue().splitlines() == [
        f"INFO x{MASK}x and x{MASK}x",
        "INFO nothing secret here",
    ]


def test_masker_masks_tracebacks(masked_logger: tuple[logging.Logger, io.StringIO]) -> None:
    logger, stream = masked_logger
    try:
        raise RuntimeError(f"call to /bot{BOT_TOKEN}/sendMessage failed")
    except RuntimeError:
        logger.exception("failed with %s", API_KEY)
    text = stream.getvalue()
    assert text.startswith(f"ERROR failed with {MASK}\nTraceback (most recent call last):")
    assert f"RuntimeError: call to /bot{MASK}/sendMessage failed" in text
    assert BOT_TOKEN not in text and API_KEY not in text


def test_masker_survives_bad_format_arguments(
    masked_logger: tuple[logging.Logger, io.StringIO],
) -> None:
    logger, stream = masked_logger
    logger.info("%s and %s", API_KEY)  # one argument short: must not raise into the caller
    assert stream.getvalue() == "INFO %s and %s (unformattable log arguments)\n"


def test_masker_without_secrets_leaves_records_alone() -> None:
    record = logging.LogRecord("x", logging.INFO, __file__, 1, "a %s", ("b",), None)
    assert SecretMasker(["", ""]).filter(record) is True
    assert (record.msg, record.args) == ("a %s", ("b",))


def test_masked_path() -> None:
    assert masked_path(f"/webhook/telegram/{PATH_SECRET}") == f"/webhook/telegram/{MASK}"
    assert masked_path("/webhook/telegram/") == f"/webhook/telegram/{MASK}"
    assert masked_path("/webhook/telegram") == "/webhook/telegram"
    assert masked_path("/sessions") == "/sessions"


@pytest.fixture
def restore_root_logging() -> Iterator[logging.Logger]:
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield root
    for handler in list(root.handlers):
        root.removeHandler(handler)
    for handler in handlers:
        root.addHandler(handler)
    root.setLevel(level)


def test_setup_logging_installs_one_masked_stderr_handler(
    restore_root_logging: logging.Logger, capsys: pytest.CaptureFixture[str]
) -> None:
    root = restore_root_logging
    setup_logging("debug", [API_KEY])
    masker = setup_logging("debug", [API_KEY])  # twice: still one handler
    assert len(root.handlers) == 1
    assert root.handlers[0].filters == [masker]
    assert root.level == logging.DEBUG
    logging.getLogger("ccr_box.test").debug("key=%s", API_KEY)
    err = capsys.readouterr().err
    assert err.endswith(f"DEBUG   ccr_box.test: key={MASK}\n")
    assert API_KEY not in err
