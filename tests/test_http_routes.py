"""HTTP API cross-cutting rules, API-key auth and the session routes (contract §2, §3.1, §10.2)."""

from __future__ import annotations

import json
from typing import Any

import pytest

from ccr_box import limits
from ccr_box.db import sessions as sessions_db
from tests.conftest import API_KEY, CHAT, Harness
from tests.helpers_http import (
    JSON_CT,
    TEXT_CT,
    assert_no_secret,
    config_with,
    expect_error,
    expect_json,
    messages_rows,
    session_row,
    sql,
)

EMOJI = "\U0001f600"  # one code point, two UTF-16 units

# Every route that needs the API key: (method, path, body or None).
KEYED_ROUTES: list[tuple[str, str, Any]] = [
    ("GET", "/sessions", None),
    ("POST", "/sessions/register", {"sessionId": "s", "machineId": "m"}),
    ("POST", "/sessions/unregister", {"sessionId": "s"}),
    ("POST", "/notifications/send", {"sessionId": "s", "chatId": CHAT, "text": "hi"}),
    ("GET", "/admin/machines", None),
    ("GET", "/admin/commands", None),
    ("POST", "/admin/commands/abc/retry", None),
    ("POST", "/admin/commands/abc/reassign", {"sessionId": "s"}),
    ("GET", "/admin/status", None),
]

# Routes that read a JSON body (after auth).
BODY_ROUTES = [
    "/sessions/register",
    "/sessions/unregister",
    "/notifications/send",
    "/admin/commands/abc/reassign",
]


async def raw(
    server: Harness, method: str, path: str, body: Any = None, headers: dict[str, str] | None = None
):
    data = None if body is None else body if isinstance(body, (bytes, str)) else json.dumps(body)
    return await server.client.request(method, path, data=data, headers=headers or {})


# -- /health ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("method", ["GET", "POST", "PUT", "DELETE", "PATCH", "OPTIONS"])
async def test_health_answers_ok_to_any_method_without_auth(server: Harness, method: str) -> None:
    resp = await raw(server, method, "/health", body=b"not json at all")
    assert resp.status == 200
    assert resp.headers["Content-Type"] == TEXT_CT
    assert await resp.text() == "ok"


async def test_health_head_is_200_text_without_body(server: Harness) -> None:
    resp = await raw(server, "HEAD", "/health")
    assert resp.status == 200
    assert resp.headers["Content-Type"] == TEXT_CT
    assert await resp.read() == b""


async def test_health_ignores_a_wrong_api_key(server: Harness) -> None:
    resp = await raw(server, "GET", "/health", headers={"Authorization": "Bearer wrong"})
    assert resp.status == 200 and await resp.text() == "ok"


# -- routing ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/"),
        ("GET", "/nope"),
        ("POST", "/nope"),
        ("GET", "/health/"),
        ("GET", "/sessions/"),
        ("POST", "/sessions/register/"),
        ("POST", "/sessions/unregister/"),
        ("POST", "/notifications/send/"),
        ("GET", "/ws/"),
        ("GET", "/admin/status/"),
        ("GET", "/admin"),
        ("POST", "/admin/commands/abc"),
        ("POST", "/admin/commands/abc/retry/"),
        ("POST", "/media/upload"),
        ("GET", "/media/some-key"),
        ("POST", "/cleanup"),
        ("GET", "/SESSIONS"),
    ],
)
async def test_unknown_path_is_404_json_even_with_auth(
    server: Harness, method: str, path: str
) -> None:
    await expect_error(await raw(server, method, path), 404, "Not found")
    resp = await raw(server, method, path, headers=server.auth())
    await expect_error(resp, 404, "Not found")


