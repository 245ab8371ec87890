"""The market scanner: indicators per symbol, then one cross-sectional score and rank.

    result = scan(bars, as_of=as_of, config=ScanConfig())          # one process
    parts = [scan_chunk(bars_of(c), as_of=as_of, config=config, symbols=c)
             for c in chunk(universe, 100)]                        # one per worker
    result = merge(parts)                                          # once, at the end

Why the work splits where it does. A symbol's indicators (momentum, volume
surge, ATR%, gap, RSI, distance to the 52-week high: see
:mod:`omni_tasks.scans.indicators`) depend on that symbol's bars only, so they
are computed per chunk of symbols, in parallel, where the bars are read. Its
score does not: it is built from z-scores, and a z-score compares a symbol
with the *whole universe* (its mean, spread and winsorising quantiles; see
:mod:`omni_tasks.scans.scoring`). Scored within a chunk, a symbol would be
ranked against an arbitrary hundred neighbours, and ranks from different
chunks could not be compared. So a chunk worker returns a :class:`ScanPartial`
(indicators only, no score), and :func:`merge` gathers every partial, computes
the z-scores, score and rank over all symbols at once, and returns the
:class:`ScanResult`. :func:`scan` is exactly ``merge([scan_chunk(...)])``, and
because a symbol's indicators come out bit-for-bit the same whatever else is
in its chunk, and the merge sorts by symbol before any statistic, chunked and
one-shot scans give identical scores and ranks.

The merge also marks as ``stale`` (unscored, with the reason) any symbol whose
last bar lags the universe's most recent one by more than
``ScanConfig.max_lag_bars``, another fact only the whole universe knows.

A partial crosses process boundaries as JSON primitives
(:meth:`ScanPartial.to_json` / :meth:`ScanPartial.from_json`, floats exact);
it carries its ``as_of`` and config, and :func:`merge` refuses partials that
disagree, or that scanned a symbol twice.

Plain Python: no Celery here (the tasks live in ``tasks.py``).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields
from datetime import datetime
from typing import Any, Final

import numpy as np
import pandas as pd

from omni_tasks.contracts.bars import check_symbol, parse_timeframe
from omni_tasks.marketdata import calendar
from omni_tasks.scans.indicators import INDICATORS, OUTPUT_COLUMNS, Lookbacks, compute_indicators, utc_instant
from omni_tasks.scans.scoring import SCORE_COLUMNS, ScoreWeights, check_winsor_quantile, score

#: Columns of ScanResult.frame, in order.
RESULT_COLUMNS: Final = (*OUTPUT_COLUMNS, *SCORE_COLUMNS)
_FLOAT_COLUMNS: Final = ("last_close", "price", *INDICATORS)
_INT_COLUMNS: Final = ("bars", "high_bars")
_TEXT_COLUMNS: Final = ("symbol", "price_source", "reason", "notes")


@dataclass(frozen=True)
class ScanConfig:
    """What a scan computes: the bar ``timeframe`` it reads, the indicators' ``lookbacks`` (bars),
    the score's ``weights`` and ``winsor_quantile`` (each tail clipped before z-scoring, 0..0.5).

    ``max_lag_bars``: a symbol whose last bar is more than this many bars
    (sessions, for daily bars; counted on the exchange calendar) behind the
    most recent last bar in the universe is not scored (reason ``stale: ...``):
    its indicators describe another period. 0 = every scored symbol must have
    the latest bar; raise it for intraday scans of thinly traded names
    (providers send no bar for an interval without trades).
    """

    timeframe: str = "1Day"
    lookbacks: Lookbacks = field(default_factory=Lookbacks)
    weights: ScoreWeights = field(default_factory=ScoreWeights)
    winsor_quantile: float = 0.05
    max_lag_bars: int = 0

    def __post_init__(self) -> None:
        parse_timeframe(self.timeframe)
        if not isinstance(self.lookbacks, Lookbacks):
            raise TypeError(f"ScanConfig.lookbacks must be Lookbacks, not {type(self.lookbacks).__name__}")
        if not isinstance(self.weights, ScoreWeights):
            raise TypeError(f"ScanConfig.weights must be ScoreWeights, not {type(self.weights).__name__}")
        check_winsor_quantile(self.winsor_quantile)
        if isinstance(self.max_lag_bars, bool) or not isinstance(self.max_lag_bars, int) or self.max_lag_bars < 0:
            raise ValueError(f"ScanConfig.max_lag_bars must be a whole number of bars >= 0, not {self.max_lag_bars!r}")

    def to_dict(self) -> dict[str, Any]:
        """JSON primitives (for task arguments, partials and the scan runs table)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ScanConfig:
        """The inverse of :meth:`to_dict`; missing fields take their defaults, unknown ones are a ValueError."""
        _no_unknown_keys("ScanConfig", data, cls)
        values = dict(data)
        if "lookbacks" in values:
            _no_unknown_keys("ScanConfig.lookbacks", values["lookbacks"], Lookbacks)
            values["lookbacks"] = Lookbacks(**values["lookbacks"])
        if "weights" in values:
            _no_unknown_keys("ScanConfig.weights", values["weights"], ScoreWeights)
            values["weights"] = ScoreWeights(**values["weights"])
        return cls(**values)


