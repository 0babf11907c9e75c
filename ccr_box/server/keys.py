"""Every ``web.AppKey`` of the server application, in one place.

The value types are imported for the type checker only: the modules that define them import this
one, so a run-time import would be circular. ``web.AppKey`` takes the type as its second argument
only as documentation; the annotation is what mypy reads.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import aiohttp
from aiohttp import web

from ccr_box.clock import Clock

if TYPE_CHECKING:
    from ccr_box.db import Database
    from ccr_box.server.app import Options
    from ccr_box.server.events import EventBus
    from ccr_box.server.hub import Hub
    from ccr_box.server.maintenance import Maintenance
    from ccr_box.server.metrics import ServerMetrics
    from ccr_box.server.notifier import Notifier
    from ccr_box.server.pipeline import Pipeline
    from ccr_box.server.polling import Poller
    from ccr_box.server.reload import ConfigReloader
    from ccr_box.server.state import ConfigRef, ServerState
    from ccr_box.server.throttle import AuthThrottle
    from ccr_box.telegram import TelegramAPI

CONFIG: web.AppKey[ConfigRef] = web.AppKey("config")
CLOCK: web.AppKey[Clock] = web.AppKey("clock", Clock)
STATE: web.AppKey[ServerState] = web.AppKey("state")
DB: web.AppKey[Database] = web.AppKey("db")
HTTP: web.AppKey[aiohttp.ClientSession] = web.AppKey("http", aiohttp.ClientSession)
TELEGRAM: web.AppKey[TelegramAPI] = web.AppKey("telegram")
NOTIFIER: web.AppKey[Notifier] = web.AppKey("notifier")
HUB: web.AppKey[Hub] = web.AppKey("hub")
PIPELINE: web.AppKey[Pipeline] = web.AppKey("pipeline")
OPTIONS: web.AppKey[Options] = web.AppKey("options")
MAINTENANCE: web.AppKey[Maintenance] = web.AppKey("maintenance")
POLLER: web.AppKey[Poller | None] = web.AppKey("poller")
EVENTS: web.AppKey[EventBus] = web.AppKey("events")
RELOADER: web.AppKey[ConfigReloader | None] = web.AppKey("reloader")
METRICS: web.AppKey[ServerMetrics] = web.AppKey("metrics")
THROTTLE: web.AppKey[AuthThrottle | None] = web.AppKey("auth_throttle")  # None: off (tests)
