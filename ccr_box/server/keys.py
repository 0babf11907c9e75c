"""Every ``web.AppKey`` of the server application, in one place."""

from __future__ import annotations

from typing import TYPE_CHECKING

import aiohttp
from aiohttp import web

from ccr_box.clock import Clock

if TYPE_CHECKING:
    pass

CONFIG = web.AppKey("config", "ConfigRef")
CLOCK = web.AppKey("clock", Clock)
STATE = web.AppKey("state", "ServerState")
DB = web.AppKey("db", "Database")
HTTP = web.AppKey("http", aiohttp.ClientSession)
TELEGRAM = web.AppKey("telegram", "TelegramAPI")
NOTIFIER = web.AppKey("notifier", "Notifier")
HUB = web.AppKey("hub", "Hub")
PIPELINE = web.AppKey("pipeline", "Pipeline")

if TYPE_CHECKING:
    pass

OPTIONS = web.AppKey("options", "Options")
MAINTENANCE = web.AppKey("maintenance", "Maintenance")
POLLER = web.AppKey("poller", "Poller | None")
EVENTS = web.AppKey("events", "EventBus")
RELOADER = web.AppKey("reloader", "ConfigReloader | None")
METRICS = web.AppKey("metrics", "ServerMetrics")
