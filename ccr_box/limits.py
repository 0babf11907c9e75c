"""The contract's fixed limits (contract.md §10.1), in one place. Times are milliseconds."""

SECOND_MS = 1000
MINUTE_MS = 60 * SECOND_MS
HOUR_MS = 60 * MINUTE_MS
DAY_MS = 24 * HOUR_MS

MAX_COMMAND_LENGTH = 10_000  # UTF-16 units
MAX_QUEUE_PER_MACHINE = 100  # pending + sent
MAX_INFLIGHT_PER_MACHINE = 20
MAX_FLUSH_BATCH = 10
RESEND_INTERVAL_MS = 60 * SECOND_MS
SEND_BACKOFF_BASE_MS = 1 * SECOND_MS
SEND_BACKOFF_CAP_MS = 300 * SECOND_MS
MAX_ATTEMPTS = 10
COMMAND_EXPIRY_MS = 24 * HOUR_MS
MAX_SESSIONS = 1000
MAX_REGISTER_FIELD = 256
MACHINE_ID_PATTERN = r"^[A-Za-z0-9-]{1,64}$"
MAX_FRAME_COMMAND_ID = 64
MAX_WS_FRAME_BYTES = 65_536
MAX_WS_TRANSPORT_BYTES = 1024 * 1024
WS_IDLE_TIMEOUT_S = 120.0
MAX_HTTP_BODY = 1024 * 1024
# Nesting of any JSON body or frame (ccr-box): Telegram updates and CCR frames stay under 10.
MAX_JSON_DEPTH = 64
TELEGRAM_CHUNK = 4096
TELEGRAM_MAX_CHUNKS = 10
TOKEN_PATTERN = r"^[A-Za-z0-9_-]{1,64}$"
MAINTENANCE_TICK_S = 1.0
RETENTION_EVERY_MS = 60 * SECOND_MS

# Retention (§9)
SEEN_UPDATES_TTL_MS = 48 * HOUR_MS
ACKED_TTL_MS = 24 * HOUR_MS
DEAD_TTL_MS = 7 * DAY_MS

# Telegram client (§8.5)
TELEGRAM_CALL_TIMEOUT_S = 10.0
TELEGRAM_POLL_TIMEOUT_S = 30
TELEGRAM_POLL_HTTP_TIMEOUT_S = 45.0
TELEGRAM_MAX_429_RETRIES = 3
TELEGRAM_REQUEST_WAIT_BUDGET_S = 30.0


def send_backoff_ms(previous_attempts: int) -> int:
    """Delay before re-sending after a failed send (§6.4): 1 s doubling, capped at 300 s."""
    if previous_attempts >= 9:
        return SEND_BACKOFF_CAP_MS
    return min(SEND_BACKOFF_BASE_MS << max(previous_attempts, 0), SEND_BACKOFF_CAP_MS)


# Authentication failure throttle (ccr_box/server/throttle.py; ccr-box improvement)
AUTH_THROTTLE_FREE_FAILURES = 10  # 401s per address per window before any block
AUTH_THROTTLE_WINDOW_MS = 60 * SECOND_MS  # sliding window the failures are counted over
AUTH_THROTTLE_BASE_DELAY_MS = 250  # first block; doubles with each further failure
AUTH_THROTTLE_MAX_DELAY_MS = 2 * SECOND_MS  # longest block: a shared address is never locked out
AUTH_THROTTLE_MAX_ADDRESSES = 4096  # addresses remembered (least recently failing forgotten)
WS_SEND_TIMEOUT_S = 30.0  # a frame the agent's socket does not take in this long: drop it (hub)
