"""/metrics under load: p50 scrape time with many metric files present, while other scrapes and slow clients run.

The naive way is what the server did before: every scrape merges every process's
metric files (prometheus-client's ``MultiProcessCollector.merge``, every key's JSON
parsed again). The server now keeps the merged sum between scrapes (an exited
process's file is read once more, then never) and concurrent scrapes within
``OMNI_METRICS_SCRAPE_CACHE_S`` share one merge. Both run here with the same live
gauges, files, load and machine.

    python -m bench.metrics_scrape [--files 300] [--scrapers 8] [--slow 40] [--scrapes 200] [--redis-url URL]
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

_WRITER = r"""
import random
from omni_tasks.ops import prometheus as m
names = [f"omni.bench.task_{i}" for i in range(30)]
hosts = ["worker-scans@host"]
for name in names:
    for host in hosts:
        labels = (name, host, "scans")
        for counter in (m.TASK_REVOKED, m.TASK_RECEIVED, m.TASK_STARTED, m.TASK_SUCCEEDED, m.TASK_FAILED, m.TASK_RETRIED):
            counter.labels(*labels).inc(random.randint(1, 50))
        m.TASK_RUNTIME.labels(*labels).observe(random.random())
        m.TASK_QUEUE_WAIT.labels(*labels).observe(random.random())
for rule in ("risk_breach", "stale_stream", "error_storm"):
    m.WATCHDOG_FINDINGS.labels(rule).inc()
"""


def make_files(root: Path, count: int) -> int:
    """One worker child's metric files, copied as ``count`` exited processes of this host. Returns the file count.

    Worker children recycle after ``max_tasks_per_child`` tasks and leave their files: most files belong to exited processes.
    """
    host = root / socket.gethostname()
    seed = root / "seed"
    seed.mkdir(parents=True)
    host.mkdir(parents=True)
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(seed)}
    subprocess.run([sys.executable, "-c", _WRITER], env=env, check=True)  # our own interpreter and script
    files = list(seed.glob("*.db"))
    pid_max = int(Path("/proc/sys/kernel/pid_max").read_text()) if Path("/proc/sys/kernel/pid_max").exists() else 4_194_304
    for pid in range(pid_max - count - 1, pid_max - 1):  # PIDs near the top: not running now
        for f in files:
            kind = f.name.split("_", 1)[0]
            shutil.copyfile(f, host / f"{kind}_{pid}.db")
    shutil.rmtree(seed)
    return len(list(host.glob("*.db")))


def _snapshot_source(redis_url: str | None) -> Any:
    if redis_url is None:
        return lambda: {"queues": {"scans": 0}, "workers": [], "breakers": []}
    from omni_tasks.core.redis_client import redis_from_url
    from omni_tasks.pipeline import observe
    from omni_tasks.pipeline.queues import ALL_QUEUES

    client = redis_from_url(redis_url)
    queues = [q.value for q in ALL_QUEUES]
    return lambda: observe.live_snapshot(client, redis_url, queues, 10.0)


def run_load(port: int, *, scrapers: int, slow: int, scrapes: int) -> tuple[list[float], int]:
    """``scrapers`` threads scrape until ``scrapes`` timed scrapes are done, while ``slow`` clients hold half a request line."""
    held: list[socket.socket] = []
    for _ in range(slow):
        sock = socket.create_connection(("127.0.0.1", port), timeout=5)
        sock.sendall(b"GET /metr")
        held.append(sock)
    timings: list[float] = []
    lock = threading.Lock()
    failures = [0]

    def scrape() -> None:
        while True:
            with lock:
                if len(timings) >= scrapes:
                    return
            started = time.perf_counter()
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=30) as response:  # loopback
                    response.read()
            except OSError:
                with lock:
                    failures[0] += 1
                continue
            with lock:
                timings.append(time.perf_counter() - started)

    threads = [threading.Thread(target=scrape) for _ in range(scrapers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for sock in held:
        sock.close()
    return timings, failures[0]


class NaiveFiles:
    """The earlier collector: every file merged on every scrape."""

    def __init__(self, root: Path) -> None:
        self._root = root

    def collect(self) -> Any:
        from prometheus_client.multiprocess import MultiProcessCollector

        return iter(MultiProcessCollector.merge(sorted(str(p) for p in self._root.glob("*/*.db")), accumulate=True))


def naive_registry(snapshot: Any, root: Path) -> Any:
    from prometheus_client import CollectorRegistry

    from omni_tasks.ops.collectors import LiveCollector

    registry = CollectorRegistry()
    registry.register(NaiveFiles(root))
    registry.register(LiveCollector(snapshot))
    return registry


def serve(source: Any) -> tuple[Any, int]:
    from omni_tasks.ops.exposition import Exposition
    from omni_tasks.ops.httpserver import make_server

    health = lambda: (200, {"status": "ok"})  # noqa: E731 - a constant answer
    if isinstance(source, Exposition):
        httpd = make_server("127.0.0.1", 0, metrics_body=source.render, health=health, kill=False)
    else:
        httpd = make_server("127.0.0.1", 0, registry=source, health=health, kill=False)
    threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    return httpd, httpd.server_address[1]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=300, help="processes whose metric files are present")
    parser.add_argument("--scrapers", type=int, default=8)
    parser.add_argument("--slow", type=int, default=40, help="slow clients holding half a request line")
    parser.add_argument("--scrapes", type=int, default=200)
    parser.add_argument("--redis-url", default=None, help="read the live gauges from this Redis (default: a static snapshot)")
    args = parser.parse_args(argv)
    from omni_tasks.ops.exposition import build_exposition

    with tempfile.TemporaryDirectory(prefix="omni-bench-metrics-") as tmp:
        root = Path(tmp)
        files = make_files(root, args.files)
        snapshot = _snapshot_source(args.redis_url)
        results = {}
        for label, registry in (
            ("naive (every file merged on every scrape)", naive_registry(snapshot, root)),
            ("incremental merge, rendered once per 1 s", build_exposition(snapshot, root, files_max_age_s=1.0)),
        ):
            httpd, port = serve(registry)
            try:
                timings, failed = run_load(port, scrapers=args.scrapers, slow=args.slow, scrapes=args.scrapes)
            finally:
                httpd.shutdown()
                httpd.server_close()
            p50 = statistics.median(timings) * 1000
            p95 = statistics.quantiles(timings, n=20)[-1] * 1000
            results[label] = p50
            print(
                f"{label}: /metrics p50 {p50:.1f} ms, p95 {p95:.1f} ms over {len(timings)} scrapes "
                f"({args.scrapers} scrapers, {args.slow} slow clients, {files} metric files, {failed} failed)"
            )
        naive, cached = results.values()
        print(f"p50 ratio naive / cached: {naive / cached:.1f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
