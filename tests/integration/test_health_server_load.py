"""The health server under rough clients: slow connections hold no thread, /health and /metrics still answer fast.

Real sockets on loopback against the real server (omni_tasks.ops.httpserver) and the
real /metrics registry over a folder of metric files like the one worker
children leave behind.
"""

from __future__ import annotations

import socket
import statistics
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from bench.metrics_scrape import make_files
from omni_tasks.ops.exposition import build_exposition
from omni_tasks.ops.httpserver import BoundedHTTPServer, make_server

pytestmark = pytest.mark.slow
WORKERS = 4
READ_TIMEOUT_S = 2.0


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[BoundedHTTPServer, int, int]]:
    files = make_files(tmp_path / "metrics", 120)
    exposition = build_exposition(lambda: {"queues": {"scans": 0}, "workers": [], "breakers": []}, tmp_path / "metrics")
    httpd = make_server(
        "127.0.0.1", 0, metrics_body=exposition.render, health=lambda: (200, {"status": "ok"}), kill=False,
        request_timeout_s=READ_TIMEOUT_S, workers=WORKERS, max_connections=200,
    )  # fmt: skip
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield httpd, httpd.server_address[1], files
    finally:
        httpd.shutdown()
        httpd.server_close()


def _get(port: int, path: str) -> tuple[int, bytes, float]:
    started = time.perf_counter()
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as response:  # loopback
        body = response.read()
        return response.status, body, time.perf_counter() - started


def _hold(port: int, count: int, partial: bytes) -> list[socket.socket]:
    held = []
    for _ in range(count):
        sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        sock.sendall(partial)
        held.append(sock)
    return held


def _dropped(sock: socket.socket, seen: set[int]) -> bool:
    """The server closed it (with a 408 first, or not); ``seen`` remembers those already found closed."""
    if sock.fileno() in seen:
        return True
    sock.settimeout(0.02)
    try:
        data = sock.recv(4096)
    except TimeoutError:
        return False
    except OSError:
        data = b""
    if data == b"" or data.startswith(b"HTTP/1.0 408"):
        seen.add(sock.fileno())
        return True
    return False


def test_eighty_slow_connections_hold_no_thread_and_health_still_answers_at_once(served: tuple[BoundedHTTPServer, int, int]) -> None:
    httpd, port, _ = served
    assert _get(port, "/health")[0] == 200
    threads_before = threading.active_count()
    started = time.monotonic()
    held = _hold(port, 80, b"GET /hea")
    dripping = _hold(port, 5, b"G")
    health = []
    for _ in range(20):
        status, _, took = _get(port, "/health")
        assert status == 200
        health.append(took)
        for sock in dripping:  # a byte now and then: still must arrive whole within the read timeout
            sock.sendall(b"E")
    threads_during = threading.active_count()
    p50_ms = statistics.median(health) * 1000
    print(f"/health p50 {p50_ms:.1f} ms, max {max(health) * 1000:.1f} ms over {len(health)} requests with 85 slow connections held; "
          f"threads {threads_before} before, {threads_during} during (workers {WORKERS})")  # fmt: skip
    assert p50_ms < 100
    assert threads_during <= threads_before + WORKERS
    wait_s = READ_TIMEOUT_S + 3.0
    deadline = started + wait_s
    seen: set[int] = set()
    while time.monotonic() < deadline and sum(_dropped(s, seen) for s in held + dripping) < len(held) + len(dripping):
        time.sleep(0.1)
    dropped = len(seen)
    print(f"slow connections dropped after the {READ_TIMEOUT_S:g} s read timeout: {dropped} of {len(held) + len(dripping)}")
    assert dropped == len(held) + len(dripping)
    assert httpd.stats["timed_out"] >= len(held) + len(dripping)
    for sock in held + dripping:
        sock.close()


def test_metrics_p50_under_load_with_many_metric_files(served: tuple[BoundedHTTPServer, int, int]) -> None:
    _, port, files = served
    status, body, _ = _get(port, "/metrics")  # the first merge reads every file once
    assert status == 200
    assert b"celery_task_succeeded_total" in body
    held = _hold(port, 40, b"GET /metr")
    timings: list[float] = []
    lock = threading.Lock()

    def scrape(count: int) -> None:
        for _ in range(count):
            got: Any = _get(port, "/metrics")
            with lock:
                timings.append(got[2])

    scrapers = [threading.Thread(target=scrape, args=(15,)) for _ in range(4)]
    for t in scrapers:
        t.start()
    for t in scrapers:
        t.join()
    for sock in held:
        sock.close()
    p50_ms = statistics.median(timings) * 1000
    print(f"/metrics p50 {p50_ms:.1f} ms over {len(timings)} scrapes (4 concurrent scrapers, 40 slow clients, {files} metric files)")
    assert p50_ms < 100
