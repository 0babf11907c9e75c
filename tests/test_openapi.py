"""The OpenAPI description of the HTTP API (``ccr_box/server/openapi.json``) is valid, complete, true.

- valid: the OpenAPI 3.1 meta-schema accepts it, every Schema Object in it is a valid JSON Schema
  2020-12 schema and every ``$ref`` resolves;
- complete: it lists exactly the routes of the real router (method and path), so it cannot go stale;
- true: the schemathesis CLI (``st run``, deterministic) sends a live server on 127.0.0.1 (real
  sockets, the fake Telegram behind it) requests made from the document: its examples, boundary
  values and type mutations of every field, valid and invalid random data, other methods, with
  and without the credentials. No answer may be a 5xx; every status code, content type, header
  and JSON body must be the documented one; valid data must be accepted and invalid data refused.
  Figures: ``record("schemathesis", operations, requests, server_errors)``.
- the throttle's 429 is documented wherever it can answer, and only there.
"""

from __future__ import annotations

import asyncio
import copy
import json
import re
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import jsonschema_rs
import pytest
import requests
import schemathesis
import tomli_w
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import not_a_server_error
from schemathesis.errors import FailureGroup
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from ccr_box.db import queue as q
from ccr_box.server import keys
from ccr_box.server.app import Options, make_app
from ccr_box.server.openapi import load_document
from tests.conftest import API_KEY, CHAT, PATH_SECRET, WEBHOOK_SECRET, Harness, make_config
from tests.figures import record

DOCUMENT: dict[str, Any] = json.loads(load_document())
HTTP_METHODS = ("get", "put", "post", "delete", "options", "head", "patch", "trace")

# Data the fuzzer can reach through the document's examples (sessionId "demo-1", machineId
# "devbox", the button token "Tk_123", the command id of CommandId).
SESSION, MACHINE, TOKEN = "demo-1", "devbox", "Tk_123"
DEAD_COMMAND = DOCUMENT["components"]["parameters"]["CommandId"]["example"]


def load_schema(config: dict[str, Any] | None = None) -> schemathesis.BaseSchema:
    """The document as schemathesis sees it, with an explicit configuration (a
    schemathesis.toml lying around is not read)."""
    loaded = schemathesis.Config.from_dict(copy.deepcopy(config or {}))
    return schemathesis.openapi.from_dict(copy.deepcopy(DOCUMENT), config=loaded)


# -- valid ----------------------------------------------------------------------------------------


def _schema_objects(node: Any, path: str = "#") -> Iterator[tuple[str, Any]]:
    """Every Schema Object of the document: components.schemas and each ``schema`` value."""
    if isinstance(node, dict):
        for key, value in node.items():
            here = f"{path}/{key}"
            if key == "schema" or path == "#/components/schemas":
                yield here, value
            else:
                yield from _schema_objects(value, here)
    elif isinstance(node, list):
        for index, value in enumerate(node):
            yield from _schema_objects(value, f"{path}/{index}")


def _refs(node: Any) -> Iterator[str]:
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "$ref" and isinstance(value, str):
                yield value
            else:
                yield from _refs(value)
    elif isinstance(node, list):
        for value in node:
            yield from _refs(value)


def _resolve(pointer: str) -> Any:
    assert pointer.startswith("#/"), pointer
    node: Any = DOCUMENT
    for part in pointer[2:].split("/"):
        node = node[part.replace("~1", "/").replace("~0", "~")]
    return node


def test_document_is_valid_openapi_3_1() -> None:
    assert DOCUMENT["openapi"].startswith("3.1.")
    load_schema().validate()  # the OpenAPI 3.1 meta-schema (schemathesis ships it)
    found = list(_schema_objects(DOCUMENT))
    assert len(found) > 50
    for where, schema in found:  # the meta-schema does not look inside Schema Objects
        try:
            jsonschema_rs.meta.validate(schema)
        except jsonschema_rs.ValidationError as exc:
            pytest.fail(f"{where} is not a JSON Schema 2020-12 schema: {exc}")
    for ref in set(_refs(DOCUMENT)):
        try:
            _resolve(ref)
        except (KeyError, TypeError):
            pytest.fail(f"$ref {ref} does not resolve")
    ids = [
        op["operationId"]
        for item in DOCUMENT["paths"].values()
        for method, op in item.items()
        if method in HTTP_METHODS
    ]
    assert len(ids) == len(set(ids)), "operationIds must be unique"


