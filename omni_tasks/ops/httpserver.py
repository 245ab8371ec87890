"""The metrics and health HTTP server: /metrics (Prometheus), /health (JSON), and POST /kill/engage.

POST /kill/engage engages the kill switch for a caller holding the bearer token
(``OMNI_KILL_HTTP_TOKEN``; unset, the endpoint does not exist: 404). The token
is compared in constant time; a wrong or missing one is 401. The JSON body
needs a non-empty ``reason``; ``operator`` (a name for the audit log) and
``flatten`` (bool) are optional. The answer is the engage result (200 when it
is durable, 500 when the database write failed).

Rough clients cannot take the server down (:class:`BoundedHTTPServer`): one
thread reads every connection's request without blocking, each request must
arrive whole within ``request_timeout_s`` (a client that sends half a request
line and holds, or drips a byte a second, is dropped then), at most
``max_connections`` connections wait for their request at once, and complete
requests are answered by a fixed pool of ``workers`` threads. So 80 slow
connections hold no thread, and /health still answers at once.
"""

from __future__ import annotations

import hmac
import io
import json
import queue
import re
import selectors
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, HTTPServer
from typing import Any, Literal, Self

import structlog
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from omni_tasks.core import operators

_log = structlog.get_logger("omni.http")
MAX_BODY_BYTES = 16_384
#: The request line and headers together (http.server's own line limit is 64 KiB; ours is smaller: nobody needs more).
MAX_HEAD_BYTES = 16_384
_HEAD_END = re.compile(rb"\r?\n\r?\n")
_CONTENT_LENGTH = re.compile(rb"^content-length:[ \t]*([0-9]{1,10})[ \t]*\r?$", re.IGNORECASE | re.MULTILINE)


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
    if operator is not None and not operators.is_operator_name(operator):
        raise ValueError(f"'operator' must be {operators.OPERATOR_RULE}")
    flatten = body.get("flatten")
    if flatten is not None and not isinstance(flatten, bool):
        raise ValueError("'flatten' must be true or false")
    return reason.strip()[:2000], operator, flatten


def bearer_matches(header: str | None, token: str) -> bool:
    """Constant-time check of an ``Authorization: Bearer <token>`` header."""
    expected = f"Bearer {token}".encode()
    return hmac.compare_digest((header or "").strip().encode("utf-8", "replace"), expected)


@dataclass
class _Pending:
    """A connection whose request has not fully arrived: where it came from, its deadline, the bytes so far."""

    address: Any
    deadline: float
    data: bytearray = field(default_factory=bytearray)


class _SocketWriter(io.BufferedIOBase):
    """``wfile``: writes go straight to the socket (the socket's timeout bounds a client that does not read)."""

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        self._sock.sendall(data)
        with memoryview(data) as view:
            return view.nbytes


class PrebufferedHandler(BaseHTTPRequestHandler):
    """A handler whose request (line, headers, body) the server has already read; it only writes to the socket."""

    def setup(self) -> None:
        self.connection, prebuffer = self.request
        self.connection.setblocking(True)
        self.connection.settimeout(self.server.write_timeout_s)  # type: ignore[attr-defined]  # a BoundedHTTPServer
        self.rfile = io.BytesIO(prebuffer)
        self.wfile = _SocketWriter(self.connection)


