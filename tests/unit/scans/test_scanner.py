"""The scanner: chunked scan + merge equals the one-shot scan exactly; reasons, quotes, chunking, JSON, refusals."""

from __future__ import annotations

import json
from datetime import UTC, date, datetime

import numpy as np
import pandas as pd
import pytest

from omni_tasks.scans.indicators import Lookbacks
from omni_tasks.scans.scanner import RESULT_COLUMNS, ScanConfig, ScanPartial, chunk, merge, scan, scan_chunk
from omni_tasks.scans.scoring import ScoreWeights
from tests.unit.scans.factories import quotes, synthetic

SYMBOLS = [f"T{i:02d}" for i in range(36)]
SHORT_HISTORY = ["NEWCO", "IPO"]  # listed recently
START, END = date(2023, 9, 1), date(2024, 10, 1)
AS_OF = datetime(2024, 10, 1, 12, 0, tzinfo=UTC)  # after the close of Mon 30 Sep, before Tue 1 Oct's session


@pytest.fixture(scope="module")
def universe_bars() -> pd.DataFrame:
    """Realistic bars (the synthetic feed): 36 symbols with 13 months, 2 with a few weeks."""
    long = synthetic(SYMBOLS, START, END)
    short = synthetic(SHORT_HISTORY, date(2024, 9, 16), END)
    return pd.concat([long, short], ignore_index=True)


def _bars_of(frame: pd.DataFrame, symbols: list[str]) -> pd.DataFrame:
    return frame[frame["symbol"].isin(symbols)].reset_index(drop=True)


def test_one_shot_scan_ranks_every_symbol_with_history_and_reports_the_rest(universe_bars: pd.DataFrame) -> None:
    result = scan(universe_bars, as_of=AS_OF, config=ScanConfig(), symbols=[*SYMBOLS, *SHORT_HISTORY, "GONE"])
    frame = result.frame
    assert list(frame.columns) == list(RESULT_COLUMNS)
    assert len(frame) == len(SYMBOLS) + len(SHORT_HISTORY) + 1
    assert sorted(result.ranked["symbol"]) == SYMBOLS
    assert result.ranked["rank"].tolist() == list(range(1, len(SYMBOLS) + 1))
    assert result.ranked["score"].is_monotonic_decreasing
    reasons = result.unscored.set_index("symbol")["reason"].to_dict()
    assert reasons == {
        "GONE": "insufficient history (0 bars, need 21)",
        "IPO": "insufficient history (11 bars, need 21)",
        "NEWCO": "insufficient history (11 bars, need 21)",
    }
    assert (frame["last_ts"].dropna() == pd.Timestamp("2024-09-30", tz="UTC")).all()
    assert result.as_of == pd.Timestamp(AS_OF)


@pytest.mark.parametrize("size", [1, 5, 13, 100])
def test_chunked_scan_and_merge_equal_the_one_shot_scan_exactly(universe_bars: pd.DataFrame, size: int) -> None:
    everyone = [*SYMBOLS, *SHORT_HISTORY, "GONE"]
    config = ScanConfig()
    one_shot = scan(universe_bars, as_of=AS_OF, config=config, symbols=everyone)

    partials = []
    for part in chunk(everyone, size):
        partial = scan_chunk(_bars_of(universe_bars, part), as_of=AS_OF, config=config, symbols=part)
        # As between processes: through JSON text and back.
        partials.append(ScanPartial.from_json(json.loads(json.dumps(partial.to_json(), allow_nan=False))))
    merged = merge(partials[::-1])  # the order partials arrive in does not matter

    pd.testing.assert_frame_equal(merged.frame, one_shot.frame, check_exact=True)
    assert merged.frame["rank"].tolist() == one_shot.frame["rank"].tolist()


