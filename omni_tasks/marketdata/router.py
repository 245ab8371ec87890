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

Waiting is not failing. The shared limiter refusing a call (the window is
full: it says when the next slot opens), a provider refusing one symbol (a
rate-limit body about it) and a daily quota spent are not provider failures:
the breaker is not told, the call is not retried in place, the next provider
is tried, and when none serves :class:`NoProviderServed` carries ``defer_s``,
the shortest wait, so the partition is re-scheduled for then. A daily-quota
answer spends the provider's quota until 00:00 UTC once two symbols had it
(one symbol alone may be refused for itself); a symbol refused
``max_refusals`` times in a job fails with the provider's words, unless every
refusal was the daily-quota wording and the provider served no other symbol
meanwhile: then the quota is spent (a one-symbol job sees no second symbol),
and the partitions defer until it resets.

Whole-series providers (``Capabilities.whole_series``): given the job, the
router makes one call per job and symbol over the job's range and the
partitions share the answer (:mod:`omni_tasks.marketdata.series`), a final
"unknown symbol" or "no bars in the job's range" included.
"""

from __future__ import annotations

import importlib
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import TYPE_CHECKING

import pandas as pd
import structlog

from omni_tasks.marketdata.errors import (
    AuthenticationFailed,
    EmptyData,
    MalformedPayload,
    NoBarsInRange,
    PermanentProviderError,
    ProviderError,
    QuotaExhausted,
    RateLimited,
    RetryableProviderError,
    UnknownSymbol,
    UnsupportedRequest,
)
from omni_tasks.marketdata.providers.base import BarProvider, BarRequest
from omni_tasks.marketdata.ratelimit import RateLimiter
from omni_tasks.marketdata.series import SeriesCache
from omni_tasks.pipeline.limits import SoftTimeLimitExceeded
from omni_tasks.safety.breaker import CircuitBreaker

if TYPE_CHECKING:
    from omni_tasks.settings import Settings

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
    #: a whole-series provider's first bar of the symbol (None: not known); bars before it cannot exist at that provider
    series_start: datetime | None = None


#: Causes of "no data" the router can name (stored on the partition, read by validation).
UNKNOWN_SYMBOL = "unknown_symbol"
NO_BARS_IN_RANGE = "no_bars_in_range"
#: A symbol told "N requests per day" is refused for itself when the provider served another symbol from this many
#: rate windows before its first refusal on; otherwise the quota is spent.
QUOTA_EVIDENCE_WINDOWS = 2


class NoProviderServed(ProviderError):
    """Every provider was skipped or failed. ``permanent`` when retrying cannot help.

    ``cause``: :data:`UNKNOWN_SYMBOL`, :data:`NO_BARS_IN_RANGE` or None (an
    outage, a refusal: nothing said about the data itself). ``notes``: what
    providers said on the way.
    """

    def __init__(
        self, message: str, *, attempts: list[Attempt], permanent: bool, cause: str | None = None, notes: list[str] | None = None,
        defer_s: float | None = None,
    ) -> None:
        super().__init__(message, notes=notes)
        self.attempts = attempts
        self.permanent = permanent
        self.cause = cause
        #: set when waiting helps: seconds until a provider may be asked again (the limiter's next slot, a refusal's end, the quota's reset)
        self.defer_s = defer_s


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
        series: SeriesCache | None = None,
        max_refusals: int = 3,
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
        self._series = series
        self._max_refusals = max_refusals

    def only(self, provider: BarProvider) -> BarRouter:
        """A router over this one provider with the same breakers, limiter and retries (a second opinion asks one source)."""
        return BarRouter(
            [provider], breaker_for=self._breaker_for, limiter=self._limiter, max_attempts=self._max_attempts,
            backoff_base_s=self._backoff_base_s, backoff_max_s=self._backoff_max_s, rate_wait_max_s=self._rate_wait_max_s, sleep=self._sleep,
            series=self._series, max_refusals=self._max_refusals,
        )

    def fetch(self, request: BarRequest, *, job: int | None = None, span: tuple[datetime, datetime] | None = None) -> Routed:
        """The request's bars from the first provider that serves them.

        ``job`` and ``span`` (the job's whole range): a whole-series provider is
        called once per job and symbol over ``span`` and its answer shared.
        """
        attempts: list[Attempt] = []
        unknown: list[str] = []
        empty: list[str] = []
        notes: list[str] = []
        waits: list[float] = []
        refused: list[str] = []
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
            share = None
            series_start = None
            if job is not None and self._series is not None and request.timeframe in provider.capabilities.whole_series:
                share = SeriesCache.key(job, name, request.symbol, request.timeframe, request.adjustment)
            try:
                if share is not None:
                    bars, notes, series_start = self._shared(provider, breaker, request, share, span or (request.start, request.end))
                else:
                    bars, notes, _ = self._try(provider, breaker, request)
            except _Throttled as exc:
                waits.append(exc.wait_s)
                attempts.append(Attempt(name, "skipped", f"waiting: {exc}"))
                _log.info("provider throttled; trying the next or deferring", provider=name, symbol=request.symbol, wait_s=round(exc.wait_s, 2), detail=str(exc))
                continue
            except _GaveUp as exc:
                refused.append(name)
                attempts.append(Attempt(name, "failed", f"refused {request.symbol} {self._max_refusals} times: {exc}"))
                continue
            except _Refused as exc:
                wait = self._refused(provider, request, share, exc.error)
                if wait is None:
                    refused.append(name)
                    attempts.append(Attempt(name, "failed", f"refused {request.symbol} {self._max_refusals} times: {exc.error}"))
                else:
                    waits.append(wait)
                    attempts.append(Attempt(name, "skipped", f"refused, waiting {wait:.1f} s: {exc.error}"))
                continue
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
            return Routed(bars=bars, provider=name, notes=notes, attempts=attempts, series_start=series_start)
        summary = "; ".join(f"{a.provider}: {a.detail}" for a in attempts) or "no provider configured"
        # Retrying helps only if something failed for a passing reason (rate limit, outage,
        # empty or malformed answer, open breaker); unknown symbols and missing keys stay so.
        # A provider that knows the symbol outranks one that does not: its answer is "nothing in this range".
        cause = NO_BARS_IN_RANGE if empty else UNKNOWN_SYMBOL if unknown else None
        if waits and cause is None:
            # Waiting helps: nothing failed for good that waiting would not cure.
            wait = min(waits)
            _log.info("no provider now: deferred", symbol=request.symbol, wait_s=round(wait, 2), summary=summary)
            raise NoProviderServed(
                f"deferred {wait:.1f} s: {request.symbol} {request.timeframe}: {summary}", attempts=attempts, permanent=False, notes=notes, defer_s=wait
            )
        if refused and cause is None and not transient:
            raise NoProviderServed(f"refused {request.symbol}: {summary}", attempts=attempts, permanent=True, notes=notes)
        if cause == NO_BARS_IN_RANGE and not transient:
            raise NoProviderServed(f"no bars in range for {request.symbol} {request.timeframe}: {summary}", attempts=attempts, permanent=True, cause=cause, notes=notes)
        if cause == UNKNOWN_SYMBOL and not transient:
            raise NoProviderServed(f"unknown symbol {request.symbol}: {summary}", attempts=attempts, permanent=True, cause=cause, notes=notes)
        raise NoProviderServed(f"no provider served {request.symbol} {request.timeframe}: {summary}", attempts=attempts, permanent=not transient, cause=cause, notes=notes)

    def _try(self, provider: BarProvider, breaker: CircuitBreaker, request: BarRequest) -> tuple[pd.DataFrame, list[str], datetime | None]:
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
                    if caps.daily_quota is not None:
                        self._limiter.check_quota(name, caps.daily_quota)
                    self._limiter.acquire(name, caps.rate_limit_per_min, max_wait_s=self._rate_wait_max_s)
                    if caps.daily_quota is not None:
                        self._limiter.take_quota(name, caps.daily_quota)
                except RateLimited as exc:
                    breaker.release(decision.trial)
                    raise _Throttled(str(exc), exc.retry_after_s if exc.retry_after_s is not None else self._window_s()) from exc
            try:
                result = provider.fetch_bars(request)
            except RateLimited as exc:
                # The provider refusing (a 429, a rate-limit body, often about one symbol) is not
                # the provider failing: the breaker is not told, and asking again at once cannot help.
                breaker.release(decision.trial)
                raise _Refused(exc) from exc
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
            if self._limiter is not None and provider.capabilities.daily_quota is not None:
                self._limiter.note_served(name, request.symbol)
            return bars, list(result.notes), result.series_start
        assert last is not None
        raise last

    def _window_s(self) -> float:
        return self._limiter.window_s if self._limiter is not None else 60.0

    def _shared(
        self, provider: BarProvider, breaker: CircuitBreaker, request: BarRequest, key: str, span: tuple[datetime, datetime]
    ) -> tuple[pd.DataFrame, list[str], datetime | None]:
        """The request's slice of the one whole-series answer of this job and symbol (made here if nobody made it yet)."""
        assert self._series is not None
        name = provider.name
        note = f"{name}: one call for {request.symbol} shared by the job's partitions"
        whole = self._series.get(key)
        if whole is None:
            self._raise_verdict(name, key)
            said = self._series.given_up(key, self._max_refusals)
            if said is not None:
                raise _GaveUp(said)
            standing = self._series.refusal(key)
            if standing is not None:
                said, left = standing
                raise _Throttled(f"{name} refused {request.symbol} for now: {said}", max(0.1, left))
            token = self._series.lock(key)
            if token is not None and (standing := self._series.refusal(key)) is not None:
                # Refused while this partition took the lock (a sibling's call just ended so): the refusal stands for it too.
                self._series.unlock(key, token)
                said, left = standing
                raise _Throttled(f"{name} refused {request.symbol} for now: {said}", max(0.1, left))
            if token is None:
                # A sibling is making the call: wait for its answer a little, then defer.
                waited = 0.0
                while whole is None and waited < min(self._rate_wait_max_s, 5.0):
                    self._sleep(0.1)
                    waited += 0.1
                    whole = self._series.get(key)
                    if whole is None:
                        self._raise_verdict(name, key)
                if whole is None:
                    raise _Throttled(f"another partition is fetching {request.symbol} from {name}", 1.0)
            else:
                try:
                    whole, notes, begins = self._try(provider, breaker, replace(request, start=min(span[0], request.start), end=max(span[1], request.end)))
                    self._series.put(key, whole, series_start=begins)
                except (UnknownSymbol, NoBarsInRange) as exc:
                    # The answer for the whole range holds for every partition in it: the siblings take it, not a call each.
                    kind = UNKNOWN_SYMBOL if isinstance(exc, UnknownSymbol) else NO_BARS_IN_RANGE
                    self._series.put_verdict(key, kind, str(exc), [*exc.notes, note])
                    raise
                finally:
                    self._series.unlock(key, token)
                note = "; ".join([*notes, note]) if notes else note
        start, end = pd.Timestamp(request.start), pd.Timestamp(request.end)
        inside = whole[(whole["ts"] >= start) & (whole["ts"] < end)].reset_index(drop=True)
        if inside.empty:
            first = whole["ts"].min() if len(whole) else None
            where = f"its series starts {first.date().isoformat()}" if first is not None and first >= end else "none in this range"
            raise NoBarsInRange(f"{name} has no {request.timeframe} bars for {request.symbol} in "
                                f"{request.start.date().isoformat()}..{request.end.date().isoformat()} ({where})", provider=name, notes=[note])
        return inside, [note], self._series.series_start(key)

    def _raise_verdict(self, name: str, key: str) -> None:
        """Raise the provider's recorded final word on this job's range of the symbol (unknown, or no bars in it), if any."""
        assert self._series is not None
        found = self._series.verdict(key)
        if found is None:
            return
        kind, said, notes = found
        error = UnknownSymbol if kind == UNKNOWN_SYMBOL else NoBarsInRange
        raise error(f"{said} (the job's one call for the symbol, shared)", provider=name, notes=notes)

    def _refused(self, provider: BarProvider, request: BarRequest, share: str | None, error: RateLimited) -> float | None:
        """Seconds to wait after the provider refused ``request``; None when the symbol has been refused too often."""
        name = provider.name
        caps = provider.capabilities
        spent = (
            isinstance(error, QuotaExhausted)
            and self._limiter is not None
            and caps.daily_quota is not None
            and self._limiter.quota_refused(name, caps.daily_quota, request.symbol)
        )
        if spent and self._limiter is not None:
            wait = self._limiter.seconds_to_reset()
            _log.warning("provider's daily quota spent: no call until it resets", provider=name, wait_s=round(wait), detail=str(error))
            return wait
        wait = error.retry_after_s if error.retry_after_s is not None else self._window_s()
        if share is None or self._series is None:
            return wait
        limiter = self._limiter
        count = self._series.refuse(share, str(error), wait, at=limiter.now() if limiter is not None else None)
        _log.warning("provider refused a symbol", provider=name, symbol=request.symbol, refusals=count, of=self._max_refusals, detail=str(error))
        if count < self._max_refusals:
            return wait
        if isinstance(error, QuotaExhausted) and limiter is not None and caps.daily_quota is not None:
            # Told "N requests per day" every time, about this symbol alone: its own refusal only if the provider
            # served another symbol meanwhile (or shortly before). Else the key's quota is spent, as a one-symbol
            # job sees it: stop calling until it resets, and the partitions defer instead of failing.
            first = self._series.first_refused(share)
            since = (first if first is not None else limiter.now()) - QUOTA_EVIDENCE_WINDOWS * self._window_s()
            if not limiter.served_other_since(name, request.symbol, since):
                limiter.spend(name, caps.daily_quota)
                wait = limiter.seconds_to_reset()
                self._series.hold(share, str(error), wait)
                _log.warning(
                    "provider's daily quota spent (told so about one symbol, serving no other): no call until it resets",
                    provider=name, symbol=request.symbol, refusals=count, wait_s=round(wait), detail=str(error),
                )
                return wait
        return None

    def _backoff(self, attempt: int, exc: Exception) -> float:
        if isinstance(exc, RateLimited) and exc.retry_after_s is not None:
            return min(self._backoff_max_s, max(0.0, exc.retry_after_s))
        ceiling = min(self._backoff_max_s, self._backoff_base_s * 2 ** (attempt - 1))
        return random.uniform(ceiling / 2, ceiling)  # noqa: S311 - jitter, not cryptography


class _BreakerRefused(Exception):
    pass


class _Throttled(Exception):
    """Our side says wait (the shared window is full, the quota spent, a standing refusal): ``wait_s``."""

    def __init__(self, message: str, wait_s: float) -> None:
        super().__init__(message)
        self.wait_s = max(0.0, wait_s)


class _GaveUp(Exception):
    """This job's partitions of the symbol were refused ``max_refusals`` times: not asked again."""


class _Refused(Exception):
    """The provider refused the call (a 429 or a rate-limit body): not a failure of its health."""

    def __init__(self, error: RateLimited) -> None:
        super().__init__(str(error))
        self.error = error


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


def build_providers(names: Sequence[str], settings: Settings) -> list[BarProvider]:
    """Adapters for the configured order. ``synthetic`` and ``replay`` are offline feeds."""
    from omni_tasks.marketdata.providers.replay import ReplayBars
    from omni_tasks.marketdata.providers.synthetic import SyntheticBars

    out: list[BarProvider] = []
    for name in names:
        if name == "synthetic":
            out.append(SyntheticBars())
        elif name == "replay":
            out.append(ReplayBars(settings.providers.replay_dir))
        else:
            module = importlib.import_module(f"omni_tasks.marketdata.providers.{name}.client")
            out.append(module.from_settings(settings))
    return out
