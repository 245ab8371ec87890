"""The ledger reconciler: every backfill job and scan run reaches a final state.

The ledgers in the database say what should be happening (a partition
``pending`` or ``running``, a scan run ``running``); the broker says what is
(a message queued, or delivered and not yet acknowledged). They drift apart
when a message is lost: a Redis crash between kombu's pop and its ``unacked``
write, a worker's last retry failing while the database was down, a chord
whose counter Redis forgot. Then nothing will ever move the ledger row again.

Each watchdog tick :func:`reconcile` reads both. An item that is not final and
has no live delivery (no message for it queued or unacked; an unacked message
of a dead worker is redelivered by the sweeps, so it counts as live) becomes a
*suspect*, remembered with the time it was first seen so. A suspect still
without a live delivery ``stuck_after_s`` later is acted on:

- a backfill partition is put back to ``pending`` and enqueued again (its
  retry is idempotent), at most ``stuck_requeues`` times, then failed with the
  reason; a job whose partitions are all final is rolled up;
- a scan run is failed with the reason (a chord cannot be resumed in part).

What it did is counted (``omni_ledger_*`` metrics, no symbol labels) and kept
for an hour in Redis, where ``omni status`` and ``/health`` read it through
:func:`read_view`. Only a Redis broker can be read without consuming it; with
RabbitMQ (durable queues, publisher confirms) only the roll-up runs.
"""

from __future__ import annotations

import base64
import json
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, cast

import redis
import structlog
from sqlalchemy.orm import Session, sessionmaker

from omni_tasks.core.keys import LEDGER_EVENTS_KEY, LEDGER_LAST_KEY, LEDGER_REQUEUES_KEY, LEDGER_SCANNED_KEY, LEDGER_SUSPECTS_KEY
from omni_tasks.marketdata import backfill
from omni_tasks.pipeline.broker import PRIORITY_SUFFIXES
from omni_tasks.pipeline.heartbeats import KOMBU_UNACKED_KEY
from omni_tasks.scans import runs as scan_runs
from omni_tasks.storage.outage import is_outage

_log = structlog.get_logger("omni.watchdog.ledgers")

#: the broker is read at most this many times per ``stuck_after_s`` (an item is acted on within 1.25 thresholds)
READS_PER_THRESHOLD = 4
EVENTS_KEEP_S = 3600
REQUEUES_TTL_S = 7 * 86400

PARTITION_TASK = "omni.backfill.fetch_partition"
SCAN_TASKS = ("omni.scans.chunk", "omni.scans.merge")
#: the queues whose messages are read: where the tasks above are routed
WATCHED_QUEUES = ("backfill", "scans")


@dataclass
class Deliveries:
    """What the broker holds right now, by ledger item."""

    partitions: set[int] = field(default_factory=set)
    scan_runs: set[int] = field(default_factory=set)
    messages: int = 0


def _item_of(payload: dict[str, Any]) -> tuple[str, int] | None:
    """('partition', id) or ('scan', run id) for a kombu message payload of one of our tasks, else None."""
    headers = payload.get("headers") or {}
    task = headers.get("task")
    if task != PARTITION_TASK and task not in SCAN_TASKS:
        return None
    body: Any = payload.get("body")  # kombu's wire body: str, or base64 text decoded to bytes below
    if (payload.get("properties") or {}).get("body_encoding") == "base64" and isinstance(body, str):
        body = base64.b64decode(body)
    args, kwargs, _ = json.loads(body)
    if task == PARTITION_TASK:
        return "partition", int(args[0] if args else kwargs["partition_id"])
    if task == "omni.scans.chunk":
        return "scan", int(args[0] if args else kwargs["run_id"])
    return "scan", int(args[1] if len(args) > 1 else kwargs["run_id"])


def redis_deliveries(client: redis.Redis, queues: Iterable[str] = WATCHED_QUEUES) -> Deliveries:
    """Every message of the watched tasks queued (read first) or unacked (read second) on a Redis broker.

    In that order a message moving from the queue to ``unacked`` meanwhile is
    seen in one of the two, except inside kombu's own pop-then-write (a
    millisecond), which the suspect's grace period covers.
    """
    payloads: list[Any] = []
    pipe = client.pipeline(transaction=False)
    for name in queues:
        for suffix in PRIORITY_SUFFIXES:
            pipe.lrange(name + suffix, 0, -1)
    queued = [raw for listed in pipe.execute() for raw in listed]
    unacked = client.hvals(KOMBU_UNACKED_KEY)
    for raw in queued:
        payloads.append(_loads(raw))
    for raw in unacked:
        entry = _loads(raw)  # [payload, exchange, routing key]
        payloads.append(entry[0] if isinstance(entry, list) and entry else None)
    found = Deliveries(messages=len(payloads))
    for payload in payloads:
        try:
            item = _item_of(payload) if isinstance(payload, dict) else None
        except (ValueError, TypeError, IndexError, KeyError):
            item = None  # not decodable: never a reason to requeue anything, and never counted as live either
        if item is None:
            continue
        (found.partitions if item[0] == "partition" else found.scan_runs).add(item[1])
    return found


