"""``ccr-box up --headless``: run the server in the foreground until SIGINT/SIGTERM."""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Callable

from aiohttp import web

from ccr_box.config import Config, api_key_is_token
from ccr_box.logs import ACCESS_LOGGER, AccessLogger
from ccr_box.server import keys
from ccr_box.server.app import Options, close_connections, make_app

log = logging.getLogger("ccr_box.server")


def startup_warnings(config: Config) -> list[str]:
    """Things a user should know before wondering why nothing happens."""
    warnings = []
    key = config.server.api_key
    if not key:
        warnings.append(
            "server.api_key (CCR_API_KEY) is empty: every authenticated route and /ws answer 401"
        )
    elif not api_key_is_token(key):
        warnings.append(
            "server.api_key contains characters that cannot travel in a WebSocket subprotocol; "
            "agents using 'ccr, <key>' will fail"
        )
    tg = config.telegram
    if not tg.bot_token:
        warnings.append(
            "Telegram is off: telegram.bot_token (TELEGRAM_BOT_TOKEN) is empty. Everything else "
            "runs; notifications are kept in the outbox until a token is set"
        )
    if not tg.allowed_chat_ids:
        warnings.append(
            "telegram.allowed_chat_ids (ALLOWED_CHAT_IDS) is empty: every chat is denied, inbound "
            "and outbound"
        )
    if not tg.webhook_secret:
        warnings.append(
            "telegram.webhook_secret (TELEGRAM_WEBHOOK_SECRET) is empty: the webhook route "
            "rejects every request"
        )
    return warnings


async def serve(
    config: Config,
    *,
    stop: asyncio.Event | None = None,
    handle_signals: bool = True,
    on_ready: Callable[[str, int], None] | None = None,
    config_adjust: Callable[[Config], Config] | None = None,
) -> None:
    """Serve until ``stop`` is set (or SIGINT/SIGTERM arrives); then shut down cleanly.

    ``on_ready(host, port)`` is called once the socket is bound (``up`` with the console runs
    the server on a thread of its own, where signals cannot be handled: ``handle_signals=False``).
    SIGHUP re-reads the config file; ``config_adjust`` re-applies command-line flags to it.
    """
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    signals: tuple[signal.Signals, ...] = (signal.SIGINT, signal.SIGTERM) if handle_signals else ()
    for sig in signals:
        loop.add_signal_handler(sig, stop.set)
    for warning in startup_warnings(config):
        log.warning("%s", warning)
    app = make_app(config, options=Options(config_adjust=config_adjust))
    runner = web.AppRunner(
        app,
        access_log_class=AccessLogger,
        access_log=logging.getLogger(ACCESS_LOGGER),
        handle_signals=False,
        shutdown_timeout=5.0,
    )
    await runner.setup()
    reloader = app[keys.RELOADER]
    if handle_signals and reloader is not None:
        loop.add_signal_handler(signal.SIGHUP, reloader.request)
        signals += (signal.SIGHUP,)
    try:
        site = web.TCPSite(runner, config.server.host, config.server.port)
        await site.start()
        host, port = _bound_address(site, config)
        tg = config.telegram
        mode = tg.mode if tg.bot_token else "off"
        log.info("ccr-box listening on http://%s:%d (telegram: %s)", host, port, mode)
        if on_ready is not None:
            on_ready(host, port)
        await stop.wait()
        log.info("shutting down")
        await close_connections(app)  # while aiohttp still reads the agents' close frames
    finally:
        await runner.cleanup()
        for sig in signals:
            loop.remove_signal_handler(sig)
    log.info("stopped")


def _bound_address(site: web.TCPSite, config: Config) -> tuple[str, int]:
    server = site._server  # aiohttp exposes no public accessor for the bound socket
    sockets = getattr(server, "sockets", None) or []
    if sockets:
        name = sockets[0].getsockname()
        return str(name[0]), int(name[1])
    return config.server.host, config.server.port