def test_scores_are_cross_sectional_over_the_whole_universe_not_per_chunk(universe_bars: pd.DataFrame) -> None:
    config = ScanConfig()
    halves = chunk(SYMBOLS, len(SYMBOLS) // 2)
    alone = scan(_bars_of(universe_bars, halves[0]), as_of=AS_OF, config=config)  # a chunk scored on its own
    together = scan(_bars_of(universe_bars, SYMBOLS), as_of=AS_OF, config=config).frame.set_index("symbol")
    first = alone.frame.set_index("symbol")
    assert not np.allclose(first["score"], together.loc[first.index, "score"])
    assert first["momentum_pct"].equals(together.loc[first.index, "momentum_pct"])  # indicators are per symbol


def test_quotes_newer_than_the_last_bar_are_used(universe_bars: pd.DataFrame) -> None:
    bars = _bars_of(universe_bars, SYMBOLS)
    plain = scan(bars, as_of=AS_OF, config=ScanConfig()).frame.set_index("symbol")
    last_close = plain.loc["T00", "last_close"]
    mid = last_close * 1.10
    latest = quotes([("T00", datetime(2024, 10, 1, 11, 30, tzinfo=UTC), mid - 0.01, mid + 0.01)])
    quoted = scan(bars, as_of=AS_OF, config=ScanConfig(), quotes=latest).frame.set_index("symbol")
    assert quoted.loc["T00", "price_source"] == "quote"
    assert quoted.loc["T00", "price"] == pytest.approx(mid)
    reference = last_close / (1 + plain.loc["T00", "momentum_pct"] / 100)
    assert quoted.loc["T00", "momentum_pct"] == pytest.approx((mid / reference - 1) * 100, rel=1e-9)
    assert quoted.loc["T00", "rank"] < plain.loc["T00", "rank"] or plain.loc["T00", "rank"] == 1
    assert (quoted.drop(index="T00")["price_source"] == "close").all()


def test_lookbacks_and_weights_come_from_the_config(universe_bars: pd.DataFrame) -> None:
    bars = _bars_of(universe_bars, SYMBOLS)
    config = ScanConfig(
        lookbacks=Lookbacks(momentum_bars=60),
        weights=ScoreWeights(momentum_pct=1.0, volume_surge_x=0, atr_pct=0, gap_pct=0, rsi=0, from_high_pct=0),
    )
    frame = scan(bars, as_of=AS_OF, config=config).ranked
    assert frame["momentum_pct"].is_monotonic_decreasing  # ranked by momentum alone
    assert frame["score"].tolist() == pytest.approx(frame["z_momentum_pct"].tolist())


# ---- refusals -----------------------------------------------------------------------------------------


def test_empty_input_is_a_clear_error(universe_bars: pd.DataFrame) -> None:
    empty = universe_bars.iloc[0:0]
    with pytest.raises(ValueError, match="no bars to scan: the bar frame is empty"):
        scan(empty, as_of=AS_OF, config=ScanConfig())
    with pytest.raises(ValueError, match="no symbols to scan"):
        scan(empty, as_of=AS_OF, config=ScanConfig(), symbols=[])
    with pytest.raises(ValueError, match="nothing to merge"):
        merge([])
    with pytest.raises(ValueError, match="no symbols to scan"):
        chunk([], 10)


def test_a_chunk_whose_symbols_have_no_bars_reports_them(universe_bars: pd.DataFrame) -> None:
    partial = scan_chunk(universe_bars.iloc[0:0], as_of=AS_OF, config=ScanConfig(), symbols=["AAA", "BBB"])
    assert partial.frame["reason"].tolist() == ["insufficient history (0 bars, need 21)"] * 2
    assert merge([partial]).ranked.empty


def test_merge_refuses_overlapping_or_mismatched_partials(universe_bars: pd.DataFrame) -> None:
    config = ScanConfig()
    a = scan_chunk(_bars_of(universe_bars, ["T00", "T01"]), as_of=AS_OF, config=config)
    b = scan_chunk(_bars_of(universe_bars, ["T01", "T02"]), as_of=AS_OF, config=config)
    with pytest.raises(ValueError, match="more than one partial: T01"):
        merge([a, b])
    later = scan_chunk(_bars_of(universe_bars, ["T02"]), as_of=datetime(2024, 10, 2, tzinfo=UTC), config=config)
    with pytest.raises(ValueError, match="different scans: as_of"):
        merge([a, later])
    other = scan_chunk(_bars_of(universe_bars, ["T02"]), as_of=AS_OF, config=ScanConfig(winsor_quantile=0.1))
    with pytest.raises(ValueError, match="configs differ"):
        merge([a, other])


def test_bars_of_another_timeframe_than_the_config_are_refused(universe_bars: pd.DataFrame) -> None:
    with pytest.raises(ValueError, match="configured for 1Hour"):
        scan(universe_bars, as_of=AS_OF, config=ScanConfig(timeframe="1Hour"))


# ---- chunking ------------------------------------------------------------------------------------------


def test_chunk_sorts_deduplicates_and_balances() -> None:
    symbols = [f"s{i:02d}" for i in range(10)][::-1] + ["S03"]
    chunks = chunk(symbols, 4)
    assert chunks == [["S00", "S01", "S02", "S03"], ["S04", "S05", "S06"], ["S07", "S08", "S09"]]
    assert chunk(["AAA"], 100) == [["AAA"]]
    assert [len(c) for c in chunk([f"X{i:03d}" for i in range(500)], 100)] == [100] * 5


@pytest.mark.parametrize("size", [0, -3, 2.5, True])
def test_chunk_size_must_be_a_positive_whole_number(size: object) -> None:
    with pytest.raises(ValueError, match="chunk size"):
        chunk(["AAA"], size)  # type: ignore[arg-type]


def test_chunk_refuses_what_is_not_a_symbol() -> None:
    with pytest.raises(ValueError, match="not a ticker symbol"):
        chunk(["AAA", "1BAD"], 10)


# ---- JSON forms ------------------------------------------------------------------------------------------


def test_config_round_trips_and_refuses_unknown_fields() -> None:
    config = ScanConfig(timeframe="1Day", lookbacks=Lookbacks(rsi_bars=9), weights=ScoreWeights(gap_pct=0.0), winsor_quantile=0.02)
    assert ScanConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config
    assert ScanConfig.from_dict({}) == ScanConfig()
    with pytest.raises(ValueError, match="unknown field"):
        ScanConfig.from_dict({"winsor": 0.1})
    with pytest.raises(ValueError, match=r"ScanConfig\.lookbacks: unknown field\(s\) rsi_days"):
        ScanConfig.from_dict({"lookbacks": {"rsi_days": 9}})


def test_partial_round_trips_through_json_exactly(universe_bars: pd.DataFrame) -> None:
    partial = scan_chunk(universe_bars, as_of=AS_OF, config=ScanConfig(), symbols=[*SYMBOLS, *SHORT_HISTORY, "GONE"])
    back = ScanPartial.from_json(json.loads(json.dumps(partial.to_json(), allow_nan=False)))
    pd.testing.assert_frame_equal(back.frame, partial.frame, check_exact=True)
    assert back.as_of == partial.as_of
    assert back.config == partial.config


def test_result_records_are_json_primitives(universe_bars: pd.DataFrame) -> None:
    result = scan(_bars_of(universe_bars, SYMBOLS), as_of=AS_OF, config=ScanConfig(), symbols=[*SYMBOLS, "GONE"])
    records = result.to_records()
    text = json.dumps(records, allow_nan=False)
    assert len(json.loads(text)) == len(SYMBOLS) + 1
    first, last = records[0], records[-1]
    assert first["rank"] == 1
    assert isinstance(first["score"], float)
    assert first["last_ts"] == "2024-09-30T00:00:00+00:00"
    assert last["symbol"] == "GONE"
    assert last["rank"] is None
    assert last["score"] is None
    assert last["last_ts"] is None


# ---- stale series -------------------------------------------------------------------------------------


def test_a_symbol_whose_last_bar_lags_the_universe_is_stale_not_scored(universe_bars: pd.DataFrame) -> None:
    bars = _bars_of(universe_bars, SYMBOLS)
    lagging = bars[~((bars["symbol"] == "T05") & (bars["ts"] >= pd.Timestamp("2024-09-27", tz="UTC")))]  # T05 lacks Fri 27 and Mon 30
    strict = scan(lagging, as_of=AS_OF, config=ScanConfig()).frame.set_index("symbol")
    assert strict.loc["T05", "reason"] == (
        "stale: last bar 2024-09-26T00:00:00+00:00 is 2 bars behind the universe's latest (2024-09-30T00:00:00+00:00)"
    )
    assert pd.isna(strict.loc["T05", "rank"])
    lenient = scan(lagging, as_of=AS_OF, config=ScanConfig(max_lag_bars=2)).frame.set_index("symbol")
    assert pd.isna(lenient.loc["T05", "reason"])
    assert lenient["rank"].notna().all()
