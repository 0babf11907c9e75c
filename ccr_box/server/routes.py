"""The URL table, in one place (contract §2.2, §6.8)."""

from __future__ import annotations

from aiohttp import web

from ccr_box.server import admin, notifications, observe, openapi, sessions_api
from ccr_box.server.auth import require_api_key
from ccr_box.server.webhook import webhook_handler
from ccr_box.server.ws import make_ws_handler


async def health(_request: web.Request) -> web.Response:
    return web.Response(text="ok")


def setup_routes(app: web.Application, *, idle_timeout_s: float) -> None:
    r = app.router
    r.add_route("*", "/health", health)
    r.add_get("/ready", observe.ready, allow_head=False)  # open: no secrets, no ids
    r.add_get("/metrics", observe.metrics_handler, allow_head=False)  # key unless metrics_public
    r.add_get("/openapi.json", openapi.make_handler(), allow_head=False)  # open: no secrets
    r.add_get("/sessions", require_api_key(sessions_api.list_sessions), allow_head=False)
    r.add_post("/sessions/register", require_api_key(sessions_api.register))
    r.add_post("/sessions/unregister", require_api_key(sessions_api.unregister))
    r.add_post("/notifications/send", require_api_key(notifications.send_notification))
    r.add_post("/webhook/telegram", webhook_handler)
    # Any suffix, line feeds too (".*" stops at one: 404 instead of the contract's 200 or 401).
    r.add_post("/webhook/telegram/{suffix:[\\s\\S]*}", webhook_handler)
    r.add_get("/ws", make_ws_handler(idle_timeout_s), allow_head=False)
    r.add_get("/admin/machines", require_api_key(admin.machines), allow_head=False)
    r.add_get("/admin/commands", require_api_key(admin.commands), allow_head=False)
    r.add_post("/admin/commands/{command_id}/retry", require_api_key(admin.retry))
    r.add_post("/admin/commands/{command_id}/reassign", require_api_key(admin.reassign))
    r.add_get("/admin/status", require_api_key(admin.status), allow_head=False)
    r.add_get("/admin/events", require_api_key(admin.events), allow_head=False)
    # The stream checks the key itself: a browser can only send it as a subprotocol.
    r.add_get("/admin/events/stream", admin.event_stream, allow_head=False)
    r.add_get("/admin/outbox", require_api_key(admin.outbox), allow_head=False)
    r.add_post("/admin/machines/{machine_id}/retry-dead", require_api_key(admin.retry_dead))
    r.add_post("/admin/machines/{machine_id}/disconnect", require_api_key(admin.disconnect))
    r.add_post("/admin/sessions/{session_id}/move", require_api_key(admin.move_session))
    r.add_post("/admin/sessions/{session_id}/commands", require_api_key(admin.send_command))
