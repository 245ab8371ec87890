"""The provider router: tries providers in the configured order, with breakers, limits and retries.

For each provider in order, it is skipped when it is not available (no key),
cannot serve the timeframe, or its breaker is open. Otherwise the shared rate
limiter admits the call, transient errors (rate limits, timeouts, 5xx) are
retried with exponential backoff and jitter, and the next provider is tried
when this one keeps failing, returns nothing, or returns a malformed payload.
Permanent errors (an unknown symbol everywhere, a refused key) are not
retried. Every attempt is recorded, and every row says which provider served it.

When nothing is served, :class:`NoProviderServed` names the cause when the
providers said what it was: ``unknown_symbol`` (no provider knows it) or
``no_bars_in_range`` (a provider knows it and has nothing in the range), and
carries every note a provider made on the way (a clamped end, a feed switch).
"""

from __future__ import annotations

import importlib
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import pandas as pd
import structlog
from billiard.exceptions import SoftTimeLimitExceeded

from omni_tasks.marketdata.errors import (
    AuthenticationFailed,
    EmptyData,
    MalformedPayload,
    NoBarsInRange,
    PermanentProviderError,
    ProviderError,
    RateLimited,
    RetryableProviderError,
    UnknownSymbol,
    UnsupportedRequest,
)
from omni_tasks.marketdata.providers.base import BarProvider, BarRequest
from omni_tasks.marketdata.ratelimit import RateLimiter
from omni_tasks.safety.breaker import CircuitBreaker

_log = structlog.get_logger("omni.router")


@dataclass(frozen=True)
class Attempt:
    provider: str
    outcome: str  # ok, skipped, failed
    detail: str = ""


@dataclass
class Routed:
    bars: pd.DataFrame
    provider: str
    notes: list[str] = field(default_factory=list)
    attempts: list[Attempt] = field(default_factory=list)


#: Causes of "no data" the router can name (stored on the partition, read by validation).
UNKNOWN_SYMBOL = "unknown_symbol"
NO_BARS_IN_RANGE = "no_bars_in_range"


class NoProviderServed(ProviderError):
    """Every provider was skipped or failed. ``permanent`` when retrying cannot help.

    ``cause``: :data:`UNKNOWN_SYMBOL`, :data:`NO_BARS_IN_RANGE` or None (an
    outage, a refusal: nothing said about the data itself). ``notes``: what
    providers said on the way.
    """

    def __init__(self, message: str, *, attempts: list[Attempt], permanent: bool, cause: str | None = None, notes: list[str] | None = None) -> None:
        super().__init__(message, notes=notes)
        self.attempts = attempts
        self.permanent = permanent
        self.cause = cause


BreakerFactory = Callable[[str], CircuitBreaker]


