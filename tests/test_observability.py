"""Observability: ``GET /ready`` (open readiness JSON) and ``GET /metrics`` (Prometheus text).

Everything runs against the real app (real SQLite, real WebSocket agents, the fake Telegram); the
exposition text is read back with ``prometheus_client.parser.text_string_to_metric_families``.
"""

from __future__ import annotations

import json
import logging
import math
import sys
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from ccr_box import __version__, limits
from ccr_box.clock import ManualClock
from ccr_box.config import load
from ccr_box.config_file import set_values, write_initial
from ccr_box.server import keys
from ccr_box.server.app import Options
from ccr_box.server.events import EventBus
from ccr_box.server.metrics import ServerMetrics
from ccr_box.server.polling import learn_identity
from tests.conftest import API_KEY, CHAT, WEBHOOK_SECRET, Harness
from tests.fake_telegram import FakeTelegram
from tests.helpers_queue import connect_booted, receive_json, reply, sync, tick

MINUTE = 60_000

# -- reading the exposition text --------------------------------------------------------------------


class Exposition:
    """Exposition text as ``prometheus_client``'s own parser reads it, with the format's rules
    checked: one HELP and TYPE per family, every sample inside a family, histograms cumulative.

    ``types`` is keyed by family name as the parser gives it (a counter's family name has no
    ``_total``; its samples do).
    """

    def __init__(self, text: str) -> None:
        assert text.endswith("\n")
        self.text = text
        self.types: dict[str, str] = {}
        self.helps: dict[str, str] = {}
        self.samples: list[tuple[str, dict[str, str], float]] = []
        for family in text_string_to_metric_families(text):
            assert family.name not in self.types, f"second family {family.name}"
            assert family.type in ("counter", "gauge", "histogram", "summary", "unknown"), family
            self.types[family.name] = family.type
            self.helps[family.name] = family.documentation
            for sample in family.samples:
                assert sample.name.startswith(family.name), (family.name, sample.name)
                self.samples.append((sample.name, dict(sample.labels), sample.value))
        for family, kind in self.types.items():
            if kind == "histogram":
                self._check_histogram(family)

    def value(self, name: str, **labels: str) -> float | None:
        found = [v for n, ls, v in self.samples if n == name and ls == labels]
        assert len(found) <= 1, f"duplicate series {name}{labels}"
        return found[0] if found else None

    def buckets(self, family: str) -> list[tuple[float, float]]:
        return [(float(ls["le"]), v) for n, ls, v in self.samples if n == f"{family}_bucket"]

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
    assert resp.headers["Content-Type"] == CONTENT_TYPE_LATEST
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
    assert m.types["ccr_box_command_deliveries"] == "counter"
    assert "# TYPE ccr_box_command_deliveries_total counter\n" in m.text
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


SERIES = {  # family (as the parser names it) -> type: the README's list, unchanged
    "ccr_box_up": "gauge",
    "ccr_box_start_time_seconds": "gauge",
    "ccr_box_build_info": "gauge",
    "ccr_box_database_ok": "gauge",
    "ccr_box_commands": "gauge",
    "ccr_box_outbox_pending": "gauge",
    "ccr_box_sessions": "gauge",
    "ccr_box_machines_connected": "gauge",
    "ccr_box_commands_enqueued": "counter",
    "ccr_box_command_deliveries": "counter",
    "ccr_box_dead_letters": "counter",
    "ccr_box_command_results": "counter",
    "ccr_box_telegram_api_errors": "counter",
    "ccr_box_webhook_to_ack_seconds": "histogram",
}


async def test_the_series_are_the_documented_ones_plus_process(server: Harness) -> None:
    m = await scrape(server)
    own = {name: kind for name, kind in m.types.items() if name.startswith("ccr_box_")}
    assert own == SERIES
    others = set(m.types) - set(own)
    assert all(name.startswith("process_") for name in others), others
    if sys.platform == "linux":  # ProcessCollector reads /proc
        assert m.types["process_cpu_seconds"] == "counter"
        assert (m.value("process_resident_memory_bytes") or 0) > 0
        assert m.value("process_start_time_seconds")
    assert not [name for name, _, _ in m.samples if name.endswith("_created")]
    labels = {name: set(ls) for name, ls, _ in m.samples if name.startswith("ccr_box_")}
    assert labels["ccr_box_commands"] == {"state"}
    assert labels["ccr_box_commands_enqueued_total"] == {"source"}
    assert labels["ccr_box_command_results_total"] == {"status"}
    assert labels["ccr_box_build_info"] == {"version"}
    assert labels["ccr_box_webhook_to_ack_seconds_bucket"] == {"le"}


def test_each_server_has_its_own_registry() -> None:
    """Two apps in one process: no duplicate-registration error, no shared counts, and nothing
    lands on the library's global default registry."""
    first, second = ServerMetrics(), ServerMetrics()
    first.telegram_error("getMe", "transient")
    assert first.registry is not second.registry
    assert first.registry is not REGISTRY
    name, labels = "ccr_box_telegram_api_errors_total", {"method": "getMe", "kind": "transient"}
    assert first.registry.get_sample_value(name, labels) == 1
    assert second.registry.get_sample_value(name, labels) is None
    assert REGISTRY.get_sample_value("ccr_box_up") is None


def test_label_values_are_escaped() -> None:
    metrics = ServerMetrics()
    tricky = 'a "quoted" back\\slash\nnewline'
    metrics.on_event({"kind": "command.queued", "data": {"source": tricky}, "at": 0})
    metrics.telegram_error("sendMessage", "no such kind")  # unknown kinds count as permanent
    text = generate_latest(metrics.registry).decode()
    assert 'source="a \\"quoted\\" back\\\\slash\\nnewline"' in text
    m = Exposition(text)
    assert m.value("ccr_box_commands_enqueued_total", source=tricky) == 1
    assert m.value("ccr_box_telegram_api_errors_total", method="sendMessage", kind="permanent")


def test_histogram_buckets_are_cumulative() -> None:
    metrics = ServerMetrics()
    for n, wait_ms in enumerate((5, 100, 500, 7_000)):
        command = {"commandId": f"c{n}"}
        metrics.on_event({"kind": "command.queued", "data": {**command, "source": "x"}, "at": 0})
        metrics.on_event({"kind": "command.acked", "data": command, "at": wait_ms})
    metrics.on_event({"kind": "command.acked", "data": {"commandId": "never-queued"}, "at": 9})
    m = Exposition(generate_latest(metrics.registry).decode())
    buckets = dict(m.buckets("ccr_box_webhook_to_ack_seconds"))
    assert (buckets[0.005], buckets[0.1], buckets[0.5], buckets[5.0]) == (1, 2, 3, 3)
    assert (buckets[10.0], buckets[math.inf]) == (4, 4)
    assert m.value("ccr_box_webhook_to_ack_seconds_sum") == pytest.approx(7.605)


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
