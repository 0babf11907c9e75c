"""Security suite, part 1: every keyed route against every wrong credential, and the webhook's
own secrets (contract §3, §7.1). Part 2 (test_security_chats.py): tokens bound to their chat and
the outbound allowlist; constant-time comparisons: test_security_scan.py; leaks, file modes:
test_security_leaks.py; limits and slow clients: test_security_load.py; throttling:
test_throttle.py.

Each refusal is checked the hard way: raw bytes on a fresh socket (aiohttp's client will not send
most of these headers), and a snapshot of every database table before and after, so a refused
request that wrote anything fails the test.
"""

from __future__ import annotations

import asyncio
import base64
import json
from pathlib import Path
from typing import Any

from ccr_box.server import keys
from ccr_box.server.keys import THROTTLE
from tests import figures
from tests.conftest import API_KEY, CHAT, PATH_SECRET, WEBHOOK_SECRET
from tests.helpers_http import config_with
from tests.helpers_security import (
    NO_BLOCKING,
    OPEN_PATHS,
    fill,
    gather_limited,
    keyed_routes,
    raw_request,
    seed,
    server_address,
    snapshot,
)
from tests.helpers_ws import connect_booted

K = API_KEY.encode()
B64 = base64.b64encode

# (name, header lines, query suffix). Every one of them must be refused on every keyed route.
WRONG_FORMS: list[tuple[str, list[bytes], str]] = [
    ("no credentials", [], ""),
    ("empty Authorization", [b"Authorization:"], ""),
    ("empty X-API-Key", [b"X-API-Key:"], ""),
    ("wrong key", [b"Authorization: Bearer wrong-key"], ""),
    ("Bearer without key", [b"Authorization: Bearer"], ""),
    ("Bearer and spaces only", [b"Authorization: Bearer    "], ""),
    ("Basic user:key", [b"Authorization: Basic " + B64(b"user:" + K)], ""),
    ("Basic key", [b"Authorization: Basic " + K], ""),
    ("Token scheme", [b"Authorization: Token " + K], ""),
    ("no scheme", [b"Authorization: " + K], ""),
    ("scheme glued to key", [b"Authorization: Bearer" + K], ""),
    ("tab after scheme", [b"Authorization: Bearer\t" + K], ""),
    ("lowercase scheme, key prefix", [b"authorization: bearer " + K[:-1]], ""),
    ("uppercase scheme, key upper-cased", [b"AUTHORIZATION: BEARER " + K.upper()], ""),
    ("half the key", [b"X-API-Key: " + K[: len(K) // 2]], ""),
    ("first character only", [b"X-API-Key: " + K[:1]], ""),
    ("key + 1 char (Bearer)", [b"Authorization: Bearer " + K + b"x"], ""),
    ("key + 1 char (X-API-Key)", [b"X-API-Key: " + K + b"0"], ""),
    ("key, space, more", [b"Authorization: Bearer " + K + b" x"], ""),
    ("key twice", [b"Authorization: Bearer " + K + b" " + K], ""),
    ("quoted key", [b'Authorization: Bearer "' + K + b'"'], ""),
    ("comma list", [b"Authorization: Bearer " + K + b", Bearer x"], ""),
    ("X-API-Key with a scheme", [b"X-API-Key: Bearer " + K], ""),
    ("both forms wrong", [b"Authorization: Bearer a", b"X-API-Key: b"], ""),
    (
        "key in other headers",
        [
            b"X-Api-Token: " + K,
            b"Api-Key: " + K,
            b"X-Auth-Token: " + K,
            b"Proxy-Authorization: Bearer " + K,
            b"Authentication: Bearer " + K,
            b"Cookie: api_key=" + K,
            b"Referer: http://x/?key=" + K,
        ],
        "",
    ),
    ("key in the query string", [], f"&key={API_KEY}&apiKey={API_KEY}&api_key={API_KEY}"),
    ("token in the query string", [], f"&token={API_KEY}&access_token={API_KEY}"),
    ("non-ASCII last char (UTF-8)", [b"X-API-Key: " + K[:-1] + "é".encode()], ""),
    ("key + UTF-8 char", [b"Authorization: Bearer " + K + "ü".encode()], ""),
    ("homoglyph (Cyrillic e)", [b"X-API-Key: " + API_KEY.replace("e", "е", 1).encode()], ""),
    ("latin-1 byte", [b"X-API-Key: " + K + b"\xe9"], ""),
    ("latin-1 key", [b"Authorization: Bearer " + K[:-1] + b"\xff"], ""),
    ("invalid UTF-8", [b"Authorization: Bearer \xff\xfe" + K], ""),
    ("NBSP separator", [b"Authorization: Bearer\xc2\xa0" + K], ""),
    ("fullwidth B in scheme", [b"Authorization: \xef\xbc\xa2earer " + K], ""),
    ("subprotocol: ccr only", [b"Sec-WebSocket-Protocol: ccr"], ""),
    ("subprotocol: empty key", [b"Sec-WebSocket-Protocol: ccr, "], ""),
    ("subprotocol: prefix", [b"Sec-WebSocket-Protocol: ccr, " + K[:-1]], ""),
    ("subprotocol: key + 1", [b"Sec-WebSocket-Protocol: ccr, " + K + b"x"], ""),
    ("subprotocol: key first", [b"Sec-WebSocket-Protocol: " + K + b", ccr"], ""),
    ("subprotocol: key third", [b"Sec-WebSocket-Protocol: ccr, wrong, " + K], ""),
    ("subprotocol: CCR", [b"Sec-WebSocket-Protocol: CCR, " + K], ""),
    ("subprotocol: semicolon", [b"Sec-WebSocket-Protocol: ccr; " + K], ""),
    ("subprotocol: space", [b"Sec-WebSocket-Protocol: ccr " + K], ""),
    ("subprotocol: key alone", [b"Sec-WebSocket-Protocol: " + K], ""),
    ("subprotocol: quoted key", [b'Sec-WebSocket-Protocol: ccr, "' + K + b'"'], ""),
    ("subprotocol: latin-1 byte", [b"Sec-WebSocket-Protocol: ccr, " + K + b"\xe9"], ""),
]
# Right on the WebSocket routes, wrong everywhere else (§3.1: HTTP takes header forms only).
HTTP_ONLY_WRONG: list[tuple[str, list[bytes], str]] = [
    ("subprotocol on HTTP", [b"Sec-WebSocket-Protocol: ccr, " + K], ""),
]
# The HTTP parser itself refuses these (400) before any route runs: still nothing may be written.
MALFORMED: list[tuple[str, list[bytes]]] = [
    ("NUL in the key", [b"Authorization: Bearer " + K[:3] + b"\x00" + K[3:]]),
    ("DEL after the key", [b"X-API-Key: " + K + b"\x7f"]),
    ("bare CR", [b"Authorization: Bearer " + K + b"\r"]),
    ("obsolete line folding", [b"Authorization: Bearer", b" " + K]),
    ("space before the colon", [b"X-API-Key : " + K]),
]


def dead_command_id(rows: list[dict[str, Any]]) -> str:
    return next(r["command_id"] for r in rows if r["status"] == "dead")


async def test_every_keyed_route_refuses_every_wrong_credential_and_writes_nothing(
    start_server,
) -> None:
    h = await seed(start_server)
    host, port = server_address(h)
    routes = keyed_routes(h.app, metrics_public=False)
    # The enumeration is the live router; make sure it found the routes we know of.
    assert {
        ("GET", "/sessions"),
        ("POST", "/sessions/register"),
        ("POST", "/sessions/unregister"),
        ("POST", "/notifications/send"),
        ("GET", "/ws"),
        ("GET", "/metrics"),
        ("GET", "/admin/events/stream"),
        ("POST", "/admin/commands/{command_id}/retry"),
    } <= set(routes)
    for open_path in OPEN_PATHS & {r.resource.canonical for r in h.app.router.routes()}:
        assert (await raw_request(host, port, "GET", open_path)).status != 401, open_path

    values = {
        "command_id": dead_command_id(await h.commands()),
        "machine_id": "m1",
        "session_id": "s1",
    }
    body = json.dumps(
        {
            "sessionId": "s1",
            "machineId": "intruder",
            "chatId": CHAT,
            "text": "intruder text",
            "label": "pwned",
        }
    ).encode()
    # A WebSocket route is one that completes a handshake with the right subprotocol.
    ws_routes = set()
    for method, path in routes:
        if method != "GET":
            continue
        target = fill(path, values) + "?machineId=intruder-probe"
        probe = await raw_request(
            host,
            port,
            "GET",
            target,
            [b"Sec-WebSocket-Protocol: ccr, " + K],
            upgrade=True,
        )
        if probe.status == 101:
            ws_routes.add(path)
    assert {"/ws", "/admin/events/stream"} <= ws_routes
    await h.hub.settled()

    agent = await connect_booted(h, "m1")
    frames: asyncio.Queue[str] = asyncio.Queue()

    async def read_agent() -> None:  # reading, so a wrongly allowed disconnect would finish
        async for msg in agent:
            frames.put_nowait(msg.data)

    reader = asyncio.create_task(read_agent())
    before = await snapshot(h)
    events_before = h.app[keys.EVENTS].last_seq
    calls_before = len(h.fake.calls)
    throttle = h.app[THROTTLE]
    assert throttle is not None
    failures_before = throttle.failures_seen

    jobs, labels = [], []
    for method, path in routes:
        is_ws = path in ws_routes
        forms = WRONG_FORMS + ([] if is_ws else HTTP_ONLY_WRONG)
        for name, headers, query in forms:
            target = fill(path, values) + "?machineId=intruder" + query
            payload = body if method == "POST" else None
            jobs.append(raw_request(host, port, method, target, headers, payload, upgrade=is_ws))
            labels.append(f"{method} {path} [{name}]")
    malformed_jobs = [
        raw_request(host, port, method, fill(path, values) + "?machineId=intruder", headers)
        for method, path in routes
        for _, headers in MALFORMED
    ]
    answers = await gather_limited(jobs)
    malformed = await gather_limited(malformed_jobs)
    await h.hub.settled()

    wrong = [
        f"{label}: {resp.status} {resp.body[:80]!r}"
        for label, resp in zip(labels, answers, strict=True)
        if resp.status != 401 or resp.body not in (b'{"error":"Unauthorized"}', b"Unauthorized")
    ]
    assert wrong == []
    for resp in answers + malformed:
        assert (K not in resp.head and K not in resp.body) or resp.status == 400
    assert {resp.status for resp in malformed} == {400}
    # Nothing written, published, sent or connected.
    assert await snapshot(h) == before
    assert h.app[keys.EVENTS].last_seq == events_before
    assert len(h.fake.calls) == calls_before
    assert set(h.hub.connected()) == {"m1"}
    await agent.send_str('{"type":"ping"}')
    assert await asyncio.wait_for(frames.get(), 5) == '{"type":"pong"}'  # m1 never replaced
    assert frames.empty()
    # The throttle saw every 401 (HTTP and WebSocket), so none can slip past it either.
    assert throttle.failures_seen - failures_before == len(answers)

    await agent.close()
    await reader
    # Control: the same requests with the key get past authentication, and the snapshot notices.
    for method, path in routes:
        is_ws = path in ws_routes
        target = fill(path, values) + "?machineId=control"
        resp = await raw_request(
            host,
            port,
            method,
            target,
            [b"Authorization: Bearer " + K],
            body if method == "POST" else None,
            upgrade=is_ws,
        )
        assert resp.status != 401, (method, path, resp.body)
        assert resp.status == 101 or not is_ws
    await h.hub.settled()
    assert await snapshot(h) != before

    figures.record(
        "security",
        routes=len(routes),
        credential_forms=len(WRONG_FORMS) + len(HTTP_ONLY_WRONG) + len(MALFORMED),
        requests=len(answers) + len(malformed),
        unauthorized=len(answers),
        writes_found=0,
    )


# -- the webhook's own secrets (§3.3, §7.1) ----------------------------------------------------

S = WEBHOOK_SECRET.encode()
HEADER_FORMS: list[tuple[str, list[bytes]]] = [
    ("missing", []),
    ("empty", [b"X-Telegram-Bot-Api-Secret-Token:"]),
    ("wrong", [b"X-Telegram-Bot-Api-Secret-Token: wrong"]),
    ("prefix", [b"X-Telegram-Bot-Api-Secret-Token: " + S[:-1]]),
    ("secret + 1", [b"X-Telegram-Bot-Api-Secret-Token: " + S + b"x"]),
    ("upper-cased", [b"X-Telegram-Bot-Api-Secret-Token: " + S.upper()]),
    ("latin-1 byte", [b"X-Telegram-Bot-Api-Secret-Token: " + S + b"\xe9"]),
    ("non-ASCII", [b"X-Telegram-Bot-Api-Secret-Token: " + S[:-1] + "é".encode()]),
    ("the API key", [b"X-Telegram-Bot-Api-Secret-Token: " + K]),
    ("the path secret", [b"X-Telegram-Bot-Api-Secret-Token: " + PATH_SECRET.encode()]),
    ("as Bearer", [b"Authorization: Bearer " + S]),
    ("other header name", [b"X-Telegram-Bot-Api-Secret: " + S]),
]
GOOD_HEADER = [b"X-Telegram-Bot-Api-Secret-Token: " + S]
WRONG_PATHS = [
    "/webhook/telegram",
    "/webhook/telegram/",
    "/webhook/telegram/wrong",
    f"/webhook/telegram/{PATH_SECRET[:-1]}",
    f"/webhook/telegram/{PATH_SECRET}x",
    f"/webhook/telegram/{PATH_SECRET.upper()}",
    f"/webhook/telegram/{PATH_SECRET}/",
    f"/webhook/telegram/{PATH_SECRET}/x",
    f"/webhook/telegram//{PATH_SECRET}",
    f"/webhook/telegram/x{PATH_SECRET}",
    f"/webhook/telegram/{WEBHOOK_SECRET}",
    f"/webhook/telegram?secret={PATH_SECRET}",
    f"/webhook/telegram/{PATH_SECRET[:-1]}%C3%A9",
]
GOOD_PATH = f"/webhook/telegram/{PATH_SECRET}"


async def test_webhook_refuses_wrong_header_or_path_secret_and_writes_nothing(
    start_server, tmp_path: Path, fake_telegram
) -> None:
    config = config_with(tmp_path / "d", fake_telegram, webhook_path_secret=PATH_SECRET)
    h = await start_server(config, options=NO_BLOCKING)
    host, port = server_address(h)
    await h.register("s1", "m1")
    note = await h.notify("s1", "hello")
    before = await snapshot(h)
    sent_before = len(h.fake.sent)

    def update(n: int) -> bytes:
        msg = h.fake.make_message(CHAT, f"injected {n}", reply_to=note["messageId"])
        return json.dumps({**msg, "update_id": 10_000 + n}).encode()

    combos = [(p, hdr) for p in [GOOD_PATH, *WRONG_PATHS] for _, hdr in HEADER_FORMS]
    combos += [(p, GOOD_HEADER) for p in WRONG_PATHS]
    answers = await gather_limited(
        [
            raw_request(host, port, "POST", path, headers, update(i))
            for i, (path, headers) in enumerate(combos)
        ]
    )
    await h.hub.settled()
    assert [(r.status, r.body) for r in answers] == [(401, b"Unauthorized")] * len(combos)
    assert await snapshot(h) == before
    assert len(h.fake.sent) == sent_before

    # Control: both secrets right -> processed (a command is queued for the offline machine).
    resp = await raw_request(host, port, "POST", GOOD_PATH, GOOD_HEADER, update(99_999))
    assert (resp.status, resp.body) == (200, b"ok")
    assert [c["command"] for c in await h.commands()] == ["injected 99999"]
    figures.record("security", requests=len(combos) + 1, unauthorized=len(combos))
