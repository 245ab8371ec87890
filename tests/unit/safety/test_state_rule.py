"""The one rule for the trading state (killswitch.resolve): every combination of the two copies' states and versions."""

from __future__ import annotations

import itertools

import pytest

from omni_tasks.safety.state_rule import STRICTNESS, Copy, StoredState, TradingState, resolve, stricter

STATES = list(TradingState)
VERSIONS = range(4)
ACTIVE, REDUCING, HALTED = TradingState.ACTIVE, TradingState.REDUCING, TradingState.HALTED


def ok(state: TradingState, version: int) -> Copy:
    return Copy("ok", value=StoredState(state, version), raw=f"{state.value} {version}")


PAIRS = list(itertools.product(STATES, VERSIONS, STATES, VERSIONS))


@pytest.mark.parametrize(("r_state", "r_version", "d_state", "d_version"), PAIRS)
def test_both_copies_readable(r_state: TradingState, r_version: int, d_state: TradingState, d_version: int) -> None:
    reading = resolve(ok(r_state, r_version), ok(d_state, d_version))
    assert reading.version == max(r_version, d_version)
    if (r_state, r_version) == (d_state, d_version):
        assert (reading.state, reading.agree, reading.source, reading.repair) == (d_state, True, "both", None)
        return
    # While they disagree the stricter applies: never looser than either copy.
    assert reading.agree is False
    assert reading.state is stricter(r_state, d_state)
    assert STRICTNESS[reading.state] >= max(STRICTNESS[r_state], STRICTNESS[d_state])
    if r_state is not d_state:
        assert reading.source == ("redis" if reading.state is r_state else "database"), "source names the copy whose state applies"
    # The higher version says which copy is behind; a tie goes to the stricter copy.
    db_ahead = d_version > r_version or (d_version == r_version and STRICTNESS[d_state] > STRICTNESS[r_state])
    assert reading.newer == ("database" if db_ahead else "redis")
    assert reading.repair == ("redis" if db_ahead else "database")
    # Rewriting Redis from the database is immediate only when it does not loosen what applies.
    if db_ahead:
        assert reading.immediate is (STRICTNESS[d_state] >= STRICTNESS[r_state])
    else:
        assert reading.immediate is True  # the database side never loosens: it adopts a stricter Redis or keeps its own
    assert reading.why


@pytest.mark.parametrize(("d_state", "d_version"), list(itertools.product(STATES, VERSIONS)))
@pytest.mark.parametrize(
    "broken",
    [Copy("unreadable", detail="ConnectionError: refused"), Copy("malformed", raw="OPEN sesame", detail="'OPEN sesame'")],
    ids=["redis-unreadable", "redis-malformed"],
)
def test_redis_unreadable_or_malformed_counts_as_halted(broken: Copy, d_state: TradingState, d_version: int) -> None:
    reading = resolve(broken, ok(d_state, d_version))
    assert (reading.state, reading.source) == (HALTED, "unreadable")
    if broken.status == "malformed":
        # Rewritten from the database, by the watchdog only unless the database says HALTED too.
        assert (reading.repair, reading.immediate) == ("redis", d_state is HALTED)
    else:
        assert reading.repair is None


@pytest.mark.parametrize(
    "cached",
    [None, *[ok(s, v) for s, v in itertools.product(STATES, VERSIONS)], Copy("missing"), Copy("malformed", raw="x", detail="x")],
)
def test_an_unreadable_database_counts_as_halted_whatever_redis_says(cached: Copy | None) -> None:
    reading = resolve(cached or Copy("unreadable", detail="down"), Copy("unreadable", detail="OperationalError: connection refused"))
    assert (reading.state, reading.source, reading.repair) == (HALTED, "unreadable", None)
    assert "database" in reading.why


@pytest.mark.parametrize(("d_state", "d_version"), list(itertools.product(STATES, VERSIONS)))
def test_a_missing_redis_key_takes_the_database_copy_and_is_put_back_at_once(d_state: TradingState, d_version: int) -> None:
    reading = resolve(Copy("missing"), ok(d_state, d_version))
    assert (reading.state, reading.version, reading.source) == (d_state, d_version, "database")
    assert (reading.repair, reading.immediate) == ("redis", True)


def test_the_reported_fault_redis_restored_with_an_older_active_never_reads_active() -> None:
    # Engaged while Redis was down (database HALTED 6); Redis came back from its append-only file with ACTIVE 5.
    reading = resolve(ok(ACTIVE, 5), ok(HALTED, 6))
    assert (reading.state, reading.source, reading.newer, reading.repair, reading.immediate) == (
        HALTED,
        "database",
        "database",
        "redis",
        True,
    )
    assert "ACTIVE 5" in reading.why
    assert "HALTED 6" in reading.why


def test_an_engage_the_database_missed_applies_and_is_written_down() -> None:
    # Engaged while PostgreSQL was down: Redis HALTED 6, the database still ACTIVE 5.
    reading = resolve(ok(HALTED, 6), ok(ACTIVE, 5))
    assert (reading.state, reading.source, reading.repair) == (HALTED, "redis", "database")


def test_a_newer_but_looser_redis_never_loosens_the_database() -> None:
    # A hand-written ACTIVE 99 over a database that says HALTED 6.
    reading = resolve(ok(ACTIVE, 99), ok(HALTED, 6))
    assert (reading.state, reading.source, reading.repair) == (HALTED, "database", "database")
    assert "never loosens" in reading.why


def test_a_release_whose_redis_write_was_lost_stays_halted_until_reconciled() -> None:
    # Released (database ACTIVE 7) but Redis still says HALTED 6: the stricter applies; rewriting Redis is not immediate.
    reading = resolve(ok(HALTED, 6), ok(ACTIVE, 7))
    assert (reading.state, reading.repair, reading.immediate) == (HALTED, "redis", False)


def test_reducing_against_active_applies_reducing_either_way() -> None:
    assert resolve(ok(REDUCING, 3), ok(ACTIVE, 4)).state is REDUCING
    assert resolve(ok(ACTIVE, 4), ok(REDUCING, 3)).state is REDUCING
