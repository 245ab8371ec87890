"""Celery signal handlers and the heartbeat bootstep: the glue between Celery and our ledger.

- before_task_publish: stamp ``omni_sent_at`` (queue-wait metrics, oldest wait) and count sends;
- task_received (worker main process): count, and remember the delivery tag as in flight;
- task_revoked: count; an order task Celery expired is recorded ``expired``, never unseen;
- worker_process_init: rebuild clients after fork;
- setup_logging: our JSON logs instead of Celery's;
- HeartbeatStep: a thread in the worker main process that beats every ``heartbeat_s``
  (a thread, so a busy solo pool still beats).
"""

from __future__ import annotations

import inspect
import os
import socket
import threading
import time
from collections import deque
from typing import Any

import structlog
from celery import Celery, bootsteps, signals

from omni_tasks import __version__
from omni_tasks.core import counters
from omni_tasks.core.gcfreeze import freeze_startup_objects
from omni_tasks.core.logs import configure_logging
from omni_tasks.core.runtime import after_fork, get_runtime
from omni_tasks.ops import prometheus as metrics
from omni_tasks.pipeline import heartbeats
from omni_tasks.pipeline.broker import is_amqp_url
from omni_tasks.pipeline.headers import SENT_AT_HEADER
from omni_tasks.pipeline.queues import queue_of

_log = structlog.get_logger("omni.worker")
#: How long the heartbeat thread gathers received deliveries before recording them in flight (one write per burst).
#: Far below the dead-worker threshold; a delivery not yet recorded is still found by the orphan sweep.
TAG_GATHER_S = 0.02
_state: dict[str, Any] = {"role": "celery", "kind": "unknown", "instance": None, "connection": 0, "track_tags": True}
#: (broker connection number, delivery tag) received but not yet recorded as in flight (deque appends are thread-safe).
_pending_tags: deque[tuple[int, str]] = deque()
_wake = threading.Event()


def set_process(role: str, kind: str = "unknown") -> None:
    """Called by the CLI before Celery starts: names this process in logs and heartbeats."""
    _state["role"] = role
    _state["kind"] = kind


def _on_setup_logging(**_: Any) -> None:
    settings = get_runtime().settings
    configure_logging(
        level=settings.core.log_level,
        fmt=settings.core.log_format,
        role=_state["role"],
        secrets=settings.secret_values(),
        log_file=settings.core.log_file,
    )


_sent = counters.Buffered(lambda: get_runtime().redis)


def _on_before_publish(sender: str | None = None, headers: dict[str, Any] | None = None, routing_key: str = "", **_: Any) -> None:
    if headers is not None:
        headers.setdefault(SENT_AT_HEADER, time.time())
    # In Redis, not in a metric file: the sender may be a short-lived CLI process (omni_tasks.core.counters);
    # buffered, so a publish never waits on Redis.
    _sent.inc(counters.TASKS_SENT, str(sender), socket.gethostname(), queue_of(routing_key) or "?")


def _on_task_received(sender: Any = None, request: Any = None, **_: Any) -> None:
    if request is None:
        return
    queue = queue_of((request.delivery_info or {}).get("routing_key")) or "?"
    hostname = getattr(sender, "hostname", None) or socket.gethostname()
    metrics.TASK_RECEIVED.labels(request.name, hostname, queue).inc()
    message = getattr(request, "message", None)
    tag = getattr(message, "delivery_tag", None)
    if tag and _state["track_tags"]:
        # The heartbeat thread, woken here, writes these to Redis at once: the consumer loop
        # (the worker's bottleneck) makes no round trip per message.
        _pending_tags.append((_state["connection"], str(tag)))
        _wake.set()


def _on_task_rejected(sender: Any = None, message: Any = None, **_: Any) -> None:
    name = (getattr(message, "headers", None) or {}).get("task", "?")
    queue = queue_of((getattr(message, "delivery_info", None) or {}).get("routing_key")) or "?"
    metrics.TASK_REJECTED.labels(name, socket.gethostname(), queue).inc()


def _on_task_revoked(sender: Any = None, request: Any = None, expired: bool = False, **_: Any) -> None:
    name = getattr(request, "name", None) or getattr(sender, "name", "?")
    queue = queue_of(((getattr(request, "delivery_info", None) or {}) or {}).get("routing_key")) or "?"
    metrics.TASK_REVOKED.labels(str(name), socket.gethostname(), queue).inc()
    if expired and getattr(sender, "order_bearing", False):
        record_expired_order_task(sender, request)


