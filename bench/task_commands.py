"""Redis commands per task on the broker: N no-op tasks through a real scans worker, counted by the server.

What is counted: ``omni.system.noop`` (the task path with nothing in it: the
decorator's delivery count and outcome record, the worker's signals and
heartbeats) published N times to one ``omni worker scans``; the private
redis-server's ``total_commands_processed`` from before the first publish to
the moment the queue and kombu's ``unacked`` hash are both empty (with late
ack a task leaves ``unacked`` after it ran). Commands per task = that delta / N
(the polling of this script is subtracted). With ``redis-benchmark``'s
commands/s this gives the broker's ceiling in tasks/s (docs/scaling.md).

    python -m bench.task_commands [--tasks 1000] [--concurrency 2]

The last line is one JSON object: ``{"commands_per_task": ..., "tasks_per_s": ...}``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any

import redis

from bench.private_desk import DEFAULT_ADMIN_URL, BenchError, load_average, private_desk, wait_until

#: kombu's Redis transport keeps delivered, not yet acknowledged messages in this hash.
UNACKED = "unacked"


def run(args: argparse.Namespace) -> dict[str, Any]:
    from omni_tasks.core.runtime import install_settings
    from omni_tasks.pipeline.app import create_app
    from omni_tasks.pipeline.queues import Queue
    from omni_tasks.settings import load_settings

    with private_desk(args.pg_admin_url) as desk:
        desk.worker("scans", concurrency=args.concurrency)
        settings = load_settings(desk.env)
        install_settings(settings)
        sender = create_app(settings)
        client = redis.Redis.from_url(desk.redis_url, socket_timeout=5)
        polls = 0

        def drained() -> bool:
            nonlocal polls
            polls += 1
            pipe = client.pipeline(transaction=False)
            pipe.llen(Queue.SCANS.value)
            pipe.hlen(UNACKED)
            waiting, unacked = pipe.execute()
            return waiting == 0 and unacked == 0

        try:
            for _ in range(args.warmup):
                sender.send_task("omni.system.noop", queue=Queue.SCANS.value)
            wait_until(drained, 120, "the warm-up tasks", 0.02)
            load_before = load_average()
            polls = 0
            before = desk.redis_commands()
            started = time.monotonic()
            for _ in range(args.tasks):
                sender.send_task("omni.system.noop", queue=Queue.SCANS.value)
            wait_until(drained, args.timeout, "the tasks to run", 0.02)
            seconds = time.monotonic() - started
            # 2 commands per poll (one pipeline of LLEN + HLEN) and 1 for INFO itself.
            commands = desk.redis_commands() - before - 2 * polls - 1
        finally:
            sender.close()
            client.close()
    result = {
        "benchmark": "task_commands",
        "tasks": args.tasks,
        "concurrency": args.concurrency,
        "seconds": round(seconds, 2),
        "tasks_per_s": round(args.tasks / seconds, 1),
        "commands_per_task": round(commands / args.tasks, 1),
        "load_before": load_before,
        "load_after": load_average(),
    }
    print(
        f"{args.tasks} no-op tasks through omni worker scans --concurrency {args.concurrency} in {seconds:.2f} s = {args.tasks / seconds:.0f} tasks/s; "
        f"{commands / args.tasks:.1f} Redis commands per task (publish, delivery, ack, outcome, heartbeats); "
        f"load {result['load_before']} -> {result['load_after']}",
        flush=True,
    )
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--tasks", type=int, default=1000, help="timed tasks (default 1000)")
    parser.add_argument("--warmup", type=int, default=50, help="untimed tasks first (default 50)")
    parser.add_argument("--concurrency", type=int, default=2, help="prefork processes of the scans worker (default 2, its setting)")
    parser.add_argument("--timeout", type=float, default=120, help="seconds the tasks may take (default 120)")
    parser.add_argument(
        "--pg-admin-url", default=DEFAULT_ADMIN_URL, help=f"a database for CREATE/DROP DATABASE (default {DEFAULT_ADMIN_URL})"
    )
    try:
        summary = run(parser.parse_args())
    except BenchError as exc:
        print(f"bench/task_commands failed: {exc}", file=sys.stderr, flush=True)
        return 1
    print(json.dumps(summary), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