class BoundedHTTPServer(HTTPServer):
    """An HTTP server that slow or silent clients cannot exhaust (see the module docstring).

    ``stats`` counts connections: accepted, answered, dropped for the read timeout,
    refused because ``max_connections`` were already waiting, refused with 503
    because every worker was busy and the queue full, dropped as too large.
    """

    #: The listen backlog: socketserver's 5 would leave a burst of connections waiting in the kernel, unaccepted.
    request_queue_size = 256

    def __init__(
        self,
        address: tuple[str, int],
        handler: type[PrebufferedHandler],
        *,
        request_timeout_s: float = 10.0,
        workers: int = 8,
        max_connections: int = 256,
        max_queued: int = 64,
        write_timeout_s: float = 30.0,
    ) -> None:
        super().__init__(address, handler)
        self.request_timeout_s = request_timeout_s
        self.write_timeout_s = write_timeout_s
        self.max_connections = max_connections
        self.stats = {"accepted": 0, "answered": 0, "timed_out": 0, "refused_full": 0, "refused_busy": 0, "too_large": 0}
        self._pending: dict[socket.socket, _Pending] = {}
        self._jobs: queue.Queue[tuple[socket.socket, Any, bytes] | None] = queue.Queue(maxsize=max_queued)
        self._stop = threading.Event()
        self._stopped = threading.Event()
        self._stopped.set()
        self._workers = [threading.Thread(target=self._work, name=f"omni-http-{i}", daemon=True) for i in range(workers)]
        for thread in self._workers:
            thread.start()

    # ---- the reading loop (one thread: the caller of serve_forever) -----------------------------
    def serve_forever(self, poll_interval: float = 0.5) -> None:
        self._stop.clear()
        self._stopped.clear()
        self.socket.setblocking(False)
        selector = selectors.DefaultSelector()
        selector.register(self.socket, selectors.EVENT_READ, None)
        try:
            while not self._stop.is_set():
                for key, _ in selector.select(timeout=min(poll_interval, 0.25)):
                    if key.data is None:
                        self._accept(selector)
                    else:
                        self._read(selector, key.fileobj, key.data)  # type: ignore[arg-type]  # our sockets
                self._expire(selector, time.monotonic())
        finally:
            for sock in list(self._pending):
                self._drop(selector, sock)
            selector.close()
            self._stopped.set()

    def shutdown(self) -> None:
        """Stop serve_forever (from another thread) and wait until it has returned."""
        self._stop.set()
        self._stopped.wait()

    def server_close(self) -> None:
        super().server_close()
        for _ in self._workers:
            try:
                self._jobs.put_nowait(None)
            except queue.Full:
                break

    def _accept(self, selector: selectors.BaseSelector) -> None:
        try:
            sock, address = self.socket.accept()
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            return
        self.stats["accepted"] += 1
        if len(self._pending) >= self.max_connections:
            self.stats["refused_full"] += 1
            _close(sock)
            return
        sock.setblocking(False)
        self._pending[sock] = _Pending(address, time.monotonic() + self.request_timeout_s)
        selector.register(sock, selectors.EVENT_READ, self._pending[sock])

    def _read(self, selector: selectors.BaseSelector, sock: socket.socket, pending: _Pending) -> None:
        try:
            chunk = sock.recv(65_536)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            chunk = b""
        if not chunk:
            self._drop(selector, sock)
            return
        pending.data += chunk
        head_end = _HEAD_END.search(pending.data)
        if head_end is None:
            if len(pending.data) > MAX_HEAD_BYTES:
                self.stats["too_large"] += 1
                self._reply_and_drop(selector, sock, 431, "request header fields too large")
            return
        if head_end.start() > MAX_HEAD_BYTES:
            self.stats["too_large"] += 1
            self._reply_and_drop(selector, sock, 431, "request header fields too large")
            return
        length = _CONTENT_LENGTH.search(bytes(pending.data[: head_end.start()]))
        wanted = int(length.group(1)) if length else 0
        # A body larger than any endpoint takes is not waited for: the handler answers 413 without reading it.
        if wanted <= MAX_BODY_BYTES and len(pending.data) - head_end.end() < wanted:
            return
        selector.unregister(sock)
        del self._pending[sock]
        try:
            self._jobs.put_nowait((sock, pending.address, bytes(pending.data)))
        except queue.Full:
            self.stats["refused_busy"] += 1
            _reply(sock, 503, "busy: try again")
            _close(sock)

    def _expire(self, selector: selectors.BaseSelector, now: float) -> None:
        for sock, pending in list(self._pending.items()):
            if pending.deadline <= now:
                self.stats["timed_out"] += 1
                self._reply_and_drop(selector, sock, 408, "the request did not arrive in time")

    def _reply_and_drop(self, selector: selectors.BaseSelector, sock: socket.socket, code: int, message: str) -> None:
        _reply(sock, code, message)
        self._drop(selector, sock)

    def _drop(self, selector: selectors.BaseSelector, sock: socket.socket) -> None:
        self._pending.pop(sock, None)
        try:
            selector.unregister(sock)
        except (KeyError, ValueError):
            pass
        _close(sock)

    # ---- the workers -----------------------------------------------------------------------------
    def _work(self: Self) -> None:
        while True:
            job = self._jobs.get()
            if job is None:
                return
            sock, address, data = job
            try:
                self.RequestHandlerClass((sock, data), address, self)
                self.stats["answered"] += 1
            except (ConnectionError, TimeoutError):
                pass  # the client went away or stopped reading: nothing to answer
            except Exception:  # noqa: BLE001 - one broken request must not stop a worker
                _log.exception("http request failed", client=str(address[0]) if address else "?")
            finally:
                _close(sock)