@dataclass(frozen=True)
class ScanPartial:
    """One chunk's indicators (no score yet): ``frame`` has one row per symbol, the columns of
    :data:`~omni_tasks.scans.indicators.OUTPUT_COLUMNS`. ``as_of`` is UTC."""

    frame: pd.DataFrame
    as_of: pd.Timestamp
    config: ScanConfig

    @property
    def symbols(self) -> list[str]:
        return [str(s) for s in self.frame["symbol"]]

    def to_json(self) -> dict[str, Any]:
        """JSON primitives: ``{"as_of": ISO, "config": {...}, "rows": [{column: value}, ...]}``.

        Floats are kept exactly (Python's JSON writes the shortest repr that reads
        back to the same double); NaN and missing values become null, timestamps ISO 8601.
        """
        return {"as_of": self.as_of.isoformat(), "config": self.config.to_dict(), "rows": frame_records(self.frame)}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> ScanPartial:
        """The inverse of :meth:`to_json` (the frame comes back with the same dtypes and values)."""
        _no_unknown_keys("ScanPartial", data, None, allowed=("as_of", "config", "rows"))
        absent = [key for key in ("as_of", "config", "rows") if key not in data]
        if absent:
            raise ValueError(f"ScanPartial: missing field(s) {', '.join(absent)}")
        as_of = utc_instant(data["as_of"], "as_of")
        return cls(frame=indicator_frame(data["rows"]), as_of=as_of, config=ScanConfig.from_dict(data["config"]))


@dataclass(frozen=True)
class ScanResult:
    """A finished scan: ``frame`` has one row per symbol of the universe, the columns of
    :data:`RESULT_COLUMNS`: scored rows by ``rank`` (1 = best), then the unscored ones
    (``reason`` set, no score or rank) by symbol. ``as_of`` is UTC."""

    frame: pd.DataFrame
    as_of: pd.Timestamp
    config: ScanConfig

    @property
    def ranked(self) -> pd.DataFrame:
        """Only the scored rows, by rank."""
        return self.frame[self.frame["rank"].notna()].reset_index(drop=True)

    @property
    def unscored(self) -> pd.DataFrame:
        """The rows with a reason and no score."""
        return self.frame[self.frame["rank"].isna()].reset_index(drop=True)

    def to_records(self) -> list[dict[str, Any]]:
        """One JSON-safe dict per symbol (for the scan results table): NaN/missing as None, timestamps ISO 8601."""
        return frame_records(self.frame)


