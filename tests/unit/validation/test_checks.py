"""One hand-made frame per check with exactly one violation: exactly that violation is reported.

Every frame starts from one real XNYS session of synthetic one-minute bars
(2024-11-25, 390 bars, no violation) and breaks one thing at one row. The
pandera model BarChecks must agree with validate_bars on every invariant.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable

import numpy as np
import pandas as pd
import pandera.pandas as pa
import pytest

from omni_tasks.validation import BAR_CHECKS, QUOTE_CHECKS, BarChecks, QuoteChecks, validate_quotes
from tests.unit.validation.helpers import found, quotes, synthetic, utc, validate

DAY, NEXT = "2024-11-25", "2024-11-26"
ROW = 100


def base() -> pd.DataFrame:
    return synthetic(["AAPL"], DAY, NEXT)


def _set(frame: pd.DataFrame, row: int, **values: float) -> pd.DataFrame:
    for k, v in values.items():
        frame.loc[row, k] = v
    return frame


def nan_close(f: pd.DataFrame) -> pd.DataFrame:
    return _set(f, ROW, close=np.nan)


def high_below_close(f: pd.DataFrame) -> pd.DataFrame:
    return _set(f, ROW, high=max(f.at[ROW, "open"], f.at[ROW, "close"]) - 0.05)


def low_above_open(f: pd.DataFrame) -> pd.DataFrame:
    return _set(f, ROW, low=min(f.at[ROW, "open"], f.at[ROW, "close"]) + 0.05)


def zero_low(f: pd.DataFrame) -> pd.DataFrame:
    return _set(f, ROW, low=0.0)


def negative_vwap(f: pd.DataFrame) -> pd.DataFrame:
    return _set(f, ROW, vwap=-1.0)


def negative_volume(f: pd.DataFrame) -> pd.DataFrame:
    return _set(f, ROW, volume=-5.0)


def duplicate_row(f: pd.DataFrame) -> pd.DataFrame:
    return pd.concat([f.iloc[: ROW + 1], f.iloc[[ROW]], f.iloc[ROW + 1 :]], ignore_index=True)


def swapped_rows(f: pd.DataFrame) -> pd.DataFrame:
    order = list(range(len(f)))
    order[ROW], order[ROW + 1] = order[ROW + 1], order[ROW]
    return f.iloc[order].reset_index(drop=True)


def bar_after_close(f: pd.DataFrame) -> pd.DataFrame:
    extra = f.iloc[[-1]].assign(ts=pd.Timestamp("2024-11-25T21:00:00Z").as_unit("ns"))
    return pd.concat([f, extra], ignore_index=True)


def bar_off_grid(f: pd.DataFrame) -> pd.DataFrame:
    extra = f.iloc[[ROW]].assign(ts=f.at[ROW, "ts"] + pd.Timedelta(seconds=30))
    return pd.concat([f.iloc[: ROW + 1], extra, f.iloc[ROW + 1 :]], ignore_index=True)


def jump_10pct(f: pd.DataFrame) -> pd.DataFrame:
    for k in ("open", "high", "low", "close", "vwap"):
        f.loc[f.index >= ROW, k] *= 1.10
    return f


def flat_30(f: pd.DataFrame) -> pd.DataFrame:
    level = f.at[ROW, "close"]
    rest = level / f.at[ROW + 29, "close"]  # later bars move as before, from the flat level
    for k in ("open", "high", "low", "close", "vwap"):
        f.loc[f.index >= ROW + 30, k] *= rest
        f.loc[ROW : ROW + 29, k] = level
    return f


def filled_bar(f: pd.DataFrame) -> pd.DataFrame:
    prev = f.at[ROW - 1, "close"]
    return _set(f, ROW, open=prev, high=prev, low=prev, close=prev, vwap=prev, volume=0.0)


def zero_volume_bar(f: pd.DataFrame) -> pd.DataFrame:
    # A bar that moved but reports no volume, in a series that trades on every other bar.
    return _set(f, ROW, volume=0.0)


def last_ten_missing(f: pd.DataFrame) -> pd.DataFrame:
    return f.iloc[:-10].copy()


def bar_of_next_day(f: pd.DataFrame) -> pd.DataFrame:
    extra = f.iloc[[-1]].assign(ts=pd.Timestamp("2024-11-26T14:30:00Z").as_unit("ns"))
    return pd.concat([f, extra], ignore_index=True)


CASES: list[tuple[str, Callable[[pd.DataFrame], pd.DataFrame], int]] = [
    ("not_null", nan_close, ROW),
    ("ohlc_high", high_below_close, ROW),
    ("ohlc_low", low_above_open, ROW),
    ("positive_price", zero_low, ROW),
    ("positive_price", negative_vwap, ROW),
    ("volume_non_negative", negative_volume, ROW),
    ("duplicate_ts", duplicate_row, ROW + 1),
    ("ts_order", swapped_rows, ROW + 1),
    ("outside_session", bar_after_close, 390),
    ("outside_session", bar_off_grid, ROW + 1),
    ("outlier", jump_10pct, ROW),
    ("flat", flat_30, ROW),
    ("filled", filled_bar, ROW),
    ("zero_volume", zero_volume_bar, ROW),
    ("stale", last_ten_missing, 379),
    ("outside_range", bar_of_next_day, 390),
]


def test_checks_base_session_has_no_violation() -> None:
    result = validate(base(), DAY, NEXT)
    assert found(result) == []
    assert result.ok
    assert BarChecks.validate(base(), lazy=True) is not None


def test_checks_every_bar_check_has_a_one_violation_case() -> None:
    assert {check for check, _, _ in CASES} == set(BAR_CHECKS)


@pytest.mark.parametrize(("check", "corrupt", "row"), CASES, ids=[c[1].__name__ for c in CASES])
def test_checks_one_violation_frame_reports_exactly_that_violation(check: str, corrupt: Callable[[pd.DataFrame], pd.DataFrame], row: int) -> None:
    frame = corrupt(base())
    result = validate(frame, DAY, NEXT)
    assert found(result) == [(row, check)], result.violations[["row", "check", "reason"]].to_string()
    v = result.violations.iloc[0]
    print(f"{corrupt.__name__}: {check} at row {row}: {v['reason']}")
    quarantined = BAR_CHECKS[check].action == "quarantine"
    assert list(result.quarantine.index) == ([row] if quarantined else [])
    assert len(result.clean) + len(result.quarantine) == len(frame)
    if quarantined:
        assert result.quarantine["reason"].iloc[0].startswith(f"{check}: ")
    else:
        assert row in result.clean.index


@pytest.mark.parametrize(("check", "corrupt", "row"), [c for c in CASES if BAR_CHECKS[c[0]].action == "quarantine"], ids=lambda x: getattr(x, "__name__", str(x)))
def test_checks_pandera_bar_model_agrees_with_vectorised_checks(check: str, corrupt: Callable[[pd.DataFrame], pd.DataFrame], row: int) -> None:
    frame = corrupt(base())
    with pytest.raises(pa.errors.SchemaErrors) as info:
        BarChecks.validate(frame, lazy=True)
    failing = {int(i) for i in info.value.failure_cases["index"].dropna()}
    assert failing == {row}, info.value.failure_cases.to_string()


def test_checks_outlier_is_flagged_and_kept_not_quarantined() -> None:
    frame = jump_10pct(base())
    result = validate(frame, DAY, NEXT)
    v = result.violations.iloc[0]
    print(f"10% jump at {v['ts']}: robust z {v['score']:.0f} (k=8) -> flagged, {len(result.clean)} of {len(frame)} rows kept")
    assert v["check"] == "outlier"
    assert v["action"] == "flag"
    assert v["score"] > 8
    assert result.quarantine.empty
    assert len(result.clean) == len(frame)
    assert result.ok  # a flag never fails a partition
    report = result.reports.iloc[0]
    assert report["outliers"] == 1
    assert report["quarantined_rows"] == 0
    assert report["completeness"] == 1.0


def test_checks_daily_10pct_day_is_not_an_outlier_and_a_50pct_day_is_flagged_never_quarantined() -> None:
    """Real markets move 10% in a day (October 2008): at k=8 a 10% day on a ~1.4% daily-vol symbol is not flagged."""
    frame = synthetic(["SPY"], "2024-01-01", "2024-12-31", "1Day")
    for jump, flagged in ((1.10, False), (1.50, True)):
        f = frame.copy()
        for k in ("open", "high", "low", "close", "vwap"):
            f.loc[f.index >= 120, k] *= jump
        result = validate(f, "2024-01-01", "2024-12-31", "1Day")
        z = result.violations["score"].max() if len(result.violations) else float("nan")
        print(f"daily x{jump}: flagged={not result.violations.empty} z={z:.1f}")
        assert found(result) == ([(120, "outlier")] if flagged else [])
        assert result.quarantine.empty
        assert len(result.clean) == len(f)


def test_checks_one_row_with_two_breaches_is_quarantined_once_with_both_reasons() -> None:
    frame = _set(base(), ROW, volume=-1.0, low=min(base().at[ROW, "open"], base().at[ROW, "close"]) + 1.0)
    result = validate(frame, DAY, NEXT)
    assert found(result) == [(ROW, "ohlc_low"), (ROW, "volume_non_negative")]
    assert list(result.quarantine.index) == [ROW]
    reason = result.quarantine["reason"].iloc[0]
    assert "ohlc_low: " in reason
    assert "; volume_non_negative: " in reason


def test_checks_interleaved_symbols_in_time_order_are_not_out_of_order() -> None:
    frame = synthetic(["AAPL", "MSFT"], DAY, NEXT).sort_values(["ts", "symbol"], kind="stable").reset_index(drop=True)
    assert found(validate(frame, DAY, NEXT)) == []
    dup = pd.concat([frame, frame.iloc[[5]]], ignore_index=True)
    assert found(validate(dup, DAY, NEXT)) == [(len(frame), "duplicate_ts")]


def test_checks_bar_on_a_holiday_is_quarantined_naming_the_holiday() -> None:
    frame = synthetic(["AAPL"], "2024-11-27", "2024-11-28")
    extra = frame.iloc[[-1]].assign(ts=pd.Timestamp("2024-11-28T15:00:00Z").as_unit("ns"))
    result = validate(pd.concat([frame, extra], ignore_index=True), "2024-11-27", "2024-11-29")
    assert found(result) == [(390, "outside_session")]
    assert "Thanksgiving" in result.violations["reason"].iloc[0]
    day = result.reports.set_index("session").loc[pd.Timestamp("2024-11-28").date()]
    assert day["status"] == "holiday"
    assert day["quarantined_rows"] == 1
    assert day["violations"] == {"outside_session": 1}


def test_checks_bar_after_a_half_days_early_close_is_outside_the_session() -> None:
    frame = synthetic(["AAPL"], "2024-11-29", "2024-11-30")
    extra = frame.iloc[[-1]].assign(ts=pd.Timestamp("2024-11-29T18:30:00Z").as_unit("ns"))
    result = validate(pd.concat([frame, extra], ignore_index=True), "2024-11-29", "2024-11-30")
    assert found(result) == [(210, "outside_session")]
    assert "outside the hours of the 2024-11-29 session" in result.violations["reason"].iloc[0]


def test_checks_frames_that_are_not_bar_frames_are_refused() -> None:
    frame = base()
    with pytest.raises(ValueError, match="missing column"):
        validate(frame.drop(columns="close"), DAY, NEXT)
    with pytest.raises(ValueError, match="timezone-aware"):
        validate(frame.assign(ts=frame["ts"].dt.tz_localize(None)), DAY, NEXT)
    with pytest.raises(ValueError, match="one timeframe at a time"):
        validate(frame.assign(timeframe="5Min"), DAY, NEXT)


# ---- quotes -----------------------------------------------------------------------------

AS_OF = utc("2024-11-26", 15, 0)


def _quote_set(f: pd.DataFrame, row: int, **values: float) -> pd.DataFrame:
    for k, v in values.items():
        f.loc[row, k] = v
    return f


QUOTE_CASES: list[tuple[str, Callable[[pd.DataFrame], pd.DataFrame], int]] = [
    ("not_null", lambda f: _quote_set(f, 5, bid=np.nan), 5),
    ("positive_price", lambda f: _quote_set(f, 5, ask=-1.0, bid=-2.0), 5),
    ("zero_size", lambda f: _quote_set(f, 5, bid_size=0.0), 5),
    ("crossed", lambda f: _quote_set(f, 5, bid=f.at[5, "ask"] + 0.02), 5),
    ("locked", lambda f: _quote_set(f, 5, bid=f.at[5, "ask"]), 5),
    ("stale_quote", lambda f: f.drop(index=range(28, 40)).reset_index(drop=True), 27),
]


def test_checks_quotes_base_frame_is_clean() -> None:
    result = validate_quotes(quotes(), as_of=AS_OF, market_open=True)
    assert result.violations.empty
    assert result.ok
    QuoteChecks.validate(quotes(), lazy=True)


def test_checks_every_quote_check_has_a_one_violation_case() -> None:
    assert {c for c, _, _ in QUOTE_CASES} == set(QUOTE_CHECKS)


@pytest.mark.parametrize(("check", "corrupt", "row"), QUOTE_CASES, ids=[c[0] for c in QUOTE_CASES])
def test_checks_one_violation_quote_frame_reports_exactly_that_violation(check: str, corrupt: Callable[[pd.DataFrame], pd.DataFrame], row: int) -> None:
    frame = corrupt(quotes())
    result = validate_quotes(frame, as_of=AS_OF, stale_after_s=10.0, market_open=True)
    got = [(int(r), str(c)) for r, c in zip(result.violations["row"], result.violations["check"], strict=True)]
    assert got == [(row, check)], result.violations.to_string()
    print(f"quote {check}: {result.violations['reason'].iloc[0]}")
    quarantined = QUOTE_CHECKS[check].action == "quarantine"
    assert list(result.quarantine.index) == ([row] if quarantined else [])
    assert len(result.clean) + len(result.quarantine) == len(frame)


@pytest.mark.parametrize(("check", "corrupt", "row"), [c for c in QUOTE_CASES if c[0] not in ("stale_quote",)], ids=lambda x: getattr(x, "__name__", str(x)))
def test_checks_pandera_quote_model_agrees(check: str, corrupt: Callable[[pd.DataFrame], pd.DataFrame], row: int) -> None:
    frame = corrupt(quotes())
    if check == "locked":
        with pytest.warns(UserWarning, match="not_locked"):
            QuoteChecks.validate(frame, lazy=True)
        return
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(pa.errors.SchemaErrors) as info:
            QuoteChecks.validate(frame, lazy=True)
    assert {int(i) for i in info.value.failure_cases["index"].dropna()} == {row}


def test_checks_quotes_are_not_stale_while_the_exchange_is_closed() -> None:
    frame = quotes()
    late = utc("2024-11-26", 23, 0)
    assert validate_quotes(frame, as_of=late, market_open=False).violations.empty
    assert set(validate_quotes(frame, as_of=late, market_open=True).violations["check"]) == {"stale_quote"}
