"""The Celery application: configuration from settings, queues, routes. Celery starts here.

Import ``app`` from this module; task modules are listed in ``TASK_MODULES``.
Importing it builds the application object but reads no settings: its
configuration (:func:`celery_config`) is computed from the installed settings
the first time Celery reads it (a worker starting, a first publish). The
worker and publish hooks (:mod:`omni_tasks.pipeline.hooks`) are attached to
every application built here; the task decorator registers on ``app``.
"""

from __future__ import annotations

from typing import Any

from celery import Celery
from kombu import Exchange
from kombu import Queue as KombuQueue

from omni_tasks.core.runtime import get_settings
from omni_tasks.pipeline import hooks as worker_hooks
from omni_tasks.pipeline import rabbit
from omni_tasks.pipeline.broker import broker_transport_options, is_amqp_url
from omni_tasks.pipeline.queues import ALL_QUEUES
from omni_tasks.settings import Settings

TASK_MODULES = (
    "omni_tasks.system.tasks",
    "omni_tasks.watchdog.tasks",
    "omni_tasks.marketdata.tasks",
    "omni_tasks.scans.tasks",
    "omni_tasks.validation.tasks",
    "omni_tasks.news.tasks",
    "omni_tasks.trading.tasks",
    "omni_tasks.risk.tasks",
)


def _result_backend(settings: Settings) -> str:
    # "redis+socket:///path" works for both kombu and Celery's Redis result backend.
    return settings.redis_url


def celery_config(settings: Settings) -> dict[str, Any]:
    """Every Celery setting the design relies on, in one place."""
    from beat_schedule import BEAT_SCHEDULE

    if is_amqp_url(settings.broker_url):
        queues = rabbit.kombu_queues(settings.broker.consumer_timeout_s)
    else:
        queues = [KombuQueue(q.value, Exchange(q.value, type="direct"), routing_key=q.value) for q in ALL_QUEUES]
    return {
        "broker_url": settings.broker_url,
        "result_backend": _result_backend(settings),
        "broker_transport_options": broker_transport_options(settings),
        "result_backend_transport_options": {"socket_timeout": 30, "socket_connect_timeout": 5},
        "broker_connection_retry_on_startup": True,
        # JSON only: no pickle anywhere.
        "task_serializer": "json",
        "result_serializer": "json",
        "event_serializer": "json",
        "accept_content": ["json"],
        "result_accept_content": ["json"],
        # Delivery guarantees: ack after the task ran, requeue when the child dies.
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        "worker_prefetch_multiplier": 1,
        "worker_cancel_long_running_tasks_on_connection_loss": True,
        # Queues are declared; a task routed to an unknown queue fails loudly.
        "task_queues": queues,
        "task_create_missing_queues": False,
        # RabbitMQ: countdowns (retries) wait in the broker's delay queues, durable quorum queues too.
        "broker_native_delayed_delivery_queue_type": "quorum",
        "task_default_queue": "omni-unrouted",
        "task_default_exchange": "omni-unrouted",
        "task_routes": ("omni_tasks.pipeline.taskdef.route_task",),
        # Every task has limits; the decorator sets its own, these catch the rest.
        "task_soft_time_limit": 60,
        "task_time_limit": 90,
        # Events for Flower and queue-wait metrics.
        "worker_send_task_events": True,
        "task_send_sent_event": True,
        "event_queue_expires": 60,
        "event_queue_ttl": 10,
        # Bounded results.
        "result_expires": settings.broker.result_expires_s,
        "task_ignore_result": True,
        # Logging is ours (JSON, redacted).
        "worker_hijack_root_logger": False,
        "worker_redirect_stdouts": False,
        # Beat: times in the exchange's zone; one leader (omni_tasks.pipeline.beat).
        "timezone": settings.core.exchange_tz,
        "enable_utc": True,
        "beat_schedule": BEAT_SCHEDULE,
        "beat_scheduler": "omni_tasks.pipeline.beat:LockedScheduler",
        "beat_max_loop_interval": max(0.5, min(5.0, settings.broker.beat_lock_ttl_s / 3)),
        "worker_state_db": None,
    }


def create_app(settings: Settings | None = None) -> Celery:
    """A Celery application with the pipeline's configuration and hooks.

    With ``settings`` it is configured now (a test's sender); without, its
    configuration is read from the process's installed settings when Celery
    first needs it, so building it reads nothing.
    """
    celery_app = Celery("omni_tasks", include=list(TASK_MODULES))
    if settings is None:
        celery_app.add_defaults(lambda: celery_config(get_settings()))
    else:
        celery_app.conf.update(celery_config(settings))
    worker_hooks.install(celery_app)
    return celery_app


app = create_app()