@pytest.mark.parametrize(
    ("method", "path", "allow"),
    [
        ("POST", "/sessions", "GET"),
        ("PUT", "/sessions", "GET"),
        ("DELETE", "/sessions", "GET"),
        ("HEAD", "/sessions", "GET"),
        ("GET", "/sessions/register", "POST"),
        ("PUT", "/sessions/register", "POST"),
        ("GET", "/sessions/unregister", "POST"),
        ("GET", "/notifications/send", "POST"),
        ("DELETE", "/notifications/send", "POST"),
        ("GET", "/webhook/telegram", "POST"),
        ("GET", "/webhook/telegram/some-suffix", "POST"),
        ("POST", "/ws", "GET"),
        ("POST", "/admin/machines", "GET"),
        ("POST", "/admin/commands", "GET"),
        ("POST", "/admin/status", "GET"),
        ("GET", "/admin/commands/abc/retry", "POST"),
        ("GET", "/admin/commands/abc/reassign", "POST"),
    ],
)
async def test_wrong_method_is_405_with_allow_before_auth(
    server: Harness, method: str, path: str, allow: str
) -> None:
    # No credentials at all: 405 comes before authentication (§2.1 auth order).
    resp = await raw(server, method, path, body=b"{not json")
    assert resp.status == 405
    assert resp.headers["Allow"] == allow
    if method != "HEAD":
        assert resp.headers["Content-Type"] == JSON_CT
        assert json.loads(await resp.text()) == {"error": "Method not allowed"}
    # The same with valid credentials.
    resp = await raw(server, method, path, headers=server.auth())
    assert resp.status == 405 and resp.headers["Allow"] == allow


# -- authentication (§3.1) ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "headers",
    [
        {"Authorization": f"Bearer {API_KEY}"},
        {"Authorization": f"bearer {API_KEY}"},
        {"Authorization": f"BEARER {API_KEY}"},
        {"Authorization": f"BeArEr {API_KEY}"},
        {"Authorization": f"Bearer    {API_KEY}"},
        {"X-API-Key": API_KEY},
        {"x-api-key": API_KEY},
        {"Authorization": f"Bearer {API_KEY}", "X-API-Key": API_KEY},
        # At least one presented form carrying the key is enough.
        {"Authorization": "Bearer wrong", "X-API-Key": API_KEY},
        {"Authorization": f"Bearer {API_KEY}", "X-API-Key": "wrong"},
        {"Authorization": f"Token {API_KEY}", "X-API-Key": API_KEY},
    ],
)
async def test_accepted_credentials(server: Harness, headers: dict[str, str]) -> None:
    resp = await raw(server, "GET", "/sessions", headers=headers)
    assert await expect_json(resp, 200) == []


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"Authorization": "Bearer wrong-key"},
        {"Authorization": f"Bearer {API_KEY}x"},
        {"Authorization": f"Bearer {API_KEY[:-1]}"},
        {"Authorization": f"Bearer {API_KEY.upper()}"},
        {"Authorization": f"Token {API_KEY}"},
        {"Authorization": f"Basic {API_KEY}"},
        {"Authorization": API_KEY},
        {"Authorization": f"Bearer{API_KEY}"},
        {"Authorization": f"Bearer {API_KEY} extra"},
        {"Authorization": f"Bearer {API_KEY} {API_KEY}"},
        {"Authorization": "Bearer"},
        {"Authorization": "Bearer "},
        {"Authorization": f"Bearer\t{API_KEY}"},
        {"X-API-Key": "wrong"},
        {"X-API-Key": f"Bearer {API_KEY}"},
        {"X-API-Key": f"{API_KEY}x"},
        {"X-API-Key": ""},
        {"Authorization": "Bearer wrong", "X-API-Key": "also-wrong"},
        {"Cookie": f"key={API_KEY}"},
        {"Sec-WebSocket-Protocol": f"ccr, {API_KEY}"},
    ],
)
async def test_refused_credentials_are_401_json(server: Harness, headers: dict[str, str]) -> None:
    await expect_error(await raw(server, "GET", "/sessions", headers=headers), 401, "Unauthorized")


@pytest.mark.parametrize("param", ["key", "apiKey", "api_key", "token", "access_token"])
async def test_key_in_query_string_is_refused(server: Harness, param: str) -> None:
    resp = await raw(server, "GET", f"/sessions?{param}={API_KEY}")
    await expect_error(resp, 401, "Unauthorized")


