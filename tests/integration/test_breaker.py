"""CircuitBreaker on real Redis: thresholds, failure rate, cooldown, trials (identified, leased, released),
forced states, fail-open/closed, state shared across processes, and a stateful property test against a
plain Python model.

Cooldowns use an injected clock: nothing here sleeps through one.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import uuid
from dataclasses import dataclass, field

import pytest
import redis
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule, run_state_machine_as_test
from redis.backoff import NoBackoff
from redis.retry import Retry

from omni_tasks.core.keys import BREAKER_TRIALS_KEY
from omni_tasks.safety.breaker import BreakerOpen, BreakerPolicy, BreakerState, CircuitBreaker, Transition, known_breakers
from tests.conftest import REPO_ROOT

pytestmark = pytest.mark.services

T0 = 1_700_000_000.0


class Clock:
    def __init__(self, now: float = T0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@dataclass
class Recorder:
    events: list[Transition] = field(default_factory=list)

    def __call__(self, event: Transition) -> None:
        self.events.append(event)

    def pairs(self) -> list[tuple[str, str]]:
        return [(e.from_state, e.to_state) for e in self.events]


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def hook() -> Recorder:
    return Recorder()


@pytest.fixture
def make(redis_client: redis.Redis, clock: Clock, hook: Recorder):  # type: ignore[no-untyped-def]
    def build(policy: BreakerPolicy | None = None, *, name: str = "provider:alpha", **kwargs: object) -> CircuitBreaker:
        return CircuitBreaker(name, redis_client, policy or BreakerPolicy(failure_threshold=3, rate_min_calls=1_000_000, cooldown_s=30.0), on_transition=hook, clock=clock, **kwargs)  # type: ignore[arg-type]

    return build


def _trip(breaker: CircuitBreaker) -> None:
    for _ in range(breaker.policy.failure_threshold):
        breaker.record(False)
    assert breaker.state()["state"] == "open"


# ---- closed -> open ----------------------------------------------------------------------


def test_breaker_opens_at_the_failure_threshold(make, hook) -> None:  # type: ignore[no-untyped-def]
    breaker = make()
    breaker.record(False)
    breaker.record(False)
    assert breaker.allow().allowed is True
    assert breaker.state()["state"] == "closed"
    assert breaker.state()["failures"] == 2
    breaker.record(False)
    decision = breaker.allow()
    assert decision.allowed is False
    assert decision.state == "open"
    assert decision.reason == "breaker provider:alpha is open"
    assert breaker.state()["opened_at"] == T0
    assert [(e.from_state, e.to_state, e.reason, e.at) for e in hook.events] == [("closed", "open", "3 consecutive failures", T0)]


def test_breaker_success_resets_the_consecutive_failure_count(make) -> None:  # type: ignore[no-untyped-def]
    breaker = make()
    for ok in (False, False, True, False, False):
        breaker.record(ok)
    assert breaker.state()["state"] == "closed"
    assert breaker.state()["failures"] == 2


def test_breaker_opens_on_failure_rate_over_the_window(make, hook) -> None:  # type: ignore[no-untyped-def]
    breaker = make(BreakerPolicy(failure_threshold=100, failure_rate=0.5, rate_window_s=60.0, rate_min_calls=10, cooldown_s=30.0))
    for ok in (True, False) * 4 + (True,):  # 9 calls, 4 failures: under the minimum number of calls
        breaker.record(ok)
    assert breaker.state()["state"] == "closed"
    breaker.record(False)  # 5 of 10
    assert breaker.state()["state"] == "open"
    assert hook.events[-1].reason == "failure rate 5 of 10 calls"


def test_breaker_failure_rate_below_threshold_stays_closed(make) -> None:  # type: ignore[no-untyped-def]
    breaker = make(BreakerPolicy(failure_threshold=100, failure_rate=0.5, rate_window_s=60.0, rate_min_calls=10, cooldown_s=30.0))
    for ok in (True, True, False) * 5:  # 5 of 15 failed
        breaker.record(ok)
    assert breaker.state()["state"] == "closed"


def test_breaker_failure_rate_forgets_calls_older_than_the_window(make, clock) -> None:  # type: ignore[no-untyped-def]
    breaker = make(BreakerPolicy(failure_threshold=100, failure_rate=0.5, rate_window_s=60.0, rate_min_calls=10, cooldown_s=30.0))
    for ok in (True, False) * 4 + (True,):
        breaker.record(ok)
    clock.advance(61.0)
    breaker.record(False)  # alone in the window now: 1 of 1, under the minimum
    assert breaker.state()["state"] == "closed"


# ---- open -> half_open -> closed / open --------------------------------------------------------


def test_breaker_half_opens_after_the_cooldown(make, clock, hook) -> None:  # type: ignore[no-untyped-def]
    breaker = make()
    _trip(breaker)
    clock.advance(29.999)
    assert breaker.allow().allowed is False
    clock.advance(0.001)
    decision = breaker.allow()
    assert (decision.allowed, decision.state) == (True, "half_open")
    assert isinstance(decision.trial, str)
    assert decision.trial, "a half-open call is a trial and carries its id"
    assert hook.pairs()[-1] == ("open", "half_open")
    assert hook.events[-1].reason == "cooldown elapsed"
    assert breaker.state()["state"] == "half_open"


def test_breaker_half_open_lets_at_most_max_trials_through(make, clock) -> None:  # type: ignore[no-untyped-def]
    breaker = make(BreakerPolicy(failure_threshold=3, rate_min_calls=1_000_000, cooldown_s=30.0, half_open_max_trials=2))
    _trip(breaker)
    clock.advance(30.0)
    first, second, third = breaker.allow(), breaker.allow(), breaker.allow()
    assert first.allowed is True
    assert second.allowed is True
    assert first.trial
    assert second.trial
    assert first.trial != second.trial, "every trial has an id of its own"
    assert (third.allowed, third.state, third.trial) == (False, "half_open", "")
    assert "half_open" in third.reason
    breaker.record(True, trial=first.trial)  # close_after_successes=1: closes
    assert breaker.state()["state"] == "closed"
    assert breaker.allow().allowed is True


def test_breaker_half_open_trial_limit_holds_under_concurrent_callers(redis_client, redis_url, clock) -> None:  # type: ignore[no-untyped-def]
    policy = BreakerPolicy(failure_threshold=3, rate_min_calls=1_000_000, cooldown_s=30.0, half_open_max_trials=2)
    name = f"provider:{uuid.uuid4().hex[:8]}"
    _trip(CircuitBreaker(name, redis_client, policy, clock=clock))
    clock.advance(30.0)
    callers = 12
    barrier = threading.Barrier(callers)
    results: list[bool] = []
    lock = threading.Lock()

    def call() -> None:
        client = redis.Redis.from_url(redis_url)  # a connection of its own per caller
        breaker = CircuitBreaker(name, client, policy, clock=clock)
        barrier.wait()
        allowed = breaker.allow().allowed
        with lock:
            results.append(allowed)
        client.close()

    threads = [threading.Thread(target=call) for _ in range(callers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert len(results) == callers
    assert sum(results) == 2, f"{sum(results)} of {callers} concurrent callers let through with half_open_max_trials=2"


def test_breaker_successful_trial_closes_it(make, clock, hook) -> None:  # type: ignore[no-untyped-def]
    breaker = make()
    _trip(breaker)
    clock.advance(30.0)
    trial = breaker.allow().trial
    assert trial
    breaker.record(True, trial=trial)
    state = breaker.state()
    assert (state["state"], state["failures"]) == ("closed", 0)
    assert hook.pairs()[-1] == ("half_open", "closed")
    assert hook.events[-1].reason == "trial succeeded"
    decision = breaker.allow()
    assert (decision.allowed, decision.trial, decision.state) == (True, "", "closed")
    breaker.record(False)
    breaker.record(False)
    assert breaker.state()["state"] == "closed", "the count starts again from zero after closing"


def test_breaker_closes_only_after_close_after_successes_trials(make, clock) -> None:  # type: ignore[no-untyped-def]
    breaker = make(BreakerPolicy(failure_threshold=3, rate_min_calls=1_000_000, cooldown_s=30.0, close_after_successes=2))
    _trip(breaker)
    clock.advance(30.0)
    first = breaker.allow().trial
    assert first
    breaker.record(True, trial=first)
    assert breaker.state()["state"] == "half_open"
    second = breaker.allow().trial
    assert second, "the first trial's slot was released"
    assert second != first
    breaker.record(True, trial=second)
    assert breaker.state()["state"] == "closed"


def test_breaker_failed_trial_reopens_and_restarts_the_cooldown(make, clock, hook) -> None:  # type: ignore[no-untyped-def]
    breaker = make()
    _trip(breaker)
    clock.advance(30.0)
    trial = breaker.allow().trial
    assert trial
    clock.advance(5.0)
    breaker.record(False, trial=trial)
    assert breaker.state()["state"] == "open"
    assert breaker.state()["opened_at"] == T0 + 35.0
    assert hook.pairs()[-1] == ("half_open", "open")
    assert hook.events[-1].reason == "trial failed"
    clock.advance(29.0)
    assert breaker.allow().allowed is False, "the cooldown counts from the failed trial"
    clock.advance(1.0)
    assert breaker.allow().trial


def test_breaker_outcomes_while_open_are_ignored(make, clock) -> None:  # type: ignore[no-untyped-def]
    breaker = make()
    _trip(breaker)
    breaker.record(True)  # a call let through before it opened, finishing late
    assert breaker.state()["state"] == "open"
    assert breaker.allow().allowed is False


def test_breaker_trial_lost_by_a_killed_worker_frees_its_slot_after_the_trial_lease(make, clock, hook) -> None:  # type: ignore[no-untyped-def]
    breaker = make(BreakerPolicy(failure_threshold=3, rate_min_calls=1_000_000, cooldown_s=30.0, trial_lease_s=60.0))
    _trip(breaker)
    clock.advance(30.0)
    trial_at = clock()
    lost = breaker.allow().trial
    assert lost  # ... and the worker holding the trial dies: its outcome never comes back
    clock.now = trial_at + 59.999
    refused = breaker.allow()
    assert (refused.allowed, refused.state) == (False, "half_open"), "the lost trial still holds its slot inside its lease"
    clock.now = trial_at + 60.0
    retried = breaker.allow()
    assert (retried.allowed, retried.state) == (True, "half_open"), "the lease is over: the breaker tries again by itself"
    assert retried.trial
    assert retried.trial != lost
    assert breaker.allow().allowed is False, "the new trial holds the only slot"
    breaker.record(False, trial=lost)  # the lost trial's outcome turns up after all: no longer a trial of this round
    assert breaker.state()["state"] == "half_open"
    assert hook.pairs()[-1] == ("open", "half_open")
    breaker.record(True, trial=retried.trial)
    assert breaker.state()["state"] == "closed"


def test_breaker_trial_lease_follows_the_policy(make, clock) -> None:  # type: ignore[no-untyped-def]
    breaker = make(BreakerPolicy(failure_threshold=3, rate_min_calls=1_000_000, cooldown_s=30.0, trial_lease_s=5.0))
    assert BreakerPolicy().trial_lease_s == 60.0
    _trip(breaker)
    clock.advance(30.0)
    trial_at = clock()
    assert breaker.allow().trial
    clock.now = trial_at + 4.5
    assert breaker.allow().allowed is False
    clock.now = trial_at + 5.0
    assert breaker.allow().trial


def test_breaker_late_outcome_of_an_earlier_trial_does_not_widen_the_trial_limit(make, clock, hook) -> None:  # type: ignore[no-untyped-def]
    breaker = make(BreakerPolicy(failure_threshold=3, rate_min_calls=1_000_000, cooldown_s=30.0, half_open_max_trials=2, close_after_successes=2))
    _trip(breaker)
    clock.advance(30.0)
    a, b = breaker.allow().trial, breaker.allow().trial
    assert a
    assert b
    breaker.record(False, trial=a)  # A fails: open again
    assert breaker.state()["state"] == "open"
    clock.advance(30.0)
    c, d = breaker.allow().trial, breaker.allow().trial
    assert c
    assert d
    seen = len(hook.events)
    breaker.record(True, trial=b)  # B, from the earlier round, finishes now
    assert breaker.allow().allowed is False, "C and D are still running: a third trial exceeds half_open_max_trials=2"
    assert len(hook.events) == seen
    breaker.record(True, trial=c)
    assert breaker.state()["state"] == "half_open", "B's late success did not count towards close_after_successes=2"
    breaker.record(True, trial=d)
    assert breaker.state()["state"] == "closed"


def test_breaker_late_failure_of_an_earlier_trial_does_not_reopen_it(make, clock) -> None:  # type: ignore[no-untyped-def]
    breaker = make(BreakerPolicy(failure_threshold=3, rate_min_calls=1_000_000, cooldown_s=30.0, half_open_max_trials=2))
    _trip(breaker)
    clock.advance(30.0)
    a, b = breaker.allow().trial, breaker.allow().trial
    breaker.record(False, trial=a)
    clock.advance(30.0)
    c = breaker.allow().trial
    assert c
    breaker.record(False, trial=b)  # B, from the earlier round, fails late
    assert breaker.state()["state"] == "half_open"
    assert breaker.state()["opened_at"] == T0 + 30.0, "the cooldown did not restart"
    breaker.record(True, trial=c)
    assert breaker.state()["state"] == "closed"


def test_breaker_release_frees_exactly_one_trial_slot(make, clock, hook) -> None:  # type: ignore[no-untyped-def]
    breaker = make(BreakerPolicy(failure_threshold=3, rate_min_calls=1_000_000, cooldown_s=30.0, half_open_max_trials=2))
    _trip(breaker)
    clock.advance(30.0)
    a, b = breaker.allow().trial, breaker.allow().trial
    assert a
    assert b
    assert breaker.allow().allowed is False
    seen = len(hook.events)
    breaker.release(a)
    c = breaker.allow()
    assert (c.allowed, c.state) == (True, "half_open"), "the released slot is free again"
    assert c.trial not in {"", a, b}
    assert breaker.allow().allowed is False, "one release frees one slot, not more"
    breaker.release(a)  # twice: already given back
    breaker.release("")  # not a trial
    breaker.release("0123456789abcdef")  # not a trial of this breaker
    assert breaker.allow().allowed is False, "releasing what is not held frees nothing"
    assert breaker.state()["state"] == "half_open", "a release records no outcome"
    assert len(hook.events) == seen
    breaker.record(False, trial=a)  # a released trial's outcome no longer counts
    assert breaker.state()["state"] == "half_open"
    breaker.record(True, trial=b)
    assert breaker.state()["state"] == "closed"


def test_breaker_release_outside_half_open_changes_nothing(make) -> None:  # type: ignore[no-untyped-def]
    breaker = make()
    decision = breaker.allow()
    assert decision.trial == ""
    breaker.release(decision.trial)
    breaker.release("0123456789abcdef")
    assert breaker.state()["state"] == "closed"
    assert breaker.state()["failures"] == 0


@pytest.mark.parametrize("ok", [True, False])
def test_breaker_record_with_an_unknown_trial_id_while_half_open_changes_nothing(make, clock, hook, ok: bool) -> None:  # type: ignore[no-untyped-def]
    breaker = make()
    _trip(breaker)
    clock.advance(30.0)
    trial = breaker.allow().trial
    assert trial
    before, seen = breaker.state(), len(hook.events)
    clock.advance(1.0)
    breaker.record(ok, trial="0123456789abcdef")  # not a trial of this round
    breaker.record(ok, trial="")  # a call let through before the breaker opened, finishing late
    breaker.record(ok)
    assert breaker.state() == before
    assert len(hook.events) == seen
    assert breaker.allow().allowed is False, "the real trial still holds the only slot"
    breaker.record(ok, trial=trial)
    assert breaker.state()["state"] == ("closed" if ok else "open"), "the real trial's outcome still decides the round"


# ---- forced states and reset ---------------------------------------------------------------------


def test_breaker_forced_open_refuses_while_automatic_state_stays_closed(make, hook) -> None:  # type: ignore[no-untyped-def]
    breaker = make()
    breaker.force(BreakerState.OPEN, actor="alice", reason="provider incident 42")
    decision = breaker.allow()
    assert (decision.allowed, decision.forced, decision.state) == (False, "open", "closed")
    assert decision.reason == "breaker provider:alpha is forced open"
    # What calls get is the forced state; the automatic one beneath stays closed.
    assert (breaker.state()["state"], breaker.state()["automatic"], breaker.state()["forced"]) == ("open", "closed", "open")
    assert breaker.forced() == "open"
    assert hook.pairs()[-1] == ("automatic", "forced:open")
    assert hook.events[-1].reason == "alice: provider incident 42"
    breaker.force(None, actor="alice", reason="incident over")
    assert breaker.allow().allowed is True
    assert breaker.forced() is None
    assert hook.pairs()[-1] == ("forced:open", "automatic")


def test_breaker_forced_closed_lets_calls_through_and_clearing_restores_the_automatic_state(make, clock) -> None:  # type: ignore[no-untyped-def]
    breaker = make()
    _trip(breaker)
    breaker.force(BreakerState.CLOSED, actor="bob", reason="the provider says it is fine")
    for _ in range(3):
        decision = breaker.allow()
        assert (decision.allowed, decision.trial, decision.forced) == (True, "", "closed")
    assert (breaker.state()["state"], breaker.state()["automatic"]) == ("closed", "open"), "the automatic state is kept apart"
    breaker.force(None, actor="bob", reason="back to automatic")
    assert breaker.allow().allowed is False, "still inside the cooldown"
    clock.advance(30.0)
    assert breaker.allow().trial


def test_breaker_forced_open_wins_over_an_elapsed_cooldown(make, clock) -> None:  # type: ignore[no-untyped-def]
    breaker = make()
    _trip(breaker)
    breaker.force(BreakerState.OPEN, actor="ops", reason="hold")
    clock.advance(3600.0)
    assert breaker.allow().allowed is False
    assert breaker.state()["state"] == "open", "no half-open trial while forced"


def test_breaker_reset_closes_clears_counters_and_force(make, hook) -> None:  # type: ignore[no-untyped-def]
    breaker = make()
    _trip(breaker)
    breaker.force(BreakerState.OPEN, actor="ops", reason="hold")
    breaker.reset(actor="carol", reason="provider fixed")
    state = breaker.state()
    assert (state["state"], state["forced"], state["failures"], state["opened_at"]) == ("closed", None, 0, None)
    assert breaker.allow().allowed is True
    assert hook.pairs()[-1] == ("open", "closed")
    assert hook.events[-1].reason == "reset by carol: provider fixed"
    breaker.record(False)
    breaker.record(False)
    assert breaker.state()["state"] == "closed"


def test_breaker_every_transition_reaches_the_hook_in_order(make, clock, hook) -> None:  # type: ignore[no-untyped-def]
    breaker = make()
    _trip(breaker)
    clock.advance(30.0)
    breaker.record(False, trial=breaker.allow().trial)
    clock.advance(30.0)
    breaker.record(True, trial=breaker.allow().trial)
    assert hook.pairs() == [("closed", "open"), ("open", "half_open"), ("half_open", "open"), ("open", "half_open"), ("half_open", "closed")]
    assert all(e.breaker == "provider:alpha" for e in hook.events)


def test_breaker_failing_hook_does_not_break_the_call_path(redis_client, clock) -> None:  # type: ignore[no-untyped-def]
    def broken(_event: Transition) -> None:
        raise RuntimeError("audit table missing")

    breaker = CircuitBreaker("provider:alpha", redis_client, BreakerPolicy(failure_threshold=1, cooldown_s=30.0), on_transition=broken, clock=clock)
    breaker.record(False)
    assert breaker.allow().allowed is False
    breaker.reset(actor="ops", reason="test")
    assert breaker.allow().allowed is True


def test_breaker_names_are_registered_for_operators(make, redis_client) -> None:  # type: ignore[no-untyped-def]
    make(name="provider:alpha").allow()
    make(name="broker").force(BreakerState.OPEN, actor="ops", reason="x")
    assert known_breakers(redis_client) == ["broker", "provider:alpha"]


def test_breakers_with_different_names_are_independent(make) -> None:  # type: ignore[no-untyped-def]
    alpha, beta = make(name="provider:alpha"), make(name="provider:beta")
    _trip(alpha)
    assert beta.allow().allowed is True
    assert beta.state()["failures"] == 0


# ---- call() --------------------------------------------------------------------------------------


def test_breaker_call_refused_when_open_without_running_the_function(make) -> None:  # type: ignore[no-untyped-def]
    breaker = make()
    _trip(breaker)
    ran: list[int] = []
    with pytest.raises(BreakerOpen, match="provider:alpha is open") as info:
        breaker.call(lambda: ran.append(1))
    assert info.value.breaker == "provider:alpha"
    print(f"calls passed by an open breaker: {len(ran)} of 1")
    assert ran == []


def test_breaker_call_records_failures_and_reraises(make) -> None:  # type: ignore[no-untyped-def]
    breaker = make()

    def boom() -> None:
        raise TimeoutError("read timeout")

    for _ in range(3):
        with pytest.raises(TimeoutError):
            breaker.call(boom)
    assert breaker.state()["state"] == "open"


def test_breaker_call_failure_predicate_decides_what_counts(make) -> None:  # type: ignore[no-untyped-def]
    breaker = make()

    def not_found() -> None:
        raise KeyError("no such order")

    for _ in range(5):
        with pytest.raises(KeyError):
            breaker.call(not_found, failure=lambda exc: not isinstance(exc, KeyError))
    assert breaker.state()["state"] == "closed"
    assert breaker.state()["failures"] == 0
    assert breaker.call(lambda: 42) == 42


def test_breaker_call_successful_trial_closes_it(make, clock) -> None:  # type: ignore[no-untyped-def]
    breaker = make()
    _trip(breaker)
    clock.advance(30.0)
    assert breaker.call(lambda: "ok") == "ok"
    assert breaker.state()["state"] == "closed"


# ---- Redis unreachable -------------------------------------------------------------------------------


@pytest.mark.parametrize("fail_open", [True, False])
def test_breaker_unreadable_state_answers_by_fail_open(fail_open: bool) -> None:
    # No client retries: redis-py's default (3 retries with backoff) takes ~4 s per call to a closed port.
    dead = redis.Redis(host="127.0.0.1", port=1, socket_connect_timeout=0.5, socket_timeout=0.5, retry=Retry(NoBackoff(), 0))
    breaker = CircuitBreaker("broker", dead, fail_open=fail_open)
    decision = breaker.allow()
    assert decision.allowed is fail_open
    assert decision.state == "unknown"
    assert "breaker state unreadable" in decision.reason
    breaker.record(False)  # must not raise on the call path
    if not fail_open:
        with pytest.raises(BreakerOpen, match="unreadable"):
            breaker.call(lambda: "order sent")


# ---- shared by every process --------------------------------------------------------------------------

_CHILD = """
import json, sys
import redis
from omni_tasks.safety.breaker import BreakerPolicy, CircuitBreaker, BreakerState
url, name, action = sys.argv[1:4]
breaker = CircuitBreaker(name, redis.Redis.from_url(url), BreakerPolicy(failure_threshold=3, rate_min_calls=1_000_000, cooldown_s=600.0))
if action == "trip":
    for _ in range(3):
        breaker.record(False)