def _reply(sock: socket.socket, code: int, message: str) -> None:
    """A last word to a connection being dropped, if its socket takes it at once (never blocks)."""
    body = json.dumps({"error": message}).encode()
    head = f"HTTP/1.0 {code} {message}\r\nContent-Type: application/json\r\nContent-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    try:
        sock.setblocking(False)
        sock.send(head.encode() + body)
    except OSError:
        pass


def _close(sock: socket.socket) -> None:
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    sock.close()


def make_server(
    host: str,
    port: int,
    *,
    registry: CollectorRegistry | None = None,
    health: Callable[[], tuple[int, dict[str, Any]]],
    metrics_body: Callable[[], bytes] | None = None,
    kill: KillEndpoint | Literal[False] | None = None,
    request_timeout_s: float = 10.0,
    workers: int = 8,
    max_connections: int = 256,
) -> BoundedHTTPServer:
    """``kill``: the engage endpoint (:func:`omni_tasks.ops.engaging.http_kill_endpoint` builds it from settings); False or None: off.

    ``request_timeout_s``: a request must arrive whole within this many seconds of connecting;
    ``workers``: threads answering requests; ``max_connections``: connections waiting for their request.
    /metrics serves ``metrics_body()`` (e.g. :meth:`omni_tasks.ops.exposition.Exposition.render`), else ``registry`` rendered.
    """
    if metrics_body is None:
        if registry is None:
            raise ValueError("make_server needs a registry or a metrics_body")
        collected = registry

        def metrics_body() -> bytes:
            return generate_latest(collected)

    render: Callable[[], bytes] = metrics_body  # bound here: the handler class below cannot see the narrowing
    endpoint: KillEndpoint | None = kill or None

    class Handler(PrebufferedHandler):
        server_version = "omni-tasks"
        sys_version = ""

        def _send(self, code: int, body: bytes, content_type: str) -> None:
            self.send_response(code)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Cache-Control", "no-store")
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self) -> None:  # http.server's naming
            path = self.path.split("?", 1)[0]
            if path == "/metrics":
                self._send(200, render(), CONTENT_TYPE_LATEST)
            elif path in {"/health", "/healthz"}:
                code, payload = health()
                self._send(code, json.dumps(payload, indent=2).encode(), "application/json")
            elif path == "/":
                self._send(200, b'{"endpoints": ["/health", "/metrics"]}', "application/json")
            else:
                self._send(404, b'{"error": "not found"}', "application/json")

        def do_POST(self) -> None:  # http.server's naming
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
            actor = operators.http_actor(operator, self.client_address[0])
            try:
                result = endpoint.engage(actor=actor, reason=reason, flatten=flatten)
            except Exception as exc:  # noqa: BLE001 - the caller gets the error; the switch may still be engaged in Redis
                _log.exception("kill switch engage over http failed")
                self._send(500, json.dumps({"error": f"{type(exc).__name__}: {exc}"}).encode(), "application/json")
                return
            payload = result.to_dict() if hasattr(result, "to_dict") else dict(result)
            self._send(200 if payload.get("durable") else 500, json.dumps(payload, indent=2, default=str).encode(), "application/json")

        def log_message(self, format: str, *args: Any) -> None:  # http.server's signature
            return  # scrapes every few seconds would drown the logs

    return BoundedHTTPServer(
        (host, port), Handler, request_timeout_s=request_timeout_s, workers=workers, max_connections=max_connections
    )
