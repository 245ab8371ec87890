"""Which broker this process trades through: the one ``OMNI_TRADING_BROKER`` names, built from the runtime.

Everything that needs a broker (the orders task, the kill switch, the risk task,
``omni kill drill``) calls :func:`make_broker`, so the choice is made in one place.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from omni_tasks.trading.broker import Broker, Guard

if TYPE_CHECKING:
    from omni_tasks.runtime import Runtime


def make_broker(runtime: Runtime, *, guard: Guard | None = None) -> Broker:
    """The configured broker: ``simulated`` (ledger in the runtime's database, quotes from its Redis) or ``alpaca_paper``.

    ``guard`` runs right before each order is accepted (the kill switch's last-step check).
    Raises :class:`~omni_tasks.errors.ConfigError` when Alpaca is chosen without keys.
    """
    settings = runtime.settings
    choice = settings.trading.broker
    if choice == "simulated":
        from omni_tasks.trading.simulated import SimulatedBroker

        return SimulatedBroker(
            runtime.sessions,
            runtime.redis,
            starting_cash=settings.trading.starting_cash_usd,
            quote_max_age_s=settings.trading.quote_max_age_s,
            guard=guard,
            exchange_tz=settings.core.exchange_tz,
        )
    if choice == "alpaca_paper":
        from omni_tasks.trading.alpaca_paper import AlpacaPaperBroker

        return AlpacaPaperBroker(settings, guard=guard, sessions=runtime.sessions)
    raise ValueError(
        f"OMNI_TRADING_BROKER={choice!r}: no such broker (simulated or alpaca_paper)"
    )  # settings validation makes this unreachable
