"""A small metrics registry and the server's metrics, exposed in the Prometheus text format 0.0.4.

Hand-written on purpose (no client library): counters, gauges and one fixed-bucket histogram are
all ``/metrics`` needs. Everything runs on the event loop thread, so there is no locking.

Counters are fed by the :class:`~ccr_box.server.events.EventBus` (``ServerMetrics.on_event`` is a
synchronous listener) and by the Telegram client (``ServerMetrics.telegram_error``). Gauges that
describe the database are set at scrape time (``server/observe.py``). Machine ids, session ids
and chat ids never become label values: their number is unbounded.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping
from typing import Any

from ccr_box import __version__

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

_METRIC_NAME = re.compile(r"^[a-zA-Z_:][a-zA-Z0-9_:]*$")
_LABEL_NAME = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_]*$")

LabelValues = tuple[str, ...]


def format_value(value: float) -> str:
    """A sample value (or ``le`` bound) as the exposition format spells it."""
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    if float(value).is_integer() and abs(value) < 1e15:
        return str(int(value))
    return repr(float(value))


def escape_label_value(value: str) -> str:
    """Backslash, double quote and line feed are escaped inside a label value."""
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def escape_help(text: str) -> str:
    """Backslash and line feed are escaped in HELP text."""
    return text.replace("\\", "\\\\").replace("\n", "\\n")


def _labels_text(names: Iterable[str], values: Iterable[str]) -> str:
    pairs = [f'{n}="{escape_label_value(v)}"' for n, v in zip(names, values, strict=True)]
    return "{" + ",".join(pairs) + "}" if pairs else ""


class _Family:
    """One metric family: a name, HELP, TYPE and its samples keyed by label values."""

    type_name = "untyped"

    def __init__(self, name: str, help_text: str, labels: tuple[str, ...] = ()) -> None:
        if not _METRIC_NAME.match(name):
            raise ValueError(f"invalid metric name {name!r}")
        for label in labels:
            if not _LABEL_NAME.match(label) or label.startswith("__"):
                raise ValueError(f"invalid label name {label!r}")
        self.name = name
        self.help = help_text
        self.labels = labels
        self._values: dict[LabelValues, float] = {}
        if not labels:
            self._values[()] = 0.0  # an unlabelled series always exists

    def _key(self, labels: Mapping[str, Any]) -> LabelValues:
        if set(labels) != set(self.labels):
            raise ValueError(f"{self.name} takes labels {self.labels}, got {tuple(labels)}")
        return tuple(str(labels[name]) for name in self.labels)

    def value(self, **labels: Any) -> float:
        return self._values.get(self._key(labels), 0.0)

    def lines(self) -> list[str]:
        return [
            f"{self.name}{_labels_text(self.labels, key)} {format_value(value)}"
            for key, value in sorted(self._values.items())
        ]


class Counter(_Family):
    type_name = "counter"

    def inc(self, amount: float = 1.0, **labels: Any) -> None:
        if amount < 0:
            raise ValueError("a counter only goes up")
        key = self._key(labels)
        self._values[key] = self._values.get(key, 0.0) + amount


class Gauge(_Family):
    type_name = "gauge"

    def set(self, value: float, **labels: Any) -> None:
        self._values[self._key(labels)] = float(value)

    def clear(self) -> None:
        """Forget every series: the family is listed without samples until the next ``set``."""
        self._values = {}


class Histogram(_Family):
    """Fixed upper bounds; ``+Inf`` is implied. Unlabelled: one series is all we need."""

    type_name = "histogram"

    def __init__(self, name: str, help_text: str, buckets: Iterable[float]) -> None:
        super().__init__(name, help_text)
        bounds = sorted(float(b) for b in buckets if not math.isinf(b))
        self.bounds: tuple[float, ...] = (*bounds, math.inf)
        self._counts = [0] * len(self.bounds)  # per bucket, not cumulative
        self.sum = 0.0
        self.count = 0

    def observe(self, value: float) -> None:
        for index, bound in enumerate(self.bounds):
            if value <= bound:
                self._counts[index] += 1
                break
        self.sum += value
        self.count += 1

    def lines(self) -> list[str]:
        out = []
        cumulative = 0
        for bound, n in zip(self.bounds, self._counts, strict=True):
            cumulative += n
            out.append(f'{self.name}_bucket{{le="{format_value(bound)}"}} {cumulative}')
        out.append(f"{self.name}_sum {format_value(self.sum)}")
        out.append(f"{self.name}_count {self.count}")
        return out


class Registry:
    """Families in registration order; :meth:`render` writes the exposition text."""

    def __init__(self) -> None:
        self._families: dict[str, _Family] = {}

    def _add(self, family: _Family) -> Any:
        if family.name in self._families:
            raise ValueError(f"metric {family.name} is already registered")
        self._families[family.name] = family
        return family

    def counter(self, name: str, help_text: str, labels: tuple[str, ...] = ()) -> Counter:
        return self._add(Counter(name, help_text, labels))

    def gauge(self, name: str, help_text: str, labels: tuple[str, ...] = ()) -> Gauge:
        return self._add(Gauge(name, help_text, labels))

    def histogram(self, name: str, help_text: str, buckets: Iterable[float]) -> Histogram:
        return self._add(Histogram(name, help_text, buckets))

    def render(self) -> str:
        out: list[str] = []
        for family in self._families.values():
            out.append(f"# HELP {family.name} {escape_help(family.help)}")
            out.append(f"# TYPE {family.name} {family.type_name}")
            out.extend(family.lines())
        return "\n".join(out) + "\n"


# -- the server's metrics ---------------------------------------------------------------------------

ACK_BUCKETS_S = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300)
MAX_TRACKED_COMMANDS = 10_000  # enqueue times kept for the ack histogram
ERROR_KINDS = ("permanent", "transient", "rate_limited")
SOURCES = ("telegram", "console")


class ServerMetrics:
    """Every ``ccr_box_*`` metric of one server process.

    The enqueue-to-ack histogram needs each command's enqueue time when its ack arrives. The
    ``command.acked`` event does not carry it (its shape is part of the console's event stream), so
    the time of the ``command.queued`` event is kept in memory, by command id, until the ack (or the
    dead letter). The map is bounded (oldest dropped past ``MAX_TRACKED_COMMANDS``); commands queued
    before a restart, or revived by an operator retry, are not observed.
    """

    def __init__(self) -> None:
        r = self.registry = Registry()
        self.up = r.gauge("ccr_box_up", "1 while the server is running.")
        self.start_time = r.gauge(
            "ccr_box_start_time_seconds", "When the server started, in seconds since the epoch."
        )
        self.build_info = r.gauge(
            "ccr_box_build_info", "Always 1; the version is the label.", ("version",)
        )
        self.database_ok = r.gauge(
            "ccr_box_database_ok", "1 when the database answered the scrape's queries, else 0."
        )
        self.commands = r.gauge(
            "ccr_box_commands", "Commands in the queue by state, read at scrape time.", ("state",)
        )
        self.outbox_pending = r.gauge(
            "ccr_box_outbox_pending", "Notification chunks Telegram has not accepted yet."
        )
        self.sessions = r.gauge("ccr_box_sessions", "Registered sessions.")
        self.machines_connected = r.gauge(
            "ccr_box_machines_connected", "Agents connected over WebSocket now."
        )
        self.enqueued = r.counter(
            "ccr_box_commands_enqueued_total",
            "Commands queued, by where they came from.",
            ("source",),
        )
        self.deliveries = r.counter(
            "ccr_box_command_deliveries_total", "Command frames sent to agents, re-sends included."
        )
        self.dead_letters = r.counter(
            "ccr_box_dead_letters_total", "Commands that went dead (expired or out of attempts)."
        )
        self.results = r.counter(
            "ccr_box_command_results_total", "Execution results reported by agents.", ("status",)
        )
        self.telegram_errors = r.counter(
            "ccr_box_telegram_api_errors_total",
            "Failed Bot API calls (after the client's own 429 retries).",
            ("method", "kind"),
        )
        self.webhook_to_ack = r.histogram(
            "ccr_box_webhook_to_ack_seconds",
            "From a command being queued (Telegram update or console) to the agent's ack.",
            ACK_BUCKETS_S,
        )
        self.up.set(1)
        self.build_info.set(1, version=__version__)
        for source in SOURCES:
            self.enqueued.inc(0, source=source)
        for status in ("ok", "error"):
            self.results.inc(0, status=status)
        self._queued_at: dict[str, int] = {}

    def on_event(self, event: Mapping[str, Any]) -> None:
        """EventBus listener: count what the event says happened."""
        kind, data, at = event["kind"], event["data"], event["at"]
        if kind == "command.queued":
            self.enqueued.inc(source=data.get("source") or "unknown")
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
            self.results.inc(status="ok" if data.get("result") == "ok" else "error")

    def telegram_error(self, method: str, kind: str) -> None:
        """TelegramAPI's ``on_error`` callback: one failed call of ``method``."""
        self.telegram_errors.inc(method=method, kind=kind if kind in ERROR_KINDS else "permanent")

    def _remember(self, command_id: Any, at: int) -> None:
        if not isinstance(command_id, str):
            return
        self._queued_at[command_id] = at
        while len(self._queued_at) > MAX_TRACKED_COMMANDS:
            del self._queued_at[next(iter(self._queued_at))]  # the oldest entry
