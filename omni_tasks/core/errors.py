"""The error hierarchy of omni-tasks: every error this package raises on purpose is an ``OmniError``.

    OmniError                  every error this package raises on purpose
    +-- ConfigError            a setting is invalid; the CLI prints one line, exit 2
    |   +-- SecretError        a secret cannot be decrypted (wrong or missing key)
    +-- BootRefused            a start-up safety check failed; the process must not start
    +-- TaskError              raised inside tasks
    |   +-- RetryableError     may succeed next time: rate limited, unavailable, timeout
    |   |   +-- DatabaseUnavailable   the database failed or its breaker is open
    |   |   |   +-- StoreUnavailable   an outage, on the pipeline tasks' own retry budget
    |   |   +-- PartitionNotServed     (marketdata.tasks) no provider served a backfill partition yet
    |   +-- PermanentError     will fail again: unknown symbol, schema violation, bad key
    |   +-- TaskRefused        an order task refused while trading is halted: not run, never retried
    +-- InputError             (core.inputs; also a ValueError) what a user typed is refused, in one line
    +-- DeadLettered           (pipeline.taskdef) a task delivered more than max_deliveries times
    +-- ResultTimeout          (pipeline.canvas) a task's result did not come back in time
    +-- ProviderError          (marketdata.errors) a market-data provider failed; its subclasses are also
    |                          RetryableError or PermanentError; NoProviderServed (marketdata.router)
    +-- BackfillRequestError   (marketdata.backfill_plan; also a ValueError) a backfill that cannot be planned
    +-- FeedError              (stream.feeds) the quote stream's connection: AuthFailed, SubscriptionRefused,
    |                          ConnectionLimit, FeedClosed, FeedExhausted
    +-- GarbageFrame           (stream.wire; also a ValueError) a frame that is not an Alpaca message array
    +-- VenueError             (contracts.venue) the trading venue failed or refused: OrderBlocked, InvalidOrder
    +-- NotQueued              (trading.intake) an order accepted but not queued
    +-- KillSwitchError        (safety.transitions) a kill-switch transition refused: ReleaseRefused
    +-- BreakerOpen            (safety.breaker) a call refused by an open circuit breaker
    +-- AlarmFormatError       (safety.alarms; also a ValueError) an alarm message that does not parse
    +-- RiskInputError         (risk.var_es; also a ValueError) inputs the risk figures cannot use
    +-- NotEvaluated           (watchdog.rules) a rule that could not be evaluated this round

Only ``RetryableError`` is retried (with backoff and jitter). A ``PermanentError``
fails the task at once with its message recorded in the task-run ledger. A task
with a deadline (an order) retries ``DatabaseUnavailable`` until that deadline.
tests/unit/test_errors.py keeps this drawing and the classes in step.
"""

from __future__ import annotations


class OmniError(Exception):
    """Base class of every deliberate omni-tasks error."""


class ConfigError(OmniError):
    """A setting is missing or invalid. The message names the variable."""


class SecretError(ConfigError):
    """A secret cannot be encrypted or decrypted (missing or wrong key)."""


class BootRefused(OmniError):
    """A start-up safety check failed: starting would risk lost or duplicated work."""


class TaskError(OmniError):
    """Base class of errors raised by task bodies."""


class RetryableError(TaskError):
    """A transient failure: the same call may succeed later."""


class PermanentError(TaskError):
    """A failure that retrying cannot fix."""


class TaskRefused(TaskError):
    """An order-bearing task refused by the kill switch (trading HALTED, or its state unreadable): not run, never retried."""


class DatabaseUnavailable(RetryableError):
    """The database failed (connection refused or lost, a disconnect) or its breaker is open: nothing was written."""


class StoreUnavailable(DatabaseUnavailable):
    """The database is unreachable (connection refused, dropped or invalidated): retry after the outage."""
