"""The metrics and health HTTP server: /metrics (Prometheus), /health (JSON), and POST /kill/engage.

POST /kill/engage engages the kill switch for a caller holding the bearer token
(``OMNI_KILL_HTTP_TOKEN``; unset, the endpoint does not exist: 404). The token
is compared in constant time; a wrong or missing one is 401. The JSON body
needs a non-empty ``reason``; ``operator`` (a name for the audit log) and
``flatten`` (bool) are optional. The answer is the engage result (200 when it
is durable, 500 when the database write failed).
"""

from __future__ import annotations

import hmac
import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import structlog
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

_log = structlog.get_logger("omni.http")
MAX_BODY_BYTES = 16_384
_OPERATOR = re.compile(r"^[A-Za-z0-9_.@\-]{1,60}$")


@dataclass(frozen=True)
class KillEndpoint:
    """The engage endpoint: the bearer token, and ``engage(actor=, reason=, flatten=)`` returning an EngageResult."""

    token: str
    engage: Callable[..., Any]

    def __repr__(self) -> str:  # the token never shows in a log or a traceback
        return "KillEndpoint(token=****)"


def parse_engage_body(raw: bytes) -> tuple[str, str | None, bool | None]:
    """(reason, operator, flatten) from a JSON body; ValueError naming the problem."""
    try:
        body = json.loads(raw.decode("utf-8") or "null")
    except (UnicodeDecodeError, ValueError):
        raise ValueError("the body must be a JSON object") from None
    if not isinstance(body, dict):
        raise ValueError('the body must be a JSON object such as {"reason": "..."}')
    unknown = sorted(set(body) - {"reason", "operator", "flatten"})
    if unknown:
        raise ValueError(f"unknown field {unknown[0]!r} (reason, operator, flatten)")
    reason = body.get("reason")
    if not isinstance(reason, str) or not reason.strip():
        raise ValueError("'reason' is required: a non-empty string saying why")
    operator = body.get("operator")
    if operator is not None and (not isinstance(operator, str) or not _OPERATOR.match(operator)):
        raise ValueError("'operator' must be 1-60 of letters, digits, '_', '.', '@', '-'")
    flatten = body.get("flatten")
    if flatten is not None and not isinstance(flatten, bool):
        raise ValueError("'flatten' must be true or false")
    return reason.strip()[:2000], operator, flatten


def bearer_matches(header: str | None, token: str) -> bool:
    """Constant-time check of an ``Authorization: Bearer <token>`` header."""
    expected = f"Bearer {token}".encode()
    return hmac.compare_digest((header or "").strip().encode("utf-8", "replace"), expected)


def _default_kill_endpoint() -> KillEndpoint | None:
    from omni_tasks.cli.kill import http_kill_endpoint

    endpoint: KillEndpoint | None = http_kill_endpoint()
    return endpoint


def make_server(
    host: str,
    port: int,
    *,
    registry: CollectorRegistry,
    health: Callable[[], tuple[int, dict[str, Any]]],
    kill: KillEndpoint | None | bool = True,
) -> ThreadingHTTPServer:
    """``kill``: the engage endpoint; True builds it from this process's settings (off without a token), False or None: off."""
    endpoint: KillEndpoint | None = _default_kill_endpoint() if kill is True else (kill or None)

    class Handler(BaseHTTPRequestHandler):
        server_version = "omni-tasks"
        sys_version = ""

        def _send(self, code: int, body: bytes, content_type: str) -> None:
            self.send_response(code)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Cache-Control", "no-store")
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self) -> None:  # noqa: N802 - http.server's naming
            path = self.path.split("?", 1)[0]
            if path == "/metrics":
                self._send(200, generate_latest(registry), CONTENT_TYPE_LATEST)
            elif path in {"/health", "/healthz"}:
                code, payload = health()
                self._send(code, json.dumps(payload, indent=2).encode(), "application/json")
            elif path == "/":
                self._send(200, b'{"endpoints": ["/health", "/metrics"]}', "application/json")
            else:
                self._send(404, b'{"error": "not found"}', "application/json")

        def do_POST(self) -> None:  # noqa: N802 - http.server's naming
            path = self.path.split("?", 1)[0]
            if path != "/kill/engage" or endpoint is None:
                self._send(404, b'{"error": "not found"}', "application/json")
                return
            if not bearer_matches(self.headers.get("Authorization"), endpoint.token):
                _log.warning("kill switch engage refused: bad or missing bearer token", client=self.client_address[0])
                self.send_response(401)
                body = b'{"error": "a valid bearer token is required"}'
                self.send_header("WWW-Authenticate", 'Bearer realm="omni-kill"')
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)
                return
            try:
                length = int(self.headers.get("Content-Length") or 0)
            except ValueError:
                length = -1
            if length < 0 or length > MAX_BODY_BYTES:
                self._send(
                    413 if length > MAX_BODY_BYTES else 400, b'{"error": "a JSON body of at most 16 KiB is required"}', "application/json"
                )
                return
            try:
                reason, operator, flatten = parse_engage_body(self.rfile.read(length))
            except ValueError as exc:
                self._send(400, json.dumps({"error": str(exc)}).encode(), "application/json")
                return
            actor = f"http:{operator or self.client_address[0]}"
            try:
                result = endpoint.engage(actor=actor, reason=reason, flatten=flatten)
            except Exception as exc:  # noqa: BLE001 - the caller gets the error; the switch may still be engaged in Redis
                _log.exception("kill switch engage over http failed")
                self._send(500, json.dumps({"error": f"{type(exc).__name__}: {exc}"}).encode(), "application/json")
                return
            payload = result.to_dict() if hasattr(result, "to_dict") else dict(result)
            self._send(200 if payload.get("durable") else 500, json.dumps(payload, indent=2, default=str).encode(), "application/json")

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - http.server's signature
            return  # scrapes every few seconds would drown the logs

    server = ThreadingHTTPServer((host, port), Handler)
    server.daemon_threads = True
    return server
