"""RabbitMQ as the Celery broker: the queues' topology, the dead-letter queues, the consumer timeout, the management API.

On AMQP each of the six queues is a durable quorum queue behind its own topic
exchange (topic, so Celery's native delayed delivery carries retries with a
countdown instead of a worker holding them). The broker counts deliveries
itself: a message returned more than :data:`DELIVERY_LIMIT` times is
dead-lettered to ``omni.dead`` and lands in ``<queue>.dead``. The task's own
count (``OMNI_BROKER_MAX_DELIVERIES``, at most this limit) records the dead
letter in the ledger first; the broker's limit is the backstop for a message
that kills its worker before the task can count it.

RabbitMQ redelivers the unacknowledged messages of a connection as soon as
the connection closes (a worker killed, a host cut off): there is no
visibility timeout and no dead-worker sweep on AMQP. Instead the broker closes
a channel whose delivery stays unacknowledged longer than its consumer
timeout, so that timeout must exceed every task's hard time limit. kombu is
imported inside the functions that talk to the broker.
"""

from __future__ import annotations

import json
import urllib.parse
import urllib.request
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

import structlog

from omni_tasks.pipeline.queues import ALL_QUEUES

if TYPE_CHECKING:
    from omni_tasks.settings import Settings

_log = structlog.get_logger("omni.broker")

#: The quorum queues' ``x-delivery-limit``: fixed, because RabbitMQ refuses to redeclare a queue with another one.
DELIVERY_LIMIT = 20
#: The dead-letter exchange (direct, routed by the queue's name) and the suffix of each queue's dead-letter queue.
DEAD_LETTER_EXCHANGE = "omni.dead"
DEAD_LETTER_SUFFIX = ".dead"


def queue_arguments(name: str, consumer_timeout_s: int) -> dict[str, Any]:
    """The arguments every pipeline queue is declared with on RabbitMQ.

    ``x-consumer-timeout`` is honoured from RabbitMQ 3.12 on; older brokers
    ignore it and apply ``consumer_timeout`` from rabbitmq.conf (the start-up
    check then relies on ``OMNI_BROKER_CONSUMER_TIMEOUT_S`` saying what it is).
    """
    return {
        "x-queue-type": "quorum",
        "x-delivery-limit": DELIVERY_LIMIT,
        "x-dead-letter-exchange": DEAD_LETTER_EXCHANGE,
        "x-dead-letter-routing-key": name,
        "x-consumer-timeout": int(consumer_timeout_s * 1000),
    }


def kombu_queues(consumer_timeout_s: int) -> list[Any]:
    """The six queues as kombu declares them on AMQP: durable quorum queues behind topic exchanges."""
    from kombu import Exchange, Queue

    return [
        Queue(
            q.value,
            Exchange(q.value, type="topic", durable=True),
            routing_key=q.value,
            durable=True,
            auto_delete=False,
            queue_arguments=queue_arguments(q.value, consumer_timeout_s),
        )
        for q in ALL_QUEUES
    ]


def dead_letter_queues() -> list[Any]:
    from kombu import Exchange, Queue

    exchange = Exchange(DEAD_LETTER_EXCHANGE, type="direct", durable=True)
    return [
        Queue(
            q.value + DEAD_LETTER_SUFFIX,
            exchange,
            routing_key=q.value,
            durable=True,
            auto_delete=False,
            queue_arguments={"x-queue-type": "quorum"},
        )
        for q in ALL_QUEUES
    ]


def declare_topology(broker_url: str, consumer_timeout_s: int) -> str:
    """Declare the six queues, the dead-letter exchange and its queues, the delayed-delivery topology; returns the broker's version.

    Raises kombu's error when a queue exists with other arguments (a classic
    queue of the same name, another delivery limit): the start-up check turns
    that into its one line.
    """
    from kombu import Connection

    with Connection(broker_url, connect_timeout=5) as connection:
        channel = connection.default_channel
        queues = kombu_queues(consumer_timeout_s)
        for queue in [*queues, *dead_letter_queues()]:
            queue.bind(channel).declare()
        # Celery's native delayed delivery (countdowns, retries): its exchanges and queues, and our queues bound to them,
        # declared before any task is sent, not only when a worker's consumer starts.
        from kombu.transport.native_delayed_delivery import (
            bind_queue_to_native_delayed_delivery_exchange,
            declare_native_delayed_delivery_exchanges_and_queues,
        )

        declare_native_delayed_delivery_exchanges_and_queues(connection, "quorum")
        for queue in queues:
            bind_queue_to_native_delayed_delivery_exchange(connection, queue)
        return str(connection.connection.server_properties.get("version", "?"))