elif action == "reset":
    breaker.reset(actor="child", reason="test")
elif action == "force-open":
    breaker.force(BreakerState.OPEN, actor="child", reason="test")
decision = breaker.allow()
print(json.dumps({"allowed": decision.allowed, "state": decision.state, "forced": decision.forced}))
"""


def _child(redis_url: str, name: str, action: str) -> dict[str, object]:
    done = subprocess.run([sys.executable, "-c", _CHILD, redis_url, name, action], capture_output=True, text=True, timeout=60, cwd=REPO_ROOT, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


_SHARED = BreakerPolicy(failure_threshold=3, rate_min_calls=1_000_000, cooldown_s=600.0)


def test_breaker_tripped_in_another_process_is_open_here(redis_client, redis_url) -> None:  # type: ignore[no-untyped-def]
    name = f"provider:{uuid.uuid4().hex[:8]}"
    here = CircuitBreaker(name, redis_client, _SHARED)
    assert here.allow().allowed is True
    seen_there = _child(redis_url, name, "trip")
    assert seen_there == {"allowed": False, "state": "open", "forced": None}
    decision = here.allow()
    assert (decision.allowed, decision.state) == (False, "open")


def test_breaker_tripped_here_is_open_in_another_process_and_its_reset_is_seen_here(redis_client, redis_url) -> None:  # type: ignore[no-untyped-def]
    name = f"provider:{uuid.uuid4().hex[:8]}"
    here = CircuitBreaker(name, redis_client, _SHARED)
    _trip(here)
    assert _child(redis_url, name, "look") == {"allowed": False, "state": "open", "forced": None}
    assert _child(redis_url, name, "reset") == {"allowed": True, "state": "closed", "forced": None}
    assert here.allow().allowed is True


def test_breaker_forced_open_in_another_process_refuses_here(redis_client, redis_url) -> None:  # type: ignore[no-untyped-def]
    name = f"broker-{uuid.uuid4().hex[:8]}"
    assert _child(redis_url, name, "force-open")["allowed"] is False
    decision = CircuitBreaker(name, redis_client, _SHARED).allow()
    assert (decision.allowed, decision.forced) == (False, "open")


# ---- stateful property test ------------------------------------------------------------------------------------

_MODEL_POLICY = BreakerPolicy(
    failure_threshold=2, rate_min_calls=1_000_000, cooldown_s=10.0, half_open_max_trials=2, close_after_successes=2, trial_lease_s=10.5
)


class BreakerModel:
    """The documented state machine, in plain Python (failure-rate opening left to the tests above).

    In HALF_OPEN the round's trials are the ids handed out since the breaker half-opened; only their
    outcomes count (one each), an id given back by ``release`` or past its lease (checked when a call
    asks) frees its slot, and any other outcome (no trial id, an earlier round's id) changes nothing.
    """

    def __init__(self, policy: BreakerPolicy) -> None:
        self.p = policy
        self.state: str = "closed"
        self.forced: str | None = None
        self.failures = self.successes = 0
        self.trials: dict[str, float] = {}  # this round's trial ids -> when they were let through
        self.opened_at = 0.0

    def allow(self, now: float, trial_id: str) -> tuple[bool, str, bool, list[tuple[str, str]]]:
        """``trial_id``: the id the breaker handed out, kept when the model agrees the call is a trial."""
        if self.forced == "open":
            return False, self.state, False, []
        if self.forced == "closed":
            return True, self.state, False, []
        moves: list[tuple[str, str]] = []
        if self.state == "open":
            if now - self.opened_at < self.p.cooldown_s:
                return False, "open", False, []
            self.state, self.trials, self.successes = "half_open", {}, 0
            moves.append(("open", "half_open"))
        if self.state == "half_open":
            self.trials = {t: at for t, at in self.trials.items() if at > now - self.p.trial_lease_s}
            if len(self.trials) >= self.p.half_open_max_trials:
                return False, "half_open", False, moves
            self.trials[trial_id] = now
            return True, "half_open", True, moves
        return True, "closed", False, moves

    def record(self, ok: bool, trial: str, now: float) -> list[tuple[str, str]]:
        if self.state == "half_open":
            if trial not in self.trials:
                return []
            del self.trials[trial]
            if ok:
                self.successes += 1
                if self.successes >= self.p.close_after_successes:
                    self.state, self.failures, self.successes, self.trials = "closed", 0, 0, {}
                    return [("half_open", "closed")]
                return []
            self.state, self.opened_at, self.successes, self.trials = "open", now, 0, {}
            return [("half_open", "open")]
        if self.state == "open":
            return []
        if ok:
            self.failures = 0
            return []
        self.failures += 1
        if self.failures >= self.p.failure_threshold:
            self.state, self.opened_at = "open", now
            return [("closed", "open")]
        return []

    def release(self, trial: str) -> None:
        self.trials.pop(trial, None)

    def force(self, target: str | None) -> list[tuple[str, str]]:
        move = ("forced:" + self.forced if self.forced else "automatic", "forced:" + target if target else "automatic")
        self.forced = target
        return [move]

    def reset(self) -> list[tuple[str, str]]:
        move = (self.state, "closed")
        self.state, self.forced = "closed", None
        self.failures = self.successes = 0
        self.trials = {}
        return [move]


def test_breaker_matches_its_state_machine_model_under_random_operations(redis_client) -> None:  # type: ignore[no-untyped-def]
    class BreakerMachine(RuleBasedStateMachine):
        @initialize(start=st.sampled_from(["closed", "open", "half_open"]), lost=st.sampled_from(range(_MODEL_POLICY.half_open_max_trials + 1)))
        def begin(self, start: str, lost: int) -> None:
            self.clock = Clock()
            self.hook = Recorder()
            self.breaker = CircuitBreaker(f"prop:{uuid.uuid4().hex}", redis_client, _MODEL_POLICY, on_transition=self.hook, clock=self.clock)
            self.model = BreakerModel(_MODEL_POLICY)
            self.pending: list[str] = []  # calls let through, not yet reported: their trial ids ('' when not a trial)
            self.handed_out: list[str] = []  # in the order handed out: trial ids are random, so sorting them would not replay
            # Short runs seldom walk all the way to HALF_OPEN: start some of them there (checked on the way).
            if start != "closed":
                for _ in range(_MODEL_POLICY.failure_threshold):
                    self.call(False)
            if start == "half_open":
                self.advance(_MODEL_POLICY.cooldown_s)
                for _ in range(_MODEL_POLICY.half_open_max_trials):  # every slot taken by a trial under way ...
                    self.allow()
                for _ in range(lost):  # ... some of whose workers die: only the lease frees their slots
                    self.lose(0)

        def _moves(self) -> list[tuple[str, str]]:
            moves = self.hook.pairs()
            self.hook.events.clear()
            return moves

        @rule()
        def allow(self) -> None:
            self._allow()

        def _allow(self) -> bool:
            decision = self.breaker.allow()
            allowed, state, trial, moves = self.model.allow(self.clock(), decision.trial)
            assert (decision.allowed, decision.state, bool(decision.trial)) == (allowed, state, trial)
            assert decision.forced == self.model.forced
            assert self._moves() == moves
            if decision.trial:
                assert decision.trial not in self.handed_out, "trial ids are never reused"
                self.handed_out.append(decision.trial)
            if decision.allowed:
                self.pending.append(decision.trial)
            return decision.allowed

        @rule(ok=st.booleans())
        def call(self, ok: bool) -> None:
            """allow() and, when let through, report at once: the common path, and the quick way to the other states."""
            if self._allow():
                self.record_at(len(self.pending) - 1, ok)

        def record_at(self, index: int, ok: bool) -> None:
            trial = self.pending.pop(index)
            self.breaker.record(ok, trial=trial)
            assert self._moves() == self.model.record(ok, trial, self.clock())

        @precondition(lambda self: bool(self.pending))
        @rule(ok=st.booleans(), pick=st.integers(min_value=0, max_value=10))
        def record(self, ok: bool, pick: int) -> None:
            self.record_at(pick % len(self.pending), ok)

        @precondition(lambda self: bool(self.pending))
        @rule(pick=st.integers(min_value=0, max_value=10))
        def release(self, pick: int) -> None:
            """A call let through but never made (the router's limiter refused it): its trial is given back."""
            trial = self.pending.pop(pick % len(self.pending))
            self.breaker.release(trial)
            self.model.release(trial)
            assert self._moves() == []

        @precondition(lambda self: bool(self.pending))
        @rule(pick=st.integers(min_value=0, max_value=10))
        def lose(self, pick: int) -> None:
            """A worker dies during its call: no outcome, no release."""
            self.pending.pop(pick % len(self.pending))

        @precondition(lambda self: bool(self.handed_out))
        @rule(ok=st.booleans(), pick=st.integers(min_value=0, max_value=50))
        def record_stale(self, ok: bool, pick: int) -> None:
            """A late outcome for a trial already reported, released or lost (its worker only seemed dead)."""
            stale = [t for t in self.handed_out if t not in self.pending]
            if not stale:
                return
            trial = stale[pick % len(stale)]
            self.breaker.record(ok, trial=trial)
            assert self._moves() == self.model.record(ok, trial, self.clock())

        @rule(seconds=st.sampled_from([0.5, 9.999, 10.0, 25.0]))
        def advance(self, seconds: float) -> None:
            self.clock.advance(seconds)

        @rule(action=st.sampled_from(["force-open", "force-closed", "clear", "reset"]))
        def operator(self, action: str) -> None:
            """What an operator does from the CLI: one rule, so it does not crowd out the call path."""
            if action == "reset":
                self.breaker.reset(actor="prop", reason="test")
                assert self._moves() == self.model.reset()
                return
            to = {"force-open": BreakerState.OPEN, "force-closed": BreakerState.CLOSED, "clear": None}[action]
            self.breaker.force(to, actor="prop", reason="test")
            assert self._moves() == self.model.force(to.value if to else None)

        @invariant()
        def same_state(self) -> None:
            if not hasattr(self, "breaker"):
                return
            seen = self.breaker.state()
            assert (seen["automatic"], seen["forced"], seen["failures"]) == (self.model.state, self.model.forced, self.model.failures)
            assert seen["state"] == (self.model.forced or self.model.state), "the state shown is what calls get"
            held = {m.decode() for m in redis_client.zrange(BREAKER_TRIALS_KEY.format(name=self.breaker.name), 0, -1)}
            assert held == set(self.model.trials), "the trial slots held are this round's trials (none outside HALF_OPEN)"

    run_state_machine_as_test(
        BreakerMachine,
        settings=settings(max_examples=100, stateful_step_count=30, deadline=None, suppress_health_check=list(HealthCheck), database=None),
    )
