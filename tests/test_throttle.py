"""Repeated authentication failures from one address are slowed down (ccr_box/server/throttle.py).

The policy is driven with a manual clock: unit checks of the bookkeeping, then a real server on
127.0.0.1 where HTTP, WebSocket and webhook 401s all count.
"""

from __future__ import annotations

import json
import socket

import aiohttp
import pytest

from ccr_box import limits
from ccr_box.clock import ManualClock
from ccr_box.server.keys import THROTTLE
from ccr_box.server.throttle import AuthThrottle, ThrottlePolicy, address_key
from tests.conftest import API_KEY, WEBHOOK_SECRET, Harness
from tests.helpers_security import raw_request, server_address

FREE = limits.AUTH_THROTTLE_FREE_FAILURES
BAD = [b"Authorization: Bearer wrong"]
GOOD = [b"Authorization: Bearer " + API_KEY.encode()]
TOO_MANY = b'{"error":"Too many requests"}'


# -- the bookkeeping --------------------------------------------------------------------------


def test_defaults_are_the_documented_limits() -> None:
    policy = ThrottlePolicy()
    assert (policy.free_failures, policy.window_ms) == (10, 60_000)
    assert (policy.base_delay_ms, policy.max_delay_ms) == (250, 2_000)
    assert policy.max_addresses == 4096


def test_free_failures_then_a_doubling_block_up_to_the_cap() -> None:
    clock = ManualClock()
    throttle = AuthThrottle(clock)
    delays = [throttle.failed("192.0.2.1") for _ in range(FREE + 6)]
    assert delays == [0] * FREE + [250, 500, 1000, 2000, 2000, 2000]
    assert throttle.retry_after_ms("192.0.2.1") == 2000
    clock.advance(1999)
    assert throttle.retry_after_ms("192.0.2.1") == 1
    clock.advance(1)
    assert throttle.retry_after_ms("192.0.2.1") == 0


def test_a_huge_number_of_failures_never_overflows_the_cap() -> None:
    policy = ThrottlePolicy()
    assert policy.delay_ms(10**6) == policy.max_delay_ms
    assert [policy.delay_ms(n) for n in range(FREE + 1)] == [0] * (FREE + 1)


