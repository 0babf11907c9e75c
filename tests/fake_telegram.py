"""A fake Telegram Bot API: a real aiohttp server on 127.0.0.1 (random port) for tests.

Point the code under test at ``fake.base_url`` (``TELEGRAM_API_BASE``) and drive it through real HTTP.
Nothing is patched. The fake answers like Telegram: Telegram-shaped JSON errors, increasing
``message_id``s, long polling with ``offset`` confirmation, 409 on ``getUpdates`` while a webhook is
set or when a newer ``getUpdates`` takes over.

Failure injection: :meth:`FakeTelegram.fail_next` (HTTP error answers), :meth:`drop_connections_for`
(connection closed without an answer), :meth:`hang_next` (no answer until the client gives up),
:meth:`slow_next` (the call takes effect, the answer comes late), :meth:`lose_answer_next` (the call
takes effect, then the connection closes without an answer: the client cannot know it worked).
"""

from __future__ import annotations

import asyncio
import itertools
import json
import re
import time
from collections import defaultdict, deque
from collections.abc import Callable
from typing import Any, NamedTuple

from aiohttp import web

_SECRET_TOKEN_RE = re.compile(r"^[A-Za-z0-9_-]{1,256}$")

_DEFAULT_DESCRIPTIONS = {
    400: "Bad Request: chat not found",
    401: "Unauthorized",
    403: "Forbidden: bot was blocked by the user",
    404: "Not Found",
    409: "Conflict: terminated by other getUpdates request; make sure that only one bot instance is running",
    429: "Too Many Requests: retry after {retry_after}",
    500: "Internal Server Error",
    502: "Bad Gateway",
}

WEBHOOK_CONFLICT = (
    "Conflict: can't use getUpdates method while webhook is active; "
    "use deleteWebhook to delete the webhook first"
)
OTHER_POLLER_CONFLICT = _DEFAULT_DESCRIPTIONS[409]


def _utf16_len(text: str) -> int:
    return len(text.encode("utf-16-le")) // 2


def _chat_id_value(chat_id: Any) -> Any:
    """Telegram sends numeric ids as JSON integers; keep ``@channel`` style strings as they are."""
    if isinstance(chat_id, str) and re.fullmatch(r"-?\d+", chat_id):
        return int(chat_id)
    return chat_id


def _chat(chat_id: Any) -> dict[str, Any]:
    value = _chat_id_value(chat_id)
    if isinstance(value, int) and value > 0:
        return {"id": value, "type": "private", "first_name": "Tester"}
    return {"id": value, "type": "supergroup", "title": "ccr-box test group"}


def _error(status: int, description: str, retry_after: int | None = None) -> web.Response:
    body: dict[str, Any] = {"ok": False, "error_code": status, "description": description}
    if retry_after is not None:
        body["parameters"] = {"retry_after": retry_after}
    return web.json_response(body, status=status)


def _ok(result: Any, description: str | None = None) -> web.Response:
    body: dict[str, Any] = {"ok": True, "result": result}
    if description is not None:
        body["description"] = description
    return web.json_response(body)


class _Fault(NamedTuple):
    kind: str  # status | drop | hang | slow | lose
    status: int = 0
    retry_after: int | None = None
    description: str | None = None
    delay_s: float = 0.0


