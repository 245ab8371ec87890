"""RabbitMQ as the broker, on the machine's RabbitMQ in vhosts this session creates and deletes.

The topology the pipeline declares (quorum queues, the broker's delivery limit
and dead-letter queues), the kill switch's purge of the orders queue, queue
depths read from the broker, the start-up refusals, the consumer timeout of
this broker, and orders across a broker restart. The shared RabbitMQ is never
restarted: the restart is staged by closing every connection of the session's
vhost, which is what a restart does to the clients. Each test prints its figures.
"""

from __future__ import annotations

import signal
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import redis
from kombu import Connection
from sqlalchemy import select

from omni_tasks.core.errors import BootRefused
from omni_tasks.core.keys import PROBE_COMPLETIONS_KEY
from omni_tasks.ops.startup_checks import check_consumer_timeout, check_rabbitmq
from omni_tasks.pipeline import rabbit
from omni_tasks.pipeline.broker import amqp_queue_depths, broker_transport_options, orders_purger, queue_depths
from omni_tasks.pipeline.queues import ALL_QUEUES
from omni_tasks.pipeline.taskdef import task_time_limits
from omni_tasks.safety.drill import serve_quote
from omni_tasks.safety.killswitch import current_state
from omni_tasks.settings import load_settings
from omni_tasks.storage.engine import make_engine, session_factory
from omni_tasks.storage.models import Fill, Order
from omni_tasks.trading.intake import accept_order
from omni_tasks.trading.parsing import parse_order
from tests.conftest import RABBITMQ_BASE_URL, RABBITMQ_USER, OmniProcess, RabbitVhost, rabbitmqctl, service_env, wait_for, wait_for_worker

pytestmark = [pytest.mark.services, pytest.mark.slow]


@pytest.fixture
def vhost(rabbitmq_vhost: RabbitVhost) -> RabbitVhost:
    rabbitmq_vhost.purge_all()
    return rabbitmq_vhost


@pytest.fixture
def scratch_vhost(rabbitmq_vhost: RabbitVhost) -> Iterator[RabbitVhost]:
    """A second vhost of the test's own, for queues the pipeline must refuse."""
    name = f"{rabbitmq_vhost.name}-scratch-{uuid.uuid4().hex[:4]}"
    rabbitmqctl("add_vhost", name)
    try:
        rabbitmqctl("set_permissions", "-p", name, RABBITMQ_USER, ".*", ".*", ".*")
        yield RabbitVhost(name, f"{RABBITMQ_BASE_URL}/{name}")
    finally:
        rabbitmqctl("delete_vhost", name)


def test_the_pipeline_declares_quorum_queues_whose_poison_messages_the_broker_dead_letters(vhost: RabbitVhost) -> None:
    version = rabbit.declare_topology(vhost.url, 1800)
    listed = rabbitmqctl("list_queues", "-p", vhost.name, "name", "type", "durable", "-q")
    types = {line.split()[0]: line.split()[1:] for line in listed.splitlines() if line.strip()}
    for q in ALL_QUEUES:
        assert types[q.value] == ["quorum", "true"], types
        assert types[q.value + ".dead"] == ["quorum", "true"], types
    # A message that is handed back every time (a consumer dying on it) is delivered 1 + DELIVERY_LIMIT times, then dead-lettered.
    started = time.monotonic()
    deliveries = 0
    with Connection(vhost.url, connect_timeout=5) as connection:
        channel = connection.default_channel
        channel.basic_publish(channel.prepare_message(b"poison"), exchange="scans", routing_key="scans")
        while deliveries <= rabbit.DELIVERY_LIMIT + 2:
            message = None
            for _ in range(50):
                message = channel.basic_get("scans")
                if message is not None:
                    break
                time.sleep(0.02)
            if message is None:
                break
            deliveries += 1
            channel.basic_reject(message.delivery_tag, requeue=True)
    wait_for(lambda: rabbit.dead_lettered(vhost.url, ["scans"])["scans"] == 1, 10, message="the message in scans.dead")
    print(
        f"\n[rabbitmq {version}] poison message: delivered {deliveries} times (x-delivery-limit {rabbit.DELIVERY_LIMIT}), "
        f"then dead-lettered to scans.dead by the broker in {time.monotonic() - started:.2f} s"
    )
    assert deliveries == rabbit.DELIVERY_LIMIT + 1
    assert amqp_queue_depths(vhost.url, ["scans"]) == {"scans": 0}


