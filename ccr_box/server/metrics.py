"""The server's metrics, on a ``prometheus_client`` registry of its own.

Each :class:`ServerMetrics` owns a :class:`~prometheus_client.CollectorRegistry` (never the
library's global default one), so several apps in one process (the test suite) never collide.
``/metrics`` (``server/observe.py``) serves it with ``generate_latest``. The registry also holds a
:class:`~prometheus_client.ProcessCollector` (``process_*``: CPU, memory, open files, start time).

Counters are fed by the :class:`~ccr_box.server.events.EventBus` (``ServerMetrics.on_event`` is a
synchronous listener) and by the Telegram client (``ServerMetrics.telegram_error``). The gauges
that describe the database are read at scrape time (``server/observe.py`` reads the counts, then
:meth:`ServerMetrics.scraped` hands them over); when the database does not answer, those series
are left out rather than shown stale. Machine ids, session ids and chat ids never become label
values: their number is unbounded.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import prometheus_client
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, ProcessCollector
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from ccr_box import __version__
from ccr_box.db.queue import STATUSES
from ccr_box.db.stats import Counts

# No ``*_created`` series: they would double the series count, and the server's start time is
# already ``ccr_box_start_time_seconds``. The library only offers this switch process-wide; ccr-box
# is its only user in the process.
# prometheus_client (0.26) ships py.typed but leaves this function unannotated.
prometheus_client.disable_created_metrics()  # type: ignore[no-untyped-call]

ACK_BUCKETS_S = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300)
MAX_TRACKED_COMMANDS = 10_000  # enqueue times kept for the ack histogram
ERROR_KINDS = ("permanent", "transient", "rate_limited")
SOURCES = ("telegram", "console")


class DatabaseCollector(Collector):
    """``ccr_box_database_ok``, ``ccr_box_commands{state}``, ``ccr_box_outbox_pending`` and
    ``ccr_box_sessions`` from the counts of the last scrape (``None``: the database did not answer,
    so ``database_ok`` is 0 and the other three families are listed without samples)."""

    def __init__(self) -> None:
        self.counts: Counts | None = None

    def describe(self) -> Iterable[GaugeMetricFamily]:
        return self._families(None)

    def collect(self) -> Iterable[GaugeMetricFamily]:
        return self._families(self.counts)

    @staticmethod
    def _families(counts: Counts | None) -> list[GaugeMetricFamily]:
        ok = GaugeMetricFamily(
            "ccr_box_database_ok", "1 when the database answered the scrape's queries, else 0."
        )
        ok.add_metric([], 0 if counts is None else 1)
        commands = GaugeMetricFamily(
            "ccr_box_commands",
            "Commands in the queue by state, read at scrape time.",
            labels=["state"],
        )
        outbox = GaugeMetricFamily(
            "ccr_box_outbox_pending", "Notification chunks Telegram has not accepted yet."
        )
        sessions = GaugeMetricFamily("ccr_box_sessions", "Registered sessions.")
        if counts is not None:
            for state in STATUSES:
                commands.add_metric([state], counts.commands.get(state, 0))
            outbox.add_metric([], counts.outbox_pending)
            sessions.add_metric([], counts.sessions)
        return [ok, commands, outbox, sessions]


class ServerMetrics:
    """Every ``ccr_box_*`` metric of one server process, plus ``process_*``.

    The enqueue-to-ack histogram needs each command's enqueue time when its ack arrives. The
    ``command.acked`` event does not carry it (its shape is part of the console's event stream), so
    the time of the ``command.queued`` event is kept in memory, by command id, until the ack (or the
    dead letter). The map is bounded (oldest dropped past ``MAX_TRACKED_COMMANDS``); commands queued
    before a restart, or revived by an operator retry, are not observed.
    """

    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        self.up = Gauge("ccr_box_up", "1 while the server is running.", registry=r)
        self.start_time = Gauge(
            "ccr_box_start_time_seconds",
            "When the server started, in seconds since the epoch.",
            registry=r,
        )
        self.build_info = Gauge(
            "ccr_box_build_info", "Always 1; the version is the label.", ["version"], registry=r
        )
        self.database = DatabaseCollector()
        r.register(self.database)
        self.machines_connected = Gauge(
            "ccr_box_machines_connected", "Agents connected over WebSocket now.", registry=r
        )
        self.enqueued = Counter(
            "ccr_box_commands_enqueued_total",
            "Commands queued, by where they came from.",
            ["source"],
            registry=r,
        )
        self.deliveries = Counter(
            "ccr_box_command_deliveries_total",
            "Command frames sent to agents, re-sends included.",
            registry=r,
        )
        self.dead_letters = Counter(
            "ccr_box_dead_letters_total",
            "Commands that went dead (expired or out of attempts).",
            registry=r,
        )
        self.results = Counter(
            "ccr_box_command_results_total",
            "Execution results reported by agents.",
            ["status"],
            registry=r,
        )
        self.telegram_errors = Counter(
            "ccr_box_telegram_api_errors_total",
            "Failed Bot API calls (after the client's own 429 retries).",
            ["method", "kind"],
            registry=r,
        )
        self.webhook_to_ack = Histogram(
            "ccr_box_webhook_to_ack_seconds",
            "From a command being queued (Telegram update or console) to the agent's ack.",
            buckets=ACK_BUCKETS_S,
            registry=r,
        )
        ProcessCollector(registry=r)
        self.up.set(1)
        self.build_info.labels(version=__version__).set(1)
        for source in SOURCES:
            self.enqueued.labels(source=source)  # listed at 0 from the start
        for status in ("ok", "error"):
            self.results.labels(status=status)
        self._queued_at: dict[str, int] = {}

    def scraped(self, counts: Counts | None, machines_connected: int, started_at_ms: int) -> None:
        """Set the scrape-time gauges; ``counts`` is ``None`` when the database did not answer."""
        self.database.counts = counts
        self.machines_connected.set(machines_connected)
        self.start_time.set(started_at_ms / 1000)

    def on_event(self, event: Mapping[str, Any]) -> None:
        """EventBus listener: count what the event says happened."""
        kind, data, at = event["kind"], event["data"], event["at"]
        if kind == "command.queued":
            self.enqueued.labels(source=str(data.get("source") or "unknown")).inc()
            self._remember(data.get("commandId"), at)
        elif kind == "command.sent":
            self.deliveries.inc(len(data.get("commandIds") or ()))
        elif kind == "command.acked":
            queued_at = self._queued_at.pop(data.get("commandId"), None)
            if queued_at is not None:
                self.webhook_to_ack.observe(max(at - queued_at, 0) / 1000)
        elif kind == "command.dead":
            self.dead_letters.inc()
            self._queued_at.pop(data.get("commandId"), None)
        elif kind == "command.result":
            self.results.labels(status="ok" if data.get("result") == "ok" else "error").inc()

    def telegram_error(self, method: str, kind: str) -> None:
        """TelegramAPI's ``on_error`` callback: one failed call of ``method``."""
        kind = kind if kind in ERROR_KINDS else "permanent"
        self.telegram_errors.labels(method=method, kind=kind).inc()

    def _remember(self, command_id: Any, at: int) -> None:
        if not isinstance(command_id, str):
            return
        self._queued_at[command_id] = at
        while len(self._queued_at) > MAX_TRACKED_COMMANDS:
            del self._queued_at[next(iter(self._queued_at))]  # the oldest entry
