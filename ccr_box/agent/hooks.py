"""``ccr-box hook <event>``: Claude Code hook payloads -> register / notify / unregister (§11.4).

A hook must never block or break Claude Code: nothing on stdout, short HTTP timeouts, exit 0
whatever happens. A notification the server cannot take now is kept in the agent's store and
sent by the agent later.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
from collections.abc import Mapping
from pathlib import PurePath
from typing import Any

import aiohttp

from ccr_box.agent.api import ServerAPI, ServerRefused, ServerUnavailable
from ccr_box.agent.notify import (
    FALLBACK_BODY,
    NEEDS_INPUT,
    STOP,
    last_assistant_text,
    notification_text,
)
from ccr_box.agent.store import AgentStore
from ccr_box.config import AgentConfig, default_machine_id

log = logging.getLogger("ccr_box.hook")

HOOK_TIMEOUT = aiohttp.ClientTimeout(total=3, connect=1)
SESSION_END_TIMEOUT = aiohttp.ClientTimeout(total=1, connect=1)
NOTIFY_TYPES = ("permission_prompt", "elicitation_dialog")
EVENTS = ("SessionStart", "Stop", "Notification", "SessionEnd")


def machine_id_of(config: AgentConfig) -> str:
    return config.machine_id or default_machine_id()


def run_hook(
    event: str | None, stdin_text: str, env: Mapping[str, str], config: AgentConfig
) -> int:
    """Entry point for the CLI. Always returns 0."""
    try:
        payload = json.loads(stdin_text) if stdin_text.strip() else {}
        if not isinstance(payload, dict):
            raise ValueError("hook input is not a JSON object")
        event = event or payload.get("hook_event_name")
        if event not in EVENTS:
            log.info("ignoring hook event %r", event)
            return 0
        store = AgentStore.in_dir(config.data_dir)
        try:
            asyncio.run(Hooks(config, store, env).handle(event, payload))
        finally:
            store.close()
    except Exception:
        log.exception("hook %s failed", event)
    return 0


class Hooks:
    def __init__(self, config: AgentConfig, store: AgentStore, env: Mapping[str, str]) -> None:
        self.config = config
        self.store = store
        self.env = env
        self.machine_id = machine_id_of(config)

    async def handle(self, event: str, payload: dict[str, Any]) -> None:
        session_id = payload.get("session_id")
        if not isinstance(session_id, str) or not session_id:
            log.warning("%s hook without a session_id; ignored", event)
            return
        if not self.config.server_url or not self.config.api_key:
            log.warning(
                "agent.server_url / agent.api_key not configured; %s hook did nothing", event
            )
            if event not in ("SessionStart", "SessionEnd"):
                return
        timeout = SESSION_END_TIMEOUT if event == "SessionEnd" else HOOK_TIMEOUT
        async with aiohttp.ClientSession(timeout=timeout) as http:
            api = ServerAPI(self.config.server_url, self.config.api_key, http, timeout=timeout)
            handler = getattr(self, f"_on_{event}")
            await handler(api, session_id, payload)

    async def _on_SessionStart(
        self, api: ServerAPI, session_id: str, payload: dict[str, Any]
    ) -> None:
        pane = self.env.get("TMUX_PANE")
        if not pane:
            log.info("session %s is not in tmux ($TMUX_PANE unset); not registered", session_id)
            return
        tmux = self.env.get("TMUX", "")
        socket = tmux.split(",")[0] or None
        cwd = payload.get("cwd") if isinstance(payload.get("cwd"), str) else None
        label = PurePath(cwd).name if cwd else None
        displaced = self.store.bind_session(session_id, pane, socket, cwd, label or None)
        log.info("session %s bound to pane %s", session_id, pane)
        if not self.config.server_url:
            return
        for old in displaced:
            await _quietly(api.unregister(old), f"unregister displaced session {old}")
        await _quietly(
            api.register(session_id, self.machine_id, label or None), f"register {session_id}"
        )

    async def _on_Stop(self, api: ServerAPI, session_id: str, payload: dict[str, Any]) -> None:
        body = payload.get("last_assistant_message")
        if not isinstance(body, str) or not body.strip():
            body = last_assistant_text(payload.get("transcript_path")) or FALLBACK_BODY
        await self._notify(api, session_id, STOP, body, payload)

    async def _on_Notification(
        self, api: ServerAPI, session_id: str, payload: dict[str, Any]
    ) -> None:
        if payload.get("notification_type") not in NOTIFY_TYPES:
            return  # idle prompts and others: Stop already covers them
        message = payload.get("message")
        body = (
            message if isinstance(message, str) and message.strip() else "Claude needs your input"
        )
        await self._notify(api, session_id, NEEDS_INPUT, body, payload)

    async def _on_SessionEnd(
        self, api: ServerAPI, session_id: str, payload: dict[str, Any]
    ) -> None:
        self.store.forget_session(session_id)
        if self.config.server_url:
            await _quietly(api.unregister(session_id), f"unregister {session_id}")

    async def _notify(
        self, api: ServerAPI, session_id: str, kind: str, body: str, payload: dict[str, Any]
    ) -> None:
        chat_id = self.config.chat_id
        if not chat_id:
            log.warning("agent.chat_id (CCR_CHAT_ID) is not set; notification not sent")
            return
        local = self.store.session(session_id)
        cwd = payload.get("cwd") if isinstance(payload.get("cwd"), str) else None
        cwd = cwd or (local or {}).get("cwd")
        label = (local or {}).get("label") or (PurePath(cwd).name if cwd else session_id[:8])
        request = {
            "sessionId": session_id,
            "chatId": chat_id,
            "text": notification_text(kind, label, body, cwd, self.machine_id),
        }
        try:
            try:
                await api.notify(request)
            except ServerRefused as exc:
                if exc.status != 404 or local is None:
                    raise
                # The server forgot the session (restart, retention): register again, retry once.
                await api.register(session_id, self.machine_id, local.get("label"))
                await api.notify(request)
        except ServerUnavailable as exc:
            self.store.keep_notification(session_id, request, str(exc))
            log.info("server unreachable (%s); notification kept for the agent to send", exc)
        except ServerRefused as exc:
            log.warning("server refused the notification for %s: %s", session_id, exc)


async def _quietly(call: Any, what: str) -> None:
    try:
        await call
    except (ServerUnavailable, ServerRefused) as exc:
        log.warning("%s failed: %s", what, exc)


def hook_log_path(config: AgentConfig) -> str:
    return os.path.join(str(config.data_dir), "hooks.log")