def scan_chunk(
    bars: pd.DataFrame,
    *,
    as_of: datetime | str | pd.Timestamp,
    config: ScanConfig,
    quotes: pd.DataFrame | None = None,
    symbols: Iterable[str] | None = None,
) -> ScanPartial:
    """The indicators of one chunk of symbols (what a chunk worker runs); no score: see :func:`merge`.

    ``bars``: canonical bars of the chunk's symbols (any row order, the
    config's timeframe). ``as_of``: the scan's instant (timezone-aware; bars
    that had not ended by then and later quotes are not used). ``quotes``:
    latest quotes (``symbol, ts, bid, ask``), optional. ``symbols``: the chunk;
    a symbol without bars is reported, not dropped. Without ``symbols`` an
    empty ``bars`` is a ValueError.
    """
    stamp = utc_instant(as_of, "as_of")
    frame = compute_indicators(bars, as_of=stamp, lookbacks=config.lookbacks, timeframe=config.timeframe, quotes=quotes, symbols=symbols)
    return ScanPartial(frame=frame, as_of=stamp, config=config)


def merge(partials: Sequence[ScanPartial]) -> ScanResult:
    """Score and rank the symbols of every partial together (z-scores over the whole universe).

    The partials must share ``as_of`` and config and not overlap; their order
    does not matter. Empty ``partials`` is a ValueError. A symbol whose last
    bar lags the universe's latest by more than ``config.max_lag_bars`` bars
    gets a ``stale: ...`` reason here (a whole-universe fact, like the z-scores).
    """
    if not partials:
        raise ValueError("nothing to merge: no partial scans were given")
    first = partials[0]
    for other in partials[1:]:
        if other.as_of != first.as_of:
            raise ValueError(f"partials of different scans: as_of {first.as_of.isoformat()} and {other.as_of.isoformat()}")
        if other.config != first.config:
            raise ValueError(f"partials of different scans: configs differ ({first.config} vs {other.config})")
    frame = pd.concat([p.frame for p in partials], ignore_index=True) if len(partials) > 1 else first.frame
    repeated = frame["symbol"][frame["symbol"].duplicated()]
    if len(repeated):
        shown = ", ".join(sorted(map(str, repeated.unique()))[:5])
        raise ValueError(f"symbol(s) scanned in more than one partial: {shown} (chunks must not overlap)")
    frame = _mark_stale(frame, first.config)
    ranked = score(frame, weights=first.config.weights, winsor_quantile=first.config.winsor_quantile)
    return ScanResult(frame=ranked[list(RESULT_COLUMNS)], as_of=first.as_of, config=first.config)


def scan(
    bars: pd.DataFrame,
    *,
    as_of: datetime | str | pd.Timestamp,
    config: ScanConfig = ScanConfig(),  # frozen, immutable default
    quotes: pd.DataFrame | None = None,
    symbols: Iterable[str] | None = None,
) -> ScanResult:
    """The whole scan in one process: ``merge([scan_chunk(...)])`` (arguments as :func:`scan_chunk`)."""
    return merge([scan_chunk(bars, as_of=as_of, config=config, quotes=quotes, symbols=symbols)])


def chunk(symbols: Iterable[str], size: int) -> list[list[str]]:
    """The universe cut into ``ceil(n / size)`` chunks of near-equal length (none longer than ``size``).

    Symbols are checked and upper-cased (:func:`frames.check_symbol`), repeats
    removed, and sorted, so the same universe always gives the same chunks
    (and the same task arguments). An empty universe or ``size < 1`` is a ValueError.
    """
    if isinstance(size, bool) or not isinstance(size, int) or size < 1:
        raise ValueError(f"chunk size must be a positive whole number of symbols, not {size!r}")
    universe = sorted({check_symbol(s) for s in symbols})
    if not universe:
        raise ValueError("no symbols to scan: the symbol list is empty")
    count = math.ceil(len(universe) / size)
    base, extra = divmod(len(universe), count)
    out: list[list[str]] = []
    start = 0
    for i in range(count):
        length = base + (1 if i < extra else 0)
        out.append(universe[start : start + length])
        start += length
    return out