class BarRouter:
    def __init__(
        self,
        providers: Sequence[BarProvider],
        *,
        breaker_for: BreakerFactory,
        limiter: RateLimiter | None,
        max_attempts: int = 3,
        backoff_base_s: float = 0.5,
        backoff_max_s: float = 8.0,
        rate_wait_max_s: float = 10.0,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        if not providers:
            raise ValueError("the router needs at least one provider (OMNI_PROVIDERS_ORDER)")
        self.providers = list(providers)
        self._breaker_for = breaker_for
        self._limiter = limiter
        self._max_attempts = max_attempts
        self._backoff_base_s = backoff_base_s
        self._backoff_max_s = backoff_max_s
        self._rate_wait_max_s = rate_wait_max_s
        self._sleep = sleep

    def only(self, provider: BarProvider) -> BarRouter:
        """A router over this one provider with the same breakers, limiter and retries (a second opinion asks one source)."""
        return BarRouter(
            [provider], breaker_for=self._breaker_for, limiter=self._limiter, max_attempts=self._max_attempts,
            backoff_base_s=self._backoff_base_s, backoff_max_s=self._backoff_max_s, rate_wait_max_s=self._rate_wait_max_s, sleep=self._sleep,
        )

    def fetch(self, request: BarRequest) -> Routed:
        attempts: list[Attempt] = []
        unknown: list[str] = []
        empty: list[str] = []
        notes: list[str] = []
        transient = False
        for provider in self.providers:
            name = provider.name
            if not provider.available():
                attempts.append(Attempt(name, "skipped", "not available (no key or no data folder)"))
                continue
            if request.timeframe not in provider.capabilities.timeframes:
                attempts.append(Attempt(name, "skipped", f"cannot serve {request.timeframe}"))
                continue
            if request.adjustment not in provider.capabilities.adjustments:
                attempts.append(Attempt(name, "skipped", f"cannot serve {request.adjustment} prices"))
                continue
            breaker = self._breaker_for(name)
            try:
                bars, notes = self._try(provider, breaker, request)
            except UnknownSymbol as exc:
                unknown.append(name)
                notes.extend(exc.notes)
                attempts.append(Attempt(name, "failed", f"unknown symbol: {exc}"))
                continue
            except NoBarsInRange as exc:
                empty.append(name)
                notes.extend(exc.notes)
                attempts.append(Attempt(name, "failed", f"no bars in range: {exc}"))
                continue
            except AuthenticationFailed as exc:
                _log.error("provider refused our key; skipping it", provider=name, error=str(exc))
                attempts.append(Attempt(name, "failed", f"authentication failed: {exc}"))
                continue
            except (RetryableProviderError, EmptyData, MalformedPayload, UnsupportedRequest, _BreakerRefused) as exc:
                transient = transient or not isinstance(exc, UnsupportedRequest)  # an open breaker closes again
                notes.extend(getattr(exc, "notes", []))
                attempts.append(Attempt(name, "skipped" if isinstance(exc, _BreakerRefused) else "failed", f"{type(exc).__name__}: {exc}"))
                continue
            attempts.append(Attempt(name, "ok", f"{len(bars)} rows"))
            if attempts[:-1]:
                _log.warning("served by a fallback provider", provider=name, symbol=request.symbol, earlier=[f"{a.provider}: {a.detail}" for a in attempts[:-1]])
            return Routed(bars=bars, provider=name, notes=notes, attempts=attempts)
        summary = "; ".join(f"{a.provider}: {a.detail}" for a in attempts) or "no provider configured"
        # Retrying helps only if something failed for a passing reason (rate limit, outage,
        # empty or malformed answer, open breaker); unknown symbols and missing keys stay so.
        # A provider that knows the symbol outranks one that does not: its answer is "nothing in this range".
        cause = NO_BARS_IN_RANGE if empty else UNKNOWN_SYMBOL if unknown else None
        if cause == NO_BARS_IN_RANGE and not transient:
            raise NoProviderServed(f"no bars in range for {request.symbol} {request.timeframe}: {summary}", attempts=attempts, permanent=True, cause=cause, notes=notes)
        if cause == UNKNOWN_SYMBOL and not transient:
            raise NoProviderServed(f"unknown symbol {request.symbol}: {summary}", attempts=attempts, permanent=True, cause=cause, notes=notes)
        raise NoProviderServed(f"no provider served {request.symbol} {request.timeframe}: {summary}", attempts=attempts, permanent=not transient, cause=cause, notes=notes)

    def _try(self, provider: BarProvider, breaker: CircuitBreaker, request: BarRequest) -> tuple[pd.DataFrame, list[str]]:
        name = provider.name
        last: Exception | None = None
        for attempt in range(1, self._max_attempts + 1):
            decision = breaker.allow()
            if not decision.allowed:
                raise _BreakerRefused(decision.reason)
            if self._limiter is not None:
                # Our own limiter refusing is not the provider failing: give the trial back, record nothing.
                caps = provider.capabilities
                try:
                    self._limiter.acquire(name, caps.rate_limit_per_min, max_wait_s=self._rate_wait_max_s)
                    if caps.daily_quota is not None:
                        self._limiter.take_quota(name, caps.daily_quota)
                except RateLimited:
                    breaker.release(decision.trial)
                    raise
            try:
                result = provider.fetch_bars(request)
            except RetryableProviderError as exc:
                breaker.record(False, trial=decision.trial)
                last = exc
                if attempt == self._max_attempts:
                    break
                delay = self._backoff(attempt, exc)
                _log.warning("provider call failed; retrying", provider=name, attempt=attempt, delay_s=round(delay, 2), error=str(exc))
                self._sleep(delay)
                continue
            except MalformedPayload:
                breaker.record(False, trial=decision.trial)
                raise
            except (EmptyData, PermanentProviderError):
                # The provider answered; the answer is not usable. Not a health failure.
                breaker.record(True, trial=decision.trial)
                raise
            except SoftTimeLimitExceeded:
                raise  # the task's own time limit, not the provider's failure
            except Exception as exc:
                # An adapter bug or an unmapped library error: a failure of this provider, and the next one is tried.
                breaker.record(False, trial=decision.trial)
                _log.exception("provider adapter raised an unexpected error", provider=name)
                raise MalformedPayload(f"unexpected {type(exc).__name__} from the {name} adapter: {exc}", provider=name) from exc
            breaker.record(True, trial=decision.trial)
            if self._limiter is not None and result.calls > 1:
                # Pages beyond the first count against the shared window (and the daily quota) too.
                self._limiter.charge(name, result.calls - 1)
                if provider.capabilities.daily_quota is not None:
                    for _ in range(result.calls - 1):
                        try:
                            self._limiter.take_quota(name, provider.capabilities.daily_quota)
                        except RateLimited:
                            break
            bars = result.bars
            if bars.empty:
                raise EmptyData(f"{name} returned no bars", provider=name)
            return bars, list(result.notes)
        assert last is not None
        raise last

    def _backoff(self, attempt: int, exc: Exception) -> float:
        if isinstance(exc, RateLimited) and exc.retry_after_s is not None:
            return min(self._backoff_max_s, max(0.0, exc.retry_after_s))
        ceiling = min(self._backoff_max_s, self._backoff_base_s * 2 ** (attempt - 1))
        return random.uniform(ceiling / 2, ceiling)  # noqa: S311 - jitter, not cryptography


class _BreakerRefused(Exception):
    pass


def serving_feeds(order: Sequence[str], feed: str) -> tuple[str, ...]:
    """The feeds rows may be stored under when ``feed`` is requested from these providers, in order.

    Alpaca serves the requested feed (iex or sip); every other provider labels
    its rows with its own name (yahoo, alpha_vantage, synthetic) and the replay
    feed keeps what its files record (the requested feed, or ``replay``).
    """
    out: list[str] = []
    for name in order:
        for candidate in ((feed,) if name == "alpaca" else (feed, "replay") if name == "replay" else (name,)):
            if candidate not in out:
                out.append(candidate)
    return tuple(out) or (feed,)


def build_providers(names: Sequence[str], settings: object) -> list[BarProvider]:
    """Adapters for the configured order. ``synthetic`` and ``replay`` are offline feeds."""
    from omni_tasks.marketdata.providers.replay import ReplayBars
    from omni_tasks.marketdata.providers.synthetic import SyntheticBars

    out: list[BarProvider] = []
    for name in names:
        if name == "synthetic":
            out.append(SyntheticBars())
        elif name == "replay":
            out.append(ReplayBars(settings.providers.replay_dir))  # type: ignore[attr-defined]
        else:
            module = importlib.import_module(f"omni_tasks.marketdata.providers.{name}")
            out.append(module.from_settings(settings))
    return out
