"""BarRouter: provider order, availability, capabilities, breakers, limits, retries, fallback, provenance.

Providers are small fakes passed in as arguments; breakers and the rate
limiter are the real ones on the test's own Redis database; ``sleep`` is a
recording function, so nothing here waits.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pandas as pd
import pytest
import redis

from omni_tasks.contracts.bars import BAR_COLUMNS, canonical_bars, empty_bars
from omni_tasks.core.keys import RATELIMIT_WINDOW_KEY
from omni_tasks.marketdata.errors import (
    AuthenticationFailed,
    EmptyData,
    MalformedPayload,
    NoBarsInRange,
    ProviderUnavailable,
    QuotaExhausted,
    RateLimited,
    UnknownSymbol,
    UnsupportedRequest,
)
from omni_tasks.marketdata.providers.base import BarProvider, BarRequest, BarResult, Capabilities
from omni_tasks.marketdata.ratelimit import RateLimiter
from omni_tasks.marketdata.router import BarRouter, NoProviderServed
from omni_tasks.safety.breaker import BreakerPolicy, BreakerState, CircuitBreaker

pytestmark = pytest.mark.services  # real breakers and limiter on real Redis

START = datetime(2024, 3, 4, 14, 30, tzinfo=UTC)
REQUEST = BarRequest("AAPL", "1Min", START, START + timedelta(minutes=5))
# Consecutive failures never open a breaker in these tests unless a test says so.
QUIET = BreakerPolicy(failure_threshold=1_000, rate_min_calls=1_000_000, cooldown_s=30.0)


class Clock:
    def __init__(self, now: float = 1_700_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class FakeProvider:
    """A BarProvider whose answers are scripted: "ok", "empty", or an exception to raise."""

    def __init__(
        self,
        name: str,
        script: Iterable[object] = (),
        *,
        timeframes: Iterable[str] = ("1Min", "5Min", "1Day"),
        available: bool = True,
        rate_limit_per_min: int = 1_000,
        daily_quota: int | None = None,
        adjustments: Iterable[str] = ("raw",),
        pages: int = 1,
        then: object = "ok",
    ) -> None:
        self.name = name
        self.capabilities = Capabilities(
            timeframes=frozenset(timeframes),
            rate_limit_per_min=rate_limit_per_min,
            daily_quota=daily_quota,
            adjustments=frozenset(adjustments),
        )
        self._pages = pages
        self._available = available
        self._script = list(script)
        self._then = then
        self.calls: list[BarRequest] = []

    def available(self) -> bool:
        return self._available

    def fetch_bars(self, request: BarRequest) -> BarResult:
        self.calls.append(request)
        step = self._script.pop(0) if self._script else self._then
        if isinstance(step, BaseException):
            raise step
        if step == "empty":
            return BarResult(empty_bars(), notes=[f"{self.name}: nothing"])
        return BarResult(_bars(request, self.name), notes=[f"{self.name} note"], calls=self._pages)


def _bars(request: BarRequest, provider: str) -> pd.DataFrame:
    ts = pd.date_range(request.start, request.end, freq="1min", inclusive="left")
    raw = pd.DataFrame({"ts": ts, "open": 10.0, "high": 11.0, "low": 9.0, "close": 10.5, "volume": 100.0})
    return canonical_bars(
        raw, symbol=request.symbol, timeframe=request.timeframe, provider=provider, feed=request.feed, adjustment=request.adjustment
    )


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def sleeps() -> list[float]:
    return []


@pytest.fixture
def breaker_for(redis_client: redis.Redis, clock: Clock) -> Callable[[str], CircuitBreaker]:
    def make(name: str) -> CircuitBreaker:
        return CircuitBreaker(f"provider:{name}", redis_client, QUIET, clock=clock)

    return make


@pytest.fixture
def make_router(
    breaker_for: Callable[[str], CircuitBreaker], redis_client: redis.Redis, clock: Clock, sleeps: list[float]
) -> Callable[..., BarRouter]:
    def make(providers: list[BarProvider], **kwargs: object) -> BarRouter:
        kwargs.setdefault("limiter", RateLimiter(redis_client, clock=clock, sleep=sleeps.append))
        kwargs.setdefault("breaker_for", breaker_for)
        kwargs.setdefault("sleep", sleeps.append)
        return BarRouter(providers, **kwargs)  # type: ignore[arg-type]

    return make


def _assert_served_by(routed_bars: pd.DataFrame, name: str) -> None:
    assert list(routed_bars.columns) == list(BAR_COLUMNS)
    assert len(routed_bars) == 5
    assert set(routed_bars["provider"]) == {name}, "every row records the provider that served it"


# ---- order and provenance ----------------------------------------------------------


def test_router_first_provider_healthy_serves_and_later_ones_are_not_called(make_router) -> None:  # type: ignore[no-untyped-def]
    alpha, beta = FakeProvider("alpha"), FakeProvider("beta")
    routed = make_router([alpha, beta]).fetch(REQUEST)
    assert routed.provider == "alpha"
    _assert_served_by(routed.bars, "alpha")
    assert routed.notes == ["alpha note"]
    assert [(a.provider, a.outcome) for a in routed.attempts] == [("alpha", "ok")]
    assert len(alpha.calls) == 1
    assert alpha.calls[0] == REQUEST
    assert beta.calls == []


def test_router_provider_error_falls_back_to_next_with_its_provenance(make_router, sleeps) -> None:  # type: ignore[no-untyped-def]
    alpha, beta = FakeProvider("alpha", then=ProviderUnavailable("503 from alpha", provider="alpha")), FakeProvider("beta")
    routed = make_router([alpha, beta], max_attempts=2).fetch(REQUEST)
    assert routed.provider == "beta"
    _assert_served_by(routed.bars, "beta")
    assert len(alpha.calls) == 2, "a transient error is retried on the same provider before falling back"
    assert len(sleeps) == 1
    assert [(a.provider, a.outcome) for a in routed.attempts] == [("alpha", "failed"), ("beta", "ok")]
    assert "ProviderUnavailable" in routed.attempts[0].detail
    assert "503 from alpha" in routed.attempts[0].detail


def test_router_rate_limited_provider_falls_back_to_next(make_router) -> None:  # type: ignore[no-untyped-def]
    alpha = FakeProvider("alpha", then=RateLimited("429", provider="alpha", retry_after_s=2.0))
    beta = FakeProvider("beta")
    routed = make_router([alpha, beta], max_attempts=3).fetch(REQUEST)
    assert routed.provider == "beta"
    _assert_served_by(routed.bars, "beta")
    assert len(alpha.calls) == 1, "a refusal is not asked again at once: it is waited out (or the next provider serves)"
    assert "refused" in routed.attempts[0].detail


@pytest.mark.parametrize("empty", ["empty", EmptyData("yfinance returned an empty frame", provider="alpha")], ids=["no-rows", "EmptyData"])
def test_router_empty_data_falls_back_without_retrying(make_router, sleeps, empty) -> None:  # type: ignore[no-untyped-def]
    alpha, beta = FakeProvider("alpha", then=empty), FakeProvider("beta")
    routed = make_router([alpha, beta]).fetch(REQUEST)
    assert routed.provider == "beta"
    _assert_served_by(routed.bars, "beta")
    assert len(alpha.calls) == 1, "an empty answer is not retried on the same provider"
    assert sleeps == []
    assert routed.attempts[0].outcome == "failed"
    assert "EmptyData" in routed.attempts[0].detail


def test_router_malformed_payload_falls_back_and_counts_against_the_breaker(make_router, breaker_for) -> None:  # type: ignore[no-untyped-def]
    alpha = FakeProvider("alpha", then=MalformedPayload("missing column close", provider="alpha"))
    beta = FakeProvider("beta")
    routed = make_router([alpha, beta]).fetch(REQUEST)
    assert routed.provider == "beta"
    _assert_served_by(routed.bars, "beta")
    assert len(alpha.calls) == 1
    assert "missing column close" in routed.attempts[0].detail
    assert breaker_for("alpha").state()["failures"] == 1
    assert breaker_for("beta").state()["failures"] == 0


def test_router_unsupported_request_falls_back(make_router) -> None:  # type: ignore[no-untyped-def]
    alpha = FakeProvider("alpha", then=UnsupportedRequest("no SIP for this key", provider="alpha"))
    beta = FakeProvider("beta")
    routed = make_router([alpha, beta]).fetch(REQUEST)
    assert routed.provider == "beta"
    assert len(alpha.calls) == 1


def test_router_unavailable_provider_is_skipped_without_being_called(make_router) -> None:  # type: ignore[no-untyped-def]
    alpha, beta = FakeProvider("alpha", available=False), FakeProvider("beta")
    routed = make_router([alpha, beta]).fetch(REQUEST)
    assert routed.provider == "beta"
    assert alpha.calls == []
    assert (routed.attempts[0].provider, routed.attempts[0].outcome) == ("alpha", "skipped")
    assert "not available" in routed.attempts[0].detail


def test_router_provider_without_the_timeframe_is_skipped_without_being_called(make_router) -> None:  # type: ignore[no-untyped-def]
    daily_only, beta = FakeProvider("daily_only", timeframes=("1Day",)), FakeProvider("beta")
    routed = make_router([daily_only, beta]).fetch(REQUEST)
    assert routed.provider == "beta"
    assert daily_only.calls == []
    assert routed.attempts[0].outcome == "skipped"
    assert "cannot serve 1Min" in routed.attempts[0].detail


def test_router_without_providers_is_refused(breaker_for) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ValueError, match="at least one provider"):
        BarRouter([], breaker_for=breaker_for, limiter=None)


# ---- breakers -------------------------------------------------------------------------


def test_router_open_breaker_skips_provider_without_calling_it(make_router, redis_client, clock) -> None:  # type: ignore[no-untyped-def]
    tripping = BreakerPolicy(failure_threshold=3, rate_min_calls=1_000_000, cooldown_s=30.0)
    alpha, beta = FakeProvider("alpha"), FakeProvider("beta")
    router = make_router([alpha, beta], breaker_for=lambda name: CircuitBreaker(f"provider:{name}", redis_client, tripping, clock=clock))
    breaker = CircuitBreaker("provider:alpha", redis_client, tripping, clock=clock)
    for _ in range(3):
        breaker.record(False)
    assert breaker.state()["state"] == "open"
    fetches = 20
    for _ in range(fetches):
        clock.advance(1.0)  # 20 s in all: still inside the 30 s cooldown
        routed = router.fetch(REQUEST)
        assert routed.provider == "beta"
        assert (routed.attempts[0].provider, routed.attempts[0].outcome) == ("alpha", "skipped")
        assert "breaker provider:alpha is open" in routed.attempts[0].detail
    print(f"calls passed by an open breaker: {len(alpha.calls)} of {fetches}")
    assert len(alpha.calls) == 0
    assert len(beta.calls) == fetches


def test_router_forced_open_breaker_skips_provider_without_calling_it(make_router, breaker_for) -> None:  # type: ignore[no-untyped-def]
    alpha, beta = FakeProvider("alpha"), FakeProvider("beta")
    breaker_for("alpha").force(BreakerState.OPEN, actor="ops", reason="provider incident")
    routed = make_router([alpha, beta]).fetch(REQUEST)
    print(f"calls passed by an open breaker: {len(alpha.calls)} of 1")
    assert alpha.calls == []
    assert routed.provider == "beta"
    assert "forced open" in routed.attempts[0].detail


def test_router_only_provider_behind_open_breaker_fails_transient(make_router, breaker_for) -> None:  # type: ignore[no-untyped-def]
    alpha = FakeProvider("alpha")
    breaker_for("alpha").force(BreakerState.OPEN, actor="ops", reason="incident")
    with pytest.raises(NoProviderServed) as info:
        make_router([alpha]).fetch(REQUEST)
    assert info.value.permanent is False, "an open breaker closes again: retrying later can help"
    assert alpha.calls == []


def test_router_half_open_breaker_lets_a_trial_through_and_success_closes_it(make_router, redis_client, clock) -> None:  # type: ignore[no-untyped-def]
    tripping = BreakerPolicy(failure_threshold=2, rate_min_calls=1_000_000, cooldown_s=30.0)
    alpha = FakeProvider("alpha")
    breaker = CircuitBreaker("provider:alpha", redis_client, tripping, clock=clock)
    breaker.record(False)
    breaker.record(False)
    clock.advance(31.0)
    routed = make_router([alpha], breaker_for=lambda name: CircuitBreaker(f"provider:{name}", redis_client, tripping, clock=clock)).fetch(
        REQUEST
    )
    assert routed.provider == "alpha"
    assert len(alpha.calls) == 1
    assert breaker.state()["state"] == "closed"


def test_router_failures_recorded_on_the_providers_breaker_open_it(make_router, redis_client, clock) -> None:  # type: ignore[no-untyped-def]
    tripping = BreakerPolicy(failure_threshold=3, rate_min_calls=1_000_000, cooldown_s=30.0)
    alpha = FakeProvider("alpha", then=ProviderUnavailable("timeout", provider="alpha"))
    beta = FakeProvider("beta")
    router = make_router(
        [alpha, beta], max_attempts=3, breaker_for=lambda name: CircuitBreaker(f"provider:{name}", redis_client, tripping, clock=clock)
    )
    assert router.fetch(REQUEST).provider == "beta"
    assert CircuitBreaker("provider:alpha", redis_client, tripping, clock=clock).state()["state"] == "open"
    router.fetch(REQUEST)
    assert len(alpha.calls) == 3, "once open, the breaker keeps the failing provider from being called"


# ---- retries and backoff --------------------------------------------------------------


def test_router_transient_errors_stop_at_max_attempts(make_router, sleeps) -> None:  # type: ignore[no-untyped-def]
    alpha = FakeProvider("alpha", then=ProviderUnavailable("connection reset", provider="alpha"))
    with pytest.raises(NoProviderServed) as info:
        make_router([alpha], max_attempts=4).fetch(REQUEST)
    assert len(alpha.calls) == 4
    assert len(sleeps) == 3, "no sleep after the last attempt"
    assert info.value.permanent is False


def test_router_transient_error_then_success_is_served_by_the_same_provider(make_router, sleeps) -> None:  # type: ignore[no-untyped-def]
    alpha = FakeProvider("alpha", [ProviderUnavailable("502", provider="alpha"), ProviderUnavailable("502", provider="alpha")])
    beta = FakeProvider("beta")
    routed = make_router([alpha, beta], max_attempts=3).fetch(REQUEST)
    assert routed.provider == "alpha"
    _assert_served_by(routed.bars, "alpha")
    assert len(alpha.calls) == 3
    assert beta.calls == []
    assert len(sleeps) == 2


def test_router_backoff_grows_exponentially_with_jitter(make_router, sleeps) -> None:  # type: ignore[no-untyped-def]
    for _ in range(10):  # jitter is random: the bounds must hold every time
        sleeps.clear()
        alpha = FakeProvider("alpha", then=ProviderUnavailable("down", provider="alpha"))
        with pytest.raises(NoProviderServed):
            make_router([alpha], max_attempts=4, backoff_base_s=1.0, backoff_max_s=100.0).fetch(REQUEST)
        assert len(sleeps) == 3
        for delay, ceiling in zip(sleeps, (1.0, 2.0, 4.0), strict=True):
            assert ceiling / 2 <= delay <= ceiling
        assert sleeps[0] <= sleeps[1] <= sleeps[2]


def test_router_backoff_is_capped_at_backoff_max(make_router, sleeps) -> None:  # type: ignore[no-untyped-def]
    alpha = FakeProvider("alpha", then=ProviderUnavailable("down", provider="alpha"))
    with pytest.raises(NoProviderServed):
        make_router([alpha], max_attempts=6, backoff_base_s=1.0, backoff_max_s=2.5).fetch(REQUEST)
    assert len(sleeps) == 5
    assert max(sleeps) <= 2.5
    assert all(d >= 1.25 for d in sleeps[2:]), "capped, not reset"


def test_router_provider_refusal_defers_by_its_retry_after_and_spares_the_breaker(make_router, sleeps, breaker_for) -> None:  # type: ignore[no-untyped-def]
    alpha = FakeProvider("alpha", then=RateLimited("429", provider="alpha", retry_after_s=50.0))
    with pytest.raises(NoProviderServed, match="deferred 50.0 s") as info:
        make_router([alpha], max_attempts=4, backoff_base_s=0.1, backoff_max_s=8.0).fetch(REQUEST)
    assert info.value.defer_s == 50.0, "the partition waits as long as the provider said, not Celery's 1-8 s"
    assert info.value.permanent is False
    assert len(alpha.calls) == 1
    assert sleeps == [], "nothing waits in the worker"
    assert breaker_for("alpha").state()["failures"] == 0, "a refusal is not a provider failure"


# ---- what cannot be served -----------------------------------------------------------


def test_router_unknown_symbol_at_every_provider_is_permanent(make_router, sleeps) -> None:  # type: ignore[no-untyped-def]
    alpha = FakeProvider("alpha", then=UnknownSymbol("ZZZZ not found", provider="alpha"))
    beta = FakeProvider("beta", then=UnknownSymbol("ZZZZ not found", provider="beta"))
    request = BarRequest("ZZZZ", "1Min", START, START + timedelta(minutes=5))
    with pytest.raises(NoProviderServed, match="unknown symbol ZZZZ") as info:
        make_router([alpha, beta]).fetch(request)
    assert info.value.permanent is True
    assert (len(alpha.calls), len(beta.calls)) == (1, 1), "a permanent error is not retried"
    assert sleeps == []
    assert [(a.provider, a.outcome) for a in info.value.attempts] == [("alpha", "failed"), ("beta", "failed")]


def test_router_outage_at_every_provider_is_transient(make_router) -> None:  # type: ignore[no-untyped-def]
    alpha = FakeProvider("alpha", then=ProviderUnavailable("timeout", provider="alpha"))
    beta = FakeProvider("beta", then=RateLimited("429", provider="beta", retry_after_s=1.0))
    with pytest.raises(NoProviderServed) as info:
        make_router([alpha, beta], max_attempts=2).fetch(REQUEST)
    assert info.value.permanent is False
    assert "alpha" in str(info.value)
    assert "beta" in str(info.value)
    assert len(alpha.calls) == 2
    assert len(beta.calls) == 1
    assert info.value.defer_s == 1.0, "beta said when to come back: the partition is deferred until then"


def test_router_unknown_symbol_at_one_and_outage_at_other_is_transient(make_router) -> None:  # type: ignore[no-untyped-def]
    alpha = FakeProvider("alpha", then=UnknownSymbol("not found", provider="alpha"))
    beta = FakeProvider("beta", then=ProviderUnavailable("timeout", provider="beta"))
    with pytest.raises(NoProviderServed) as info:
        make_router([alpha, beta], max_attempts=1).fetch(REQUEST)
    assert info.value.permanent is False, "beta may know the symbol once it is back"


def test_router_names_the_cause_no_bars_in_range_outranks_unknown_symbol_and_carries_notes(make_router) -> None:  # type: ignore[no-untyped-def]
    alpha = FakeProvider("alpha", then=NoBarsInRange("nothing before the listing", provider="alpha", notes=["alpha: end clamped"]))
    beta = FakeProvider("beta", then=UnknownSymbol("not found", provider="beta"))
    with pytest.raises(NoProviderServed, match="no bars in range for AAPL") as info:
        make_router([alpha, beta]).fetch(REQUEST)
    assert (info.value.permanent, info.value.cause) == (True, "no_bars_in_range")
    assert info.value.notes == ["alpha: end clamped"]


def test_router_unknown_everywhere_has_the_cause_unknown_symbol_and_an_outage_no_cause(make_router) -> None:  # type: ignore[no-untyped-def]
    unknown = FakeProvider("alpha", then=UnknownSymbol("not found", provider="alpha"))
    with pytest.raises(NoProviderServed) as info:
        make_router([unknown]).fetch(REQUEST)
    assert info.value.cause == "unknown_symbol"
    down = FakeProvider("alpha", then=ProviderUnavailable("timeout", provider="alpha", notes=["alpha: feed switched"]))
    with pytest.raises(NoProviderServed) as info:
        make_router([down], max_attempts=1).fetch(REQUEST)
    assert (info.value.cause, info.value.permanent, info.value.notes) == (None, False, ["alpha: feed switched"])


def test_router_authentication_failed_skips_that_provider(make_router, sleeps) -> None:  # type: ignore[no-untyped-def]
    alpha = FakeProvider("alpha", then=AuthenticationFailed("401: key rejected", provider="alpha"))
    beta = FakeProvider("beta")
    routed = make_router([alpha, beta]).fetch(REQUEST)
    assert routed.provider == "beta"
    _assert_served_by(routed.bars, "beta")
    assert len(alpha.calls) == 1
    assert sleeps == []
    assert routed.attempts[0].outcome == "failed"
    assert "authentication failed" in routed.attempts[0].detail


def test_router_authentication_failed_everywhere_is_permanent(make_router) -> None:  # type: ignore[no-untyped-def]
    alpha = FakeProvider("alpha", then=AuthenticationFailed("401", provider="alpha"))
    with pytest.raises(NoProviderServed) as info:
        make_router([alpha]).fetch(REQUEST)
    assert info.value.permanent is True


# ---- rate limits and quotas -------------------------------------------------------------


def test_router_rate_limit_admits_per_min_calls_then_falls_back(make_router, clock) -> None:  # type: ignore[no-untyped-def]
    alpha, beta = FakeProvider("alpha", rate_limit_per_min=2), FakeProvider("beta")
    router = make_router([alpha, beta], max_attempts=2, rate_wait_max_s=0.0)
    served = [router.fetch(REQUEST).provider for _ in range(4)]
    assert served == ["alpha", "alpha", "beta", "beta"]
    assert len(alpha.calls) == 2, "the shared limiter keeps the provider within its calls per minute"
    clock.advance(61.0)
    assert router.fetch(REQUEST).provider == "alpha", "a new minute frees the window"


def test_router_waits_for_a_rate_limit_slot_within_rate_wait_max(make_router, clock, sleeps, redis_client) -> None:  # type: ignore[no-untyped-def]
    ticking: list[float] = []

    def sleep(seconds: float) -> None:
        ticking.append(seconds)
        clock.advance(seconds)

    alpha = FakeProvider("alpha", rate_limit_per_min=1)
    router = make_router([alpha], limiter=RateLimiter(redis_client, clock=clock, sleep=sleep), rate_wait_max_s=60.0)
    router.fetch(REQUEST)
    clock.advance(45.0)
    assert router.fetch(REQUEST).provider == "alpha"
    assert ticking == [pytest.approx(15.0)]
    assert len(alpha.calls) == 2


def test_router_daily_quota_used_up_falls_back(make_router) -> None:  # type: ignore[no-untyped-def]
    alpha, beta = FakeProvider("alpha", daily_quota=2), FakeProvider("beta")
    router = make_router([alpha, beta], max_attempts=2)
    served = [router.fetch(REQUEST).provider for _ in range(3)]
    assert served == ["alpha", "alpha", "beta"]
    assert len(alpha.calls) == 2


def test_router_own_rate_limiter_refusal_does_not_count_against_provider_breaker(make_router, breaker_for, sleeps) -> None:  # type: ignore[no-untyped-def]
    alpha, beta = FakeProvider("alpha", rate_limit_per_min=1), FakeProvider("beta")
    router = make_router([alpha, beta], max_attempts=3, rate_wait_max_s=0.0)
    router.fetch(REQUEST)
    routed = router.fetch(REQUEST)  # refused by our limiter: alpha is not called
    assert routed.provider == "beta"
    assert len(alpha.calls) == 1
    assert breaker_for("alpha").state()["failures"] == 0, "alpha did not fail: we did not call it"
    assert sleeps == [], "a full window is not retried with backoff: the next provider is tried"
    assert "waiting" in routed.attempts[0].detail


def test_router_limiter_refusal_gives_back_the_half_open_trial(make_router, redis_client, clock) -> None:  # type: ignore[no-untyped-def]
    tripping = BreakerPolicy(failure_threshold=1, rate_min_calls=1_000_000, cooldown_s=30.0)  # one trial at a time
    alpha, beta = FakeProvider("alpha", rate_limit_per_min=1), FakeProvider("beta")
    breaker = CircuitBreaker("provider:alpha", redis_client, tripping, clock=clock)
    router = make_router(
        [alpha, beta], rate_wait_max_s=0.0, breaker_for=lambda name: CircuitBreaker(f"provider:{name}", redis_client, tripping, clock=clock)
    )
    RateLimiter(redis_client, clock=clock).acquire("alpha", 1)  # another worker took the only slot
    breaker.record(False)
    clock.advance(30.0)
    routed = router.fetch(REQUEST)
    assert routed.provider == "beta"
    assert alpha.calls == []
    assert "waiting" in routed.attempts[0].detail
    assert breaker.state()["state"] == "half_open", "the breaker was asked first: the cooldown is over"
    decision = breaker.allow()
    assert decision.trial, "the trial reserved for the refused call was given back: the next caller gets it"
    breaker.release(decision.trial)
    clock.advance(31.0)  # the window frees up
    assert router.fetch(REQUEST).provider == "alpha"
    assert len(alpha.calls) == 1
    assert breaker.state()["state"] == "closed"


def test_router_limiter_refusal_on_every_attempt_leaves_no_trial_held(make_router, redis_client, clock) -> None:  # type: ignore[no-untyped-def]
    tripping = BreakerPolicy(failure_threshold=1, rate_min_calls=1_000_000, cooldown_s=30.0)
    alpha = FakeProvider("alpha", daily_quota=1)
    breaker = CircuitBreaker("provider:alpha", redis_client, tripping, clock=clock)
    router = make_router(
        [alpha], max_attempts=3, breaker_for=lambda name: CircuitBreaker(f"provider:{name}", redis_client, tripping, clock=clock)
    )
    RateLimiter(redis_client, clock=clock).take_quota("alpha", 1)  # today's quota is used up
    breaker.record(False)
    for _ in range(3):
        clock.advance(30.0)
        with pytest.raises(NoProviderServed) as info:
            router.fetch(REQUEST)
        assert info.value.permanent is False
        assert "daily quota" in str(info.value)
        assert "breaker" not in str(info.value), "never refused by its own breaker: each trial went back"
    assert alpha.calls == []
    assert breaker.state()["state"] == "half_open"
    assert breaker.allow().trial


def test_router_open_breaker_takes_no_rate_limit_slot_or_quota(make_router, breaker_for, redis_client, clock) -> None:  # type: ignore[no-untyped-def]
    alpha = FakeProvider("alpha", rate_limit_per_min=5, daily_quota=10)
    beta = FakeProvider("beta")
    breaker_for("alpha").force(BreakerState.OPEN, actor="ops", reason="provider incident")
    router = make_router([alpha, beta], rate_wait_max_s=0.0)
    for _ in range(8):  # more fetches than alpha's calls per minute
        assert router.fetch(REQUEST).provider == "beta"
    assert alpha.calls == []
    assert redis_client.zcard(RATELIMIT_WINDOW_KEY.format(provider="alpha")) == 0, "the open breaker was asked before the limiter"
    assert RateLimiter(redis_client, clock=clock).quota_used("alpha") == 0
    assert redis_client.zcard(RATELIMIT_WINDOW_KEY.format(provider="beta")) == 8


def test_router_automatically_open_breaker_leaves_the_limiter_window_untouched(make_router, redis_client, clock) -> None:  # type: ignore[no-untyped-def]
    tripping = BreakerPolicy(failure_threshold=2, rate_min_calls=1_000_000, cooldown_s=30.0)
    alpha = FakeProvider("alpha", then=ProviderUnavailable("503", provider="alpha"), rate_limit_per_min=3)
    beta = FakeProvider("beta")
    router = make_router(
        [alpha, beta],
        max_attempts=2,
        rate_wait_max_s=0.0,
        breaker_for=lambda name: CircuitBreaker(f"provider:{name}", redis_client, tripping, clock=clock),
    )
    assert router.fetch(REQUEST).provider == "beta"  # two failed calls: alpha's breaker opens
    assert CircuitBreaker("provider:alpha", redis_client, tripping, clock=clock).state()["state"] == "open"
    window = RATELIMIT_WINDOW_KEY.format(provider="alpha")
    assert redis_client.zcard(window) == 2
    for _ in range(5):
        assert router.fetch(REQUEST).provider == "beta"
    assert len(alpha.calls) == 2
    assert redis_client.zcard(window) == 2, "fetches refused by the breaker took no slot of alpha's window"
    clock.advance(30.0)  # half-open: the trial does take a slot
    alpha._then = "ok"  # the provider recovered
    assert router.fetch(REQUEST).provider == "alpha"
    assert redis_client.zcard(window) == 3


def test_router_provider_without_the_adjustment_is_skipped_without_being_called(make_router) -> None:  # type: ignore[no-untyped-def]
    raw_only, beta = FakeProvider("raw_only"), FakeProvider("beta", adjustments=("raw", "split"))
    request = BarRequest("AAPL", "1Min", START, START + timedelta(minutes=5), adjustment="split")
    routed = make_router([raw_only, beta]).fetch(request)
    assert routed.provider == "beta"
    assert raw_only.calls == []
    assert routed.attempts[0].outcome == "skipped"
    assert "cannot serve split prices" in routed.attempts[0].detail
    assert set(routed.bars["adjustment"]) == {"split"}


def test_router_pages_beyond_the_first_are_charged_to_the_window_and_quota(make_router, redis_client, clock) -> None:  # type: ignore[no-untyped-def]
    alpha = FakeProvider("alpha", rate_limit_per_min=5, daily_quota=10, pages=3)
    beta = FakeProvider("beta")
    router = make_router([alpha, beta], rate_wait_max_s=0.0)
    assert router.fetch(REQUEST).provider == "alpha"
    limiter = RateLimiter(redis_client, clock=clock)
    assert limiter.quota_used("alpha") == 3
    assert redis_client.zcard("omni:ratelimit:alpha") == 3
    assert router.fetch(REQUEST).provider == "alpha"  # the 4th slot; its 2 extra pages fill the window
    assert router.fetch(REQUEST).provider == "beta"
    assert len(alpha.calls) == 2
    assert limiter.quota_used("alpha") == 6


# ---- an adapter raising something unexpected ------------------------------------------------


@pytest.mark.parametrize(
    "error",
    [KeyError("close"), ValueError("could not convert 'N/A' to float"), TypeError("'NoneType' object is not subscriptable")],
    ids=["KeyError", "ValueError", "TypeError"],
)
def test_router_unexpected_exception_counts_against_the_breaker_and_falls_back(make_router, breaker_for, sleeps, error) -> None:  # type: ignore[no-untyped-def]
    alpha, beta = FakeProvider("alpha", then=error), FakeProvider("beta")
    routed = make_router([alpha, beta], max_attempts=3).fetch(REQUEST)
    assert routed.provider == "beta"
    _assert_served_by(routed.bars, "beta")
    assert len(alpha.calls) == 1, "an adapter bug is not retried on the same provider"
    assert sleeps == []
    assert (routed.attempts[0].provider, routed.attempts[0].outcome) == ("alpha", "failed")
    assert routed.attempts[0].detail.startswith("MalformedPayload: ")
    assert f"unexpected {type(error).__name__} from the alpha adapter" in routed.attempts[0].detail
    assert breaker_for("alpha").state()["failures"] == 1
    assert breaker_for("beta").state()["failures"] == 0


def test_router_unexpected_exception_from_the_only_provider_is_transient(make_router) -> None:  # type: ignore[no-untyped-def]
    alpha = FakeProvider("alpha", then=KeyError("close"))
    with pytest.raises(NoProviderServed) as info:
        make_router([alpha]).fetch(REQUEST)
    assert info.value.permanent is False, "a malformed answer may be well-formed next time"
    assert "MalformedPayload: unexpected KeyError from the alpha adapter" in str(info.value)
    assert [(a.provider, a.outcome) for a in info.value.attempts] == [("alpha", "failed")]


def test_router_unexpected_exceptions_open_the_breaker(make_router, redis_client, clock) -> None:  # type: ignore[no-untyped-def]
    tripping = BreakerPolicy(failure_threshold=3, rate_min_calls=1_000_000, cooldown_s=30.0)
    alpha, beta = FakeProvider("alpha", then=KeyError("close")), FakeProvider("beta")
    router = make_router([alpha, beta], breaker_for=lambda name: CircuitBreaker(f"provider:{name}", redis_client, tripping, clock=clock))
    for _ in range(3):
        assert router.fetch(REQUEST).provider == "beta"
    assert CircuitBreaker("provider:alpha", redis_client, tripping, clock=clock).state()["state"] == "open"
    routed = router.fetch(REQUEST)
    assert len(alpha.calls) == 3
    assert routed.attempts[0].outcome == "skipped"
    assert "breaker provider:alpha is open" in routed.attempts[0].detail


def test_router_unexpected_exception_in_a_half_open_trial_reopens_the_breaker(make_router, redis_client, clock) -> None:  # type: ignore[no-untyped-def]
    tripping = BreakerPolicy(failure_threshold=1, rate_min_calls=1_000_000, cooldown_s=30.0)
    alpha, beta = FakeProvider("alpha", [KeyError("close")]), FakeProvider("beta")
    breaker = CircuitBreaker("provider:alpha", redis_client, tripping, clock=clock)
    router = make_router([alpha, beta], breaker_for=lambda name: CircuitBreaker(f"provider:{name}", redis_client, tripping, clock=clock))
    breaker.record(False)
    clock.advance(30.0)
    assert router.fetch(REQUEST).provider == "beta"
    state = breaker.state()
    assert (state["state"], state["opened_at"]) == ("open", clock()), "the trial's failure was recorded: no slot is left held"
    clock.advance(30.0)
    assert router.fetch(REQUEST).provider == "alpha", "the next half-open round gets its trial"
    assert breaker.state()["state"] == "closed"


# ---- quotas, refusals, whole series ----------------------------------------------------


def _daily_refusal(provider: str = "alpha") -> QuotaExhausted:
    return QuotaExhausted("Our standard API rate limit is 25 requests per day.", provider=provider)


def test_router_spent_daily_quota_falls_back_without_calling_and_says_so(make_router, redis_client, clock) -> None:  # type: ignore[no-untyped-def]
    alpha, beta = FakeProvider("alpha", daily_quota=2), FakeProvider("beta")
    router = make_router([alpha, beta])
    assert [router.fetch(REQUEST).provider for _ in range(3)] == ["alpha", "alpha", "beta"]
    assert len(alpha.calls) == 2, "no call once the day's quota is counted spent"
    routed = router.fetch(REQUEST)
    assert "daily quota of 2 calls used up" in routed.attempts[0].detail
    with pytest.raises(NoProviderServed, match="deferred") as info:
        make_router([alpha]).fetch(REQUEST)
    reset = RateLimiter(redis_client, clock=clock).seconds_to_reset()
    assert info.value.defer_s == pytest.approx(reset), "alone, the provider is waited for until 00:00 UTC"
    assert info.value.permanent is False


def test_router_daily_refusal_of_one_symbol_does_not_spend_the_quota_two_symbols_do(make_router, breaker_for) -> None:  # type: ignore[no-untyped-def]
    alpha = FakeProvider("alpha", [_daily_refusal()], daily_quota=25)
    router = make_router([alpha], max_refusals=3)
    with pytest.raises(NoProviderServed) as first:
        router.fetch(REQUEST)
    assert first.value.defer_s == 60.0, "one symbol refused: waited out like a rate limit, not until midnight"
    assert router.fetch(BarRequest("MSFT", "1Min", START, START + timedelta(minutes=5))).provider == "alpha", "the others go on"
    alpha._script = [_daily_refusal()]  # scripting the fake
    with pytest.raises(NoProviderServed) as second:
        router.fetch(BarRequest("NVDA", "1Min", START, START + timedelta(minutes=5)))
    assert second.value.defer_s is not None
    assert second.value.defer_s > 60.0, "a second symbol told the same: the quota is spent until it resets"
    calls = len(alpha.calls)
    with pytest.raises(NoProviderServed, match="daily quota of 25 calls used up"):
        router.fetch(REQUEST)
    assert len(alpha.calls) == calls, "no call is made while the quota is spent"
    assert breaker_for("alpha").state()["failures"] == 0, "refusals are not provider failures"


def test_router_whole_series_is_one_call_per_job_and_symbol_and_a_refusal_holds_the_siblings(make_router, redis_client) -> None:  # type: ignore[no-untyped-def]
    from omni_tasks.marketdata.series import SeriesCache

    whole = FakeProvider("alpha")
    whole.capabilities = replace(whole.capabilities, whole_series=frozenset({"1Min"}))
    router = make_router([whole], series=SeriesCache(redis_client), max_refusals=2)
    span = (START, START + timedelta(minutes=30))
    parts = [BarRequest("AAPL", "1Min", START + timedelta(minutes=5 * i), START + timedelta(minutes=5 * (i + 1))) for i in range(6)]
    served = [router.fetch(p, job=7, span=span) for p in parts]
    assert len(whole.calls) == 1, "one call over the job's range; the partitions share it"
    assert (whole.calls[0].start, whole.calls[0].end) == span
    assert [len(r.bars) for r in served] == [5] * 6
    assert all(r.bars["ts"].min() >= pd.Timestamp(p.start) for r, p in zip(served, parts, strict=True))

    whole._then = RateLimited("Information: rate limit", provider="alpha")  # scripting the fake
    msft = [replace(p, symbol="MSFT") for p in parts]
    with pytest.raises(NoProviderServed) as waiting:
        router.fetch(msft[0], job=7, span=span)
    assert waiting.value.defer_s == 60.0
    with pytest.raises(NoProviderServed, match="refused MSFT for now"):
        router.fetch(msft[1], job=7, span=span)  # a sibling waits for the refusal instead of asking
    assert len(whole.calls) == 2


@pytest.mark.parametrize(
    "final",
    [UnknownSymbol("Invalid API call", provider="alpha"), NoBarsInRange("none in the range; its series runs 1999-11-01..", provider="alpha")],
    ids=["unknown-symbol", "no-bars-in-range"],
)
def test_router_whole_series_final_word_is_one_call_per_job_and_symbol_shared_by_the_siblings(make_router, redis_client, final) -> None:  # type: ignore[no-untyped-def]
    from omni_tasks.marketdata.router import NO_BARS_IN_RANGE, UNKNOWN_SYMBOL
    from omni_tasks.marketdata.series import SeriesCache

    whole = FakeProvider("alpha", then=final)
    whole.capabilities = replace(whole.capabilities, whole_series=frozenset({"1Min"}))
    router = make_router([whole], series=SeriesCache(redis_client))
    span = (START, START + timedelta(minutes=30))
    parts = [BarRequest("ZZZZ", "1Min", START + timedelta(minutes=5 * i), START + timedelta(minutes=5 * (i + 1))) for i in range(6)]
    causes = []
    for part in parts:
        with pytest.raises(NoProviderServed) as caught:
            router.fetch(part, job=8, span=span)
        assert caught.value.permanent
        causes.append(caught.value.cause)
    assert len(whole.calls) == 1, "the provider's answer for the job's whole range holds for every partition in it"
    assert causes == [UNKNOWN_SYMBOL if isinstance(final, UnknownSymbol) else NO_BARS_IN_RANGE] * 6
    whole._then = "ok"
    assert len(router.fetch(replace(parts[0], symbol="MSFT"), job=8, span=span).bars) == 5
    with pytest.raises(NoProviderServed):
        router.fetch(parts[0], job=8, span=span)  # ZZZZ still takes the recorded word
    assert len(whole.calls) == 2


def test_router_one_symbol_told_the_daily_limit_max_refusals_times_while_no_other_is_served_spends_the_quota(  # type: ignore[no-untyped-def]
    make_router, redis_client, clock, breaker_for
) -> None:
    """A one-symbol job has no second symbol to tell "quota spent" from "refused for itself": the provider serving no
    other symbol while it refuses this one max_refusals times says spent, and the partitions defer to 00:00 UTC."""
    from omni_tasks.marketdata.series import SeriesCache

    whole = FakeProvider("alpha", daily_quota=25, then=_daily_refusal())
    whole.capabilities = replace(whole.capabilities, whole_series=frozenset({"1Min"}))
    router = make_router([whole], series=SeriesCache(redis_client), max_refusals=3)
    span = (START, START + timedelta(minutes=10))
    part = BarRequest("IBM", "1Min", START, START + timedelta(minutes=5))
    waits = []
    for _ in range(3):
        with pytest.raises(NoProviderServed) as refused:
            router.fetch(part, job=11, span=span)
        assert not refused.value.permanent, "waiting for the quota is not failing"
        waits.append(refused.value.defer_s)
        clock.advance(61.0)
        redis_client.delete(SeriesCache.key(11, "alpha", "IBM", "1Min", "raw") + ":refused")  # its standing refusal ran out
    assert waits[:2] == [60.0, 60.0], "the first refusals are waited out like a rate limit"
    assert waits[2] is not None
    assert waits[2] > 3600.0, "then the quota counts as spent: until 00:00 UTC"
    calls = len(whole.calls)
    with pytest.raises(NoProviderServed) as sibling:
        router.fetch(replace(part, start=START + timedelta(minutes=5), end=START + timedelta(minutes=10)), job=11, span=span)
    assert not sibling.value.permanent
    assert sibling.value.defer_s is not None
    assert sibling.value.defer_s > 3600.0
    assert len(whole.calls) == calls == 3, "no call while the quota is spent"
    assert breaker_for("alpha").state()["failures"] == 0


def test_router_one_symbol_told_the_daily_limit_while_others_are_served_fails_alone(make_router, redis_client, clock) -> None:  # type: ignore[no-untyped-def]
    """The same words about one symbol while the provider keeps serving others: that symbol's own refusal."""
    from omni_tasks.marketdata.series import SeriesCache

    whole = FakeProvider("alpha", daily_quota=25)
    whole.capabilities = replace(whole.capabilities, whole_series=frozenset({"1Min"}))
    router = make_router([whole], series=SeriesCache(redis_client), max_refusals=3)
    span = (START, START + timedelta(minutes=5))
    for i in range(3):
        whole._script = [_daily_refusal(), "ok"]  # scripting the fake: BADX refused, then another symbol served
        with pytest.raises(NoProviderServed) as refused:
            router.fetch(BarRequest("BADX", "1Min", *span), job=12, span=span)
        assert router.fetch(BarRequest(f"OK{i}", "1Min", *span), job=12, span=span).provider == "alpha"
        clock.advance(61.0)
        redis_client.delete(SeriesCache.key(12, "alpha", "BADX", "1Min", "raw") + ":refused")  # its standing refusal ran out
    assert refused.value.permanent, "refused max_refusals times while others were served: it fails, alone"
    assert "refused BADX 3 times" in str(refused.value)
