"""What Telegram's ``getWebhookInfo`` says, compared with what the config expects.

Shared by ``ccr-box telegram webhook info`` and ``ccr-box doctor``: one place decides whether the
registered webhook (or its absence) fits ``telegram.mode``, so the two never disagree. The path
secret is never shown: URLs are printed with it replaced by ``<webhook_path_secret>``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from ccr_box.config import TelegramConfig
from ccr_box.telegram import ALLOWED_UPDATES

WEBHOOK_ROUTE = "/webhook/telegram"
RECENT_ERROR_S = 24 * 3600  # a delivery error older than this is history, not a problem
MANY_PENDING = 100


@dataclass(frozen=True)
class Finding:
    """One observation: ``level`` is ``ok``, ``warn`` or ``fail``; ``fix`` says what to do."""

    level: str
    text: str
    fix: str | None = None


def masked_url(url: str, tg: TelegramConfig) -> str:
    """``url`` with the configured path secret hidden (it guards the webhook endpoint)."""
    if tg.webhook_path_secret and tg.webhook_path_secret in url:
        return url.replace(tg.webhook_path_secret, "<webhook_path_secret>")
    return url


def expected_path(tg: TelegramConfig) -> str:
    """The path the server accepts webhooks on."""
    return full_webhook_url("", tg.webhook_path_secret)


def full_webhook_url(base_or_full: str, path_secret: str) -> str:
    """The URL Telegram must call: ``<base>/webhook/telegram/<path secret>``.

    ``base_or_full`` may already end in ``/webhook/telegram[/...]``; the path secret is then
    replaced by the current one.
    """
    url = base_or_full.rstrip("/")
    head, marker, _ = url.partition(WEBHOOK_ROUTE)
    base = head if marker else url
    return f"{base}{WEBHOOK_ROUTE}/{path_secret}" if path_secret else f"{base}{WEBHOOK_ROUTE}"


def _path_fits(url: str, tg: TelegramConfig) -> bool:
    path = urlsplit(url).path.rstrip("/")
    if tg.webhook_path_secret:
        return path.endswith(expected_path(tg))
    return path.endswith(WEBHOOK_ROUTE) or f"{WEBHOOK_ROUTE}/" in path


def assess(info: dict[str, Any], tg: TelegramConfig, *, now: float | None = None) -> list[Finding]:
    """Findings about ``info`` (a ``getWebhookInfo`` result) for the configured mode."""
    now = time.time() if now is None else now
    url = str(info.get("url") or "")
    set_fix = "ccr-box telegram webhook set --url https://<public address>"
    if tg.mode == "polling":
        if not url:
            return [Finding("ok", "no webhook registered, as polling mode needs")]
        shown = urlsplit(url).hostname or "somewhere"
        if tg.delete_webhook:
            return [
                Finding(
                    "warn",
                    f"a webhook to {shown} is registered; the server deletes it when it starts "
                    "polling (telegram.delete_webhook = true)",
                )
            ]
        return [
            Finding(
                "fail",
                f"a webhook to {shown} is registered, so polling gets no updates "
                "(Telegram answers getUpdates with 409)",
                'ccr-box telegram webhook delete   (or set telegram.mode = "webhook")',
            )
        ]
    findings: list[Finding] = []
    if not tg.webhook_secret:
        findings.append(
            Finding(
                "fail",
                "telegram.webhook_secret is empty, so the server rejects every webhook call",
                "run `ccr-box init` (it generates one), then " + set_fix,
            )
        )
    if not url:
        findings.append(Finding("fail", "webhook mode, but no webhook is registered", set_fix))
        return findings
    if not url.startswith("https://"):
        findings.append(Finding("fail", f"the webhook URL {url!r} is not https://", set_fix))
    elif not _path_fits(url, tg):
        findings.append(
            Finding(
                "fail",
                f"the registered URL {masked_url(url, tg)} does not end in {WEBHOOK_ROUTE}/"
                "<webhook_path_secret> of this config, so the server answers it with 404",
                set_fix,
            )
        )
    else:
        findings.append(Finding("ok", f"webhook registered: {masked_url(url, tg)}"))
    allowed = info.get("allowed_updates")
    if isinstance(allowed, list) and allowed:
        missing = [kind for kind in ALLOWED_UPDATES if kind not in allowed]
        if missing:
            findings.append(
                Finding(
                    "fail",
                    f"Telegram is told not to send {', '.join(missing)} updates",
                    set_fix,
                )
            )
    findings.extend(_delivery(info, now))
    return findings


def _delivery(info: dict[str, Any], now: float) -> list[Finding]:
    """Telegram's own view of how delivering to the webhook went."""
    found: list[Finding] = []
    error_at = info.get("last_error_date")
    message = str(info.get("last_error_message") or "")
    if message and isinstance(error_at, int | float) and now - error_at < RECENT_ERROR_S:
        ago = max(0, int(now - error_at))
        found.append(
            Finding(
                "warn",
                f"Telegram's last delivery to the webhook failed {_ago(ago)}: {message}",
                "check that the public address reaches `ccr-box up` (reverse proxy, tunnel, TLS)",
            )
        )
    pending = info.get("pending_update_count")
    if isinstance(pending, int) and pending >= MANY_PENDING:
        found.append(
            Finding("warn", f"{pending} updates are waiting at Telegram (deliveries are failing?)")
        )
    return found


def _ago(seconds: int) -> str:
    if seconds < 120:
        return f"{seconds} s ago"
    if seconds < 7200:
        return f"{seconds // 60} min ago"
    return f"{seconds // 3600} h ago"