@pytest.mark.parametrize(("method", "path", "body"), KEYED_ROUTES)
async def test_every_keyed_route_refuses_missing_or_wrong_key(
    server: Harness, method: str, path: str, body: Any
) -> None:
    await expect_error(await raw(server, method, path, body), 401, "Unauthorized")
    resp = await raw(server, method, path, body, headers={"Authorization": "Bearer nope"})
    await expect_error(resp, 401, "Unauthorized")
    resp = await raw(server, method, path, body, headers={"X-API-Key": "nope"})
    await expect_error(resp, 401, "Unauthorized")
    assert await server.db.read(sessions_db.count) == 0


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"Authorization": "Bearer "},
        {"Authorization": "Bearer"},
        {"Authorization": 'Bearer ""'},
        {"X-API-Key": ""},
    ],
)
async def test_empty_configured_api_key_authenticates_nothing(
    start_server, tmp_path, fake_telegram, headers: dict[str, str]
) -> None:
    server = await start_server(config_with(tmp_path / "empty", fake_telegram, api_key=""))
    for method, path, body in KEYED_ROUTES:
        resp = await raw(server, method, path, body, headers=headers)
        await expect_error(resp, 401, "Unauthorized")
    # The routes without the API key still work.
    assert (await raw(server, "GET", "/health")).status == 200
    assert await server.db.read(sessions_db.count) == 0


@pytest.mark.parametrize("path", BODY_ROUTES)
async def test_unauthenticated_body_is_never_parsed(server: Harness, path: str) -> None:
    for body in (b"{not json", b"[1, 2]", b"", b"x" * (limits.MAX_HTTP_BODY + 10)):
        for headers in ({}, {"Authorization": "Bearer wrong"}):
            resp = await raw(server, "POST", path, body, headers=headers)
            await expect_error(resp, 401, "Unauthorized")


# -- bodies (§2.1) -----------------------------------------------------------------------------


@pytest.mark.parametrize("path", BODY_ROUTES)
async def test_body_over_one_mib_is_413(server: Harness, path: str) -> None:
    body = b"x" * (limits.MAX_HTTP_BODY + 1)
    await expect_error(await server.post(path, body), 413, "Request body too large")


