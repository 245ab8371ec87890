"""Engaging the kill switch from this process: `omni kill engage` and the health server's POST /kill/engage.

Both engage with the configured trading broker (cancel and flatten) and purge
the orders queue on the Celery broker; the health server's endpoint is built
from the settings (no token set: no endpoint).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from omni_tasks.ops.httpserver import KillEndpoint
    from omni_tasks.settings import Settings


def broker_for(runtime: Any) -> tuple[Any, str | None]:
    """The configured broker (omni_tasks.trading.wiring), or None with the reason it could not be built."""
    from omni_tasks.trading.wiring import make_venue

    try:
        return make_venue(runtime), None
    except Exception as exc:  # noqa: BLE001 - engaging must go on without a broker
        return None, f"{type(exc).__name__}: {exc}"


def orders_purge(settings: Settings) -> Callable[[], int]:
    """Purges the orders queue on the configured Celery broker."""
    from omni_tasks.pipeline.broker import broker_transport_options, orders_purger
    from omni_tasks.pipeline.queues import Queue

    return orders_purger(settings.broker_url, Queue.ORDERS.value, broker_transport_options(settings))


def engage_with_process_runtime(*, actor: str, reason: str, flatten: bool | None) -> Any:
    """Engage from this process (CLI or health server): the configured broker, the orders-queue purge."""
    from omni_tasks.core.runtime import get_runtime
    from omni_tasks.safety.engage import engage as do_engage

    runtime = get_runtime()
    broker, problem = broker_for(runtime)
    result = do_engage(runtime, actor=actor, reason=reason, broker=broker, flatten=flatten, purge=orders_purge(runtime.settings))
    if problem is not None:
        result.errors["broker"] = problem
    return result


def http_kill_endpoint(settings: Settings) -> KillEndpoint | None:
    """The health server's POST /kill/engage from ``settings`` (None: no token set, the endpoint is off)."""
    from omni_tasks.ops.httpserver import KillEndpoint

    token = settings.kill.http_token
    if token is None or not token.get_secret_value():
        return None
    return KillEndpoint(token=token.get_secret_value(), engage=engage_with_process_runtime)
