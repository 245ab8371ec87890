"""Seconds from `omni up` to `/health` ok with every process up, on the embedded default; median of N cold starts.

A cold start: nothing of omni-tasks running, a brand-new data folder (the
embedded Redis and SQLite are created, the migrations run, the first run
queues its synthetic history), exactly what the README's first command does
on a fresh machine. The clock starts when ``omni up`` is spawned and stops when
``/health`` answers ``"status": "ok"`` (every worker kind's heartbeat, the beat
leader, a watchdog tick, the stream connected, the trading state readable)
and Flower answers on its port. Then ``omni up`` is stopped with SIGINT and the
run counts the processes it left behind (must be 0).

The baseline, in the same run: as many bare Celery workers as ``omni up``
starts (``bench/bare_app.py``: no pipeline, no settings, no database) started
at once against a private redis-server, until every one answers a ping: what
starting that many Celery processes costs on this machine by itself.

    python -m bench.startup [--runs 5]

The last line is one JSON object:
``{"healthy_s", "healthy_s_min", "healthy_s_max", "baseline_s", "ratio", "cpu_s", "runs", "left_behind", "load"}``;
``cpu_s`` is the median of the CPU seconds every process of the session had used at the healthy moment
(robust to other load on the machine, unlike the seconds).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

from bench.private_desk import REPO, BenchError, free_port, load_average, private_redis, wait_until

#: Worker kinds omni up starts (workers/): the baseline starts as many bare workers.
BARE_WORKERS = 6


def _health_ok(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1) as response:  # our loopback URL
            return bool(json.loads(response.read()).get("status") == "ok")
    except (urllib.error.URLError, OSError, ValueError):
        return False


def _answers(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthcheck", timeout=1) as response:  # our loopback URL
            return response.status < 500
    except urllib.error.HTTPError as exc:
        return exc.code < 500  # 401: Flower is up, it wants its password
    except (urllib.error.URLError, OSError):
        return False


def _stat(pid: int) -> list[str] | None:
    """Fields 3 onwards of /proc/PID/stat (index 0 is the state, 1 the parent, 11-14 the CPU times, 19 the start time)."""
    try:
        return (Path("/proc") / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None


def _descendants(root: int) -> dict[int, str]:
    """``root`` and every process below it (each child of `omni up` has a session of its own), by pid, with its start time."""
    parents: dict[int, int] = {}
    started: dict[int, str] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and (fields := _stat(int(entry.name))) is not None:
            parents[int(entry.name)], started[int(entry.name)] = int(fields[1]), fields[19]
    found = {root} if root in started else set()
    grew = True
    while grew:
        below = {pid for pid, parent in parents.items() if parent in found} - found
        found |= below
        grew = bool(below)
    return {pid: started[pid] for pid in found}


def _still_running(processes: dict[int, str]) -> list[int]:
    """Those of ``processes`` alive now (same pid and start time: a reused pid is not counted), zombies excluded."""
    alive = []
    for pid, start in processes.items():
        fields = _stat(pid)
        if fields is not None and fields[19] == start and fields[0] != "Z":
            alive.append(pid)
    return alive


def _label(pid: int) -> str:
    """A process's role for the CPU table: the ``omni`` command after ``-m omni_tasks`` (``worker scans``), or its program name."""
    try:
        argv = (Path("/proc") / str(pid) / "cmdline").read_bytes().decode(errors="replace").split("\0")
    except OSError:
        return "?"
    if "omni_tasks.ops.zygote" in argv:  # the fork server and the children it forked: they keep its command line, not its name
        return (Path("/proc") / str(pid) / "comm").read_text().strip()
    if "omni_tasks" in argv:
        return " ".join(argv[argv.index("omni_tasks") + 1 :]).strip() or "omni"
    return Path(argv[0]).name or "?"


def tree_cpu(processes: dict[int, str]) -> dict[str, float]:
    """CPU seconds (user + system) spent so far by each role among ``processes``, their reaped children included.

    Unlike a wall-clock time this does not grow when other programs share the cores: it is what the start
    costs, wherever the time goes.
    """
    tick = os.sysconf("SC_CLK_TCK")
    by_role: dict[str, float] = {}
    for pid in processes:
        if (fields := _stat(pid)) is None:
            continue
        # fields[0] is field 3 of proc(5): utime, stime, cutime, cstime are fields 14-17.
        seconds = sum(int(value) for value in fields[11:15]) / tick
        role = _label(pid)
        by_role[role] = by_role.get(role, 0.0) + seconds
    return by_role