def version_tuple(version: str) -> tuple[int, ...]:
    parts = []
    for part in version.split(".")[:3]:
        digits = "".join(ch for ch in part if ch.isdigit())
        parts.append(int(digits or 0))
    return tuple(parts)


def consumer_timeout_is_per_queue(version: str) -> bool:
    """RabbitMQ 3.12 and later honour the ``x-consumer-timeout`` queue argument."""
    return version_tuple(version) >= (3, 12)


def dead_lettered(broker_url: str, queues: Iterable[str]) -> dict[str, int]:
    """Messages waiting in each queue's dead-letter queue (the broker's backstop)."""
    from omni_tasks.pipeline.broker import amqp_queue_depths

    names = list(queues)
    depths = amqp_queue_depths(broker_url, [n + DEAD_LETTER_SUFFIX for n in names])
    return {n: depths[n + DEAD_LETTER_SUFFIX] for n in names}


# ---- the management API (optional) -------------------------------------------------


def management_api_url(management_url: str, broker_url: str) -> str:
    """``management_url`` with the broker URL's user and password in it: what Flower's ``--broker_api`` takes."""
    broker = urllib.parse.urlsplit(broker_url)
    api = urllib.parse.urlsplit(management_url)
    user = urllib.parse.unquote(broker.username or "guest")
    password = urllib.parse.unquote(broker.password or "guest")
    netloc = f"{urllib.parse.quote(user, safe='')}:{urllib.parse.quote(password, safe='')}@{api.hostname}"
    if api.port:
        netloc += f":{api.port}"
    path = api.path.rstrip("/")
    if not path.endswith("/api"):
        path += "/api"
    return urllib.parse.urlunsplit((api.scheme or "http", netloc, path + "/", "", ""))


def flower_broker_args(settings: Settings) -> list[str]:
    """Flower's ``--broker_api`` (its Broker page) on RabbitMQ with the management API; none otherwise.

    Flower reads a Redis broker's queues itself. On RabbitMQ its Broker page
    needs the management plugin: without ``OMNI_BROKER_MANAGEMENT_URL`` the page
    stays empty (a warning says so) and queue depths come from ``/metrics``.
    """
    from omni_tasks.pipeline.broker import is_amqp_url

    if not is_amqp_url(settings.broker_url):
        return []
    if not settings.broker.management_url:
        _log.warning(
            "Flower's Broker page is empty on RabbitMQ without the management plugin: set OMNI_BROKER_MANAGEMENT_URL; queue depths are on /metrics"
        )
        return []
    return [f"--broker_api={management_api_url(settings.broker.management_url, settings.broker_url)}"]


def pipeline_queue_names() -> set[str]:
    return {q.value for q in ALL_QUEUES}


def quote_vhost(broker_url: str) -> str:
    """The broker URL's vhost as the management API's paths spell it (``/`` is ``%2F``)."""
    return urllib.parse.quote(vhost_of(broker_url), safe="")


def vhost_of(broker_url: str) -> str:
    path = urllib.parse.urlsplit(broker_url).path
    return urllib.parse.unquote(path[1:]) if len(path) > 1 else "/"


def management_get(management_url: str, broker_url: str, path: str, timeout_s: float = 5.0) -> Any:
    """GET ``/api/<path>`` of the management plugin, authenticated as the broker's user; the parsed JSON."""
    import base64

    api = urllib.parse.urlsplit(management_api_url(management_url, broker_url))
    if api.scheme not in ("http", "https"):
        raise ValueError(f"OMNI_BROKER_MANAGEMENT_URL must be http:// or https://, not {api.scheme!r}")
    host = f"{api.hostname}:{api.port}" if api.port else str(api.hostname)
    credentials = f"{urllib.parse.unquote(api.username or '')}:{urllib.parse.unquote(api.password or '')}"
    request = urllib.request.Request(  # noqa: S310 - http(s) only, checked above
        urllib.parse.urlunsplit((api.scheme, host, api.path + path.lstrip("/"), "", "")),
        headers={"Authorization": "Basic " + base64.b64encode(credentials.encode()).decode()},
    )
    with urllib.request.urlopen(request, timeout=timeout_s) as response:  # noqa: S310 - http(s) only, checked above
        return json.loads(response.read())


def effective_consumer_timeouts_s(queue_rows: Iterable[dict[str, Any]]) -> dict[str, float]:
    """Consumer timeouts (seconds) the management API shows per queue: an effective policy's ``consumer-timeout`` or the queue argument."""
    out: dict[str, float] = {}
    for row in queue_rows:
        policy = row.get("effective_policy_definition") or {}
        value = policy.get("consumer-timeout") if isinstance(policy, dict) else None
        if value is None:
            value = (row.get("arguments") or {}).get("x-consumer-timeout")
        if value is not None:
            out[str(row.get("name"))] = float(value) / 1000.0
    return out