def test_the_validation_above_can_fail() -> None:
    broken = copy.deepcopy(DOCUMENT)
    broken["paths"]["/sessions"]["get"]["responses"] = ["200"]
    with pytest.raises(jsonschema_rs.ValidationError):
        schemathesis.openapi.from_dict(broken).validate()
    with pytest.raises(jsonschema_rs.ValidationError):
        jsonschema_rs.meta.validate({"type": "object", "required": "sessionId"})


# -- complete -------------------------------------------------------------------------------------


def router_operations(tmp_path: Path) -> set[tuple[str, str]]:
    """(METHOD, path) of every route the real app registers; ``*`` is every OpenAPI method."""
    app = make_app(make_config(tmp_path, None))
    found: set[tuple[str, str]] = set()
    for route in app.router.routes():
        assert route.resource is not None
        path = route.resource.canonical  # "{suffix:[\\s\\S]*}" -> "{suffix}"
        methods = HTTP_METHODS if route.method == "*" else (route.method.lower(),)
        found.update((method.upper(), path) for method in methods)
    return found


def document_operations() -> set[tuple[str, str]]:
    return {
        (method.upper(), path)
        for path, item in DOCUMENT["paths"].items()
        for method in item
        if method in HTTP_METHODS
    }


def test_document_lists_exactly_the_routes_of_the_router(tmp_path: Path) -> None:
    routes, documented = router_operations(tmp_path), document_operations()
    assert ("GET", "/openapi.json") in routes
    assert ("POST", "/webhook/telegram/{suffix}") in routes
    assert sorted(routes - documented) == [], "routes missing from openapi.json"
    assert sorted(documented - routes) == [], "openapi.json documents routes that do not exist"


async def test_openapi_json_is_served_as_shipped_without_a_key(server: Harness) -> None:
    resp = await server.client.get("/openapi.json")
    assert resp.status == 200
    assert resp.headers["Content-Type"] == "application/json; charset=utf-8"
    assert await resp.read() == load_document()
    resp = await server.client.get("/openapi.json", headers={"Authorization": "Bearer wrong"})
    assert resp.status == 200 and await resp.json() == DOCUMENT
    resp = await server.client.post("/openapi.json")
    assert resp.status == 405 and resp.headers["Allow"] == "GET"


# -- true -----------------------------------------------------------------------------------------

# The credentials, by security scheme: schemathesis sends them and does not fuzz them (its
# ignored_auth check still sends requests without them and expects the documented 401).
CREDENTIALS = {
    "bearerAuth": {"bearer": API_KEY},
    "apiKeyHeader": {"api_key": API_KEY},
    "telegramSecret": {"api_key": WEBHOOK_SECRET},
}
# - Valid data may be refused for what it names (404: no such session or command; 403: a chat
#   that is not allowed; 409: the command is not dead) or for missing credentials (401), and a
#   WebSocket route answers 426 without "Upgrade: websocket".
# - Invalid data may be refused with 413 (too large) or 426 as well as the usual 4xx.
ACCEPTED = ["2xx", "401", "403", "404", "409", "426"]
REJECTED = ["400", "401", "403", "404", "405", "406", "409", "413", "415", "422", "426", "428"]
CHECKS_CONFIG: dict[str, Any] = {
    "positive_data_acceptance": {"expected-statuses": ACCEPTED},
    "negative_data_rejection": {"expected-statuses": [*REJECTED, "429", "5xx"]},
}
OPERATIONS_CONFIG: list[dict[str, Any]] = [
    {
        # A plain HTTP client cannot finish a WebSocket handshake ("Connection: Upgrade" is a
        # hop-by-hop header, not a parameter), so even valid data ends in aiohttp's 400.
        "include-name": ["GET /ws", "GET /admin/events/stream"],
        "checks": {"positive_data_acceptance": {"expected-statuses": [*ACCEPTED, "400"]}},
    },
    {
        # /health serves every method (contract §2.2), extension methods such as QUERY too,
        # which OpenAPI 3.1 cannot list: there is no "undeclared method" to refuse.
        "include-path": "/health",
        "phases": {"coverage": {"unexpected-methods": []}},
    },
]
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
]


@dataclass(frozen=True)
class Run:
    """One ``st run``: which phases, checks and examples, with or without the credentials."""

    name: str
    keyed: bool
    phases: str
    checks: str
    max_examples: int

    def config(self) -> dict[str, Any]:
        config: dict[str, Any] = {"checks": CHECKS_CONFIG, "operations": OPERATIONS_CONFIG}
        if self.keyed:
            config["auth"] = {"openapi": CREDENTIALS}
        return config


