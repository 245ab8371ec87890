"""Which broker this process trades through: the one ``OMNI_TRADING_BROKER`` names, built from the runtime.

Everything that needs a broker (the orders task, the kill switch, the risk task,
``omni kill drill``) calls :func:`make_venue`, so the choice is made in one place.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from omni_tasks.contracts.venue import Guard, Venue

if TYPE_CHECKING:
    from omni_tasks.core.runtime import Runtime


def make_venue(runtime: Runtime, *, guard: Guard | None = None) -> Venue:
    """The configured broker: ``simulated`` (ledger in the runtime's database, quotes from its Redis) or ``alpaca_paper``.

    ``guard`` runs right before each order is accepted; by default it is the kill switch's
    :func:`~omni_tasks.safety.order_guard.order_guard`, so no broker this process builds sends an
    order while trading is HALTED (or its state cannot be read), and the simulated broker does not
    fill a resting order then either: the kill switch's own reads (``open_orders`` for its snapshot
    and its confirmation) never fill anything after it engaged. ``cancel_all`` and ``close_all``
    are never guarded. Raises :class:`~omni_tasks.core.errors.ConfigError` when Alpaca is chosen without keys.
    """
    settings = runtime.settings
    if guard is None:
        from omni_tasks.safety.order_guard import order_guard

        guard = order_guard(runtime.redis, runtime.sessions)
    choice = settings.trading.broker
    if choice == "simulated":
        from omni_tasks.trading.simulated import SimulatedVenue

        return SimulatedVenue(
            runtime.sessions,
            runtime.redis,
            starting_cash=settings.trading.starting_cash_usd,
            quote_max_age_s=settings.trading.quote_max_age_s,
            guard=guard,
            exchange_tz=settings.core.exchange_tz,
        )
    if choice == "alpaca_paper":
        from omni_tasks.trading.alpaca_paper import AlpacaPaperVenue

        return AlpacaPaperVenue(settings, guard=guard, sessions=runtime.sessions)
    raise ValueError(
        f"OMNI_TRADING_BROKER={choice!r}: no such broker (simulated or alpaca_paper)"
    )  # settings validation makes this unreachable