class FakeTelegram:
    """A running fake Bot API. Use ``async with FakeTelegram() as fake:`` or start()/close()."""

    def __init__(
        self, token: str = "123456:TEST-token-abc", username: str = "ccrbox_test_bot"
    ) -> None:
        self.token = token
        self.username = username
        self.bot_id = int(token.split(":", 1)[0]) if token.split(":", 1)[0].isdigit() else 123456
        self.base_url = ""
        self.poll_wait_cap_s = 0.5

        self.calls: list[tuple[str, dict[str, Any]]] = []
        self.sent: list[dict[str, Any]] = []
        self.callback_answers: list[dict[str, Any]] = []
        self.webhook: dict[str, Any] | None = None
        self.updates: list[dict[str, Any]] = []  # pending (unconfirmed) updates
        self.allowed_updates: list[str] | None = None  # last allowed_updates seen (sticky)
        # getWebhookInfo's last_error_date / last_error_message, set by tests: (unix time, text)
        self.webhook_last_error: tuple[int, str] | None = None

        self._next_update_id = 1
        self._next_message_id = 1000  # messages sent by the bot
        self._next_inbound_id = itertools.count(1)  # messages "typed" by users
        self._next_callback_id = itertools.count(1)
        self._failures: dict[str, deque[_Fault]] = defaultdict(deque)
        self._changed = asyncio.Event()
        self._closing = asyncio.Event()
        self._poll_generation = 0
        self._runner: web.AppRunner | None = None

    # -- lifecycle --------------------------------------------------------------------------------

    async def start(self) -> FakeTelegram:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._handle)
        # access_log=None: the access log would print request paths, which contain the token.
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = self._runner.addresses[0][1]
        self.base_url = f"http://127.0.0.1:{port}"
        return self

    async def close(self) -> None:
        self._closing.set()
        self._notify()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> FakeTelegram:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # -- test controls ----------------------------------------------------------------------------

    def push_update(self, update: dict[str, Any]) -> dict[str, Any]:
        """Queue an update for getUpdates (assigns ``update_id`` when missing) and wake long polls."""
        if not isinstance(update.get("update_id"), int):
            update["update_id"] = self._next_update_id
        self._next_update_id = max(self._next_update_id, update["update_id"] + 1)
        self.updates.append(update)
        self._notify()
        return update

    def fail_next(
        self,
        method: str,
        status: int,
        *,
        times: int = 1,
        retry_after: int | None = None,
        description: str | None = None,
    ) -> None:
        """The next ``times`` calls of ``method`` answer HTTP ``status`` with Telegram's error JSON."""
        for _ in range(times):
            self._failures[method].append(_Fault("status", status, retry_after, description))

    def drop_connections_for(self, method: str, times: int = 1) -> None:
        """The next ``times`` calls of ``method`` get their connection closed without an answer."""
        for _ in range(times):
            self._failures[method].append(_Fault("drop"))

    def hang_next(self, method: str, times: int = 1) -> None:
        """The next ``times`` calls of ``method`` never get an answer (until close())."""
        for _ in range(times):
            self._failures[method].append(_Fault("hang"))

    def slow_next(self, method: str, seconds: float, *, times: int = 1) -> None:
        """The next ``times`` calls of ``method`` take effect at once (a message is sent, updates
        are handed out) but their answer leaves only ``seconds`` later (or at close()). A client
        that gives up first never learns the outcome. ``seconds=0`` lets a call through untouched:
        it aims a later injected fault at a later call (e.g. the second chunk of a notification).
        """
        for _ in range(times):
            self._failures[method].append(_Fault("slow", delay_s=seconds))

    def lose_answer_next(self, method: str, times: int = 1) -> None:
        """The next ``times`` calls of ``method`` take effect, then their connection is closed
        without an answer (Telegram did it; the client sees a network error)."""
        for _ in range(times):
            self._failures[method].append(_Fault("lose"))

    def pending_faults(self, method: str) -> int:
        """Injected faults of ``method`` not consumed yet."""
        return len(self._failures.get(method, ()))

    async def wait_for(self, predicate: Callable[[], bool], timeout: float = 5.0) -> None:
        """Wait until ``predicate()`` is true; re-checked after every received call or change."""
        try:
            async with asyncio.timeout(timeout):
                while not predicate():
                    changed = self._changed
                    await changed.wait()
        except TimeoutError:
            methods = [method for method, _ in self.calls]
            raise AssertionError(
                f"FakeTelegram: condition not met within {timeout} s; calls={methods}, "
                f"sent={[m.get('text') for m in self.sent]}"
            ) from None

    async def wait_sent(self, count: int, timeout: float = 5.0) -> list[dict[str, Any]]:
        """Wait until at least ``count`` messages were sent; returns all sent payloads."""
        await self.wait_for(lambda: len(self.sent) >= count, timeout)
        return list(self.sent)

    def messages_to(self, chat_id: str | int) -> list[str]:
        return [m.get("text", "") for m in self.sent if str(m.get("chat_id")) == str(chat_id)]

    def calls_of(self, method: str) -> list[dict[str, Any]]:
        return [payload for name, payload in self.calls if name == method]

    # -- update builders --------------------------------------------------------------------------

    def _bot_user(self) -> dict[str, Any]:
        return {
            "id": self.bot_id,
            "is_bot": True,
            "first_name": "ccr-box test",
            "username": self.username,
        }

    @staticmethod
    def _user(from_id: Any) -> dict[str, Any]:
        return {
            "id": _chat_id_value(str(from_id)),
            "is_bot": False,
            "first_name": "Tester",
            "username": "tester",
            "language_code": "en",
        }

    @staticmethod
    def _default_from(chat_id: Any, from_id: Any) -> Any:
        if from_id is not None:
            return from_id
        value = _chat_id_value(chat_id)
        return value if isinstance(value, int) and value > 0 else 111111

    def make_message(
        self,
        chat_id: str | int,
        text: str | None,
        *,
        from_id: str | int | None = None,
        reply_to: int | dict[str, Any] | None = None,
        message_id: int | None = None,
        **extra: Any,
    ) -> dict[str, Any]:
        """A realistic Update with ``message`` (``update_id`` assigned). ``text=None`` omits the text
        (media/service messages, add e.g. ``photo=[...]``); ``reply_to`` is a message_id of a bot
        message or a full message dict; ``extra`` is merged into the message."""
        message: dict[str, Any] = {
            "message_id": message_id if message_id is not None else next(self._next_inbound_id),
            "from": self._user(self._default_from(chat_id, from_id)),
            "chat": _chat(chat_id),
            "date": int(time.time()),
        }
        if text is not None:
            message["text"] = text
            command = re.match(r"^/[A-Za-z0-9_]{1,32}(@[A-Za-z0-9_]+)?", text)
            if command:
                length = _utf16_len(command.group(0))
                message["entities"] = [{"type": "bot_command", "offset": 0, "length": length}]
        if isinstance(reply_to, dict):
            message["reply_to_message"] = reply_to
        elif reply_to is not None:
            message["reply_to_message"] = {
                "message_id": reply_to,
                "from": self._bot_user(),
                "chat": _chat(chat_id),
                "date": int(time.time()) - 60,
                "text": "notification",
            }
        message.update(extra)
        update = {"update_id": self._next_update_id, "message": message}
        self._next_update_id += 1
        return update

    def make_callback(
        self,
        chat_id: str | int,
        data: Any,
        *,
        from_id: str | int | None = None,
        message_id: int = 1,
    ) -> dict[str, Any]:
        """A realistic Update with ``callback_query`` pressed on bot message ``message_id``."""
        query: dict[str, Any] = {
            "id": f"cbq-{next(self._next_callback_id)}",
            "from": self._user(self._default_from(chat_id, from_id)),
            "message": {
                "message_id": message_id,
                "from": self._bot_user(),
                "chat": _chat(chat_id),
                "date": int(time.time()) - 60,
                "text": "notification",
            },
            "chat_instance": "-4242424242",
        }
        if data is not None:
            query["data"] = data
        update = {"update_id": self._next_update_id, "callback_query": query}
        self._next_update_id += 1
        return update

    # -- HTTP -------------------------------------------------------------------------------------

    def _notify(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        match = re.fullmatch(r"/bot([^/]*)/([^/]+)", request.path)
        if match is None:
            return _error(404, "Not Found")
        if match.group(1) != self.token:
            return _error(401, "Unauthorized")
        method_name = match.group(2)
        payload = await self._payload(request)
        if payload is None:
            return _error(400, "Bad Request: can't parse JSON object")
        handler = self._methods().get(method_name.lower())
        method = handler[0] if handler else method_name
        self.calls.append((method, payload))
        self._notify()
        fault = self._failures[method].popleft() if self._failures.get(method) else None
        if fault is not None and fault.kind == "drop":
            if request.transport is not None:
                request.transport.close()
            return web.Response()  # never written: the connection is gone
        if fault is not None and fault.kind == "hang":
            await self._closing.wait()
            return _error(500, "Internal Server Error")
        if fault is not None and fault.kind == "status":
            description = fault.description
            if description is None:
                description = _DEFAULT_DESCRIPTIONS.get(fault.status, f"Error {fault.status}")
                description = description.format(retry_after=fault.retry_after or 1)
            return _error(fault.status, description, fault.retry_after)
        if handler is None:
            return _error(404, "Not Found")
        response = await handler[1](payload)
        self._notify()
        if fault is not None and fault.kind == "lose":
            if request.transport is not None:
                request.transport.close()
            return web.Response()  # never written: the connection is gone
        if fault is not None and fault.kind == "slow" and fault.delay_s > 0:
            try:
                async with asyncio.timeout(fault.delay_s):
                    await self._closing.wait()
            except TimeoutError:
                pass
        return response

    @staticmethod
    async def _payload(request: web.Request) -> dict[str, Any] | None:
        payload: dict[str, Any] = dict(request.query)
        raw = await request.read()
        if raw:
            if request.content_type == "application/json":
                try:
                    body = json.loads(raw)
                except ValueError:
                    return None
                if not isinstance(body, dict):
                    return None
                payload.update(body)
            else:
                payload.update(await request.post())
        return payload

    def _methods(self) -> dict[str, tuple[str, Callable[[dict[str, Any]], Any]]]:
        table = {
            "getMe": self._get_me,
            "sendMessage": self._send_message,
            "answerCallbackQuery": self._answer_callback_query,
            "getUpdates": self._get_updates,
            "setWebhook": self._set_webhook,
            "deleteWebhook": self._delete_webhook,
            "getWebhookInfo": self._get_webhook_info,
        }
        return {name.lower(): (name, fn) for name, fn in table.items()}

    async def _get_me(self, payload: dict[str, Any]) -> web.Response:
        return _ok(self._bot_user())

    async def _send_message(self, payload: dict[str, Any]) -> web.Response:
        chat_id = payload.get("chat_id")
        if chat_id is None or chat_id == "":
            return _error(400, "Bad Request: chat_id is empty")
        text = payload.get("text")
        if not isinstance(text, str) or not text.strip():
            return _error(400, "Bad Request: message text is empty")
        if _utf16_len(text) > 4096:
            return _error(400, "Bad Request: message is too long")
        message_id = self._next_message_id
        self._next_message_id += 1
        self.sent.append({**payload, "message_id": message_id})
        message: dict[str, Any] = {
            "message_id": message_id,
            "from": self._bot_user(),
            "chat": _chat(chat_id),
            "date": int(time.time()),
            "text": text,
        }
        for key in ("entities", "reply_markup", "message_thread_id"):
            if payload.get(key) is not None:
                message[key] = payload[key]
        if payload.get("message_thread_id") is not None:
            message["is_topic_message"] = True
        return _ok(message)

    async def _answer_callback_query(self, payload: dict[str, Any]) -> web.Response:
        if not payload.get("callback_query_id"):
            return _error(400, "Bad Request: QUERY_ID_INVALID")
        self.callback_answers.append(payload)
        return _ok(True)

    async def _get_updates(self, payload: dict[str, Any]) -> web.Response:
        if self.webhook is not None:
            return _error(409, WEBHOOK_CONFLICT)
        if "allowed_updates" in payload:
            self.allowed_updates = payload["allowed_updates"]
        self._poll_generation += 1
        generation = self._poll_generation
        offset = payload.get("offset")
        try:
            limit = max(1, min(100, int(payload.get("limit", 100))))
            wait_s = max(0.0, min(float(payload.get("timeout", 0)), self.poll_wait_cap_s))
        except (TypeError, ValueError):
            return _error(400, "Bad Request: wrong parameter")
        if offset is not None:
            offset = int(offset)
            self.updates = [u for u in self.updates if u["update_id"] >= offset]
        loop = asyncio.get_running_loop()
        deadline = loop.time() + wait_s
        while not self.updates and not self._closing.is_set():
            remaining = deadline - loop.time()
            if remaining <= 0:
                break
            changed = self._changed
            try:
                async with asyncio.timeout(remaining):
                    await changed.wait()
            except TimeoutError:
                break
            if self._poll_generation != generation:
                return _error(409, OTHER_POLLER_CONFLICT)
            if self.webhook is not None:
                return _error(409, WEBHOOK_CONFLICT)
        return _ok(self.updates[:limit])

    async def _set_webhook(self, payload: dict[str, Any]) -> web.Response:
        url = payload.get("url", "")
        if not url:
            self.webhook = None
            return _ok(True, "Webhook was deleted")
        if not isinstance(url, str) or not url.startswith("https://"):
            return _error(
                400, "Bad Request: bad webhook: An HTTPS URL must be provided for webhook"
            )
        secret = payload.get("secret_token")
        if secret is not None and not (
            isinstance(secret, str) and _SECRET_TOKEN_RE.fullmatch(secret)
        ):
            return _error(400, "Bad Request: secret token contains unallowed characters")
        if payload.get("drop_pending_updates"):
            self.updates.clear()
        self.webhook = {
            "url": url,
            "secret_token": secret,
            "allowed_updates": payload.get("allowed_updates"),
        }
        self._notify()  # wakes a pending long poll, which then answers 409
        return _ok(True, "Webhook was set")

    async def _delete_webhook(self, payload: dict[str, Any]) -> web.Response:
        was_set = self.webhook is not None
        self.webhook = None
        if payload.get("drop_pending_updates") in (True, "true", "True", "1"):
            self.updates.clear()
        return _ok(True, "Webhook was deleted" if was_set else "Webhook is already deleted")

    async def _get_webhook_info(self, payload: dict[str, Any]) -> web.Response:
        info: dict[str, Any] = {
            "url": self.webhook["url"] if self.webhook else "",
            "has_custom_certificate": False,
            "pending_update_count": len(self.updates),
        }
        if self.webhook and self.webhook.get("allowed_updates") is not None:
            info["allowed_updates"] = list(self.webhook["allowed_updates"])
        if self.webhook and self.webhook_last_error is not None:
            info["last_error_date"], info["last_error_message"] = self.webhook_last_error
        return _ok(info)
