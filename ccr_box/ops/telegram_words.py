"""Telegram errors in plain words, for people at a terminal (init, telegram helpers, doctor).

The Bot API answers with terse descriptions ("Unauthorized", "Bad Request: chat not found").
:func:`explain` turns a :class:`~ccr_box.errors.TelegramError` into one sentence saying what is
wrong and what to do. It never includes the token (the client already scrubs it).
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

from ccr_box.errors import TelegramError, TelegramPermanentError, TelegramTransientError
from ccr_box.telegram import (
    TelegramRateLimitedError,
    is_other_poller_conflict,
    is_webhook_conflict,
)

# (lower-case fragment of Telegram's description, what it means for the user)
_DESCRIPTIONS: tuple[tuple[str, str], ...] = (
    ("chat not found", "that chat does not exist or the bot was never started there"),
    ("bot was blocked by the user", "the user blocked the bot; unblock it in Telegram"),
    ("bot was kicked", "the bot was removed from that group; add it again"),
    ("not enough rights", "the bot may not post in that chat; give it permission"),
    ("https url must be provided", "Telegram only accepts https:// webhook URLs"),
    ("bad webhook", "Telegram cannot use that webhook URL"),
    ("secret token contains unallowed characters", "the webhook secret has invalid characters"),
    ("wrong http url", "that webhook URL is not valid"),
)


def explain(exc: TelegramError) -> str:
    """One sentence about ``exc`` for a terminal, ending without a period."""
    if isinstance(exc, TelegramRateLimitedError):
        return f"Telegram asks to slow down; try again in {exc.retry_after:.0f} s"
    if isinstance(exc, TelegramTransientError):
        return (
            f"Telegram could not be reached ({_detail(exc)}); check this machine's internet "
            "connection and telegram.api_base, then try again"
        )
    if not isinstance(exc, TelegramPermanentError):
        return str(exc)
    description = exc.description
    if exc.status == 401 and "no bot token" in description.lower():
        return "no bot token is configured: set telegram.bot_token (TELEGRAM_BOT_TOKEN)"
    if exc.status in (401, 404):
        return (
            "Telegram does not know this bot token: copy it again from @BotFather "
            "(it looks like 123456789:AA...)"
        )
    if is_webhook_conflict(exc):
        return (
            "a webhook is registered for this bot, so getUpdates is refused: "
            "run `ccr-box telegram webhook delete` to use polling"
        )
    if is_other_poller_conflict(exc):
        return (
            "another program is reading this bot's updates (a running `ccr-box up` in polling "
            "mode?): stop it first; only one process may poll a bot"
        )
    lowered = description.lower()
    for fragment, meaning in _DESCRIPTIONS:
        if fragment in lowered:
            return f"{meaning} (Telegram said: {description})"
    if exc.status == 403:
        return f"Telegram refused: {description or 'forbidden'}"
    return f"Telegram refused {exc.method}: {description or f'HTTP {exc.status}'}"


def _detail(exc: TelegramError) -> str:
    text = str(exc)
    prefix = f"Telegram {exc.method}: "
    return text[len(prefix) :] if text.startswith(prefix) else text


@contextlib.asynccontextmanager
async def bot_api(token: str, api_base: str) -> AsyncIterator:
    """A :class:`~ccr_box.telegram.TelegramAPI` on its own HTTP session, for CLI commands."""
    import aiohttp

    from ccr_box.telegram import TelegramAPI

    async with aiohttp.ClientSession() as session:
        yield TelegramAPI(session, token, base_url=api_base)