def record_expired_order_task(task: Any, request: Any) -> None:
    """Celery discarded an order task past its ``expires`` (a message that carries one): never unseen.

    The order is recorded ``expired`` (row and event; recorded now if it never was)
    and the task-run ledger says EXPIRED. Orders queued by this version carry their
    own deadline instead, which the task itself enforces.
    """
    from datetime import UTC, datetime

    from omni_tasks.trading.order_records import record_expired_message

    runtime = get_runtime()
    reason = "not sent by its deadline: the message expired in the queue (Celery expires), never sent to the broker"
    try:
        named = dict(inspect.signature(task.run).bind_partial(*(request.args or ()), **(request.kwargs or {})).arguments)
    except TypeError:
        named = dict(getattr(request, "kwargs", None) or {})
    try:
        record_expired_message(
            runtime.sessions, venue=runtime.settings.trading.venue, arguments=named, reason=reason, now=datetime.now(tz=UTC)
        )
    except Exception:  # noqa: BLE001 - the database may be down: the watchdog expires a recorded pending order later
        _log.warning("expired order task not recorded in orders", task_id=getattr(request, "id", None), exc_info=True)
    try:
        task._record("EXPIRED", request.id, request.args, request.kwargs, error=reason)
    except Exception:  # noqa: BLE001 - Redis may be down; the order's row and the log remain
        _log.warning("expired order task not in the task ledger", exc_info=True)
    _log.warning("order task expired in the queue", task_name=task.name, task_id=getattr(request, "id", None))


def _on_process_init(**_: Any) -> None:
    after_fork()
    freeze_startup_objects()  # a pool child: imported and forked, from here on it runs tasks


def _on_worker_ready(**_: Any) -> None:
    freeze_startup_objects()  # the worker's main process (the consumer; a solo or threads pool runs tasks here)


class HeartbeatStep(bootsteps.StartStopStep):
    """Beat every ``heartbeat_s`` from a thread of the worker main process."""

    requires = {"celery.worker.components:Pool"}

    def __init__(self, worker: Any, **kwargs: Any) -> None:
        super().__init__(worker, **kwargs)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._started_at = time.time()
        self._instance = ""
        #: the broker connection whose deliveries the in-flight set holds (see BrokerConnectionStep)
        self._connection = 0

    def start(self, worker: Any) -> None:
        self._instance = f"{worker.hostname}:{os.getpid()}:{int(self._started_at)}"
        _state["instance"] = self._instance
        queues = sorted(q.name for q in worker.app.amqp.queues.consume_from.values()) if worker.app.amqp.queues.consume_from else []
        settings = get_runtime().settings
        # The in-flight tags feed the orphan sweep of kombu's Redis unacked hash. RabbitMQ redelivers
        # a lost connection's deliveries itself (no sweep there): its tags are not recorded.
        _state["track_tags"] = not is_amqp_url(settings.broker_url)

        def run() -> None:
            from celery.worker import state as worker_state

            client = get_runtime().redis
            next_beat = 0.0
            while not self._stop.is_set():
                self._disown_after_reconnect(client)
                self._flush_tags(client)
                remaining = next_beat - time.monotonic()
                if remaining > 0:
                    if _wake.wait(remaining):
                        _wake.clear()
                        # A burst's deliveries go in one write: a few ms of gathering instead of a round
                        # trip (and a turn of the interpreter) per message in the worker's busiest process.
                        self._stop.wait(TAG_GATHER_S)
                    continue
                next_beat = time.monotonic() + settings.broker.heartbeat_s
                try:
                    heartbeats.beat(
                        client,
                        heartbeats.WorkerInfo(
                            instance=self._instance,
                            hostname=worker.hostname,
                            kind=_state["kind"],
                            queues=queues,
                            pid=os.getpid(),
                            started_at=self._started_at,
                            last_seen=time.time(),
                            active=len(worker_state.active_requests),
                            processed=int(worker_state.total_count.total() if hasattr(worker_state.total_count, "total") else sum(worker_state.total_count.values())),
                            version=__version__,
                        ),
                    )
                except Exception:  # noqa: BLE001 - a missed beat is survivable; the next one retries
                    _log.warning("heartbeat failed", exc_info=True)

        self._thread = threading.Thread(target=run, name="omni-heartbeat", daemon=True)
        self._thread.start()
        _log.info("worker heartbeat started", instance=self._instance, kind=_state["kind"], queues=queues)

    def _disown_after_reconnect(self, client: Any) -> None:
        """After a broker reconnection, forget the deliveries of the old connection (they can no longer be acked here)."""
        current = _state["connection"]
        if current == self._connection:
            return
        try:
            dropped = heartbeats.disown(client, self._instance)
        except Exception:  # noqa: BLE001 - Redis may still be coming back; tried again on the next loop
            _log.warning("could not disown the deliveries of the lost broker connection", exc_info=True)
            return
        if self._connection and dropped:
            _log.warning("broker connection lost: deliveries of the old connection left to the orphan sweep", dropped=dropped)
        self._connection = current

    def _flush_tags(self, client: Any) -> None:
        tags = []
        while _pending_tags:
            connection, tag = _pending_tags[0]
            if connection > self._connection:
                break  # a newer connection: recorded after the disown of the older one, on the next loop
            _pending_tags.popleft()
            if connection == self._connection:  # a tag of an older connection is not held any more
                tags.append((connection, tag))
        if not tags:
            return
        try:
            heartbeats.track_deliveries(client, self._instance, [tag for _, tag in tags])
        except Exception:  # noqa: BLE001 - tracking is best effort; the orphan sweep still applies
            _pending_tags.extendleft(reversed(tags))
            _log.warning("could not record in-flight deliveries", exc_info=True)

    def stop(self, worker: Any) -> None:
        self._stop.set()
        _wake.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        try:
            heartbeats.leave(get_runtime().redis, self._instance)
        except Exception:  # noqa: BLE001 - shutting down; the sweeper handles a missing leave
            _log.warning("could not deregister worker", exc_info=True)

    shutdown = stop


