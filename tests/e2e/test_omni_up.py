"""`omni up --for N` on the embedded default, as a newcomer runs it: no services, no keys."""

from __future__ import annotations

import base64
import json
import os
import re
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from tests.conftest import wait_for

pytestmark = pytest.mark.slow


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _get(url: str, auth: tuple[str, str] | None = None) -> tuple[int, bytes]:
    request = urllib.request.Request(url)  # noqa: S310 - loopback URL of the process under test
    if auth is not None:
        token = base64.b64encode(f"{auth[0]}:{auth[1]}".encode()).decode()
        request.add_header("Authorization", f"Basic {token}")
    try:
        with urllib.request.urlopen(request, timeout=5) as response:  # noqa: S310 - the same loopback URL
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def _processes_with(marker: str) -> list[int]:
    """PIDs whose environment mentions ``marker`` (our private data folder)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            if marker.encode() in (entry / "environ").read_bytes():
                found.append(int(entry.name))
        except OSError:
            continue
    return found


def _listeners(pids: list[int]) -> list[str]:
    """Local addresses of TCP listening sockets held by ``pids`` (from `ss`)."""
    out = subprocess.run(["ss", "-ltnpH"], capture_output=True, text=True, check=False).stdout
    addresses = []
    for line in out.splitlines():
        if any(f"pid={pid}," in line for pid in pids):
            addresses.append(line.split()[3])
    return addresses


def test_omni_up_embedded_runs_everything_and_leaves_nothing_behind(tmp_path: Path) -> None:
    data_dir = tmp_path / "omni-data"
    flower_port, metrics_port = _free_port(), _free_port()
    password = "e2e-" + os.urandom(6).hex()
    env = {k: v for k, v in os.environ.items() if not k.startswith("OMNI_") and k != "PROMETHEUS_MULTIPROC_DIR"}
    env.update(
        {
            "OMNI_DATA_DIR": str(data_dir),
            "OMNI_FLOWER_PORT": str(flower_port),
            "OMNI_METRICS_PORT": str(metrics_port),
            "OMNI_FLOWER_PASSWORD": password,
            "PYTHONUNBUFFERED": "1",
        }
    )
    started = time.monotonic()
    up = subprocess.Popen(  # fixed argv
        [sys.executable, "-m", "omni_tasks", "up", "--for", "30"],
        env=env,
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        health_url = f"http://127.0.0.1:{metrics_port}/health"

        def healthy() -> bool:
            if not _port_open(metrics_port):
                return False
            try:
                code, body = _get(health_url)
            except TimeoutError:  # a busy machine while eleven processes boot: ask again
                return False
            return code == 200 and json.loads(body)["status"] == "ok"

        ready_s = wait_for(healthy, 60, interval_s=0.5, message="/health ok")
        code, body = _get(health_url)
        health = json.loads(body)
        assert code == 200, health
        assert health["status"] == "ok", health
        for kind in ("scans", "backfill", "validation", "risk", "watchdog", "orders", "stream"):
            assert health["checks"][f"worker:{kind}"]["status"] == "ok"
        assert health["checks"]["stream"]["status"] == "ok", health["checks"]["stream"]
        assert health["checks"]["stream"]["detail"].startswith("synthetic:")
        print(f"omni up: /health ok {ready_s:.1f} s after start")

        flower = f"http://127.0.0.1:{flower_port}"
        assert _get(f"{flower}/api/workers")[0] == 401, "Flower requires its password"
        assert _get(f"{flower}/api/workers", auth=("operator", "wrong"))[0] == 401

        def flower_lists_every_worker() -> bool:
            status, body = _get(f"{flower}/api/workers?refresh=1", auth=("operator", password))
            if status != 200:
                return False
            names = json.loads(body)
            return {n.split("@")[0] for n in names} >= {"scans", "backfill", "validation", "risk", "watchdog", "orders"}

        wait_for(flower_lists_every_worker, 30, interval_s=1.0, message="Flower to list a worker per queue")

        def watchdog_ran() -> bool:
            text = _get(f"http://127.0.0.1:{metrics_port}/metrics")[1].decode()
            match = re.search(r"^omni_watchdog_ticks_total (\d+\.\d+)", text, re.M)
            return bool(match and float(match.group(1)) >= 1)

        wait_for(watchdog_ran, 20, interval_s=0.5, message="the watchdog entry to run")
        metrics = _get(f"http://127.0.0.1:{metrics_port}/metrics")[1].decode()
        assert re.search(r"^celery_task_succeeded_total\{", metrics, re.M)
        assert re.search(r'^celery_queue_length\{queue_name="watchdog"\}', metrics, re.M)
        assert re.search(r'^celery_worker_up\{hostname="watchdog@', metrics, re.M)
        assert re.search(r"^omni_beat_leader 1\.0", metrics, re.M)
        assert re.search(r"^omni_stream_up 1\.0", metrics, re.M)
        assert re.search(r'^omni_stream_stage_latency_seconds_bucket\{le="0\.001",stage="process"\} [1-9]', metrics, re.M)

        # `omni status` in another terminal finds the embedded Redis and SQLite through the data folder alone.
        status_env = {k: v for k, v in env.items() if k in {"OMNI_DATA_DIR", "PATH", "HOME", "LANG"}}
        status = subprocess.run(  # fixed argv
            [sys.executable, "-m", "omni_tasks", "status", "--json"],
            env=status_env,
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert status.returncode == 0, status.stdout + status.stderr
        snapshot = json.loads(status.stdout)
        assert {w["kind"] for w in snapshot["workers"] if w["alive"]} == {
            "scans",
            "backfill",
            "validation",
            "risk",
            "watchdog",
            "orders",
            "stream",
        }
        stream = snapshot["stream"]
        assert stream["feed"] == "synthetic"
        assert stream["connected"] == 1
        assert stream["latency"]["process"]["count"] > 0
        assert stream["latency"]["e2e"]["p99_ns"] > 0
        quotes = subprocess.run(  # fixed argv
            [sys.executable, "-m", "omni_tasks", "stream", "quotes", "--json"],
            env=status_env,
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert quotes.returncode == 0, quotes.stdout + quotes.stderr
        served = json.loads(quotes.stdout)
        assert set(served["quotes"]) == {"AAPL", "MSFT", "NVDA", "AMZN", "SPY"}, served
        assert all(float(q["bid"]) < float(q["ask"]) for q in served["quotes"].values())
        print(
            f"stream under omni up: process p99 {stream['latency']['process']['p99_ns'] / 1000:.0f} us, e2e p99 {stream['latency']['e2e']['p99_ns'] / 1000:.0f} us"
        )
        assert snapshot["beat_leader"] is not None
        assert set(snapshot["queues"]) == {"scans", "backfill", "validation", "risk", "watchdog", "orders"}
        assert snapshot["errors"] == []

        pids = _processes_with(str(data_dir))
        listeners = _listeners(pids + [up.pid])
        open_listeners = [a for a in listeners if not a.startswith(("127.0.0.1:", "[::1]:"))]
        print(f"listeners: {listeners}; on non-loopback interfaces: {len(open_listeners)}")
        assert open_listeners == []
        assert not any(a.endswith(":6379") for a in listeners), "the embedded Redis listens on a unix socket only"

        output, _ = up.communicate(timeout=120)
    finally:
        if up.poll() is None:
            os.killpg(up.pid, 9)
            up.wait()
    text = output.decode(errors="replace")
    assert up.returncode == 0, text
    assert "stopped" in text
    # Every line in every file of <data>/logs is JSON (Celery's banner and warnings wrapped by the supervisor).
    not_json: list[str] = []
    lines = 0
    for path in sorted((data_dir / "logs").glob("*")):
        for line in path.read_text(errors="replace").splitlines():
            lines += 1
            try:
                if not isinstance(json.loads(line), dict):
                    not_json.append(f"{path.name}: {line[:120]}")
            except ValueError:
                not_json.append(f"{path.name}: {line[:120]}")
    print(f"<data>/logs after omni up --for 30: lines that are not a JSON object: {len(not_json)} of {lines}")
    assert lines > 0
    assert not_json == []
    # Stopped: `omni status` says so at once, from the data folder alone.
    started = time.monotonic()
    stopped = subprocess.run(  # fixed argv
        [sys.executable, "-m", "omni_tasks", "status"], env=status_env, cwd=tmp_path, capture_output=True, text=True, timeout=60, check=False
    )
    print(f"omni status after omni up stopped: {time.monotonic() - started:.2f} s, exit {stopped.returncode}")
    assert stopped.returncode == 4, stopped.stdout + stopped.stderr
    assert "pipeline is not running" in stopped.stdout
    assert password not in text, "a password given by the operator is never echoed"
    elapsed = time.monotonic() - started
    # Children reaped a moment after the parent exits: wait for that, then count (fails the test if any stay).
    wait_for(lambda: not _processes_with(str(data_dir)), 10, interval_s=0.1, message="every process of omni up to exit")
    left = _processes_with(str(data_dir))
    print(f"omni up --for 30: exited 0 after {elapsed:.0f} s; processes left behind: {len(left)}")
    assert left == []
    logs = "".join(p.read_text(errors="replace") for p in (data_dir / "logs").glob("*"))
    assert password not in logs, "secrets found in logs"


def _port_open(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.2)
        return sock.connect_ex(("127.0.0.1", port)) == 0
