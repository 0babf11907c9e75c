"""Long polling with ``getUpdates`` feeding the shared pipeline (contract §7.7).

The offset lives in memory only: after a restart Telegram re-sends unconfirmed updates and
``seen_updates`` absorbs the ones already processed, so a restart loses nothing.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Awaitable, Callable
from typing import Any

from ccr_box.backoff import Backoff
from ccr_box.clock import Clock
from ccr_box.errors import TelegramError, TelegramPermanentError, TelegramTransientError
from ccr_box.server.pipeline import Pipeline
from ccr_box.server.state import ConfigRef, TelegramStatus
from ccr_box.telegram import (
    TelegramAPI,
    TelegramRateLimitedError,
    is_other_poller_conflict,
    is_webhook_conflict,
)
from ccr_box.wire import acceptable, positive_int64

log = logging.getLogger("ccr_box.polling")

CONFLICT_RETRY_S = 60.0
OTHER_POLLER_BACKOFF_S = 30.0
MAX_UPDATE_FAILURES = 5

Sleep = Callable[[float], Awaitable[None]]


async def learn_identity(telegram: TelegramAPI, status: TelegramStatus, clock: Clock) -> bool:
    """``getMe``: validates the token and learns the bot's username. False when the token is bad."""
    try:
        me = await telegram.get_me()
    except TelegramPermanentError as exc:
        status.fail("error", f"invalid bot token ({exc.description or exc.status})")
        log.error(
            "Telegram rejected the bot token (getMe answered %s); Telegram is off", exc.status
        )
        return False
    except TelegramTransientError as exc:
        status.fail("error", str(exc))
        raise
    status.username = me.get("username") if isinstance(me.get("username"), str) else None
    status.ok(clock.now_ms())
    log.info("Telegram bot @%s ready", status.username)
    return True


class Poller:
    def __init__(
        self,
        telegram: TelegramAPI,
        pipeline: Pipeline,
        status: TelegramStatus,
        config: ConfigRef,
        clock: Clock,
        *,
        sleep: Sleep = asyncio.sleep,
        rand: Callable[[], float] = random.random,
        poll_timeout: int = 30,
    ) -> None:
        self._telegram = telegram
        self._pipeline = pipeline
        self._status = status
        self._config = config
        self._clock = clock
        self._sleep = sleep
        self._poll_timeout = poll_timeout
        self._backoff = Backoff(1.0, 60.0, rand=rand)
        # Separate from the getUpdates backoff, which a successful poll resets: retrying a failing
        # update must keep doubling (§7.7) although every retry starts with a successful poll.
        self._update_backoff = Backoff(1.0, 60.0, rand=rand)
        self.offset: int | None = None
        self._failures: tuple[int | None, int] = (None, 0)  # (update_id, consecutive failures)
        self._webhook_deleted = False

    async def run(self) -> None:
        """Poll until cancelled; returns early only when Telegram rejects the token."""
        while True:
            try:
                if not await learn_identity(self._telegram, self._status, self._clock):
                    return
                break
            except TelegramTransientError:
                await self._sleep(self._backoff.next())
        self._backoff.reset()
        while await self.poll_once():
            pass

    async def poll_once(self) -> bool:
        """One ``getUpdates`` call and its batch (§7.7). False when polling must stop."""
        try:
            updates = await self._telegram.get_updates(self.offset, timeout=self._poll_timeout)
        except TelegramRateLimitedError as exc:
            await self._sleep(exc.retry_after)
            return True
        except TelegramTransientError as exc:
            self._status.fail("error", str(exc))
            delay = self._backoff.next()
            log.warning("getUpdates failed (%s); retrying in %.1fs", exc, delay)
            await self._sleep(delay)
            return True
        except TelegramPermanentError as exc:
            return await self._on_permanent(exc)
        self._backoff.reset()
        self._status.ok(self._clock.now_ms())
        await self.process_batch(updates)
        return True

    async def process_batch(self, updates: list[dict[str, Any]]) -> None:
        start = self.offset
        for update in updates:
            update_id = (
                positive_int64(update.get("update_id")) if isinstance(update, dict) else None
            )
            if not isinstance(update, dict) or not acceptable(update):
                # Nested too deep, a lone surrogate, NaN: nothing ccr-box could store or answer.
                # Skipped (its offset confirmed) so the updates behind it are not held up.
                log.warning("skipped an unreadable update from Telegram (update_id %s)", update_id)
            else:
                try:
                    await self._pipeline.process(update)
                except Exception:
                    if not self._count_failure(update_id):
                        delay = self._update_backoff.next()
                        log.exception("update %s failed; retrying in %.1fs", update_id, delay)
                        await self._sleep(delay)
                        return  # the next getUpdates starts again at this update
                    log.exception(
                        "update %s failed %d times in a row; skipping it",
                        update_id,
                        MAX_UPDATE_FAILURES,
                    )
            self._failures = (None, 0)  # processed or skipped: the next update starts afresh
            self._update_backoff.reset()
            if update_id is not None:
                self.offset = update_id + 1
        if updates and self.offset == start:
            # No usable update_id in the whole batch: Telegram would serve it again at once.
            # Back off instead of spinning (Telegram's own ids never do this).
            delay = self._backoff.next()
            log.warning("a getUpdates batch had no usable update_id; polling again in %.1fs", delay)
            await self._sleep(delay)

    def _count_failure(self, update_id: int | None) -> bool:
        """Record a failure; True when the update has now failed too often and must be skipped."""
        last, count = self._failures
        count = count + 1 if last == update_id else 1
        self._failures = (update_id, count)
        return count >= MAX_UPDATE_FAILURES

    async def _on_permanent(self, exc: TelegramPermanentError) -> bool:
        if is_webhook_conflict(exc):
            if self._config.current.telegram.delete_webhook and not self._webhook_deleted:
                log.warning("a webhook is set; deleting it (telegram.delete_webhook = true)")
                try:
                    await self._telegram.delete_webhook(drop_pending_updates=False)
                except TelegramError as err:
                    # An exception here would end the polling task for good: retry later.
                    self._status.fail("error", f"deleteWebhook failed: {err}")
                    delay = self._backoff.next()
                    log.error("deleteWebhook failed (%s); retrying in %.1fs", err, delay)
                    await self._sleep(delay)
                    return True
                self._webhook_deleted = True
                return True
            self._status.fail(
                "conflict",
                "a webhook is set for this bot, so getUpdates cannot run; delete it "
                '(deleteWebhook) or set telegram.mode = "webhook"',
            )
            log.error(
                "Telegram says a webhook is active for this bot, so polling cannot work. Delete it "
                "(Bot API deleteWebhook, or set TELEGRAM_DELETE_WEBHOOK=true) or switch to "
                "TELEGRAM_MODE=webhook. Retrying in %.0fs.",
                CONFLICT_RETRY_S,
            )
            await self._sleep(CONFLICT_RETRY_S)
        elif is_other_poller_conflict(exc):
            self._status.fail("conflict", "another process is polling this bot token")
            log.error(
                "another process is calling getUpdates with this bot token (another ccr-box, or "
                "Claude Code's own Telegram plugin); retrying in %.0fs",
                OTHER_POLLER_BACKOFF_S,
            )
            await self._sleep(OTHER_POLLER_BACKOFF_S)
        elif exc.status in (401, 404):
            self._status.fail("error", "invalid bot token")
            log.error("Telegram rejected the bot token; polling stops")
            return False
        else:
            self._status.fail("error", str(exc))
            delay = self._backoff.next()
            log.error("getUpdates failed: %s; retrying in %.1fs", exc, delay)
            await self._sleep(delay)
        return True
