"""The baseline of bench/celery_overhead.py: a bare Celery app with one plain no-op task.

It has the broker and worker settings of ``omni_tasks.pipeline.app.celery_config``
(JSON only, late ack with rejection on worker loss, prefetch 1, the same Redis
transport options, results ignored, task and sent events on, declared queues
only) and nothing of the pipeline: no decorator, no outcome record, no metrics,
no signal handlers, no heartbeat. The benchmark checks that the shared settings
really are equal before it measures.

It never imports ``omni_tasks`` (importing it would connect the pipeline's
publish signal handler). The broker URL comes from ``BENCH_BARE_BROKER_URL``
(not an ``OMNI_*`` name: the pipeline's settings refuse unknown ones).

    BENCH_BARE_BROKER_URL=redis+socket:///tmp/x/redis.sock \\
        python -m celery -A bench.bare_app worker -Q bare -P prefork -c 2 --without-mingle --without-gossip -E
"""

from __future__ import annotations

import os

from celery import Celery
from kombu import Exchange, Queue

BROKER_URL_ENV = "BENCH_BARE_BROKER_URL"
QUEUE = "bare"

app = Celery("bare")
app.conf.update(
    broker_url=os.environ.get(BROKER_URL_ENV, "redis://localhost:6379/0"),
    # Literal copies of the pipeline's values; bench/celery_overhead.py refuses to run if they drift.
    broker_transport_options={
        "visibility_timeout": 3600,
        "unacked_restore_interval": 2,
        "unacked_restore_throttle": 1,
        "socket_timeout": 30,
        "socket_connect_timeout": 5,
        "health_check_interval": 10,
    },
    broker_connection_retry_on_startup=True,
    task_serializer="json",
    result_serializer="json",
    event_serializer="json",
    accept_content=["json"],
    result_accept_content=["json"],
    task_acks_late=True,
    task_reject_on_worker_lost=True,
    worker_prefetch_multiplier=1,
    worker_cancel_long_running_tasks_on_connection_loss=True,
    task_queues=[Queue(QUEUE, Exchange(QUEUE, type="direct"), routing_key=QUEUE)],
    task_default_queue=QUEUE,
    task_default_exchange=QUEUE,
    task_default_routing_key=QUEUE,
    task_create_missing_queues=False,
    worker_send_task_events=True,
    task_send_sent_event=True,
    event_queue_expires=60,
    event_queue_ttl=10,
    task_ignore_result=True,
    worker_state_db=None,
)


@app.task(name="bare.noop")
def noop() -> None:
    """Do nothing."""
