"""Watchdog rules: each rule's threshold (at the limit: clean; just past it: a finding), and the N-consecutive logic."""

from __future__ import annotations

import math
from typing import Any

import pytest

from omni_tasks.settings import Settings, load_settings
from omni_tasks.watchdog.rules import (
    RULES,
    Action,
    Evaluation,
    Finding,
    NotEvaluated,
    Observations,
    error_storm,
    evaluate,
    latency_budget,
    missing_workers,
    providers_down,
    queue_backlog,
    risk_breach,
    stale_stream,
)
from omni_tasks.watchdog.streaks import Streaks, advance

NOW = 1_780_000_000.0


def settings(**env: str) -> Settings:
    return load_settings({f"OMNI_WATCHDOG_{k.upper()}": v for k, v in env.items()})


def obs(**fields: Any) -> Observations:
    base: dict[str, Any] = {
        "now": NOW,
        "first_evaluation": NOW - 3600,
        "market_open": True,
        "risk": None,
        "risk_read": True,
        "stream_status": {"last_quote_ns": str(int((NOW - 1) * 1e9)), "last_msg_ns": str(int((NOW - 1) * 1e9))},
        "provider_breakers": {"provider:alpaca": "closed"},
        "failed_runs_last_min": 0,
        "workers_alive": {},
        "queue_depths": {"orders": 0, "scans": 0},
        "latency_new": {"order_submission": 0},
    }
    base.update(fields)
    return Observations(**base)


DEFAULTS = settings()


def test_a_quiet_desk_has_no_findings_and_every_rule_is_evaluated() -> None:
    evaluation = evaluate(obs(), DEFAULTS)
    assert evaluation.findings == {}
    assert evaluation.evaluated == frozenset(RULES)
    assert evaluation.skipped == {}


# ---- each rule's threshold -----------------------------------------------------------------


def test_risk_breach_engages_on_any_listed_breach() -> None:
    assert risk_breach(obs(risk={"id": 7, "breaches": []}), DEFAULTS) is None
    assert risk_breach(obs(risk=None), DEFAULTS) is None  # no snapshot ever taken
    breach = {"rule": "daily_loss", "value": 1500.0, "limit": 1000.0, "message": "daily loss $1,500.00 exceeds the $1,000.00 limit"}
    finding = risk_breach(obs(risk={"id": 7, "breaches": [breach]}), DEFAULTS)
    assert finding is not None
    assert finding.action == Action("engage_kill")
    assert finding.severity == "critical"
    assert "daily loss $1,500.00" in finding.message
    assert "snapshot 7" in finding.message
    with pytest.raises(NotEvaluated):
        risk_breach(obs(risk_read=False), DEFAULTS)


@pytest.mark.parametrize(
    ("age_s", "market_open", "breaches"),
    [(29.999, True, False), (30.0, True, False), (30.01, True, True), (3600.0, False, False)],
)
def test_stale_stream_in_market_hours_past_the_limit(age_s: float, market_open: bool, breaches: bool) -> None:
    last = str(int((NOW - age_s) * 1e9))
    finding = stale_stream(
        obs(market_open=market_open, stream_status={"last_quote_ns": last, "last_msg_ns": str(int(NOW * 1e9))}), DEFAULTS
    )
    assert (finding is not None) is breaches
    if finding is not None:
        assert finding.action == Action("engage_kill")
        assert finding.value == pytest.approx(age_s, abs=1e-3)


def test_stale_stream_uses_the_last_message_before_any_quote_and_flags_a_silent_stream() -> None:
    fresh_msg = {"last_quote_ns": "0", "last_msg_ns": str(int((NOW - 1) * 1e9))}
    assert stale_stream(obs(stream_status=fresh_msg), DEFAULTS) is None
    silent = stale_stream(obs(stream_status={"last_quote_ns": "0", "last_msg_ns": "0"}), DEFAULTS)
    assert silent is not None
    assert math.isinf(silent.value)
    assert silent.to_json()["value"] is None


def test_a_missing_stream_status_is_stale_only_when_the_stream_is_expected() -> None:
    assert stale_stream(obs(stream_status={}), DEFAULTS) is None
    finding = stale_stream(obs(stream_status={}), settings(expected_workers="stream"))
    assert finding is not None
    assert "no stream status" in finding.message
    with pytest.raises(NotEvaluated):
        stale_stream(obs(market_open=None), DEFAULTS)


@pytest.mark.parametrize(
    ("states", "breaches"),
    [
        ({"provider:alpaca": "open", "provider:yahoo": "open"}, True),
        ({"provider:alpaca": "open", "provider:yahoo": "half_open"}, False),
        ({"provider:alpaca": "open", "provider:yahoo": "closed"}, False),
        ({}, False),
    ],
)
def test_providers_down_only_when_every_provider_is_open(states: dict[str, str], breaches: bool) -> None:
    finding = providers_down(obs(provider_breakers=states), DEFAULTS)
    assert (finding is not None) is breaches
    if finding is not None:
        assert finding.action == Action("alert")


@pytest.mark.parametrize(("failed", "breaches"), [(0, False), (20, False), (21, True)])
def test_error_storm_past_the_limit_per_minute(failed: int, breaches: bool) -> None:
    finding = error_storm(obs(failed_runs_last_min=failed), DEFAULTS)
    assert (finding is not None) is breaches
    if finding is not None:
        assert finding.action == Action("engage_kill")
        assert (finding.value, finding.limit) == (21.0, 20.0)


