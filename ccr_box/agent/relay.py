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

from ccr_box.agent.notify import interrupted_text
from ccr_box.agent.store import AgentStore, AsyncStore
from ccr_box.client.agent import ServerAPI
from ccr_box.client.errors import ServerRefused, ServerUnavailable

log = logging.getLogger("ccr_box.agent")


class Relay:
    def __init__(self, api: ServerAPI, store: AsyncStore, machine_id: str) -> None:
        self._api = api
        self._store = store
        self._machine_id = machine_id
        self._pending_lock = asyncio.Lock()  # one pass over the stored notifications at a time

    async def reregister_sessions(self) -> None:
        for session in await self._store.run(AgentStore.sessions):
            try:
                await self._api.register(session["session_id"], self._machine_id, session["label"])
            except (ServerUnavailable, ServerRefused) as exc:
                log.warning("re-registering session %s failed: %s", session["session_id"], exc)
                return

    async def send_pending(self) -> None:
        """Send stored notifications in order; stop at the first the server cannot take.

        Delivery is at-least-once: a notification is dropped from the store after the server
        took it, so a crash in between sends it again.
        """
        async with self._pending_lock:
            for item in await self._store.run(AgentStore.pending_notifications):
                try:
                    await self._notify(item["body"])
                except ServerUnavailable as exc:
                    await self._store.run(AgentStore.notification_failed, item["id"], str(exc))
                    return
                except ServerRefused as exc:
                    log.warning("server refused a stored notification (%s); dropping it", exc)
                await self._store.run(AgentStore.drop_notification, item["id"])

    async def retry_pending_every(self, interval_s: float) -> None:
        """While connected, retry notifications a hook (or this agent) could not deliver."""
        while True:
            await asyncio.sleep(interval_s)
            try:
                await self.send_pending()
            except Exception:
                log.exception("retrying stored notifications failed")

    async def _notify(self, body: dict[str, Any]) -> None:
        """Notify; a session the server forgot but this machine knows is registered again."""
        session_id = body.get("sessionId")
        session = (
            await self._store.run(AgentStore.session, session_id)
            if isinstance(session_id, str)
            else None  # no id: no stored session (what the lookup would find)
        )
        label = session["label"] if session else None
        await self._api.notify_session(body, self._machine_id, label, known=session is not None)

    def interrupted_notice(self, row: dict[str, Any]) -> dict[str, Any] | None:
        """The notification saying a command may not have arrived, with its text so the user
        can send it again (stored by the inbox's recovery, see ``AgentStore.recover``)."""
        if not row.get("session_id"):
            return None
        text = json.loads(row["payload"]).get("command", "")
        return {
            "sessionId": row["session_id"],
            "chatId": row["chat_id"],
            "text": interrupted_text(text, self._machine_id),
        }
