"""Observability: ``GET /ready`` (open readiness JSON) and ``GET /metrics`` (Prometheus text 0.0.4).

Everything runs against the real app (real SQLite, real WebSocket agents, the fake Telegram); the
exposition text is checked with a small parser written here, independent of the server's code.
"""

from __future__ import annotations

import json
import logging
import math
import re
from pathlib import Path
from typing import Any

import pytest

from ccr_box import __version__, limits
from ccr_box.clock import ManualClock
from ccr_box.config import load
from ccr_box.config_file import set_values, write_initial
from ccr_box.server import keys
from ccr_box.server.app import Options
from ccr_box.server.events import EventBus
from ccr_box.server.metrics import CONTENT_TYPE, Registry
from ccr_box.server.polling import learn_identity
from tests.conftest import API_KEY, CHAT, WEBHOOK_SECRET, Harness
from tests.fake_telegram import FakeTelegram
from tests.helpers_queue import connect_booted, receive_json, reply, sync, tick

MINUTE = 60_000

# -- a tiny, independent parser of the text exposition format ---------------------------------------

_SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (\S+)$")
_LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\\n]|\\[\\"n])*)"')
_UNESCAPE = {"\\\\": "\\", '\\"': '"', "\\n": "\n"}


def _labels(text: str) -> dict[str, str]:
    labels: dict[str, str] = {}
    pos = 0
    while pos < len(text):
        match = _LABEL.match(text, pos)
        assert match, f"bad label set {text!r} at {pos}"
        labels[match.group(1)] = re.sub(r'\\[\\"n]', lambda m: _UNESCAPE[m.group(0)], match[2])
        pos = match.end()
        if pos < len(text):
            assert text[pos] == ",", f"bad label separator in {text!r}"
            pos += 1
    return labels


def _value(text: str) -> float:
    return {"+Inf": math.inf, "-Inf": -math.inf, "NaN": math.nan}.get(text) or float(text)


class Exposition:
    """Parsed exposition text; asserts the format rules while parsing."""

    def __init__(self, text: str) -> None:
        assert text.endswith("\n")
        self.types: dict[str, str] = {}
        self.helps: dict[str, str] = {}
        self.samples: list[tuple[str, dict[str, str], float]] = []
        for line in text[:-1].split("\n"):
            if line.startswith("# HELP "):
                name, _, help_text = line[7:].partition(" ")
                assert name not in self.helps, f"second HELP for {name}"
                self.helps[name] = help_text
            elif line.startswith("# TYPE "):
                name, _, kind = line[7:].partition(" ")
                assert kind in ("counter", "gauge", "histogram", "summary", "untyped"), line
                assert name not in self.types, f"second TYPE for {name}"
                self.types[name] = kind
            else:
                assert not line.startswith("#") and line, f"unexpected line {line!r}"
                match = _SAMPLE.match(line)
                assert match, f"not `name{{labels}} value`: {line!r}"
                name, labels, value = match.group(1), _labels(match.group(2) or ""), match[3]
                family = self.family_of(name)
                assert family in self.types and family in self.helps, f"no HELP/TYPE for {name}"
                self.samples.append((name, labels, _value(value)))
        for family, kind in self.types.items():
            if kind == "histogram":
                self._check_histogram(family)

    def family_of(self, name: str) -> str:
        for suffix in ("_bucket", "_sum", "_count"):
            base = name.removesuffix(suffix)
            if name.endswith(suffix) and self.types.get(base) == "histogram":
                return base
        return name

    def value(self, name: str, **labels: str) -> float | None:
        found = [v for n, ls, v in self.samples if n == name and ls == labels]
        assert len(found) <= 1, f"duplicate series {name}{labels}"
        return found[0] if found else None

    def buckets(self, family: str) -> list[tuple[float, float]]:
        return [(_value(ls["le"]), v) for n, ls, v in self.samples if n == f"{family}_bucket"]

    def _check_histogram(self, family: str) -> None:
        buckets = self.buckets(family)
        bounds = [b for b, _ in buckets]
        counts = [c for _, c in buckets]
        assert bounds == sorted(bounds) and bounds[-1] == math.inf, bounds
        assert counts == sorted(counts), f"{family} buckets are not cumulative: {counts}"
        assert self.value(f"{family}_count") == counts[-1]
        assert self.value(f"{family}_sum") is not None


async def scrape(h: Harness, **headers: str) -> Exposition:
    resp = await h.client.get("/metrics", headers=headers or h.auth())
    assert resp.status == 200, await resp.text()
    assert resp.headers["Content-Type"] == CONTENT_TYPE
    return Exposition(await resp.text())


async def ready(h: Harness) -> tuple[int, dict[str, Any], str]:
    resp = await h.client.get("/ready")
    text = await resp.text()
    return resp.status, json.loads(text), text


# -- /ready ----------------------------------------------------------------------------------------


async def test_ready_reports_checks_without_secrets_or_ids(server: Harness) -> None:
    assert server.app[keys.STATE].started_at == server.clock.now_ms()
    ws, _ = await connect_booted(server, "devbox-7f3a")
    server.clock.advance(1_500)
    status, body, text = await ready(server)
    assert status == 200
    assert body == {
        "ready": True,
        "degraded": False,
        "checks": {
            "database": {"ok": True},
            "telegram": {
                "mode": "webhook",
                "state": "starting",
                "lastOkAt": None,
                "lastError": None,
            },
            "machines": {"connected": 1},
        },
        "version": __version__,
        "uptimeS": 1.5,
    }
    for secret in (API_KEY, WEBHOOK_SECRET, server.fake.token, "devbox-7f3a", CHAT):
        assert secret not in text
    health = await server.client.get("/health")
    assert (health.status, await health.text()) == (200, "ok")
    await ws.close()


async def test_ready_is_503_when_the_database_is_closed(server: Harness) -> None:
    await server.db.close()  # the app's own database, really closed (the app closes it again)
    status, body, _ = await ready(server)
    assert status == 503
    assert body["ready"] is False
    assert body["checks"]["database"] == {"ok": False, "error": "database is closed"}
    # /metrics still answers: the database gauges say so instead of showing stale numbers.
    exposition = await scrape(server)
    assert exposition.value("ccr_box_database_ok") == 0
    assert exposition.value("ccr_box_commands", state="pending") is None
    assert exposition.value("ccr_box_sessions") is None
    assert exposition.value("ccr_box_up") == 1


async def test_telegram_failure_degrades_but_stays_ready(server: Harness) -> None:
    """A rejected token (getMe 401) is Telegram's problem: hooks and agents keep working."""
    server.fake.fail_next("getMe", 401)
    app = server.app
    ok = await learn_identity(app[keys.TELEGRAM], app[keys.STATE].telegram, server.clock)
    assert ok is False
    status, body, text = await ready(server)
    assert (status, body["ready"], body["degraded"]) == (200, True, True)
    assert body["checks"]["telegram"] == {
        "mode": "webhook",
        "state": "error",
        "lastOkAt": None,
        "lastError": "invalid bot token (Unauthorized)",
    }
    assert server.fake.token not in text
    exposition = await scrape(server)
    assert exposition.value("ccr_box_telegram_api_errors_total", method="getMe", kind="permanent")


async def test_ready_reports_telegram_off_without_a_token(start_server) -> None:
    h = await start_server(bot_token="")
    _status, body, _ = await ready(h)
    assert body["checks"]["telegram"]["mode"] == "off"
    assert body["checks"]["telegram"]["state"] == "off"
    assert body["degraded"] is False


# -- /metrics access -------------------------------------------------------------------------------


async def test_metrics_needs_the_api_key(server: Harness) -> None:
    resp = await server.client.get("/metrics")
    assert resp.status == 401
    assert await resp.json() == {"error": "Unauthorized"}
    wrong = await server.client.get("/metrics", headers={"Authorization": "Bearer nope"})
    assert wrong.status == 401
    for form in ("bearer", "x-api-key"):
        exposition = await scrape(server, **server.auth(form))
        assert exposition.value("ccr_box_up") == 1
        assert exposition.value("ccr_box_build_info", version=__version__) == 1


def write_config(path: Path, fake: FakeTelegram, data_dir: Path, public: bool) -> None:
    values = {
        ("server", "api_key"): API_KEY,
        ("server", "data_dir"): str(data_dir),
        ("server", "metrics_public"): public,
        ("telegram", "bot_token"): fake.token,
        ("telegram", "mode"): "webhook",
        ("telegram", "api_base"): fake.base_url,
        ("telegram", "webhook_secret"): WEBHOOK_SECRET,
        ("telegram", "allowed_chat_ids"): [CHAT],
    }
    if path.exists():
        path.write_text(set_values(path.read_text(), values))
    else:
        write_initial(path, values)


async def test_metrics_public_is_read_per_request(
    tmp_path: Path, start_server, fake_telegram: FakeTelegram
) -> None:
    path = tmp_path / "config.toml"
    write_config(path, fake_telegram, tmp_path / "data", public=True)
    h = await start_server(
        config=load(path, env={}), options=Options(maintenance=False, telegram_inbound=False)
    )
    open_scrape = await h.client.get("/metrics")
    assert open_scrape.status == 200
    Exposition(await open_scrape.text())

    write_config(path, fake_telegram, tmp_path / "data", public=False)
    reloader = h.app[keys.RELOADER]
    assert reloader is not None and reloader.check() is True  # the live reload path
    assert (await h.client.get("/metrics")).status == 401
    assert (await h.client.get("/metrics", headers=h.auth())).status == 200


# -- counters, gauges and the histogram ------------------------------------------------------------


async def test_reply_acked_by_agent_is_counted_and_timed(server: Harness) -> None:
    await server.register("sess-1", "devbox", "api")
    message_id = (await server.notify("sess-1"))["messageId"]
    ws, _ = await connect_booted(server, "devbox")
    await reply(server, message_id, "yes, go on")
    frame = await receive_json(ws)
    assert frame["command"] == "yes, go on"

    server.clock.advance(1_500)  # the agent takes 1.5 s to acknowledge
    await ws.send_str(json.dumps({"type": "ack", "commandId": frame["commandId"]}))
    result = {"type": "commandResult", "commandId": frame["commandId"], "success": True}
    await ws.send_str(json.dumps({**result, "chatId": CHAT}))
    assert await sync(ws) == []

    m = await scrape(server)
    assert m.value("ccr_box_commands_enqueued_total", source="telegram") == 1
    assert m.value("ccr_box_commands_enqueued_total", source="console") == 0
    assert m.value("ccr_box_command_deliveries_total") == 1
    assert m.value("ccr_box_command_results_total", status="ok") == 1
    assert m.value("ccr_box_command_results_total", status="error") == 0
    states = {s: m.value("ccr_box_commands", state=s) for s in ("pending", "sent", "acked", "dead")}
    assert states == {"pending": 0, "sent": 0, "acked": 1, "dead": 0}
    assert m.value("ccr_box_webhook_to_ack_seconds_count") == 1
    assert m.value("ccr_box_webhook_to_ack_seconds_sum") == 1.5
    buckets = dict(m.buckets("ccr_box_webhook_to_ack_seconds"))
    assert (buckets[1.0], buckets[2.5], buckets[math.inf]) == (0, 1, 1)
    assert m.value("ccr_box_machines_connected") == 1
    assert m.value("ccr_box_sessions") == 1
    assert m.value("ccr_box_outbox_pending") == 0
    assert m.value("ccr_box_database_ok") == 1
    assert m.value("ccr_box_start_time_seconds") == server.app[keys.STATE].started_at / 1000
    assert m.types["ccr_box_command_deliveries_total"] == "counter"
    assert m.types["ccr_box_commands"] == "gauge"
    # Machine, session and chat ids never become labels.
    for _name, labels, _value in m.samples:
        assert not {"devbox", "sess-1", CHAT} & set(labels.values()), labels
    await ws.close()


async def test_resend_and_dead_letter_are_counted(server: Harness) -> None:
    await server.register("sess-1", "devbox", "api")
    message_id = (await server.notify("sess-1"))["messageId"]
    ws, _ = await connect_booted(server, "devbox")
    await reply(server, message_id, "deploy")
    assert (await receive_json(ws))["command"] == "deploy"
    server.clock.advance(MINUTE)
    await tick(server)  # no ack: re-sent
    assert [f["command"] for f in await sync(ws)] == ["deploy"]
    server.clock.advance(limits.COMMAND_EXPIRY_MS)
    await tick(server)  # expired: dead

    m = await scrape(server)
    assert m.value("ccr_box_command_deliveries_total") == 2
    assert m.value("ccr_box_dead_letters_total") == 1
    assert m.value("ccr_box_commands", state="dead") == 1
    assert m.value("ccr_box_commands", state="sent") == 0
    assert m.value("ccr_box_webhook_to_ack_seconds_count") == 0
    await ws.close()


async def test_telegram_api_errors_are_counted_by_method_and_kind(server: Harness) -> None:
    fake = server.fake
    await server.register("sess-1", "devbox")
    fake.fail_next("sendMessage", 500)
    fake.fail_next("sendMessage", 429, retry_after=600)  # beyond the wait budget: not retried
    fake.fail_next("sendMessage", 400)
    assert (await server.post("/notifications/send", body(1))).status == 202
    assert (await server.post("/notifications/send", body(2))).status == 202
    assert (await server.post("/notifications/send", body(3))).status == 502
    assert (await server.post("/notifications/send", body(4))).status == 200

    m = await scrape(server)
    errors = {
        kind: m.value("ccr_box_telegram_api_errors_total", method="sendMessage", kind=kind)
        for kind in ("transient", "rate_limited", "permanent")
    }
    assert errors == {"transient": 1, "rate_limited": 1, "permanent": 1}
    assert m.value("ccr_box_outbox_pending") == 2  # the two transient failures wait there


def body(n: int) -> dict[str, Any]:
    return {"sessionId": "sess-1", "chatId": CHAT, "text": f"note {n}"}


async def test_console_command_is_counted_by_source(server: Harness) -> None:
    await server.register("sess-1", "devbox")
    resp = await server.post("/admin/sessions/sess-1/commands", {"text": "ls"})
    assert resp.status == 200, await resp.text()
    m = await scrape(server)
    assert m.value("ccr_box_commands_enqueued_total", source="console") == 1
    assert m.value("ccr_box_commands", state="pending") == 1
    assert m.value("ccr_box_command_deliveries_total") == 0  # the machine is offline


# -- the building blocks ---------------------------------------------------------------------------


def test_label_values_and_help_are_escaped() -> None:
    registry = Registry()
    counter = registry.counter("demo_total", 'Help with \\ and\nnewline "quotes".', ("what",))
    tricky = 'a "quoted" back\\slash\nnewline'
    counter.inc(2, what=tricky)
    text = registry.render()
    assert '# HELP demo_total Help with \\\\ and\\nnewline "quotes".' in text
    assert 'demo_total{what="a \\"quoted\\" back\\\\slash\\nnewline"} 2' in text
    assert Exposition(text).value("demo_total", what=tricky) == 2
    with pytest.raises(ValueError):
        counter.inc(what="x", other="y")
    with pytest.raises(ValueError):
        registry.gauge("bad name", "no")


def test_histogram_buckets_are_cumulative() -> None:
    registry = Registry()
    histogram = registry.histogram("wait_seconds", "Waits.", (0.1, 1))
    for value in (0.05, 0.1, 0.5, 7):
        histogram.observe(value)
    m = Exposition(registry.render())
    assert m.buckets("wait_seconds") == [(0.1, 2), (1.0, 3), (math.inf, 4)]
    assert m.value("wait_seconds_sum") == pytest.approx(7.65)


def test_a_failing_listener_never_breaks_the_publisher(caplog: pytest.LogCaptureFixture) -> None:
    bus = EventBus(ManualClock())
    seen: list[str] = []

    def broken(_event: dict[str, Any]) -> None:
        raise RuntimeError("listener bug")

    bus.add_listener(broken)
    bus.add_listener(lambda event: seen.append(event["kind"]))
    with caplog.at_level(logging.ERROR, logger="ccr_box.events"):
        event = bus.publish("command.sent", commandIds=["x"])
    assert seen == ["command.sent"]
    assert bus.recent() == [event]
    assert "event listener failed on command.sent" in caplog.text
    bus.remove_listener(broken)
    bus.publish("command.dead")
    assert seen == ["command.sent", "command.dead"]