class BrokerConnectionStep(bootsteps.StartStopStep):
    """Consumer step: counts broker connections. The consumer restarts its steps after each reconnection,
    and what the worker received on an older connection it can no longer acknowledge."""

    requires = {"celery.worker.consumer.connection:Connection"}

    def start(self, consumer: Any) -> None:
        _state["connection"] += 1
        _wake.set()


class AlarmListenerStep(bootsteps.StartStopStep):
    """In a worker that consumes the watchdog queue: the safety-alarm listener thread (critical alarm -> kill switch)."""

    requires = {"celery.worker.components:Pool"}

    def __init__(self, worker: Any, **kwargs: Any) -> None:
        super().__init__(worker, **kwargs)
        self._listener: Any = None

    def start(self, worker: Any) -> None:
        from omni_tasks.pipeline.queues import Queue

        consume_from = worker.app.amqp.queues.consume_from
        queues = {q.name for q in consume_from.values()} if consume_from else set()
        if Queue.WATCHDOG.value not in queues:
            return
        from omni_tasks.pipeline.broker import broker_transport_options, orders_purger
        from omni_tasks.safety.watchdog_listener import start_watchdog_listener
        from omni_tasks.trading.wiring import make_venue

        runtime = get_runtime()
        settings = runtime.settings
        purge = orders_purger(settings.broker_url, Queue.ORDERS.value, broker_transport_options(settings))
        self._listener = start_watchdog_listener(runtime, purge=purge, venue_factory=make_venue)
        _log.info("safety alarm listener started", worker=worker.hostname)

    def stop(self, worker: Any) -> None:
        if self._listener is not None:
            self._listener.stop()
            self._listener = None

    shutdown = stop


def install(app: Celery) -> None:
    """Attach the signal handlers (process-wide, connected once) and the worker's bootsteps to ``app``. Reads no settings."""
    app.steps["worker"].add(AlarmListenerStep)
    signals.setup_logging.connect(_on_setup_logging, weak=False)
    signals.before_task_publish.connect(_on_before_publish, weak=False)
    signals.task_received.connect(_on_task_received, weak=False)
    signals.task_rejected.connect(_on_task_rejected, weak=False)
    signals.task_revoked.connect(_on_task_revoked, weak=False)
    signals.worker_process_init.connect(_on_process_init, weak=False)
    signals.worker_ready.connect(_on_worker_ready, weak=False)
    # A pool child leaves through os._exit (no atexit): its buffered task-sent counts go first.
    signals.worker_process_shutdown.connect(lambda **_: _sent.flush(), weak=False)
    app.steps["worker"].add(HeartbeatStep)
    app.steps["consumer"].add(BrokerConnectionStep)