def _loads(raw: bytes | str) -> Any:
    try:
        return json.loads(raw)
    except ValueError:
        return None


@dataclass
class ReconcileSummary:
    checked: int = 0
    stuck: int = 0
    requeued: int = 0
    failed: int = 0
    rolled_up: int = 0
    skipped: str | None = None
    actions: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if k != "actions"} | {"actions": self.actions[:20]}


def reconcile(
    *,
    factory: sessionmaker[Session],
    client: redis.Redis,
    deliveries: Callable[[], Deliveries] | None,
    stuck_after_s: float,
    max_requeues: int,
    requeue: Callable[[int], object],
    job_finished: Callable[[int], None],
    redelivered: int = 0,
    now: float | None = None,
) -> ReconcileSummary:
    """One pass: suspects, requeues and failures of stuck items, roll-up of finished jobs.

    ``deliveries`` reads the broker (None: it cannot be read, only roll-ups run).
    ``requeue(partition_id)`` enqueues a partition; ``job_finished(job_id)`` runs
    what follows a finished job (validation). ``redelivered``: messages the
    sweeps put back this tick, only recorded for the hour's counts.
    """
    now = time.time() if now is None else now
    summary = ReconcileSummary()
    if redelivered:
        _event(client, "redelivered", redelivered, now)
    try:
        if deliveries is not None:
            _reconcile_items(factory, client, deliveries, stuck_after_s, max_requeues, requeue, job_finished, now, summary)
        for job_id in backfill.rollup_open_jobs(factory):
            summary.rolled_up += 1
            summary.actions.append(f"backfill job {job_id} rolled up")
            job_finished(job_id)
    except Exception as exc:
        if not is_outage(exc):
            raise
        # The database is down: nothing can be compared or moved; the suspects keep their first-seen times.
        summary.skipped = f"database unavailable: {type(exc).__name__}"
        _log.warning("ledger reconciliation skipped", reason=summary.skipped)
    if summary.rolled_up:
        _event(client, "rolled_up", summary.rolled_up, now)
    client.set(
        LEDGER_LAST_KEY, json.dumps({"ts": now, "stuck_after_s": stuck_after_s, **summary.as_dict()}, separators=(",", ":")), ex=EVENTS_KEEP_S
    )
    return summary


def _reconcile_items(
    factory: sessionmaker[Session],
    client: redis.Redis,
    deliveries: Callable[[], Deliveries],
    stuck_after_s: float,
    max_requeues: int,
    requeue: Callable[[int], object],
    job_finished: Callable[[int], None],
    now: float,
    summary: ReconcileSummary,
) -> None:
    partitions = backfill.open_partitions(factory)
    running_scans = scan_runs.running_runs(factory)
    summary.checked = len(partitions) + len(running_scans)
    if not summary.checked:
        client.delete(LEDGER_SUSPECTS_KEY)
        return
    scanned = client.get(LEDGER_SCANNED_KEY)
    if scanned is not None and 0 <= now - float(scanned) < stuck_after_s / READS_PER_THRESHOLD:
        # Reading every queued message is not free with a deep backlog: a few reads per threshold are enough.
        summary.stuck = int(client.hlen(LEDGER_SUSPECTS_KEY))
        return
    client.set(LEDGER_SCANNED_KEY, repr(now), ex=int(max(60.0, stuck_after_s * 2)))
    live = deliveries()
    suspects = {k.decode() if isinstance(k, bytes) else k: float(v) for k, v in client.hgetall(LEDGER_SUSPECTS_KEY).items()}
    missing: dict[str, float] = {}
    for part in partitions:
        if part.id not in live.partitions:
            missing[f"partition:{part.id}"] = suspects.get(f"partition:{part.id}", now)
    for run_id, _created in running_scans:
        if run_id not in live.scan_runs:
            missing[f"scan:{run_id}"] = suspects.get(f"scan:{run_id}", now)
    summary.stuck = len(missing)
    acted: list[str] = []
    for key, since in missing.items():
        silent_s = now - since
        if silent_s < stuck_after_s:
            continue
        kind, raw_id = key.split(":", 1)
        item_id = int(raw_id)
        if kind == "partition":
            _act_on_partition(factory, client, item_id, silent_s, max_requeues, requeue, job_finished, now, summary)
        else:
            reason = f"no chunk or merge of this run queued or running for {silent_s:.0f} s: lost, or failed without a record (failed by the watchdog)"
            if scan_runs.fail_run(factory, item_id, reason, only_running=True):
                summary.failed += 1
                summary.actions.append(f"scan run {item_id} failed")
                _event(client, "failed", 1, now, ledger="scans")
                _log.error("stuck scan run failed", run_id=item_id, silent_s=round(silent_s, 1))
        acted.append(key)
    for key in acted:
        missing.pop(key, None)
    pipe = client.pipeline(transaction=True)
    pipe.delete(LEDGER_SUSPECTS_KEY)
    if missing:
        pipe.hset(LEDGER_SUSPECTS_KEY, mapping={k: repr(v) for k, v in missing.items()})
    pipe.execute()


