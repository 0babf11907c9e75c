"""``ccr_box.client``: one error tree for every client, and how an HTTP answer maps onto it."""

from __future__ import annotations

from typing import Any

import pytest

from ccr_box.client.errors import ClientError, EndpointMissing, ServerRefused, ServerUnavailable
from ccr_box.client.http import Answer, display_url, local_url, raise_for_status
from ccr_box.errors import CcrBoxError


def answer(status: int, body: bytes = b"", reason: str = "") -> Answer:
    return Answer(status, reason, body, "utf-8")


def raised(a: Answer, **kw: Any) -> ClientError:
    with pytest.raises(ClientError) as caught:
        raise_for_status(a, fallback="fallback text", **kw)
    return caught.value


def test_the_tree() -> None:
    assert issubclass(ClientError, CcrBoxError)
    assert issubclass(EndpointMissing, ServerRefused)
    assert ServerUnavailable.retryable and not ServerRefused.retryable
    assert str(ServerRefused(401, "Unauthorized")) == "server answered 401: Unauthorized"
    assert str(ServerRefused(401, "Unauthorized", "Unauthorized")) == "Unauthorized"


def test_success_raises_nothing() -> None:
    for status in (200, 202, 204, 301):
        raise_for_status(answer(status), fallback="x")


def test_5xx_is_unavailable() -> None:
    err = raised(answer(500, b'{"error":"Internal server error"}'))
    assert type(err) is ServerUnavailable and str(err) == "Internal server error"
    err = raised(answer(503, b"<html>"), unavailable="/notifications/send: HTTP 503")
    assert str(err) == "/notifications/send: HTTP 503"


def test_4xx_is_refused_with_the_servers_words() -> None:
    err = raised(answer(409, b'{"error":"Command is not dead"}'), plain=True)
    assert type(err) is ServerRefused
    assert (err.status, err.error, str(err)) == (409, "Command is not dead", "Command is not dead")
    err = raised(answer(404, b'{"error":"Session not found"}'))  # a route's refusal
    assert type(err) is ServerRefused
    assert str(err) == "server answered 404: Session not found"
    err = raised(answer(400, b"not json"))
    assert (type(err), err.error) == (ServerRefused, "fallback text")


def test_the_routers_own_404_and_405_mean_a_missing_endpoint() -> None:
    for status, body in ((404, b'{"error":"Not found"}'), (405, b'{"error":"Method not allowed"}')):
        err = raised(answer(status, body), plain=True)
        assert type(err) is EndpointMissing and err.status == status
    err = raised(answer(404, b"<html>404</html>"))  # not ccr-box at all
    assert type(err) is EndpointMissing and err.error == "fallback text"


def test_answers_never_raise_while_being_read() -> None:
    assert answer(200, b"").json() is None
    assert answer(200, b"  ").json() is None
    assert answer(200, b"\xff\xfe{").json() is None  # undecodable: replaced, then not JSON
    assert answer(200, b'{"error":""}').error is None
    assert Answer(200, None, b"[1]", "no-such-charset").json() == [1]


def test_urls() -> None:
    assert local_url("0.0.0.0", 8787) == "http://127.0.0.1:8787"
    assert local_url("", 1) == "http://127.0.0.1:1"
    assert local_url("localhost", 1) == "http://127.0.0.1:1"
    assert local_url("::", 1) == "http://[::1]:1"
    assert local_url("fd00::5", 1) == "http://[fd00::5]:1"
    assert local_url("box.lan", 2) == "http://box.lan:2"
    assert display_url("http://user:pw@box:1/x") == "http://box:1/x"
