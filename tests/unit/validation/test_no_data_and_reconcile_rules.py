"""validate_bars with the backfill ledger's no-data ranges, and the second opinion's rules (which feeds' volumes
compare, which provider gives the second opinion, a stable sample). Plain functions, no database."""

from __future__ import annotations

from datetime import date

import numpy as np

from omni_tasks.marketdata.providers.base import Capabilities
from omni_tasks.validation.reconcile import sample_rows, second_provider, volume_comparable

from .helpers import synthetic, utc, validate


def test_no_data_range_of_an_unknown_symbol_is_not_holes_not_stale_and_not_a_halt_for_the_other() -> None:
    frame = synthetic(["AAPL"], "2024-11-25", "2024-11-26")
    frame = frame.drop(index=[200])  # AAPL loses one minute: alone it is a hole, never a halt
    window = (utc("2024-11-25"), utc("2024-11-26"))

    result = validate(frame, "2024-11-25", "2024-11-26", symbols=["AAPL", "ZZZZ"], no_data={"ZZZZ": [(*window, "unknown_symbol")]})

    series = result.series.set_index("symbol")
    kinds = result.gaps.groupby(["symbol", "kind"])["bars"].sum().to_dict()
    print(
        f"ZZZZ: no-data bars {series.at['ZZZZ', 'no_data_bars']} of {series.at['ZZZZ', 'expected_bars']} expected; AAPL holes {kinds.get(('AAPL', 'provider_hole'), 0)}, halts {kinds.get(('AAPL', 'halt'), 0)}"
    )
    assert kinds == {("AAPL", "provider_hole"): 1, ("ZZZZ", "unknown_symbol"): 390}
    assert not bool(series.at["ZZZZ", "stale"])
    assert series.at["ZZZZ", "no_data_bars"] == 390
    assert not result.gaps.loc[result.gaps.symbol == "ZZZZ", "is_gap"].any()


def test_no_data_range_later_taken_back_leaves_the_missing_bars_holes_again() -> None:
    frame = synthetic(["AAPL"], "2024-11-25", "2024-11-26").iloc[:0]
    lo, hi = utc("2024-11-25"), utc("2024-11-26")

    result = validate(frame, "2024-11-25", "2024-11-26", symbols=["AAPL"], no_data={"AAPL": [(lo, hi, "no_bars_in_range"), (lo, hi, "")]})

    assert set(result.gaps["kind"]) == {"provider_hole"}
    assert bool(result.series.set_index("symbol").at["AAPL", "stale"])


def test_volume_comparable_same_feed_or_both_consolidated_only() -> None:
    assert volume_comparable("sip", "yahoo") == (True, None)
    assert volume_comparable("iex", "iex") == (True, None)
    comparable, why = volume_comparable("iex", "sip")
    assert comparable is False
    assert "iex and sip" in (why or "")
    assert volume_comparable("synthetic", "alpha_vantage")[0] is False


class _Provider:
    def __init__(self, name: str, *, adjustments: tuple[str, ...] = ("raw",), available: bool = True) -> None:
        self.name = name
        self.capabilities = Capabilities(timeframes=frozenset({"1Day"}), adjustments=frozenset(adjustments))
        self._available = available

    def available(self) -> bool:
        return self._available

    def fetch_bars(self, request):  # type: ignore[no-untyped-def]  # never called here
        raise AssertionError("not called")


def test_second_provider_is_another_available_one_that_serves_the_same_adjustment() -> None:
    providers = [
        _Provider("alpaca", adjustments=("raw", "all")),
        _Provider("yahoo", available=False),
        _Provider("alpha_vantage"),
        _Provider("replay", adjustments=("all",)),
    ]

    assert second_provider(providers, stored_provider="alpaca", timeframe="1Day", adjustment="raw").name == "alpha_vantage"  # type: ignore[union-attr]
    assert second_provider(providers, stored_provider="alpaca", timeframe="1Day", adjustment="all").name == "replay"  # type: ignore[union-attr]
    assert second_provider(providers, stored_provider="alpha_vantage", timeframe="1Day", adjustment="split") is None


def test_sample_rows_is_stable_per_symbol_and_window_and_takes_all_when_few() -> None:
    a = sample_rows("AAPL", 250, 5, start=date(2024, 1, 2), end=date(2025, 1, 1))
    assert np.array_equal(a, sample_rows("AAPL", 250, 5, start=date(2024, 1, 2), end=date(2025, 1, 1)))
    assert len(set(a.tolist())) == 5
    assert list(sample_rows("AAPL", 3, 5, start=date(2024, 1, 2), end=date(2025, 1, 1))) == [0, 1, 2]