def _act_on_partition(
    factory: sessionmaker[Session],
    client: redis.Redis,
    partition_id: int,
    silent_s: float,
    max_requeues: int,
    requeue: Callable[[int], object],
    job_finished: Callable[[int], None],
    now: float,
    summary: ReconcileSummary,
) -> None:
    field_name = f"partition:{partition_id}"
    done = int(client.hget(LEDGER_REQUEUES_KEY, field_name) or 0)
    if done < max_requeues:
        reason = f"requeued by the watchdog ({done + 1} of {max_requeues}): no live delivery for {silent_s:.0f} s"
        if backfill.requeue_partition(factory, partition_id, reason=reason):
            pipe = client.pipeline(transaction=False)
            pipe.hincrby(LEDGER_REQUEUES_KEY, field_name, 1)
            pipe.expire(LEDGER_REQUEUES_KEY, REQUEUES_TTL_S)
            pipe.execute()
            requeue(partition_id)
            summary.requeued += 1
            summary.actions.append(f"backfill partition {partition_id} requeued")
            _event(client, "requeued", 1, now, ledger="backfill")
            _log.warning("stuck backfill partition requeued", partition_id=partition_id, silent_s=round(silent_s, 1), requeues=done + 1)
        return
    reason = f"no live delivery for {silent_s:.0f} s after {done} requeues by the watchdog: failed (`omni backfill run --only-failed` retries it)"
    failed, finished_job = backfill.fail_partition(factory, partition_id, reason=reason)
    if failed:
        summary.failed += 1
        summary.actions.append(f"backfill partition {partition_id} failed")
        _event(client, "failed", 1, now, ledger="backfill")
        _log.error("stuck backfill partition failed", partition_id=partition_id, requeues=done)
    if finished_job is not None:
        summary.rolled_up += 1
        job_finished(finished_job)


def _event(client: redis.Redis, kind: str, count: int, now: float, *, ledger: str = "broker") -> None:
    """Keep one event for the hour's counts, and count it in the metrics."""
    from omni_tasks.ops import prometheus as metrics

    member = json.dumps({"kind": kind, "ledger": ledger, "n": count, "id": uuid.uuid4().hex[:8]}, separators=(",", ":"))
    pipe = client.pipeline(transaction=False)
    pipe.zadd(LEDGER_EVENTS_KEY, {member: now})
    pipe.zremrangebyscore(LEDGER_EVENTS_KEY, "-inf", now - EVENTS_KEEP_S)
    pipe.expire(LEDGER_EVENTS_KEY, EVENTS_KEEP_S * 2)
    pipe.execute()
    if kind in {"requeued", "failed"}:
        metrics.LEDGER_ACTIONS.labels(ledger, kind).inc(count)


def read_view(client: redis.Redis, now: float | None = None) -> dict[str, Any]:
    """What ``omni status`` and ``/health`` show: stuck now, and requeued / failed / redelivered / rolled up in the last hour."""
    now = time.time() if now is None else now
    suspects = {k.decode() if isinstance(k, bytes) else k: float(v) for k, v in client.hgetall(LEDGER_SUSPECTS_KEY).items()}
    raw_last = client.get(LEDGER_LAST_KEY)
    last = json.loads(raw_last) if raw_last else None
    hour: dict[str, int] = {"requeued": 0, "failed": 0, "redelivered": 0, "rolled_up": 0}
    for member in cast(list[bytes | str], client.zrangebyscore(LEDGER_EVENTS_KEY, now - EVENTS_KEEP_S, "+inf")):  # members only, no scores
        event = json.loads(member)
        hour[event["kind"]] = hour.get(event["kind"], 0) + int(event["n"])
    oldest = max((now - since for since in suspects.values()), default=0.0)
    return {
        "stuck": len(suspects),
        "stuck_partitions": sum(1 for k in suspects if k.startswith("partition:")),
        "stuck_scan_runs": sum(1 for k in suspects if k.startswith("scan:")),
        "oldest_stuck_s": round(oldest, 1),
        "last_hour": hour,
        "last_reconcile": last,
    }


def stuck_partitions(
    factory: sessionmaker[Session], live: Deliveries, job_id: int, *, quiet_for_s: float, now: datetime | None = None
) -> list[int]:
    """A job's partitions not final, with no live delivery now and no ledger activity for ``quiet_for_s`` (for --only-failed)."""
    now = now or datetime.now(tz=UTC)
    return [
        p.id
        for p in backfill.open_partitions(factory)
        if p.job_id == job_id and p.id not in live.partitions and (now - p.touched_at).total_seconds() >= quiet_for_s
    ]


def forget_requeues(client: redis.Redis, partition_ids: Iterable[int]) -> None:
    """An operator re-ran these partitions (``--only-failed``): the watchdog's requeue budget starts again."""
    fields = [f"partition:{i}" for i in partition_ids]
    if fields:
        client.hdel(LEDGER_REQUEUES_KEY, *fields)