def test_missing_workers_after_the_start_up_grace() -> None:
    wanted = settings(expected_workers="orders,risk", startup_grace_s="30")
    assert missing_workers(obs(workers_alive={"orders": 1, "risk": 2}), wanted) is None
    finding = missing_workers(obs(workers_alive={"orders": 1}), wanted)
    assert finding is not None
    assert "risk" in finding.message
    assert "orders" not in finding.message.split(":")[-1]
    assert finding.action == Action("engage_kill")
    # Within the grace after the watchdog's first evaluation: not yet.
    assert missing_workers(obs(workers_alive={}, first_evaluation=NOW - 29.9), wanted) is None
    assert missing_workers(obs(workers_alive={}, first_evaluation=NOW - 30.0), wanted) is not None
    # Nothing expected by default.
    assert missing_workers(obs(workers_alive={}), DEFAULTS) is None


@pytest.mark.parametrize(
    ("depths", "action"),
    [
        ({"orders": 1000, "scans": 1000}, None),
        ({"orders": 0, "scans": 1001}, Action("alert")),
        ({"orders": 1001, "scans": 5000}, Action("trip_breaker", "broker:simulated")),
    ],
)
def test_queue_backlog_trips_the_broker_breaker_for_the_orders_queue(depths: dict[str, int], action: Action | None) -> None:
    finding = queue_backlog(obs(queue_depths=depths), DEFAULTS)
    assert (finding.action if finding else None) == action
    if finding is not None:
        assert finding.value == max(depths.values())


@pytest.mark.parametrize(("new", "breaches"), [(20, False), (21, True)])
def test_latency_budget_violations_since_the_last_evaluation(new: int, breaches: bool) -> None:
    finding = latency_budget(obs(latency_new={"order_submission": new, "quote_processing": 3}), DEFAULTS)
    assert (finding is not None) is breaches
    if finding is not None:
        assert "order_submission 21 (budget 10 ms)" in finding.message
        assert finding.action == Action("alert")


def test_disabled_unreadable_and_broken_rules_are_not_evaluated() -> None:
    evaluation = evaluate(obs(risk_read=False, failed_runs_last_min=None), settings(disabled_rules="queue_backlog"))
    assert "queue_backlog" not in evaluation.evaluated
    assert evaluation.skipped["queue_backlog"] == "disabled"
    assert {"risk_breach", "error_storm"} <= set(evaluation.skipped)
    assert "latency_budget" in evaluation.evaluated
    broken = evaluate(obs(stream_status={"last_quote_ns": "x", "last_msg_ns": "y"}, workers_alive=None), DEFAULTS)
    assert "missing_workers" in broken.skipped
    assert "stale_stream" in broken.findings  # unparseable times read as "no quote yet": stale


# ---- N consecutive evaluations -------------------------------------------------------------------


def finding(rule: str = "risk_breach") -> Finding:
    return Finding(rule, "critical", 1.0, 0.0, "x", Action("engage_kill"))


def breaching(*rules: str, evaluated: tuple[str, ...] = tuple(RULES)) -> Evaluation:
    return Evaluation(frozenset(evaluated), {r: finding(r) for r in rules}, {})


EMPTY = Streaks({}, frozenset())


@pytest.mark.parametrize("n", [1, 2, 3, 5])
def test_an_action_is_due_at_exactly_the_nth_consecutive_breach(n: int) -> None:
    streaks, due_at = EMPTY, []
    for evaluation_no in range(1, n + 3):
        streaks, due = advance(streaks, breaching("risk_breach"), n)
        if due:
            due_at.append(evaluation_no)
            streaks = Streaks(streaks.counts, streaks.fired | set(due))  # the caller marks it fired
    print(f"\nN={n}: due at evaluation {due_at} of {n + 2}")
    assert due_at == [n]
    assert streaks.counts["risk_breach"] == n + 2


def test_a_clean_evaluation_resets_the_count_and_the_fired_mark() -> None:
    streaks, _ = advance(EMPTY, breaching("risk_breach"), 3)
    streaks, _ = advance(streaks, breaching("risk_breach"), 3)
    streaks, due = advance(streaks, breaching(), 3)  # clean
    assert due == []
    assert streaks.counts == {}
    streaks, due = advance(Streaks({"risk_breach": 7}, frozenset({"risk_breach"})), breaching(), 3)
    assert streaks == EMPTY
    # After the reset it takes N again.
    for _ in range(2):
        streaks, due = advance(streaks, breaching("risk_breach"), 3)
        assert due == []
    streaks, due = advance(streaks, breaching("risk_breach"), 3)
    assert due == ["risk_breach"]


def test_a_rule_not_evaluated_keeps_its_count() -> None:
    streaks, _ = advance(EMPTY, breaching("error_storm"), 3)
    streaks, _ = advance(streaks, breaching("error_storm"), 3)
    unread = breaching(evaluated=tuple(r for r in RULES if r != "error_storm"))
    streaks, due = advance(streaks, unread, 3)
    assert streaks.counts == {"error_storm": 2}
    assert due == []
    streaks, due = advance(streaks, breaching("error_storm"), 3)
    assert due == ["error_storm"]


def test_a_fired_action_is_not_due_again_while_the_breach_persists_but_one_that_failed_is() -> None:
    fired = Streaks({"risk_breach": 3}, frozenset({"risk_breach"}))
    _, due = advance(fired, breaching("risk_breach"), 3)
    assert due == []
    not_fired = Streaks({"risk_breach": 3}, frozenset())
    _, due = advance(not_fired, breaching("risk_breach"), 3)
    assert due == ["risk_breach"]


def test_rules_count_independently() -> None:
    streaks = EMPTY
    streaks, _ = advance(streaks, breaching("risk_breach", "queue_backlog"), 2)
    streaks, due = advance(streaks, breaching("queue_backlog"), 2)
    assert due == ["queue_backlog"]
    assert "risk_breach" not in streaks.counts


def test_n_must_be_positive() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        advance(EMPTY, breaching(), 0)
