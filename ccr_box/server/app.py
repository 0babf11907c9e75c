"""The application factory: ``make_app(config, ...)`` wires every component via ``cleanup_ctx``."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

import aiohttp
from aiohttp import web

from ccr_box import limits
from ccr_box.clock import Clock, SystemClock
from ccr_box.config import Config
from ccr_box.db import Database, database_path
from ccr_box.logs import quiet_client_errors
from ccr_box.server import keys
from ccr_box.server.events import EventBus
from ccr_box.server.http import error_middleware
from ccr_box.server.hub import Hub
from ccr_box.server.maintenance import Maintenance
from ccr_box.server.metrics import ServerMetrics
from ccr_box.server.notifier import Notifier
from ccr_box.server.outbox import OutboxSender
from ccr_box.server.pipeline import Pipeline
from ccr_box.server.polling import Poller, learn_identity
from ccr_box.server.reload import WATCH_INTERVAL_S, ConfigReloader
from ccr_box.server.routes import setup_routes
from ccr_box.server.state import ConfigRef, ServerState, TelegramStatus
from ccr_box.server.throttle import (
    DEFAULT_POLICY,
    AuthThrottle,
    ThrottlePolicy,
    auth_throttle,
)
from ccr_box.telegram import TelegramAPI

log = logging.getLogger("ccr_box.server")


@dataclass(frozen=True)
class Options:
    """Knobs for tests and benchmarks; production uses the defaults."""

    maintenance: bool = True  # run the 1 s maintenance loop
    maintenance_interval_s: float = limits.MAINTENANCE_TICK_S
    telegram_inbound: bool = True  # start polling (polling mode) / getMe (webhook mode)
    idle_timeout_s: float = limits.WS_IDLE_TIMEOUT_S
    poll_timeout: int = limits.TELEGRAM_POLL_TIMEOUT_S
    synchronous: str = "FULL"  # SQLite durability; benchmarks may compare with NORMAL
    watch_config: bool = True  # reload config.path live when it changes (needs config.path)
    config_watch_interval_s: float = WATCH_INTERVAL_S
    # Applied to every reloaded config, so command-line flags keep winning over the file.
    config_adjust: Callable[[Config], Config] | None = None
    auth_throttle: ThrottlePolicy | None = DEFAULT_POLICY  # None: no 429 after 401s (tests)
    fsync: Callable[[int], None] = os.fsync  # the database's; fault tests inject a failing one


def make_app(
    config: Config, *, clock: Clock | None = None, options: Options | None = None
) -> web.Application:
    quiet_client_errors()  # a malformed request is one warning line, not an ERROR traceback
    app = web.Application(
        middlewares=[auth_throttle, error_middleware], client_max_size=limits.MAX_HTTP_BODY + 1
    )
    options = options or Options()
    clock = clock or SystemClock()
    app[keys.CONFIG] = ConfigRef(config)
    app[keys.CLOCK] = clock
    app[keys.OPTIONS] = options
    policy = options.auth_throttle
    app[keys.THROTTLE] = AuthThrottle(clock, policy) if policy is not None else None
    mode = config.telegram.mode if config.telegram.bot_token else "off"
    app[keys.STATE] = ServerState(
        started_at=clock.now_ms(),
        telegram=TelegramStatus(
            mode=config.telegram.mode, state="off" if mode == "off" else "starting"
        ),
    )
    setup_routes(app, idle_timeout_s=options.idle_timeout_s)
    app.cleanup_ctx.extend([_database, _components, _background])
    app.on_shutdown.append(close_connections)
    return app


async def _database(app: web.Application) -> AsyncIterator[None]:
    path = database_path(app[keys.CONFIG].current.server.data_dir)
    options = app[keys.OPTIONS]
    app[keys.DB] = await Database.open(path, synchronous=options.synchronous, fsync=options.fsync)
    log.info("database %s", path)
    yield
    await app[keys.DB].close()


async def _components(app: web.Application) -> AsyncIterator[None]:
    config = app[keys.CONFIG]
    tg = config.current.telegram
    session = aiohttp.ClientSession()
    app[keys.HTTP] = session
    metrics = ServerMetrics()
    app[keys.METRICS] = metrics
    telegram = TelegramAPI(
        session, tg.bot_token, base_url=tg.api_base, on_error=metrics.telegram_error
    )
    app[keys.TELEGRAM] = telegram
    notifier = Notifier(telegram, config)
    app[keys.NOTIFIER] = notifier
    state = app[keys.STATE]
    events = EventBus(app[keys.CLOCK])
    events.add_listener(metrics.on_event)
    app[keys.EVENTS] = events
    hub = Hub(app[keys.DB], app[keys.CLOCK], notifier, state.boot_id, events)
    app[keys.HUB] = hub
    app[keys.PIPELINE] = Pipeline(
        app[keys.DB], app[keys.CLOCK], config, hub, notifier, state.telegram, events
    )
    outbox = OutboxSender(app[keys.DB], telegram, app[keys.CLOCK], config)
    app[keys.MAINTENANCE] = Maintenance(
        app[keys.DB], app[keys.CLOCK], config, hub, notifier, outbox, events
    )
    app[keys.POLLER] = None
    yield
    await notifier.drain()
    await session.close()


async def _background(app: web.Application) -> AsyncIterator[None]:
    options = app[keys.OPTIONS]
    tasks: list[asyncio.Task[None]] = []
    if options.maintenance:
        tasks.append(
            asyncio.create_task(
                app[keys.MAINTENANCE].run(options.maintenance_interval_s), name="maintenance"
            )
        )
    config = app[keys.CONFIG]
    app[keys.RELOADER] = None
    if options.watch_config and config.current.path is not None:
        reloader = ConfigReloader(
            config, app[keys.EVENTS], path=config.current.path, adjust=options.config_adjust
        )
        app[keys.RELOADER] = reloader
        tasks.append(
            asyncio.create_task(reloader.run(options.config_watch_interval_s), name="config-watch")
        )
    telegram, state = app[keys.TELEGRAM], app[keys.STATE]
    if options.telegram_inbound and telegram.enabled:
        if app[keys.CONFIG].current.telegram.mode == "polling":
            poller = Poller(
                telegram,
                app[keys.PIPELINE],
                state.telegram,
                app[keys.CONFIG],
                app[keys.CLOCK],
                poll_timeout=options.poll_timeout,
            )
            app[keys.POLLER] = poller
            tasks.append(asyncio.create_task(poller.run(), name="telegram-polling"))
        else:
            tasks.append(asyncio.create_task(_identify(app), name="telegram-getme"))
    yield
    for task in tasks:
        task.cancel()
    for task in tasks:
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def _identify(app: web.Application) -> None:
    """Webhook mode: learn the bot's username (for ``/cmd@bot``) and check the token once."""
    try:
        await learn_identity(app[keys.TELEGRAM], app[keys.STATE].telegram, app[keys.CLOCK])
    except Exception as exc:  # transient: the webhook still works; the status says why
        log.warning("getMe failed: %s", exc)


async def close_connections(app: web.Application) -> None:
    """Close every agent and event-stream socket with 1001; safe to call twice.

    ``serve`` calls this *before* ``AppRunner.cleanup``: from its first step aiohttp stops
    reading from open connections, so a peer's answering close frame would never be seen and
    each close would wait out its 10 s timeout (clients that wait for the server to drop TCP,
    like Node's WebSocket, then see the close only at the end). ``on_shutdown`` keeps it for
    runners that never call it first (tests' TestServer).
    """
    if keys.EVENTS in app:
        app[keys.EVENTS].close()  # event streams close with 1001 too (admin.event_stream)
    if keys.HUB in app:
        await app[keys.HUB].close_all(1001, "Server shutting down")
    if keys.EVENTS in app and not await app[keys.EVENTS].wait_idle(5.0):
        log.debug("an event stream was still closing at shutdown")
