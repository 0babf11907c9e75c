"""``ccr-box hook <event>``: Claude Code hook payloads -> register / notify / unregister (§11.4).

A hook must never block or break Claude Code: nothing on stdout, short HTTP timeouts, exit 0
whatever happens. A notification the server cannot take now is kept in the agent's store and
sent by the agent later.

Timeouts: a call to the server gives up after 3 s (SessionEnd: 1 s, as Claude Code is exiting),
and once a call found the server unreachable the hook makes no further call, so a hanging server
costs a hook one timeout. ``CCR_BOX_HOOK_TIMEOUT_S`` (environment; seconds, in (0, 60]) replaces
the 3 s; SessionEnd takes the smaller of it and 1 s. It is a test and ops knob: tests give a
hanging server a fraction of a second, an operator on a slow link more; any other value is
ignored with a warning in hooks.log.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Mapping
from pathlib import PurePath
from typing import Any

import aiohttp

from ccr_box.agent.notify import (
    FALLBACK_BODY,
    NEEDS_INPUT,
    STOP,
    clip_body,
    last_assistant_text,
    notification_text,
)
from ccr_box.agent.store import AgentStore
from ccr_box.client.agent import ServerAPI
from ccr_box.client.errors import ServerRefused, ServerUnavailable
from ccr_box.config import AgentConfig, default_machine_id

try:
    import fcntl
except ImportError:  # Windows: no tmux there either
    fcntl = None  # type: ignore[assignment]

log = logging.getLogger("ccr_box.hook")

HOOK_TIMEOUT_S = 3.0  # per call to the server
SESSION_END_TIMEOUT_S = 1.0  # Claude Code is exiting
CONNECT_TIMEOUT_S = 1.0
TIMEOUT_ENV = "CCR_BOX_HOOK_TIMEOUT_S"  # replaces HOOK_TIMEOUT_S (tests, slow links)
MAX_TIMEOUT_S = 60.0
NOTIFY_TYPES = ("permission_prompt", "elicitation_dialog")
EVENTS = ("SessionStart", "Stop", "Notification", "SessionEnd")


def machine_id_of(config: AgentConfig) -> str:
    return config.machine_id or default_machine_id()


def run_hook(
    event: str | None, stdin_text: str, env: Mapping[str, str], config: AgentConfig
) -> int:
    """Entry point for the CLI. Always returns 0."""
    try:
        try:
            payload = json.loads(stdin_text) if stdin_text.strip() else {}
        except ValueError as exc:
            log.warning("hook %s: input is not JSON (%s); ignored", event, exc)
            return 0
        if not isinstance(payload, dict):
            log.warning("hook %s: input is not a JSON object; ignored", event)
            return 0
        event = event or payload.get("hook_event_name")
        if event not in EVENTS:
            log.info("ignoring hook event %r", event)
            return 0
        store = _open_store(config)
        try:
            asyncio.run(Hooks(config, store, env).handle(event, payload))
        finally:
            store.close()
    except Exception:
        log.exception("hook %s failed", event)
    return 0


def _open_store(config: AgentConfig) -> AgentStore:
    """Open the shared store (AgentStore serialises concurrent opens of a fresh file)."""
    config.data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    return AgentStore.in_dir(config.data_dir)


class Hooks:
    def __init__(self, config: AgentConfig, store: AgentStore, env: Mapping[str, str]) -> None:
        self.config = config
        self.store = store
        self.env = env
        self.machine_id = machine_id_of(config)
        self.server_down = False  # once a call found the server unreachable, make no more

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
        timeout = hook_timeout(event, self.env)
        async with aiohttp.ClientSession(timeout=timeout) as http:
            api = ServerAPI(self.config.server_url, self.config.api_key, http, timeout=timeout)
            handler = getattr(self, f"_on_{event}")
            await handler(api, session_id, payload)

    async def _on_SessionStart(
        self, api: ServerAPI, session_id: str, payload: dict[str, Any]
    ) -> None:
        if await self._bind(api, session_id, payload) is None:
            log.info("session %s is not in tmux ($TMUX_PANE unset); not registered", session_id)

    async def _bind(
        self, api: ServerAPI, session_id: str, payload: dict[str, Any], *, displace: bool = True
    ) -> dict[str, Any] | None:
        """Record session -> pane from ``$TMUX_PANE`` / ``$TMUX`` and register the session.

        None outside tmux. A session previously bound to the same pane is removed and unregistered
        (with ``displace=False`` this session is not bound instead: None).
        Once the server proves unreachable no further call is made (the hook stays within its
        budget); the agent's re-register on open catches up.
        """
        pane = self.env.get("TMUX_PANE")
        if not pane:
            return None
        socket = self.env.get("TMUX", "").split(",")[0] or None
        if not displace and any(
            s["pane"] == pane and s["tmux_socket"] == socket for s in self.store.sessions()
        ):
            log.info("pane %s belongs to another session; %s not bound", pane, session_id)
            return None
        cwd = _cwd(payload)
        label = (PurePath(cwd).name if cwd else "") or None
        displaced = self.store.bind_session(session_id, pane, socket, cwd, label)
        log.info("session %s bound to pane %s", session_id, pane)
        if self.config.server_url:
            try:
                for old in displaced:
                    await api.unregister(old)
                await api.register(session_id, self.machine_id, label)
            except ServerUnavailable as exc:
                self.server_down = True
                log.warning(
                    "server unreachable (%s); the agent registers %s later", exc, session_id
                )
            except ServerRefused as exc:
                log.warning("registering session %s failed: %s", session_id, exc)
        return self.store.session(session_id)

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
        if local is None:
            # SessionStart never reached us (hooks installed mid-session, store wiped): bind now,
            # or a reply could not be typed anywhere; but a late hook of an ended session must
            # not take the pane from the session that lives there now.
            local = await self._bind(api, session_id, payload, displace=False)
        cwd = _cwd(payload) or (local or {}).get("cwd")
        label = (local or {}).get("label") or (PurePath(cwd).name if cwd else session_id[:8])
        request = {
            "sessionId": session_id,
            "chatId": chat_id,
            "text": notification_text(kind, label, clip_body(body), cwd, self.machine_id),
        }
        try:
            if self.server_down:
                raise ServerUnavailable("server unreachable")
            label_known = (local or {}).get("label")
            await api.notify_session(request, self.machine_id, label_known, known=local is not None)
        except ServerUnavailable as exc:
            self.store.keep_notification(session_id, request, str(exc))
            log.info("server unreachable (%s); notification kept for the agent to send", exc)
        except ServerRefused as exc:
            log.warning("server refused the notification for %s: %s", session_id, exc)


def hook_timeout(event: str, env: Mapping[str, str]) -> aiohttp.ClientTimeout:
    """How long a hook's call to the server may take: 3 s or ``$CCR_BOX_HOOK_TIMEOUT_S``;
    SessionEnd at most 1 s."""
    seconds = HOOK_TIMEOUT_S
    raw = env.get(TIMEOUT_ENV, "").strip()
    if raw:
        try:
            wanted = float(raw)
        except ValueError:
            wanted = float("nan")
        if 0 < wanted <= MAX_TIMEOUT_S:  # NaN and infinities fail too
            seconds = wanted
        else:
            log.warning(
                "%s=%r is not a number of seconds in (0, %g]; ignored",
                TIMEOUT_ENV,
                raw,
                MAX_TIMEOUT_S,
            )
    if event == "SessionEnd":
        seconds = min(seconds, SESSION_END_TIMEOUT_S)
    return aiohttp.ClientTimeout(total=seconds, connect=min(seconds, CONNECT_TIMEOUT_S))


async def _quietly(call: Any, what: str) -> None:
    try:
        await call
    except (ServerUnavailable, ServerRefused) as exc:
        log.warning("%s failed: %s", what, exc)


def _cwd(payload: dict[str, Any]) -> str | None:
    cwd = payload.get("cwd")
    return cwd if isinstance(cwd, str) and cwd else None