@pytest.mark.parametrize("path", BODY_ROUTES)
async def test_chunked_body_over_one_mib_is_413(server: Harness, path: str) -> None:
    async def chunks():
        piece = b" " * 65536
        for _ in range(limits.MAX_HTTP_BODY // len(piece) + 1):
            yield piece

    resp = await server.client.post(path, data=chunks(), headers=server.auth())
    assert resp.request_info.headers.get("Transfer-Encoding") == "chunked"
    await expect_error(resp, 413, "Request body too large")


async def test_body_of_exactly_one_mib_is_accepted(server: Harness) -> None:
    doc = json.dumps({"sessionId": "big", "machineId": "m1"}).encode()
    body = doc + b" " * (limits.MAX_HTTP_BODY - len(doc))
    assert len(body) == limits.MAX_HTTP_BODY
    resp = await server.post("/sessions/register", body)
    assert await expect_json(resp, 200) == {"ok": True, "sessionId": "big", "machineId": "m1"}


async def test_chunked_body_under_limit_is_parsed(server: Harness) -> None:
    async def chunks():
        yield b'{"sessionId": "chunked",'
        yield b' "machineId": "m1"}'

    resp = await server.client.post("/sessions/register", data=chunks(), headers=server.auth())
    assert await expect_json(resp, 200) == {"ok": True, "sessionId": "chunked", "machineId": "m1"}


BAD_BODIES = [
    b"{",
    b"",
    b"   ",
    b"not json",
    b"{'sessionId': 'x'}",
    b'{"sessionId": "a",}',
    b"[]",
    b'[{"sessionId": "a", "machineId": "b"}]',
    b'"a string"',
    b"42",
    b"null",
    b"true",
    b'\xff\xfe{"sessionId": 1}',
    b"NaN-ish",
]


@pytest.mark.parametrize("path", BODY_ROUTES)
async def test_malformed_or_non_object_json_is_400(server: Harness, path: str) -> None:
    for content_type in (
        None,
        "application/json",
        "text/plain",
        "application/x-www-form-urlencoded",
    ):
        for body in BAD_BODIES:
            headers = {"Content-Type": content_type} if content_type else {}
            resp = await server.post(path, body, headers=headers)
            await expect_error(resp, 400, "Invalid JSON body")
    assert await server.db.read(sessions_db.count) == 0


@pytest.mark.parametrize("path", BODY_ROUTES)
@pytest.mark.parametrize(
    "raw_body",
    [
        b'{"sessionId": "a\\ud800", "machineId": "m", "chatId": "4242", "text": "x"}',
        b'{"sessionId": "s", "machineId": "m", "chatId": "4242", "text": "x\\udfff"}',
        b'{"sessionId": "s", "machineId": "m", "extra": ["\\uDE00"]}',
        b'{"sessionId": "a\xed\xa0\x80", "machineId": "m"}',  # a surrogate as raw UTF-8 bytes
    ],
)
async def test_lone_surrogates_are_invalid_json(
    server: Harness, path: str, raw_body: bytes
) -> None:
    await server.register("s", "m")
    await expect_error(await server.post(path, raw_body), 400, "Invalid JSON body")


async def test_escaped_surrogate_pair_is_one_character(server: Harness) -> None:
    raw_body = b'{"sessionId": "\\ud83d\\ude00", "machineId": "m", "label": "caf\\u00e9"}'
    resp = await server.post("/sessions/register", raw_body)
    assert await expect_json(resp, 200) == {"ok": True, "sessionId": EMOJI, "machineId": "m"}
    assert (await session_row(server, EMOJI))["label"] == "café"


@pytest.mark.parametrize("content_type", ["text/plain", "application/x-www-form-urlencoded", ""])
async def test_json_is_parsed_whatever_the_content_type(server: Harness, content_type: str) -> None:
    body = json.dumps({"sessionId": "ct", "machineId": "m1", "label": "L"})
    resp = await server.post("/sessions/register", body, headers={"Content-Type": content_type})
    assert await expect_json(resp, 200) == {"ok": True, "sessionId": "ct", "machineId": "m1"}
    assert (await session_row(server, "ct"))["label"] == "L"


# -- POST /sessions/register (§2.3) ------------------------------------------------------------


@pytest.mark.parametrize(
    "body",
    [
        {},
        {"sessionId": "s"},
        {"machineId": "m"},
        {"sessionId": "", "machineId": "m"},
        {"sessionId": "s", "machineId": ""},
        {"sessionId": None, "machineId": "m"},
        {"sessionId": 5, "machineId": "m"},
        {"sessionId": "s", "machineId": 7},
        {"sessionId": True, "machineId": "m"},
        {"sessionId": "s", "machineId": False},
        {"sessionId": ["s"], "machineId": "m"},
        {"sessionId": "s", "machineId": {"id": "m"}},
        {"sessionId": 1.5, "machineId": "m"},
        {"sessionID": "s", "machineID": "m"},
        {"session_id": "s", "machine_id": "m"},
        # The required check comes before the length and label checks.
        {"sessionId": "", "machineId": "m" * 300, "label": 5},
    ],
)
async def test_register_requires_session_and_machine(server: Harness, body: dict) -> None:
    resp = await server.post("/sessions/register", body)
    await expect_error(resp, 400, "sessionId and machineId required")
    assert await server.db.read(sessions_db.count) == 0


@pytest.mark.parametrize(
    ("field", "value", "error"),
    [
        ("sessionId", "s" * 257, "sessionId too long"),
        ("sessionId", "s" * 255 + EMOJI, "sessionId too long"),  # 256 code points, 257 units
        ("sessionId", EMOJI * 129, "sessionId too long"),  # 129 code points, 258 units
        ("machineId", "m" * 257, "machineId too long"),
        ("machineId", "m" * 255 + EMOJI, "machineId too long"),
        ("label", "l" * 257, "label too long"),
        ("label", "l" * 255 + EMOJI, "label too long"),
        ("label", 5, "label must be a string"),
        ("label", 0, "label must be a string"),
        ("label", True, "label must be a string"),
        ("label", False, "label must be a string"),
        ("label", [], "label must be a string"),
        ("label", ["x"], "label must be a string"),
        ("label", {}, "label must be a string"),
    ],
)
async def test_register_field_errors(server: Harness, field: str, value: Any, error: str) -> None:
    body = {"sessionId": "s1", "machineId": "m1", field: value}
    await expect_error(await server.post("/sessions/register", body), 400, error)
    assert await server.db.read(sessions_db.count) == 0


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("sessionId", "s" * 256),
        ("sessionId", "s" * 254 + EMOJI),  # exactly 256 units
        ("sessionId", EMOJI * 128),
        ("machineId", "m" * 256),
        ("machineId", "m" * 254 + EMOJI),
        ("label", "l" * 256),
        ("label", "l" * 254 + EMOJI),
        ("label", ""),
        ("sessionId", " "),  # non-empty, not trimmed
    ],
)
async def test_register_accepts_fields_at_the_limit(
    server: Harness, field: str, value: str
) -> None:
    body = {"sessionId": "s1", "machineId": "m1", field: value}
    resp = await server.post("/sessions/register", body)
    expected = {"ok": True, "sessionId": body["sessionId"], "machineId": body["machineId"]}
    assert await expect_json(resp, 200) == expected
    row = await session_row(server, body["sessionId"])
    assert row is not None and row[_column(field)] == value


