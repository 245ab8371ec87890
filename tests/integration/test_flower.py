"""Flower as operators use it (`omni flower`), beside real workers on real Redis and PostgreSQL.

- a scan run that fails (no bars for its symbols) shows as FAILURE in Flower's
  API, and in `omni status` "Recent failures";
- the watchdog's tick runs but never enters the task list (no task events);
  a ping on the same worker does;
- `/api/workers` (no ?refresh) lists a worker that started after Flower;
- the task list labels its times (UTC), and Flower's /metrics has only Flower's
  own series while ours has none of Flower's.
"""

from __future__ import annotations

import base64
import json
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import redis
from prometheus_client import generate_latest

from omni_tasks.core.keys import WATCHDOG_LAST_TICK_KEY
from omni_tasks.ops.exposition import build_registry
from omni_tasks.storage import migrations
from omni_tasks.storage.engine import make_engine
from tests.conftest import REPO_ROOT, OmniProcess, service_env, wait_for, wait_for_worker

pytestmark = [pytest.mark.services, pytest.mark.slow]
PASSWORD = "flower-test-" + "x" * 8


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Flower:
    def __init__(self, port: int) -> None:
        self.base = f"http://127.0.0.1:{port}"
        self._auth = "Basic " + base64.b64encode(f"operator:{PASSWORD}".encode()).decode()

    def get(self, path: str) -> tuple[int, bytes]:
        request = urllib.request.Request(self.base + path, headers={"Authorization": self._auth})  # noqa: S310 - loopback
        try:
            with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310 - loopback
                return response.status, response.read()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read()
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            return 0, b""

    def tasks(self) -> dict[str, Any]:
        code, body = self.get("/api/tasks")
        return json.loads(body) if code == 200 else {}


@pytest.fixture
def stack(
    redis_url: str, redis_client: redis.Redis, pg_database: Callable[[], str], tmp_path: Path, omni_processes: list[OmniProcess]
) -> tuple[dict[str, str], Flower]:
    url = pg_database()
    engine = make_engine(url)
    migrations.upgrade(engine)
    engine.dispose()
    port = _free_port()
    env = service_env(
        redis_url=redis_url,
        database_url=url,
        data_dir=tmp_path / "data",
        OMNI_FLOWER_PORT=str(port),
        OMNI_FLOWER_PASSWORD=PASSWORD,
        OMNI_PROVIDERS_ORDER="synthetic",
    )
    flower = OmniProcess(["flower"], env, tmp_path / "logs" / "flower.log").start()
    omni_processes.append(flower)
    ui = Flower(port)

    def flower_up() -> bool:
        if flower.process is not None and flower.process.poll() is not None:
            pytest.fail(f"flower exited:\n{flower.log_text()[-3000:]}")
        return ui.get("/api/workers")[0] == 200

    wait_for(flower_up, 60, interval_s=0.25, message="Flower answering")
    # The workers start after Flower: its one inspection at start-up cannot have seen them.
    for kind in ("scans", "watchdog"):
        proc = OmniProcess(["worker", kind, "--concurrency", "1"], env, tmp_path / "logs" / f"worker-{kind}.log").start()
        omni_processes.append(proc)
        wait_for_worker(redis_client, kind, proc)
    return env, ui


