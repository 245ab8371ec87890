"""The Redis value format of the trading state, who counts as automation, and the snapshot file write."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from omni_tasks.safety.snapshot import write_json_atomically
from omni_tasks.safety.state_rule import LOOSER, StoredState, TradingState, format_value, parse_value
from omni_tasks.safety.transitions import is_automatic_actor


@given(state=st.sampled_from(list(TradingState)), version=st.integers(min_value=0, max_value=2**53))
def test_format_then_parse_returns_the_same_state_and_version(state: TradingState, version: int) -> None:
    text = format_value(state, version)
    assert parse_value(text) == StoredState(state, version)
    assert parse_value(text.encode()) == StoredState(state, version)


@pytest.mark.parametrize(
    "raw",
    [
        None,
        b"",
        b"HALTED",
        b"HALTED -1",
        b"HALTED 1 2",
        b"halted 3",
        b"STOPPED 3",
        b"ACTIVE x",
        b"ACTIVE  3",
        b" ACTIVE 3",
        b"\xff\xfe 3",
    ],
)
def test_missing_or_malformed_values_parse_as_none_so_readers_count_them_halted(raw: bytes | None) -> None:
    assert parse_value(raw) is None


def test_format_refuses_a_negative_version() -> None:
    with pytest.raises(ValueError, match="version"):
        format_value(TradingState.ACTIVE, -1)


@pytest.mark.parametrize(
    ("actor", "automatic"),
    [
        ("watchdog", True),
        ("watchdog:alarm:daily_loss", True),
        ("Watchdog:rule", True),
        ("  watchdog:x", True),
        ("alarm:stream", True),
        ("system:startup", True),
        ("auto:anything", True),
        ("operator:alice", False),
        ("http:127.0.0.1", False),
        ("alice", False),
    ],
)
def test_automatic_actors_are_recognised(actor: str, automatic: bool) -> None:
    assert is_automatic_actor(actor) is automatic


def test_looser_transitions_are_exactly_the_ones_that_lift_restrictions() -> None:
    order = {TradingState.ACTIVE: 0, TradingState.REDUCING: 1, TradingState.HALTED: 2}
    every = {(a, b) for a in TradingState for b in TradingState if a != b}
    assert {(a, b) for a, b in every if order[b] < order[a]} == LOOSER


def test_snapshot_file_is_written_whole_private_and_replaces_the_old_one(tmp_path: Path) -> None:
    target = tmp_path / "emergency" / "snap.json"
    write_json_atomically(target, {"open_orders": [1, 2], "n": "1.50000000"})
    write_json_atomically(target, {"open_orders": [3], "n": "2"})
    assert json.loads(target.read_text()) == {"open_orders": [3], "n": "2"}
    assert stat.S_IMODE(os.stat(target).st_mode) == 0o600
    assert [p.name for p in target.parent.iterdir()] == ["snap.json"], "no temp file is left behind"


def test_snapshot_file_write_that_fails_leaves_the_old_file_and_no_temp(tmp_path: Path) -> None:
    target = tmp_path / "snap.json"
    write_json_atomically(target, {"ok": True})
    circular: dict[str, object] = {}
    circular["self"] = circular
    with pytest.raises(ValueError, match="Circular"):
        write_json_atomically(target, circular)
    assert json.loads(target.read_text()) == {"ok": True}
    assert [p.name for p in tmp_path.iterdir()] == ["snap.json"]