def _column(field: str) -> str:
    return {"sessionId": "session_id", "machineId": "machine_id", "label": "label"}[field]


@pytest.mark.parametrize("machine_id", ["my_box", "box.local", "has space", "ü-box", "x" * 65])
async def test_register_stores_machine_ids_that_cannot_connect(
    server: Harness, machine_id: str
) -> None:
    resp = await server.post("/sessions/register", {"sessionId": "s1", "machineId": machine_id})
    assert await expect_json(resp, 200) == {"ok": True, "sessionId": "s1", "machineId": machine_id}
    assert (await session_row(server, "s1"))["machine_id"] == machine_id


async def test_register_ignores_unknown_fields(server: Harness) -> None:
    body = {"sessionId": "s1", "machineId": "m1", "extra": {"a": 1}, "cwd": "/tmp", "pid": 7}
    resp = await server.post("/sessions/register", body)
    assert await expect_json(resp, 200) == {"ok": True, "sessionId": "s1", "machineId": "m1"}


async def test_register_upsert_keeps_created_at_and_clears_label(server: Harness) -> None:
    clock = server.clock
    t0 = clock.now_ms()
    await server.register("s1", "m1", "first label")
    assert await session_row(server, "s1") == {
        "session_id": "s1",
        "machine_id": "m1",
        "label": "first label",
        "created_at": t0,
        "updated_at": t0,
    }
    clock.advance(5000)
    # Label omitted: cleared (CCR Worker behaviour).
    resp = await server.post("/sessions/register", {"sessionId": "s1", "machineId": "m2"})
    assert await expect_json(resp, 200) == {"ok": True, "sessionId": "s1", "machineId": "m2"}
    assert await session_row(server, "s1") == {
        "session_id": "s1",
        "machine_id": "m2",
        "label": None,
        "created_at": t0,
        "updated_at": t0 + 5000,
    }
    clock.advance(1000)
    await server.register("s1", "m2", "again")
    assert (await session_row(server, "s1"))["label"] == "again"
    clock.advance(1000)
    # Label null: cleared as well.
    await server.register("s1", "m3", None)
    assert await session_row(server, "s1") == {
        "session_id": "s1",
        "machine_id": "m3",
        "label": None,
        "created_at": t0,
        "updated_at": t0 + 7000,
    }
    assert await server.db.read(sessions_db.count) == 1