def _run(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(  # fixed argv
        [sys.executable, *args], env=env, cwd=REPO_ROOT, capture_output=True, text=True, timeout=120, check=False
    )


def test_flower_shows_a_failed_scan_as_failed_and_work_not_heartbeats(
    stack: tuple[dict[str, str], Flower], redis_client: redis.Redis
) -> None:
    env, ui = stack
    # A scan of symbols with no stored bars: nothing can be scored, the run fails.
    scan = _run(env, "-m", "omni_tasks", "scan", "--symbols", "AAPL,MSFT", "--wait", "--timeout", "60", "--json")
    assert scan.returncode == 1, scan.stdout + scan.stderr
    run_id = json.loads(scan.stdout[scan.stdout.find("{") :])["id"]

    def merge_failed() -> dict[str, Any] | None:
        found = [t for t in ui.tasks().values() if t.get("name") == "omni.scans.merge" and t.get("state") == "FAILURE"]
        return found[0] if found else None

    wait_for(merge_failed, 30, interval_s=0.5, message="Flower listing the failed scan's merge as FAILURE")
    failed = merge_failed()
    assert failed is not None
    assert f"scan run {run_id} failed" in str(failed.get("exception"))
    failures_in_flower = sum(1 for t in ui.tasks().values() if t.get("state") == "FAILURE")
    print(f"\nscan run {run_id}: Flower state {failed['state']}: {failed['exception']}; failures in Flower: {failures_in_flower}")

    # The watchdog's tick runs (the ledger of ticks moves) but stays out of the task list; a ping on the same worker is listed.
    before = redis_client.get(WATCHDOG_LAST_TICK_KEY)
    send = (
        "from omni_tasks.cli.common import prepare\n"
        "prepare('cli', configure_log=False)\n"
        "from omni_tasks.system.tasks import ping\n"
        "from omni_tasks.watchdog.tasks import tick\n"
        "for _ in range(3):\n"
        "    tick.apply_async()\n"
        "print(ping.apply_async(args=[0.0]).get(timeout=60)['pid'])\n"
    )
    sent = _run(env, "-c", send)
    assert sent.returncode == 0, sent.stderr[-2000:]
    wait_for(lambda: redis_client.get(WATCHDOG_LAST_TICK_KEY) not in (None, before), 30, message="the watchdog tick to run")
    wait_for(lambda: any(t.get("name") == "omni.system.ping" for t in ui.tasks().values()), 20, message="Flower listing the ping")
    listed = [t.get("name") for t in ui.tasks().values()]
    print(f"Flower's task list after 3 ticks and 1 ping: {sorted(listed)}; ticks listed: {listed.count('omni.watchdog.tick')} of 3")
    assert "omni.watchdog.tick" not in listed

    # omni status shows the failed scan in its recent failures once the watchdog persisted the outcomes.
    def status_failures() -> list[dict[str, Any]]:
        done = _run(env, "-m", "omni_tasks", "status", "--json")
        return json.loads(done.stdout).get("recent_failures") or []

    wait_for(lambda: any(f["name"] == "omni.scans.merge" for f in status_failures()), 30, interval_s=1.0, message="omni status listing it")


def test_flower_lists_late_workers_labels_times_and_keeps_its_metrics_apart(stack: tuple[dict[str, str], Flower], tmp_path: Path) -> None:
    env, ui = stack

    def workers_listed() -> set[str]:
        code, body = ui.get("/api/workers")  # no ?refresh=1: what the dashboard reads
        return set(json.loads(body)) if code == 200 else set()

    started = time.monotonic()
    wait_for(lambda: {"scans", "watchdog"} <= {w.split("@")[0] for w in workers_listed()}, 45, interval_s=1.0, message="/api/workers")
    print(
        f"\n/api/workers without refresh lists the late workers {time.monotonic() - started:.1f} s after they beat: {sorted(workers_listed())}"
    )

    code, page = ui.get("/tasks")
    assert code == 200
    html = page.decode()
    assert "Received (UTC)" in html
    assert 'value="time-UTC"' in html

    code, flower_metrics = ui.get("/metrics")
    assert code == 200
    names = {line.split("{")[0].split(" ")[0] for line in flower_metrics.decode().splitlines() if line and not line.startswith("#")}
    ours = sorted(n for n in names if n.startswith(("omni_", "celery_")))
    print(f"Flower's /metrics: {len(names)} series names, ours among them: {len(ours)}")
    assert ours == []
    assert any(n.startswith("flower_") for n in names)
    # Our /metrics merges every process's files: Flower wrote none.
    ours_text = generate_latest(build_registry(dict, Path(env["OMNI_DATA_DIR"]) / "metrics")).decode()
    assert "flower_" not in ours_text
    assert "omni_tasks_redelivered_total" in ours_text, "the workers' files were merged"