def test_failures_outside_the_window_are_forgotten() -> None:
    clock = ManualClock()
    throttle = AuthThrottle(clock)
    for _ in range(FREE):
        throttle.failed("192.0.2.1")
        clock.advance(1000)
    clock.advance(limits.AUTH_THROTTLE_WINDOW_MS)  # all ten are now older than the window
    assert throttle.failed("192.0.2.1") == 0
    # Spread out slowly enough, failures never add up to a block.
    for _ in range(100):
        clock.advance(limits.AUTH_THROTTLE_WINDOW_MS // FREE + 1)
        assert throttle.failed("192.0.2.1") == 0


def test_one_address_does_not_block_another() -> None:
    throttle = AuthThrottle(ManualClock())
    for _ in range(FREE + 3):
        throttle.failed("192.0.2.1")
    assert throttle.retry_after_ms("192.0.2.1") > 0
    assert throttle.retry_after_ms("192.0.2.2") == 0
    assert throttle.failed("192.0.2.2") == 0


def test_memory_is_bounded_least_recently_failing_forgotten_first() -> None:
    throttle = AuthThrottle(ManualClock(), ThrottlePolicy(max_addresses=3))
    for _ in range(FREE + 1):
        throttle.failed("10.0.0.1")
    for i in range(2, 6):
        throttle.failed(f"10.0.0.{i}")
    assert len(throttle) == 3
    assert throttle.retry_after_ms("10.0.0.1") == 0  # evicted: the oldest
    # A flood of distinct addresses keeps the table at its cap.
    big = AuthThrottle(ManualClock())
    for i in range(20_000):
        big.failed(f"10.{i >> 16 & 255}.{i >> 8 & 255}.{i & 255}")
    assert len(big) == limits.AUTH_THROTTLE_MAX_ADDRESSES


def test_each_address_keeps_a_bounded_history() -> None:
    clock = ManualClock()
    throttle = AuthThrottle(clock)
    for _ in range(10_000):
        throttle.failed("192.0.2.9")
    entry = throttle._entries["192.0.2.9"]
    assert len(entry.failures) == ThrottlePolicy().remembered < 32


@pytest.mark.parametrize(
    ("remote", "key"),
    [
        ("192.0.2.7", "192.0.2.7"),
        ("::ffff:192.0.2.7", "192.0.2.7"),
        ("2001:db8::1", "2001:db8::/64"),
        ("2001:db8::ffff:1", "2001:db8::/64"),
        ("2001:db8:0:1::1", "2001:db8:0:1::/64"),
        ("not-an-ip", "not-an-ip"),
        (None, None),
        ("", None),
    ],
)
def test_address_key(remote: str | None, key: str | None) -> None:
    assert address_key(remote) == key


# -- a real server ----------------------------------------------------------------------------


async def fail_until_blocked(h: Harness, path: str = "/sessions") -> None:
    host, port = server_address(h)
    for _ in range(FREE + 1):  # the eleventh failure is still answered 401, then the block starts
        resp = await raw_request(host, port, "GET", path, BAD)
        assert resp.status == 401


async def test_blocked_address_gets_429_with_retry_after_then_recovers(server: Harness) -> None:
    h = server
    host, port = server_address(h)
    await fail_until_blocked(h)
    throttle = h.app[THROTTLE]
    assert throttle is not None
    seen = throttle.failures_seen
    # Blocked: even the right key (documented choice), before the key is looked at.
    for headers in (BAD, GOOD, []):
        resp = await raw_request(host, port, "GET", "/sessions", headers)
        assert (resp.status, resp.body) == (429, TOO_MANY)
        assert resp.header("Retry-After") == "1"
        assert resp.header("Content-Type") == "application/json; charset=utf-8"
    assert throttle.failures_seen == seen  # blocked requests are not evaluated
    # Routes without credentials are never blocked; unknown paths answer as always.
    assert (await raw_request(host, port, "GET", "/health")).status == 200
    assert (await raw_request(host, port, "GET", "/ready")).status == 200
    assert (await raw_request(host, port, "GET", "/nope", BAD)).status == 404
    assert (await raw_request(host, port, "POST", "/sessions", BAD)).status == 405
    # The block ends by itself; a correct key then works, a wrong one blocks again (longer).
    h.clock.advance(limits.AUTH_THROTTLE_BASE_DELAY_MS)
    assert (await raw_request(host, port, "GET", "/sessions", GOOD)).status == 200
    assert (await raw_request(host, port, "GET", "/sessions", BAD)).status == 401
    assert (await raw_request(host, port, "GET", "/sessions", GOOD)).status == 429
    h.clock.advance(2 * limits.AUTH_THROTTLE_BASE_DELAY_MS - 1)
    assert (await raw_request(host, port, "GET", "/sessions", GOOD)).status == 429
    h.clock.advance(1)
    assert (await raw_request(host, port, "GET", "/sessions", GOOD)).status == 200
    # Successes did not reset the count: the next failure blocks at once.
    assert (await raw_request(host, port, "GET", "/sessions", BAD)).status == 401
    assert (await raw_request(host, port, "GET", "/sessions", GOOD)).status == 429
    # The window passes: the address starts afresh.
    h.clock.advance(limits.AUTH_THROTTLE_WINDOW_MS)
    assert (await raw_request(host, port, "GET", "/sessions", BAD)).status == 401
    assert (await raw_request(host, port, "GET", "/sessions", GOOD)).status == 200


async def test_websocket_and_webhook_failures_count_and_are_blocked(server: Harness) -> None:
    h = server
    host, port = server_address(h)
    bad_ws = [b"Sec-WebSocket-Protocol: ccr, wrong"]
    for _ in range(FREE // 2):
        resp = await raw_request(host, port, "GET", "/ws?machineId=m", bad_ws, upgrade=True)
        assert resp.status == 401
    for _ in range(FREE - FREE // 2 + 1):
        resp = await raw_request(host, port, "POST", "/webhook/telegram", [], b"{}")
        assert (resp.status, resp.body) == (401, b"Unauthorized")
    good_ws = [b"Sec-WebSocket-Protocol: ccr, " + API_KEY.encode()]
    resp = await raw_request(host, port, "GET", "/ws?machineId=m", good_ws, upgrade=True)
    assert (resp.status, resp.body) == (429, TOO_MANY)
    secret = [b"X-Telegram-Bot-Api-Secret-Token: " + WEBHOOK_SECRET.encode()]
    resp = await raw_request(host, port, "POST", "/webhook/telegram", secret, b"{}")
    assert resp.status == 429
    h.clock.advance(limits.AUTH_THROTTLE_MAX_DELAY_MS)
    resp = await raw_request(host, port, "GET", "/ws?machineId=m", good_ws, upgrade=True)
    assert resp.status == 101


def _second_loopback_address() -> str | None:
    """127.0.0.2 where the system routes all of 127/8 to loopback (Linux), else None."""
    with socket.socket() as probe:
        try:
            probe.bind(("127.0.0.2", 0))
        except OSError:
            return None
    return "127.0.0.2"


async def test_clients_at_other_addresses_are_not_affected(server: Harness) -> None:
    other = _second_loopback_address()
    if other is None:
        pytest.skip("only 127.0.0.1 is a loopback address here")
    h = server
    await fail_until_blocked(h)
    connector = aiohttp.TCPConnector(local_addr=(other, 0))
    async with aiohttp.ClientSession(connector=connector) as http:
        url = h.url("/sessions/register")
        body = json.dumps({"sessionId": "s", "machineId": "m"})
        async with http.post(url, data=body, headers={"X-API-Key": API_KEY}) as resp:
            assert resp.status == 200
        async with http.get(h.url("/sessions"), headers={"X-API-Key": "wrong"}) as resp:
            assert resp.status == 401  # its own first failure: free
    host, port = server_address(h)
    assert (await raw_request(host, port, "GET", "/sessions", GOOD)).status == 429


async def test_throttle_can_be_turned_off_for_tests(start_server) -> None:
    from ccr_box.server.app import Options

    h = await start_server(options=Options(maintenance=False, auth_throttle=None))
    host, port = server_address(h)
    for _ in range(3 * FREE):
        assert (await raw_request(host, port, "GET", "/sessions", BAD)).status == 401
    assert (await raw_request(host, port, "GET", "/sessions", GOOD)).status == 200