def test_kill_switch_purge_empties_the_orders_queue_on_amqp_and_depths_come_from_the_broker(
    vhost: RabbitVhost, redis_url: str, redis_client: redis.Redis, tmp_path: Path
) -> None:
    from omni_tasks.pipeline.app import create_app

    settings = load_settings({"OMNI_DATA_DIR": str(tmp_path), "OMNI_BROKER_URL": vhost.url, "OMNI_BROKER_CACHE_URL": redis_url})
    sender = create_app(settings)
    n = 25
    try:
        for i in range(n):
            sender.send_task("omni.orders.submit", kwargs={"client_order_id": f"purge-{i}"}, queue="orders")
        for _ in range(3):
            sender.send_task("omni.system.ping", queue="scans")
    finally:
        sender.close()
    # Publisher confirms: every send returned once the broker had the message, so the counts are exact at once.
    depths, oldest = queue_depths(redis_client, vhost.url, [q.value for q in ALL_QUEUES])
    assert depths["orders"] == n
    assert depths["scans"] == 3
    assert oldest == {}
    started = time.monotonic()
    purged = orders_purger(vhost.url, "orders", broker_transport_options(settings))()
    purge_s = time.monotonic() - started
    print(
        f"\n[rabbitmq] kill switch purge: {purged} of {n} queued orders dropped in {purge_s * 1000:.0f} ms; scans untouched ({depths['scans']})"
    )
    assert purged == n
    assert amqp_queue_depths(vhost.url, ["orders", "scans"]) == {"orders": 0, "scans": 3}
    assert orders_purger(vhost.url, "orders")() == 0


def test_start_up_refuses_unsafe_rabbitmq_in_one_line(scratch_vhost: RabbitVhost) -> None:
    limits = task_time_limits()
    version = check_rabbitmq(scratch_vhost.url, 1800, 5, None, limits)
    assert version.startswith("3.")
    with pytest.raises(BootRefused) as no_management:  # named but not answering (here: the plugin is off)
        check_rabbitmq(scratch_vhost.url, 1800, 5, "http://127.0.0.1:1", limits)
    # A queue of the pipeline that exists as a classic queue (or with another delivery limit) is refused, not used.
    with Connection(scratch_vhost.url, connect_timeout=5) as connection:
        connection.default_channel.queue_delete("orders")
        connection.default_channel.queue_declare("orders", durable=True, auto_delete=False)
    refusals = [str(no_management.value)]
    for call in (
        lambda: check_rabbitmq(scratch_vhost.url, 1800, 5, None, limits),
        lambda: check_rabbitmq(scratch_vhost.url, 60, 5, None, limits),
        lambda: check_rabbitmq(scratch_vhost.url, 1800, 50, None, limits),
        lambda: check_rabbitmq("amqp://guest:guest@127.0.0.1:1/none", 1800, 5, None, limits),
    ):
        with pytest.raises(BootRefused) as caught:
            call()
        refusals.append(str(caught.value))
    print("\n[rabbitmq] start-up refusals:\n  " + "\n  ".join(refusals))
    assert all("\n" not in text for text in refusals)
    assert "management API" in refusals[0]
    assert "PRECONDITION_FAILED" in refusals[1]
    assert "quorum" in refusals[1]
    assert "consumer timeout 60 s" in refusals[2]
    assert "OMNI_BROKER_MAX_DELIVERIES=50" in refusals[3]
    assert "unreachable" in refusals[4]


def test_this_brokers_consumer_timeout_is_the_setting_and_above_every_task_limit(tmp_path: Path) -> None:
    """On 3.10 the timeout is rabbitmq.conf's consumer_timeout (x-consumer-timeout is honoured from 3.12): read it from the node."""
    out = rabbitmqctl("eval", "application:get_env(rabbit, consumer_timeout).").strip()
    configured_ms = int(out.split(",")[1].rstrip("}")) if out.startswith("{ok,") else None
    default_s = load_settings({"OMNI_DATA_DIR": str(tmp_path)}).broker.consumer_timeout_s
    largest = max(limit for _, limit in task_time_limits())
    print(
        f"\n[rabbitmq] node consumer_timeout {configured_ms} ms; OMNI_BROKER_CONSUMER_TIMEOUT_S default {default_s} s; largest task time limit {largest:g} s"
    )
    assert configured_ms is not None, f"consumer_timeout is off on this node ({out}): no redelivery of a stuck delivery"
    assert configured_ms / 1000 == default_s
    check_consumer_timeout(configured_ms / 1000, task_time_limits(), source="rabbitmq.conf")


