"""Unit tests of the RabbitMQ configuration: queue arguments, transport options, start-up refusals, the management API's URL."""

from __future__ import annotations

from pathlib import Path

import pytest

from omni_tasks.core.errors import BootRefused
from omni_tasks.ops.startup_checks import check_consumer_timeout, check_delivery_limit
from omni_tasks.pipeline import rabbit
from omni_tasks.pipeline.app import celery_config
from omni_tasks.pipeline.broker import broker_transport_options
from omni_tasks.pipeline.queues import ALL_QUEUES
from omni_tasks.pipeline.taskdef import task_time_limits
from omni_tasks.settings import load_settings

AMQP = "amqp://desk:s%40cret@rabbit.example:5672/omni"


def _settings(tmp_path: Path, **extra: str):  # type: ignore[no-untyped-def]
    return load_settings({"OMNI_DATA_DIR": str(tmp_path), "OMNI_BROKER_CACHE_URL": "redis://127.0.0.1:6379/0", **extra})


def test_on_amqp_the_six_queues_are_durable_quorum_queues_with_a_delivery_limit_and_dead_lettering(tmp_path: Path) -> None:
    config = celery_config(_settings(tmp_path, OMNI_BROKER_URL=AMQP, OMNI_BROKER_CONSUMER_TIMEOUT_S="7200"))
    queues = {q.name: q for q in config["task_queues"]}
    assert set(queues) == {q.value for q in ALL_QUEUES}
    for name, queue in queues.items():
        assert queue.durable
        assert not queue.auto_delete
        assert queue.exchange.type == "topic", "topic: Celery's native delayed delivery carries countdowns on quorum queues"
        assert queue.queue_arguments == {
            "x-queue-type": "quorum",
            "x-delivery-limit": rabbit.DELIVERY_LIMIT,
            "x-dead-letter-exchange": rabbit.DEAD_LETTER_EXCHANGE,
            "x-dead-letter-routing-key": name,
            "x-consumer-timeout": 7_200_000,
        }
    assert config["broker_transport_options"]["confirm_publish"] is True
    assert config["task_acks_late"] is True
    assert config["task_reject_on_worker_lost"] is True


def test_on_redis_the_queues_and_transport_options_are_unchanged(tmp_path: Path) -> None:
    settings = _settings(tmp_path, OMNI_BROKER_URL="redis://127.0.0.1:6379/0")
    config = celery_config(settings)
    assert all(q.queue_arguments is None and q.exchange.type == "direct" for q in config["task_queues"])
    options = broker_transport_options(settings)
    assert "confirm_publish" not in options
    assert options["visibility_timeout"] == settings.broker.visibility_timeout_s


def test_every_queue_has_a_dead_letter_queue_bound_by_its_name() -> None:
    dead = {q.name: q for q in rabbit.dead_letter_queues()}
    assert set(dead) == {q.value + ".dead" for q in ALL_QUEUES}
    assert all(q.exchange.name == rabbit.DEAD_LETTER_EXCHANGE and q.routing_key + ".dead" == q.name for q in dead.values())


@pytest.mark.parametrize("timeout_s", [150, 100])
def test_a_consumer_timeout_not_above_the_largest_task_limit_refuses_in_one_line(timeout_s: int) -> None:
    with pytest.raises(BootRefused) as caught:
        check_consumer_timeout(timeout_s, [("omni.system.ping", 10.0), ("omni.backfill.partition", 150.0)])
    message = str(caught.value)
    assert "\n" not in message
    assert "omni.backfill.partition" in message
    assert "consumer_timeout" in message


def test_the_default_consumer_timeout_is_above_every_registered_task_limit(tmp_path: Path) -> None:
    check_consumer_timeout(_settings(tmp_path, OMNI_BROKER_URL=AMQP).broker.consumer_timeout_s, task_time_limits())


def test_max_deliveries_above_the_brokers_delivery_limit_refuses() -> None:
    check_delivery_limit(rabbit.DELIVERY_LIMIT, rabbit.DELIVERY_LIMIT)
    with pytest.raises(BootRefused, match="OMNI_BROKER_MAX_DELIVERIES=21"):
        check_delivery_limit(21, 20)


def test_management_api_url_carries_the_broker_users_credentials() -> None:
    assert rabbit.management_api_url("http://rabbit.example:15672", AMQP) == "http://desk:s%40cret@rabbit.example:15672/api/"
    assert rabbit.management_api_url("https://mq.example/api/", "amqp://u:p@h/") == "https://u:p@mq.example/api/"
    assert rabbit.vhost_of(AMQP) == "omni"
    assert rabbit.quote_vhost("amqp://u:p@h:5672/") == "%2F"


def test_flower_gets_broker_api_only_on_amqp_with_the_management_url(tmp_path: Path) -> None:
    assert rabbit.flower_broker_args(_settings(tmp_path, OMNI_BROKER_URL="redis://127.0.0.1:6379/0")) == []
    assert rabbit.flower_broker_args(_settings(tmp_path, OMNI_BROKER_URL=AMQP)) == []
    with_api = _settings(tmp_path, OMNI_BROKER_URL=AMQP, OMNI_BROKER_MANAGEMENT_URL="http://rabbit.example:15672")
    assert rabbit.flower_broker_args(with_api) == ["--broker_api=http://desk:s%40cret@rabbit.example:15672/api/"]


def test_consumer_timeouts_are_read_from_a_policy_or_the_queue_argument() -> None:
    rows = [
        {"name": "orders", "arguments": {"x-consumer-timeout": 1_800_000}, "effective_policy_definition": {"consumer-timeout": 60_000}},
        {"name": "scans", "arguments": {"x-consumer-timeout": 3_600_000}, "effective_policy_definition": {}},
        {"name": "other", "arguments": {}},
    ]
    assert rabbit.effective_consumer_timeouts_s(rows) == {"orders": 60.0, "scans": 3600.0}
    assert rabbit.consumer_timeout_is_per_queue("3.12.1")
    assert not rabbit.consumer_timeout_is_per_queue("3.10.8")


def test_a_delayed_messages_routing_key_names_its_queue() -> None:
    from omni_tasks.pipeline.queues import queue_of

    assert queue_of("0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.1.orders") == "orders"
    assert queue_of("scans") == "scans"
    assert queue_of(None) is None
    assert queue_of("") == ""