async def test_session_limit_is_1000_and_reregister_stays_allowed(server: Harness) -> None:
    now = server.clock.now_ms()

    def fill(conn: Any) -> None:
        for i in range(limits.MAX_SESSIONS - 1):
            assert sessions_db.upsert(
                conn, f"bulk-{i}", "m1", None, now, max_sessions=limits.MAX_SESSIONS
            )

    await server.db.write(fill)
    await server.register("number-1000", "m1")
    assert await server.db.read(sessions_db.count) == 1000

    resp = await server.post("/sessions/register", {"sessionId": "number-1001", "machineId": "m"})
    await expect_error(resp, 429, "Session limit reached")
    assert await session_row(server, "number-1001") is None

    # Re-registering existing sessions is always allowed, even with a new machine and label.
    server.clock.advance(10)
    await server.register("bulk-0", "m2", "moved")
    await server.register("number-1000", "m1")
    assert (await session_row(server, "bulk-0"))["machine_id"] == "m2"
    assert await server.db.read(sessions_db.count) == 1000

    # Freeing a slot lets a new session in.
    resp = await server.post("/sessions/unregister", {"sessionId": "bulk-5"})
    assert await expect_json(resp, 200) == {"ok": True}
    await server.register("number-1001", "m1")
    resp = await server.post("/sessions/register", {"sessionId": "number-1002", "machineId": "m"})
    await expect_error(resp, 429, "Session limit reached")


async def test_concurrent_registrations_never_exceed_the_cap(server: Harness) -> None:
    import asyncio

    now = server.clock.now_ms()

    def fill(conn: Any) -> None:
        for i in range(limits.MAX_SESSIONS - 5):
            sessions_db.upsert(conn, f"bulk-{i}", "m1", None, now, max_sessions=10_000)

    await server.db.write(fill)
    responses = await asyncio.gather(
        *(
            server.post("/sessions/register", {"sessionId": f"race-{i}", "machineId": "m"})
            for i in range(20)
        )
    )
    statuses = sorted(r.status for r in responses)
    assert statuses == [200] * 5 + [429] * 15
    assert await server.db.read(sessions_db.count) == limits.MAX_SESSIONS


# -- GET /sessions (§2.3) ----------------------------------------------------------------------


async def test_list_sessions_exact_rows_newest_activity_first(server: Harness) -> None:
    clock = server.clock
    t0 = clock.now_ms()
    await server.register("a", "m1", "label a")
    clock.advance(1000)
    await server.register("b", "m2")
    clock.advance(1000)
    await server.register("c", "m1", "c")
    clock.advance(1000)
    await server.register("a", "m1", "label a")  # activity moves a to the top
    clock.advance(1000)
    await server.notify("b", "ping")  # a notification is activity too

    resp = await server.client.get("/sessions", headers=server.auth("x-api-key"))
    rows = await expect_json(resp, 200)
    assert rows == [
        {
            "session_id": "b",
            "machine_id": "m2",
            "label": None,
            "created_at": t0 + 1000,
            "updated_at": t0 + 4000,
        },
        {
            "session_id": "a",
            "machine_id": "m1",
            "label": "label a",
            "created_at": t0,
            "updated_at": t0 + 3000,
        },
        {
            "session_id": "c",
            "machine_id": "m1",
            "label": "c",
            "created_at": t0 + 2000,
            "updated_at": t0 + 2000,
        },
    ]
    for row in rows:
        assert list(row) == ["session_id", "machine_id", "label", "created_at", "updated_at"]


async def test_list_sessions_empty_is_empty_array(server: Harness) -> None:
    resp = await server.client.get("/sessions", headers=server.auth())
    assert await resp.text() == "[]"
    assert resp.headers["Content-Type"] == JSON_CT


# -- POST /sessions/unregister (§2.3) ----------------------------------------------------------


@pytest.mark.parametrize(
    "body",
    [{}, {"sessionId": ""}, {"sessionId": None}, {"sessionId": 5}, {"sessionId": ["a"]}],
)
async def test_unregister_requires_session_id(server: Harness, body: dict) -> None:
    await expect_error(await server.post("/sessions/unregister", body), 400, "sessionId required")


