"""The agent's HTTP side: sessions and notifications go through the server, never to Telegram.

Re-registers live local sessions on every connect (§11.1), sends notifications that hooks could
not deliver while the server was away, and tells the user about a command that was being typed
when the agent died (§11.2).
"""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any

from ccr_box.agent.api import ServerAPI, ServerRefused, ServerUnavailable
from ccr_box.agent.notify import interrupted_text
from ccr_box.agent.store import AsyncStore

log = logging.getLogger("ccr_box.agent")


class Relay:
    def __init__(self, api: ServerAPI, store: AsyncStore, machine_id: str) -> None:
        self._api = api
        self._store = store
        self._machine_id = machine_id
        self._pending_lock = asyncio.Lock()  # one pass over the stored notifications at a time

    async def reregister_sessions(self) -> None:
        for session in await self._store.call("sessions"):
            try:
                await self._api.register(session["session_id"], self._machine_id, session["label"])
            except (ServerUnavailable, ServerRefused) as exc:
                log.warning("re-registering session %s failed: %s", session["session_id"], exc)
                return

    async def send_pending(self) -> None:
        """Send stored notifications in order; stop at the first the server cannot take."""
        async with self._pending_lock:
            for item in await self._store.call("pending_notifications"):
                try:
                    await self._api.notify(item["body"])
                except ServerUnavailable as exc:
                    await self._store.call("notification_failed", item["id"], str(exc))
                    return
                except ServerRefused as exc:
                    log.warning("server refused a stored notification (%s); dropping it", exc)
                await self._store.call("drop_notification", item["id"])

    async def retry_pending_every(self, interval_s: float) -> None:
        """While connected, retry notifications a hook (or this agent) could not deliver."""
        while True:
            await asyncio.sleep(interval_s)
            try:
                await self.send_pending()
            except Exception:
                log.exception("retrying stored notifications failed")

    async def tell_interrupted(self, row: dict[str, Any]) -> None:
        """A command may not have arrived: say so with its text, so the user can resend it."""
        if not row.get("session_id"):
            return
        text = json.loads(row["payload"]).get("command", "")
        body = {
            "sessionId": row["session_id"],
            "chatId": row["chat_id"],
            "text": interrupted_text(text, self._machine_id),
        }
        session = await self._store.call("session", row["session_id"])
        label = session["label"] if session else None
        try:
            await self._api.notify_session(body, self._machine_id, label, known=session is not None)
        except ServerUnavailable as exc:
            await self._store.call("keep_notification", row["session_id"], body, str(exc))
        except ServerRefused as exc:
            log.warning("could not report interrupted command %s: %s", row["command_id"], exc)