RUNS = (
    # With the API key and the webhook secret: the document's examples, then schemathesis'
    # boundary values and type mutations of every field, then valid and invalid random data,
    # with every check that applies without a stateful phase (401 without the key, 405 + Allow
    # for other methods, ...).
    Run("with-key", True, "examples,coverage,fuzzing", "all", 25),
    # Without: whatever credentials schemathesis makes up must get the documented 401, on every
    # route. No body is read before the key, so a few random examples do. Nothing it sends can
    # change the server's state, so it runs alongside the first run without disturbing it.
    Run("without-key", False, "fuzzing", ",".join(c.__name__ for c in CHECKS), 10),
)


@dataclass
class Outcome:
    operations: int  # operations tested
    requests: list[dict[str, Any]]  # every request and its answer (HAR entries)


def st_command(run: Run, base_url: str, work: Path) -> list[str]:
    """The ``st run`` command line, its configuration and document written into ``work``."""
    work.mkdir()
    (work / "schemathesis.toml").write_text(tomli_w.dumps(run.config()), encoding="utf-8")
    spec = work / "openapi.json"  # from the file: loaded from the URL it would skip that route
    spec.write_bytes(load_document())
    return [
        *(sys.executable, "-m", "schemathesis.cli", "--config-file", "schemathesis.toml"),
        *("run", str(spec), "--url", base_url, "--phases", run.phases, "--checks", run.checks),
        *("--max-examples", str(run.max_examples), "--generation-deterministic", "--workers", "1"),
        *("--no-color", "--report", "har,json"),
        *("--report-har-path", str(work / "requests.har")),
        *("--report-json-path", str(work / "report.json")),
    ]


def read_outcome(work: Path) -> Outcome:
    report = json.loads((work / "report.json").read_text(encoding="utf-8"))
    har = json.loads((work / "requests.har").read_text(encoding="utf-8"))
    return Outcome(report["operations"]["tested"], har["log"]["entries"])