async def test_unregister_deletes_session_and_mappings_but_not_commands(server: Harness) -> None:
    fake = server.fake
    await server.register("gone", "laptop", "L")
    await server.register("stays", "laptop")
    first = await server.notify("gone", "one")
    await server.notify("gone", "two")
    kept = await server.notify("stays", "three")
    resp = await server.webhook(fake.make_message(CHAT, "run it", reply_to=first["messageId"]))
    assert resp.status == 200
    await fake.wait_for(lambda: "Command queued - L is offline." in fake.messages_to(CHAT))
    commands_before = await server.commands()
    assert [c["session_id"] for c in commands_before] == ["gone"]
    assert len(await messages_rows(server, "gone")) == 2

    resp = await server.post("/sessions/unregister", {"sessionId": "gone"})
    assert await expect_json(resp, 200) == {"ok": True}
    assert await session_row(server, "gone") is None
    assert await messages_rows(server, "gone") == []
    # Other sessions and their mappings stay; queued commands are not touched.
    assert await session_row(server, "stays") is not None
    assert [m["message_id"] for m in await messages_rows(server)] == [kept["messageId"]]
    assert await server.commands() == commands_before

    # Idempotent.
    resp = await server.post("/sessions/unregister", {"sessionId": "gone"})
    assert await expect_json(resp, 200) == {"ok": True}
    resp = await server.post("/sessions/unregister", {"sessionId": "never-existed"})
    assert await expect_json(resp, 200) == {"ok": True}

    # GET /sessions no longer lists it.
    rows = await expect_json(await server.client.get("/sessions", headers=server.auth()), 200)
    assert [r["session_id"] for r in rows] == ["stays"]


async def test_unregister_leaves_orphan_mappings_of_other_sessions(server: Harness) -> None:
    await server.register("x", "m1")
    await server.notify("x", "hello")
    resp = await server.post("/sessions/unregister", {"sessionId": "y", "extra": 1})
    assert await expect_json(resp, 200) == {"ok": True}
    assert len(await sql(server, "SELECT * FROM messages WHERE session_id = 'x'")) == 1


# -- secrets -----------------------------------------------------------------------------------


async def test_no_response_ever_contains_a_secret(server: Harness) -> None:
    fake = server.fake
    await server.register("s1", "m1")
    fake.fail_next("sendMessage", 400)
    requests: list[tuple[str, str, Any, dict[str, str]]] = [
        ("GET", "/health", None, {}),
        ("GET", "/sessions", None, server.auth()),
        ("GET", "/sessions", None, {"Authorization": "Bearer x"}),
        ("POST", "/sessions/register", {"sessionId": "s2", "machineId": "m"}, server.auth()),
        ("POST", "/sessions/register", b"{", server.auth()),
        ("POST", "/notifications/send", {"sessionId": "s1", "chatId": CHAT, "text": "x"}, {}),
        (
            "POST",
            "/notifications/send",
            {"sessionId": "s1", "chatId": CHAT, "text": "x"},
            server.auth(),
        ),
        ("POST", "/notifications/send", {"sessionId": "s1", "chatId": "1", "text": "x"}, {}),
        ("GET", "/admin/status", None, server.auth()),
        ("GET", "/admin/machines", None, server.auth()),
        ("GET", "/admin/commands", None, server.auth()),
        ("GET", "/admin/commands?limit=9999", None, server.auth()),
        ("POST", "/webhook/telegram", {"update_id": 1}, {}),
        ("POST", "/webhook/telegram/wrong", {"update_id": 1}, {}),
        ("GET", "/ws?machineId=m1", None, {}),
        ("GET", f"/nope?key={API_KEY}", None, {}),
        ("PUT", "/sessions", None, server.auth()),
    ]
    statuses = []
    for method, path, body, headers in requests:
        resp = await raw(server, method, path, body, headers=headers)
        statuses.append(resp.status)
        text = await resp.text()
        assert_no_secret(text, fake)
        assert_no_secret(json.dumps(dict(resp.headers)), fake)
    assert 502 in statuses and 401 in statuses and 404 in statuses


async def test_json_bodies_are_compact_like_the_ccr_worker(server: Harness) -> None:
    """Byte-exact bodies (contract §2.2 shows them compact, as JSON.stringify writes them)."""
    resp = await server.post("/sessions/register", {"sessionId": "s-c", "machineId": "m-c"})
    assert await resp.text() == '{"ok":true,"sessionId":"s-c","machineId":"m-c"}'
    resp = await server.client.get("/nope")
    assert await resp.text() == '{"error":"Not found"}'
    resp = await server.post("/sessions/register", {"sessionId": "s-ü", "machineId": "m"})
    assert await resp.text() == '{"ok":true,"sessionId":"s-ü","machineId":"m"}'
