"""POST /kill/engage on the health server: bearer token, body checks, and what reaches the engage call."""

from __future__ import annotations

import http.client
import json
import secrets
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from omni_tasks.ops.httpserver import KillEndpoint, bearer_matches, make_server, parse_engage_body
from omni_tasks.safety.engage import EngageResult


@dataclass
class Server:
    port: int
    token: str
    calls: list[dict[str, Any]]


def _serve(kill: KillEndpoint | None) -> Iterator[int]:
    httpd = make_server("127.0.0.1", 0, registry=CollectorRegistry(), health=lambda: (200, {"status": "ok"}), kill=kill)
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield httpd.server_address[1]
    finally:
        httpd.shutdown()
        httpd.server_close()


@pytest.fixture
def server() -> Iterator[Server]:
    token = secrets.token_urlsafe(32)
    calls: list[dict[str, Any]] = []

    def engage(**kwargs: Any) -> EngageResult:
        calls.append(kwargs)
        result = EngageResult(
            actor=kwargs["actor"], reason=kwargs["reason"], started_at="now", durable=kwargs["reason"] != "db down", version=7
        )
        return result

    for port in _serve(KillEndpoint(token=token, engage=engage)):
        yield Server(port, token, calls)


def _post(port: int, body: bytes | None, headers: dict[str, str]) -> tuple[int, dict[str, Any], dict[str, str]]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    connection.request("POST", "/kill/engage", body=body, headers=headers)
    response = connection.getresponse()
    payload = json.loads(response.read() or b"{}")
    connection.close()
    return response.status, payload, dict(response.getheaders())


def _auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}


def test_a_good_request_engages_with_the_reason_and_an_http_actor(server: Server) -> None:
    status, payload, _ = _post(
        server.port, json.dumps({"reason": "desk lost its feed", "operator": "alice", "flatten": True}).encode(), _auth(server.token)
    )
    assert status == 200
    assert payload["durable"] is True
    assert payload["version"] == 7
    assert server.calls == [{"actor": "http:alice", "reason": "desk lost its feed", "flatten": True}]


def test_without_an_operator_name_the_actor_is_the_caller_address(server: Server) -> None:
    status, _, _ = _post(server.port, b'{"reason": "why"}', _auth(server.token))
    assert status == 200
    assert server.calls[0]["actor"] == "http:127.0.0.1"
    assert server.calls[0]["flatten"] is None


def test_a_failed_durable_write_answers_500_with_the_result(server: Server) -> None:
    status, payload, _ = _post(server.port, b'{"reason": "db down"}', _auth(server.token))
    assert status == 500
    assert payload["durable"] is False


@pytest.mark.parametrize(
    "header",
    [
        None,
        "",
        "Bearer",
        "Bearer ",
        "bearer {token}",
        "Basic {token}",
        "Bearer {token}x",
        "Bearer x{token}",
        "Token {token}",
        "Bearer {half}",
    ],
)
def test_a_missing_or_wrong_token_is_401_and_nothing_is_engaged(server: Server, header: str | None) -> None:
    headers = {"Content-Type": "application/json"}
    if header is not None:
        headers["Authorization"] = header.format(token=server.token, half=server.token[:20])
    status, payload, response_headers = _post(server.port, b'{"reason": "x"}', headers)
    assert status == 401
    assert response_headers.get("WWW-Authenticate", "").startswith("Bearer")
    assert server.token not in json.dumps(payload)
    assert server.calls == []


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"", "JSON object"),
        (b"not json", "JSON object"),
        (b"[]", "JSON object"),
        (b"{}", "reason"),
        (b'{"reason": "   "}', "reason"),
        (b'{"reason": 3}', "reason"),
        (b'{"reason": "x", "operator": "bad name!"}', "operator"),
        (b'{"reason": "x", "flatten": "yes"}', "flatten"),
        (b'{"reason": "x", "actor": "watchdog"}', "unknown field 'actor'"),
    ],
)
def test_a_bad_body_is_400_naming_the_problem(server: Server, body: bytes, message: str) -> None:
    status, payload, _ = _post(server.port, body, _auth(server.token))
    assert status == 400
    assert message in payload["error"]
    assert server.calls == []


def test_an_oversized_body_is_refused(server: Server) -> None:
    status, _, _ = _post(server.port, b'{"reason": "' + b"x" * 20_000 + b'"}', _auth(server.token))
    assert status == 413
    assert server.calls == []


def test_without_a_token_configured_the_endpoint_does_not_exist() -> None:
    for port in _serve(None):
        status, _, _ = _post(port, b'{"reason": "x"}', _auth("anything-at-all-long-enough-000"))
        assert status == 404
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
        connection.request("GET", "/health")
        assert connection.getresponse().status == 200


def test_the_endpoint_never_shows_its_token() -> None:
    token = secrets.token_urlsafe(32)
    assert token not in repr(KillEndpoint(token=token, engage=lambda **_: None))


def test_bearer_check_and_body_parser_directly() -> None:
    token = secrets.token_urlsafe(32)
    assert bearer_matches(f"Bearer {token}", token)
    assert bearer_matches(f"  Bearer {token}  ", token)
    assert not bearer_matches(f"Bearer {token[:-1]}", token)
    assert not bearer_matches(None, token)
    assert parse_engage_body(b'{"reason": "  spaced  "}') == ("spaced", None, None)