async def st_run(run: Run, base_url: str, work: Path) -> Outcome:
    """Run the schemathesis CLI against ``base_url``; what it sent comes back in its reports."""
    proc = await asyncio.create_subprocess_exec(
        *st_command(run, base_url, work),
        cwd=work,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    try:
        stdout, _ = await asyncio.wait_for(proc.communicate(), timeout=240)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    output = stdout.decode("utf-8", "replace")
    assert proc.returncode == 0, f"st run ({run.name}) failed:\n{output}"
    return read_outcome(work)


async def seed(h: Harness) -> None:
    """Rows for the fuzzer to reach through the document's examples: a session with a mapped
    notification (token Tk_123), an outbox row, a dead command."""
    await h.register(SESSION, MACHINE, "api")
    await h.notify(SESSION, "Claude stopped. Continue?", token=TOKEN)
    h.fake.fail_next("sendMessage", 500)  # transient: this one waits in the outbox
    body = {"sessionId": SESSION, "chatId": CHAT, "text": "Needs input"}
    assert (await h.post("/notifications/send", body)).status == 202
    now = h.clock.now_ms()
    dead = q.NewCommand(DEAD_COMMAND, "laptop", SESSION, "git status", CHAT)
    await h.db.write(lambda c: q.enqueue(c, dead, now))
    h.clock.advance(25 * 60 * 60 * 1000)  # past the 24 h delivery window
    await h.app[keys.MAINTENANCE].dead_letter()
    assert [r["command_id"] for r in await h.commands(status="dead")] == [DEAD_COMMAND]


async def run_agent(ws: aiohttp.ClientWebSocketResponse) -> None:
    """Acknowledge every command and answer the close handshake, as a real agent does."""
    async with ws:
        async for msg in ws:
            frame = json.loads(msg.data)
            if frame.get("type") == "command":
                await ws.send_json({"type": "ack", "commandId": frame["commandId"]})


def statuses(entries: list[dict[str, Any]], method: str, path: str) -> set[int]:
    """Statuses answered to ``method`` on URLs whose path matches ``path`` (a regex)."""
    return {
        e["response"]["status"]
        for e in entries
        if e["request"]["method"] == method
        and re.fullmatch(path, urlsplit(e["request"]["url"]).path)
    }


async def test_schemathesis_finds_no_server_errors(start_server: Any, tmp_path: Path) -> None:
    # No throttle: it would answer most keyless requests 429 instead of evaluating them
    # (test_throttled_answers_are_documented covers the 429). No fsync per request: durability
    # is not what this test is about.
    options = Options(
        maintenance=False, telegram_inbound=False, auth_throttle=None, synchronous="NORMAL"
    )
    h = await start_server(options=options)
    await seed(h)
    agent = asyncio.create_task(run_agent(await h.connect(MACHINE)))  # for flush and disconnect
    base_url = h.url("/").rstrip("/")
    try:  # the server answers on this event loop while the CLI runs
        outcomes = await asyncio.gather(
            *(st_run(run, base_url, tmp_path / run.name) for run in RUNS)
        )
    finally:
        agent.cancel()
    entries = [entry for outcome in outcomes for entry in outcome.requests]
    server_errors = [
        f"{e['request']['method']} {e['request']['url']}: {e['response']['status']}"
        for e in entries
        if e["response"]["status"] >= 500
    ]
    assert server_errors == []
    operations = len(document_operations())
    assert [outcome.operations for outcome in outcomes] == [operations] * len(RUNS)
    # The requests got past authentication and validation, to the routes' own answers.
    assert {200, 400, 401, 404, 405} <= {e["response"]["status"] for e in entries}
    assert statuses(entries, "POST", "/notifications/send") >= {200, 400, 401, 403, 404}
    # The seeded dead command: revived (by retry or reassign), then found not dead.
    assert statuses(entries, "POST", "/admin/commands/[^/]+/(retry|reassign)") >= {200, 404, 409}
    assert 200 in statuses(entries, "POST", "/webhook/telegram(/.*)?")
    record("schemathesis", operations=operations, requests=len(entries), server_errors=0)


# -- the throttle's 429 ---------------------------------------------------------------------------


def throttle_probe(base_url: str) -> tuple[dict[str, set[int]], list[str]]:
    """Two valid requests per operation, with the right key; statuses seen and failures."""
    schema = load_schema({"auth": {"openapi": CREDENTIALS}})
    seen: dict[str, set[int]] = {}
    failures: list[str] = []
    with requests.Session() as session:
        for result in schema.get_all_operations():
            operation = result.ok()

            @settings(
                max_examples=2,
                derandomize=True,
                deadline=None,
                database=None,
                suppress_health_check=list(HealthCheck),
            )
            @given(case=operation.as_strategy())
            def probe(case: schemathesis.Case) -> None:
                response = case.call(base_url=base_url, session=session)
                seen.setdefault(case.operation.label, set()).add(response.status_code)
                case.validate_response(response, checks=CHECKS)

            try:
                probe()
            except (Exception, FailureGroup) as exc:
                failures.append(f"{operation.label}:\n{exc}")
    return seen, failures


async def test_throttled_answers_are_documented(start_server: Any) -> None:
    h = await start_server()  # the default throttle; the manual clock never ends a block
    wrong = {"Authorization": "Bearer wrong-key"}
    for _ in range(11):  # ten free failures, the eleventh blocks this address
        assert (await h.client.get("/sessions", headers=wrong)).status == 401
    assert (await h.client.get("/sessions", headers=h.auth())).status == 429
    seen, failures = await asyncio.to_thread(throttle_probe, h.url("/").rstrip("/"))
    assert failures == [], "\n\n".join(failures)
    for path, item in DOCUMENT["paths"].items():
        for method, op in item.items():
            if method in HTTP_METHODS:
                label = f"{method.upper()} {path}"
                credentialed = op.get("security", DOCUMENT["security"]) != []
                assert (seen[label] == {429}) == credentialed, (label, seen[label])


# -- regressions found by schemathesis ------------------------------------------------------------


async def test_webhook_suffix_may_hold_any_character(start_server: Any, tmp_path: Path) -> None:
    """A suffix holding a line feed matched no route: 404 instead of the contract's 200 or 401."""
    h = await start_server()
    secret = {"X-Telegram-Bot-Api-Secret-Token": WEBHOOK_SECRET}
    for suffix in ("%0A", "a%0Ab", "x/y%0D%0Az", ""):
        resp = await h.client.post(f"/webhook/telegram/{suffix}", data="{}", headers=secret)
        assert (resp.status, await resp.text()) == (200, "ok"), suffix
    assert h.fake is not None
    h = await start_server(
        make_config(tmp_path / "path-secret", h.fake, webhook_path_secret=PATH_SECRET)
    )
    resp = await h.client.post(f"/webhook/telegram/{PATH_SECRET}%0A", data="{}", headers=secret)
    assert (resp.status, await resp.text()) == (401, "Unauthorized")