def _mark_stale(frame: pd.DataFrame, config: ScanConfig) -> pd.DataFrame:
    """Give a ``stale`` reason to scoreable symbols whose last bar lags the universe's latest by more than max_lag_bars."""
    open_rows = frame["reason"].isna() & frame["last_ts"].notna()
    if not open_rows.any():
        return frame
    latest = frame.loc[open_rows, "last_ts"].max()
    behind = open_rows & (frame["last_ts"] < latest)
    if not behind.any():
        return frame
    timeframe = parse_timeframe(config.timeframe)
    reasons = frame["reason"].astype(object).where(frame["reason"].notna(), None).tolist()
    after = pd.Timedelta(microseconds=1)  # bar starts are whole microseconds (the store keeps no finer)
    for position in np.flatnonzero(behind.to_numpy()):
        last = frame["last_ts"].iloc[position]
        lag = len(calendar.expected_bar_starts(timeframe, (last + after).to_pydatetime(), (latest + after).to_pydatetime()))
        if lag > config.max_lag_bars:
            reasons[position] = f"stale: last bar {last.isoformat()} is {lag} bars behind the universe's latest ({latest.isoformat()})"
    return frame.assign(reason=pd.Series(reasons, dtype="str", index=frame.index))


# ---- JSON ---------------------------------------------------------------------------------


def frame_records(frame: pd.DataFrame) -> list[dict[str, Any]]:
    """Rows as dicts of JSON primitives: floats (NaN -> None), ints, strings, ISO timestamps, None."""
    columns: dict[str, list[Any]] = {}
    for name in frame.columns:
        series = frame[name]
        if isinstance(series.dtype, pd.DatetimeTZDtype):
            columns[name] = [None if pd.isna(v) else v.isoformat() for v in series]
        elif name in _INT_COLUMNS or name == "rank":
            columns[name] = [None if pd.isna(v) else int(v) for v in series]
        elif pd.api.types.is_float_dtype(series.dtype):
            columns[name] = [None if math.isnan(v) else float(v) for v in series.to_numpy(dtype=np.float64)]
        else:
            columns[name] = [None if pd.isna(v) else str(v) for v in series]
    names = list(columns)
    return [dict(zip(names, row, strict=True)) for row in zip(*(columns[n] for n in names), strict=True)]


def indicator_frame(records: Sequence[Mapping[str, Any]]) -> pd.DataFrame:
    """An indicator frame (dtypes as :func:`compute_indicators` makes them) from :func:`frame_records` rows."""
    data: dict[str, Any] = {}
    for name in OUTPUT_COLUMNS:
        try:
            values = [record[name] for record in records]
        except KeyError:
            raise ValueError(f"partial scan rows lack the column {name!r}") from None
        if name == "last_ts":
            data[name] = pd.DatetimeIndex(pd.to_datetime(pd.Series(values, dtype=object), utc=True)).as_unit("ns")
        elif name in _INT_COLUMNS:
            data[name] = np.array(values, dtype=np.int64)
        elif name in _FLOAT_COLUMNS:
            data[name] = np.array([np.nan if v is None else v for v in values], dtype=np.float64)
        else:
            data[name] = pd.Series(values, dtype="str")
    return pd.DataFrame(data)


def _no_unknown_keys(what: str, data: Any, cls: type | None, allowed: Sequence[str] = ()) -> None:
    if not isinstance(data, Mapping):
        raise ValueError(f"{what} must be a mapping, not {type(data).__name__}")
    known = set(allowed) if cls is None else {f.name for f in fields(cls)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ValueError(f"{what}: unknown field(s) {', '.join(map(str, unknown))} (known: {', '.join(sorted(known))})")
