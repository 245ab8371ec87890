"""A local stand-in for the providers' HTTP APIs, and the recorded payloads it serves.

``standin`` is a real HTTP server (http.server in a thread, 127.0.0.1, port 0)
so the real client libraries (alpaca-py, yfinance, alpha_vantage) make real
requests to it; a test routes path prefixes to canned replies and then reads
what the server was asked. Payloads are in tests/fixtures/<provider>/.
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qsl, urlsplit

import pytest

FIXTURES = Path(__file__).resolve().parents[3] / "fixtures"


def fixture_bytes(provider: str, name: str) -> bytes:
    """The recorded payload tests/fixtures/<provider>/<name>."""
    return (FIXTURES / provider / name).read_bytes()


@dataclass(frozen=True)
class Seen:
    """One request the stand-in received."""

    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]


@dataclass(frozen=True)
class Reply:
    status: int
    body: bytes
    headers: dict[str, str] = field(default_factory=dict)
    content_type: str = "application/json"


Handler = Callable[[Seen], Reply]


class StandIn:
    """Routes path prefixes to replies: a Reply, a list of Replies served in turn (the last repeats), or a function."""

    def __init__(self) -> None:
        self.url = ""
        self.seen: list[Seen] = []
        self._routes: dict[str, Handler] = {}
        self._lock = threading.Lock()

    def route(self, prefix: str, reply: Reply | list[Reply] | Handler) -> None:
        if isinstance(reply, Reply):
            fixed = reply
            self._routes[prefix] = lambda _seen: fixed
        elif isinstance(reply, list):
            queue = list(reply)

            def next_reply(_seen: Seen) -> Reply:
                with self._lock:
                    return queue.pop(0) if len(queue) > 1 else queue[0]

            self._routes[prefix] = next_reply
        else:
            self._routes[prefix] = reply

    def requests_to(self, prefix: str) -> list[Seen]:
        return [seen for seen in self.seen if seen.path.startswith(prefix)]

    def answer(self, seen: Seen) -> Reply:
        with self._lock:
            self.seen.append(seen)
            matches = [prefix for prefix in self._routes if seen.path.startswith(prefix)]
        if not matches:
            return Reply(404, b"not found", content_type="text/plain")
        return self._routes[max(matches, key=len)](seen)


def _handler_class(standin: StandIn) -> type[BaseHTTPRequestHandler]:
    class _Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def _serve(self) -> None:
            parts = urlsplit(self.path)
            seen = Seen(
                method=self.command,
                path=parts.path,
                query=dict(parse_qsl(parts.query, keep_blank_values=True)),
                headers={key: value for key, value in self.headers.items()},
            )
            reply = standin.answer(seen)
            try:
                self.send_response(reply.status)
                self.send_header("Content-Type", reply.content_type)
                self.send_header("Content-Length", str(len(reply.body)))
                for key, value in reply.headers.items():
                    self.send_header(key, value)
                self.end_headers()
                self.wfile.write(reply.body)
            except (BrokenPipeError, ConnectionResetError):
                self.close_connection = True  # the client gave up (a timeout test); nothing to answer

        do_GET = _serve  # http.server's naming
        do_POST = _serve

        def log_message(self, format: str, *args: object) -> None:  # http.server's signature
            pass

    return _Handler


@pytest.fixture
def standin() -> Iterator[StandIn]:
    """A provider stand-in on 127.0.0.1 at a free port, for one test."""
    with running_standin() as stand:
        yield stand


@contextmanager
def running_standin() -> Iterator[StandIn]:
    """A provider stand-in served until the block ends (integration tests build their fixture on it)."""
    stand = StandIn()
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler_class(stand))
    host, port = server.server_address[:2]
    stand.url = f"http://{host}:{port}"
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.02}, name="provider-standin", daemon=True)
    thread.start()
    try:
        yield stand
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


@pytest.fixture
def closed_port_url() -> str:
    """A URL on 127.0.0.1 where nothing listens (connection refused)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}"