def test_orders_across_a_staged_broker_restart_all_end_recorded_and_none_fills_twice(
    vhost: RabbitVhost, redis_url: str, redis_client: redis.Redis, pg_database: Any, tmp_path: Path, omni_processes: list[OmniProcess]
) -> None:
    from omni_tasks.pipeline.app import create_app
    from omni_tasks.storage import migrations

    # A database of its own: the session's shared one may hold a kill switch an earlier test left engaged.
    migrated_pg_url = pg_database()
    migrations.upgrade(make_engine(migrated_pg_url))

    open_limits = {
        "OMNI_RISK_QUOTE_MAX_AGE_S": "600", "OMNI_TRADING_QUOTE_MAX_AGE_S": "600", "OMNI_RISK_MAX_TRADES_PER_DAY": "100000",
        "OMNI_RISK_MAX_POSITION_NOTIONAL_USD": "10000000", "OMNI_RISK_MAX_CONCENTRATION_PCT": "100",
        "OMNI_RISK_MAX_GROSS_LEVERAGE": "100", "OMNI_LOG_LEVEL": "WARNING",
    }  # fmt: skip
    env = service_env(
        redis_url=vhost.url, database_url=migrated_pg_url, data_dir=tmp_path / "data", OMNI_BROKER_CACHE_URL=redis_url, **open_limits
    )
    settings = load_settings(env)
    engine = make_engine(migrated_pg_url)
    sessions = session_factory(engine)
    sender = create_app(settings)
    serve_quote(redis_client, "AAPL", Decimal("189.99"), Decimal("190.01"), ttl_s=600)
    current_state(redis_client, sessions)
    worker = OmniProcess(["worker", "orders"], env, tmp_path / "logs" / "orders.log").start()
    omni_processes.append(worker)
    wait_for_worker(redis_client, "orders", worker)

    def accept(i: int) -> str:
        request = parse_order(
            symbol="AAPL",
            side="buy" if i % 2 == 0 else "sell",
            qty="1",
            client_order_id=f"amqp-{uuid.uuid4().hex[:20]}",
            requested_by="operator:test",
        )
        accept_order(
            request, sessions=sessions, venue="simulated", ttl_s=120,
            send=lambda kwargs: sender.send_task("omni.orders.submit", kwargs=kwargs, queue="orders"),
        )  # fmt: skip
        return request.client_order_id

    def statuses(ids: list[str]) -> dict[str, str]:
        with engine.connect() as connection:
            return dict(connection.execute(select(Order.client_order_id, Order.status).where(Order.client_order_id.in_(ids))).all())  # type: ignore[arg-type]

    n = 40
    try:
        # A countdown (what a retry sends) rides Celery's native delayed delivery on quorum queues, not a worker's memory.
        marker = f"countdown-{uuid.uuid4().hex[:8]}"
        sender.send_task("omni.system.probe", args=[marker, 0.0], queue="orders", countdown=1)
        countdown_s = wait_for(lambda: redis_client.hget(PROBE_COMPLETIONS_KEY, marker) is not None, 30, message="the countdown task run")
        # Half the orders wait behind a paused worker, so the restart catches them queued and delivered-unacknowledged.
        worker.kill_group(signal.SIGSTOP)
        accepted = [accept(i) for i in range(n // 2)]
        connections_before = vhost.connection_count()
        vhost.close_connections("omni test: a staged broker restart")
        restarted = time.monotonic()
        worker.kill_group(signal.SIGCONT)
        accepted += [accept(i) for i in range(n // 2, n)]  # the sender reconnects and publishes with confirms
        after = f"countdown-after-{uuid.uuid4().hex[:8]}"
        sender.send_task("omni.system.probe", args=[after, 0.0], queue="orders", countdown=1)
        wait_for(
            lambda: "pending" not in statuses(accepted).values() and len(statuses(accepted)) == n,
            120,
            interval_s=0.5,
            message="every order decided",
        )
        recovered_s = time.monotonic() - restarted
        wait_for(lambda: redis_client.hget(PROBE_COMPLETIONS_KEY, after) is not None, 30, message="the countdown sent after the restart run")
        delayed = rabbitmqctl("list_queues", "-p", vhost.name, "name", "-q")
        final = statuses(accepted)
        with engine.connect() as connection:
            fills = Counter(
                r[0]
                for r in connection.execute(
                    select(Order.client_order_id).join(Fill, Fill.order_id == Order.id).where(Order.client_order_id.in_(accepted))
                ).all()
            )
        unfinished = sum(1 for s in final.values() if s == "pending")
        filled_twice = sum(1 for c in fills.values() if c > 1)
        print(
            f"\n[rabbitmq] orders across a staged broker restart (every connection of the vhost closed, {connections_before} before): "
            f"accepted {n}, without a final status {unfinished}, filled twice {filled_twice}, statuses {dict(Counter(final.values()))}, "
            f"all decided {recovered_s:.1f} s after the restart; a task sent with countdown 1 s ran after {countdown_s:.1f} s"
        )
        assert countdown_s >= 1.0
        assert "celery_delayed_0" in delayed, "the countdown went through the broker's delay queues"
        assert connections_before >= 1
        assert vhost.connection_count() >= 1, "the worker and the sender reconnected"
        assert unfinished == 0
        assert filled_twice == 0
        assert all(fills[c] == 1 for c, s in final.items() if s == "filled")
    finally:
        worker.kill_group(signal.SIGCONT)
        sender.close()
        engine.dispose()