def cold_start(timeout_s: float) -> tuple[float, int, dict[str, float]]:
    """One `omni up` on a new data folder: (seconds until healthy with Flower answering, processes left after the stop, CPU seconds by role then)."""
    with tempfile.TemporaryDirectory(prefix="omni-bench-startup-") as scratch:
        metrics_port, flower_port = free_port(), free_port()
        env = {k: v for k, v in os.environ.items() if not k.startswith("OMNI_") and k != "PROMETHEUS_MULTIPROC_DIR"}
        env |= {"OMNI_DATA_DIR": str(Path(scratch) / "data"), "OMNI_METRICS_PORT": str(metrics_port), "OMNI_FLOWER_PORT": str(flower_port)}
        log = open(Path(scratch) / "up.out", "wb")  # noqa: SIM115 - closed below
        tree: dict[int, str] = {}
        started = time.monotonic()
        up = subprocess.Popen(  # fixed argv
            [sys.executable, "-m", "omni_tasks", "up"], env=env, cwd=scratch, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        try:

            def ready() -> bool:
                if up.poll() is not None:
                    raise BenchError(f"omni up exited {up.returncode}: {(Path(scratch) / 'up.out').read_text(errors='replace')[-2000:]}")
                return _health_ok(metrics_port) and _answers(flower_port)

            wait_until(ready, timeout_s, "/health ok and Flower answering", interval_s=0.05)
            healthy_s = time.monotonic() - started
            tree = _descendants(up.pid)
            cpu = tree_cpu(tree)
        finally:
            up.send_signal(signal.SIGINT)
            try:
                up.wait(timeout=90)
            except subprocess.TimeoutExpired:
                os.killpg(up.pid, signal.SIGKILL)
                up.wait(timeout=10)
            log.close()
        time.sleep(0.5)
        left = _still_running(tree)
        for pid in left:
            os.kill(pid, signal.SIGKILL)
        return healthy_s, len(left), cpu


def bare_start(count: int, timeout_s: float) -> float:
    """``count`` bare Celery workers started at once; seconds until every one answers a ping."""
    from bench import bare_app

    with tempfile.TemporaryDirectory(prefix="omni-bench-bare-") as scratch:
        folder = Path(scratch)
        with private_redis(folder) as url:
            env = {k: v for k, v in os.environ.items() if not k.startswith("OMNI_")} | {bare_app.BROKER_URL_ENV: url}
            # This run's redis-server (each run has its own): a fresh connection pool on its URL.
            bare_app.app.conf.broker_url = url
            bare_app.app._pool = None
            bare_app.app.amqp._producer_pool = None
            started = time.monotonic()
            procs = [
                subprocess.Popen(  # fixed argv
                    [sys.executable, "-m", "celery", "-A", "bench.bare_app", "worker", "-Q", bare_app.QUEUE, "-P", "solo",
                     f"--hostname=bare{i}@%h", "--without-mingle", "--without-gossip", "-E", "--loglevel=WARNING"],
                    env=env, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
                )  # fmt: skip
                for i in range(count)
            ]
            try:

                def all_answer() -> bool:
                    replies = bare_app.app.control.ping(timeout=0.3) or []
                    return len(replies) >= count

                wait_until(all_answer, timeout_s, f"{count} bare workers answering a ping", interval_s=0.0)
                return time.monotonic() - started
            finally:
                for proc in procs:
                    os.killpg(proc.pid, signal.SIGTERM)
                for proc in procs:
                    try:
                        proc.wait(timeout=20)
                    except subprocess.TimeoutExpired:
                        os.killpg(proc.pid, signal.SIGKILL)
                bare_app.app.pool.force_close_all()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--timeout", type=float, default=180.0, help="seconds one start may take before the run fails")
    args = parser.parse_args(argv)
    print(f"load average before: {load_average()}", flush=True)
    ours: list[float] = []
    bare: list[float] = []
    cpus: list[float] = []
    left_behind = 0
    try:
        for run in range(1, args.runs + 1):
            healthy_s, left, cpu = cold_start(args.timeout)
            ours.append(healthy_s)
            cpus.append(sum(cpu.values()))
            if run == 1:
                print("CPU seconds by process when healthy: " + ", ".join(f"{role} {s:.2f}" for role, s in sorted(cpu.items(), key=lambda i: -i[1])), flush=True)
            left_behind += left
            baseline_s = bare_start(BARE_WORKERS, args.timeout)
            bare.append(baseline_s)
            print(f"run {run}: omni up healthy after {healthy_s:.2f} s, {cpus[-1]:.1f} CPU s (left behind {left}); {BARE_WORKERS} bare Celery workers answering after {baseline_s:.2f} s", flush=True)
    except BenchError as exc:
        print(f"bench/startup: {exc}", file=sys.stderr)
        return 1
    median, median_bare = statistics.median(ours), statistics.median(bare)
    print(f"omni up, cold start on a new data folder: median {median:.2f} s (min {min(ours):.2f}, max {max(ours):.2f}, N={len(ours)})")
    print(f"bare Celery, {BARE_WORKERS} workers: median {median_bare:.2f} s; ratio ours/bare {median / median_bare:.2f}")
    print(f"load average after: {load_average()}")
    result = {
        "healthy_s": round(median, 2),
        "healthy_s_min": round(min(ours), 2),
        "healthy_s_max": round(max(ours), 2),
        "baseline_s": round(median_bare, 2),
        "ratio": round(median / median_bare, 2),
        "cpu_s": round(statistics.median(cpus), 2),
        "runs": len(ours),
        "left_behind": left_behind,
        "load": load_average(),
    }
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
