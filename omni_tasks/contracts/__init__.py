"""The shapes rooms exchange, so no domain package needs another's internals.

- :mod:`~omni_tasks.contracts.bars`: the canonical bar and quote frames and their pandera contract.
- :mod:`~omni_tasks.contracts.feeds`: every feed a stored bar can carry.
- :mod:`~omni_tasks.contracts.quotes`: the latest quotes and trading statuses the stream serves in Redis, and how to read them.
- :mod:`~omni_tasks.contracts.portfolio`: the portfolio book the trading venue publishes and the stream's guard reads.
- :mod:`~omni_tasks.contracts.venue`: what a trading venue (simulated, Alpaca paper) does and keeps.

A contract imports nothing of the project but :mod:`omni_tasks.core` and other contracts.
"""
