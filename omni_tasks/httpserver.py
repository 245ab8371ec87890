"""The metrics and health HTTP server: /metrics (Prometheus) and /health (JSON)."""

from __future__ import annotations

import json
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest


def make_server(
    host: str,
    port: int,
    *,
    registry: CollectorRegistry,
    health: Callable[[], tuple[int, dict[str, Any]]],
) -> ThreadingHTTPServer:
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

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - http.server's signature
            return  # scrapes every few seconds would drown the logs

    server = ThreadingHTTPServer((host, port), Handler)
    server.daemon_threads = True
    return server
