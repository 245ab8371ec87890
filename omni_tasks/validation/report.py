"""The quality report per (symbol, session day), the result of a validation run, and their shapes.

:class:`ValidationResult` is plain data (frames and a dict), for the task that
stores it. Nothing here touches a database.

``reports`` (one row per symbol x day; :data:`REPORT_COLUMNS`):

=================== =============== ==================================================
column              type            meaning
=================== =============== ==================================================
symbol              str
timeframe           str             ``1Min`` ... ``1Day``
session             datetime.date   the session date (exchange's calendar day)
status              str             ``regular``, ``half_day``, ``holiday``,
                                    ``adhoc_closure``; ``non_session`` or
                                    ``outside_window`` for a day that only has
                                    violations (a bar on a Saturday)
closure_name        str | None      e.g. ``Thanksgiving``, ``Hurricane Sandy``
expected_bars       int             bars the session should have (0 when closed)
present_bars        int             clean bars on an expected start
missing_bars        int             provider_hole + halt + quarantined bars
completeness        float           present / expected (NaN when nothing expected)
provider_hole_bars  int             see :mod:`omni_tasks.validation.gaps`
halt_bars           int
quarantined_bars    int             expected bars whose only row was quarantined
no_data_bars        int             expected bars the backfill ledger explains: the
                                    symbol is unknown, or had no bars in that range
                                    (not holes, not in missing_bars)
half_day_bars       int             regular-day bars after an early close (not gaps)
gap_stretches       int             stretches with is_gap that day
quarantined_rows    int             rows of that day moved to quarantine
flagged_rows        int             rows of that day flagged for review (kept)
outliers            int             rows flagged as outliers
violations          dict[str, int]  check name -> rows failing it (JSON-ready)
=================== =============== ==================================================

``violations`` (one row per failing row and check; :data:`VIOLATION_COLUMNS`):
``row`` (Int64: position in the input frame, NA for a stale series with no
row), ``symbol``, ``ts`` (datetime64[ns, UTC]), ``session`` (date or None),
``check`` (a name of :data:`checks.BAR_CHECKS`), ``action`` (``quarantine`` or
``flag``), ``reason`` (str), ``score`` (float: the robust z of an outlier,
expected bars behind for stale, run length for flat; NaN otherwise).

``quarantine``: the input rows that broke an invariant, all their columns and
index labels as given, plus ``reason`` (every failed check, ``"check: why; ..."``):
the shape :meth:`omni_tasks.storage.bars.BarStore.quarantine` takes.
``clean``: every other input row (flagged rows included), same columns and index.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from datetime import date, datetime
from typing import Any, Final

import numpy as np
import pandas as pd

from omni_tasks.validation.gaps import Gaps
from omni_tasks.validation.grid import SessionGrid

REPORT_COLUMNS: Final = (
    "symbol", "timeframe", "session", "status", "closure_name", "expected_bars", "present_bars", "missing_bars",
    "completeness", "provider_hole_bars", "halt_bars", "quarantined_bars", "no_data_bars", "half_day_bars", "gap_stretches",
    "quarantined_rows", "flagged_rows", "outliers", "violations",
)
VIOLATION_COLUMNS: Final = ("row", "symbol", "ts", "session", "check", "action", "reason", "score")
SERIES_COLUMNS: Final = (
    "symbol", "rows", "clean_rows", "first_ts", "last_ts", "expected_bars", "present_bars", "no_data_bars", "completeness",
    "bars_behind", "stale", "returns_scored", "outliers",
)


@dataclass(frozen=True)
class QualityReport:
    """One row of ``ValidationResult.reports`` as a typed record (the fields of :data:`REPORT_COLUMNS`).

    ``completeness`` is None when nothing was expected (a closure);
    ``violations`` maps check name to rows failing it that day.
    """

    symbol: str
    timeframe: str
    session: date
    status: str
    closure_name: str | None
    expected_bars: int
    present_bars: int
    missing_bars: int
    completeness: float | None
    provider_hole_bars: int
    halt_bars: int
    quarantined_bars: int
    no_data_bars: int
    half_day_bars: int
    gap_stretches: int
    quarantined_rows: int
    flagged_rows: int
    outliers: int
    violations: dict[str, int]

    def to_record(self) -> dict[str, Any]:
        """The fields as a dict of plain values (date stays a date; ready for an ORM insert or JSON with a date encoder)."""
        return asdict(self)


@dataclass(frozen=True)
class ValidationResult:
    """Everything one :func:`omni_tasks.validation.validate_bars` run found (shapes: this module's docstring).

    ``gaps``: classified stretches (:class:`omni_tasks.validation.gaps.Gaps`).
    ``closures``: the weekdays in the window without a session: ``date``,
    ``kind`` (holiday | adhoc_closure), ``name``. ``series``: one row per
    symbol (:data:`SERIES_COLUMNS`). ``timings_s``: seconds per stage.
    """

    timeframe: str
    start: datetime
    end: datetime
    as_of: datetime
    symbols: tuple[str, ...]
    clean: pd.DataFrame
    quarantine: pd.DataFrame
    violations: pd.DataFrame
    gaps: pd.DataFrame
    closures: pd.DataFrame
    series: pd.DataFrame
    reports: pd.DataFrame
    timings_s: dict[str, float] = field(default_factory=dict)

    def quality_reports(self) -> list[QualityReport]:
        """``reports`` as typed records, one per (symbol, day)."""
        out = []
        for row in self.reports.itertuples(index=False):
            values = row._asdict()
            completeness = values["completeness"]
            values["completeness"] = None if completeness is None or np.isnan(completeness) else float(completeness)
            values["closure_name"] = None if values["closure_name"] is None or pd.isna(values["closure_name"]) else str(values["closure_name"])
            for name in ("expected_bars", "present_bars", "missing_bars", "provider_hole_bars", "halt_bars", "quarantined_bars", "no_data_bars", "half_day_bars", "gap_stretches", "quarantined_rows", "flagged_rows", "outliers"):
                values[name] = int(values[name])
            values["symbol"], values["timeframe"], values["status"] = str(values["symbol"]), str(values["timeframe"]), str(values["status"])
            values["violations"] = dict(values["violations"])
            out.append(QualityReport(**values))
        return out

    @property
    def ok(self) -> bool:
        """No quarantined row, no real gap (provider hole, halt, quarantined bar) and no stale series. Flags do not fail."""
        return self.quarantine.empty and not bool(self.gaps["is_gap"].any()) and not bool(self.series["stale"].any())

    def summary(self) -> dict[str, Any]:
        """Counts for a task's outcome record (JSON primitives)."""
        expected = int(self.series["expected_bars"].sum())
        present = int(self.series["present_bars"].sum())
        gap_bars = self.gaps.groupby("kind")["bars"].sum()
        return {
            "timeframe": self.timeframe,
            "start": self.start.isoformat(),
            "end": self.end.isoformat(),
            "symbols": len(self.symbols),
            "rows": len(self.clean) + len(self.quarantine),
            "clean_rows": len(self.clean),
            "quarantined_rows": len(self.quarantine),
            "flagged_rows": int(self.violations.loc[self.violations["action"] == "flag", "row"].nunique()),
            "violations": {str(k): int(v) for k, v in self.violations["check"].value_counts().sort_index().items()},
            "expected_bars": expected,
            "present_bars": present,
            "completeness": (present / expected) if expected else None,
            "gap_bars": {str(k): int(v) for k, v in gap_bars.items()},
            "stale_symbols": sorted(self.series.loc[self.series["stale"], "symbol"].tolist()),
            "ok": self.ok,
        }


def build_reports(*, timeframe: str, gaps: Gaps, violations: pd.DataFrame, grid: SessionGrid) -> pd.DataFrame:
    """One row per (symbol, day): every session and closure in the window for every symbol, plus any other day
    that holds a violation (rows without a symbol or ts belong to no day: they are in ``violations`` only)."""
    window = gaps.window
    symbols = list(gaps.symbols)
    n_sym, n_sess = len(symbols), len(window.sessions)
    closures = grid.closures_between(window.start_ns, window.end_ns)
    n_clo = len(closures)
    day_of = np.concatenate([window.dates, grid.closure_dates[closures]]).astype("datetime64[D]")
    per_symbol = n_sess + n_clo
    sym = np.repeat(np.arange(n_sym, dtype=np.int64), per_symbol)
    days = np.tile(day_of, n_sym)
    status = np.tile(np.concatenate([np.where(window.half_days, "half_day", "regular").astype(object), grid.closure_kinds[closures]]), n_sym)
    closure_name = np.tile(np.concatenate([np.full(n_sess, None, dtype=object), grid.closure_names[closures]]), n_sym)

    def spread(per_session: np.ndarray) -> np.ndarray:  # (n_sym, n_sess) -> one value per report row, 0 on closures
        out = np.zeros((n_sym, per_symbol), dtype=np.int64)
        out[:, :n_sess] = per_session
        return out.ravel()

    counts = {
        "expected_bars": spread(np.broadcast_to(gaps.expected, (n_sym, n_sess))),
        "present_bars": spread(gaps.present),
        "provider_hole_bars": spread(gaps.missing["provider_hole"]),
        "halt_bars": spread(gaps.missing["halt"]),
        "quarantined_bars": spread(gaps.missing["quarantined"]),
        "no_data_bars": spread(gaps.missing["no_data"]),
        "half_day_bars": spread(gaps.missing["half_day"]),
        "gap_stretches": spread(gaps.gap_stretches),
    }

    # Violations per (symbol, day), counted with numpy; days outside the window get rows of their own.
    v = violations[(violations["check"] != "outside_range") & violations["symbol"].notna() & violations["session"].notna()]
    v_sym = pd.Index(symbols).get_indexer(v["symbol"]).astype(np.int64)
    v_day = np.array(list(v["session"]), dtype="datetime64[D]") if len(v) else np.zeros(0, dtype="datetime64[D]")
    keys = sym * _DAYS + days.astype(np.int64) + _DAY0
    v_keys = v_sym * _DAYS + v_day.astype(np.int64) + _DAY0
    order = np.argsort(keys, kind="stable")
    pos = np.searchsorted(keys[order], v_keys)
    hit = (pos < len(keys)) & (keys[order][np.minimum(pos, max(len(keys) - 1, 0))] == v_keys) if len(keys) else np.zeros(len(v_keys), dtype=bool)
    where = np.where(hit, order[np.minimum(pos, max(len(keys) - 1, 0))] if len(keys) else 0, -1)
    if (~hit).any():
        extra_keys = np.unique(v_keys[~hit])
        where[~hit] = len(keys) + np.searchsorted(extra_keys, v_keys[~hit])
        extra_sym, extra_day = extra_keys // _DAYS, (extra_keys % _DAYS - _DAY0).astype("datetime64[D]")
        known_sessions = set(grid.dates.tolist())
        closure_of = dict(zip(grid.closure_dates.tolist(), zip(grid.closure_kinds.tolist(), grid.closure_names.tolist(), strict=True), strict=True))
        extra_status, extra_name = [], []
        for d in extra_day.tolist():
            kind, name = closure_of.get(d, ("outside_window" if d in known_sessions else "non_session", None))
            extra_status.append(kind)
            extra_name.append(name)
        sym = np.concatenate([sym, extra_sym])
        days = np.concatenate([days, extra_day])
        status = np.concatenate([status, np.array(extra_status, dtype=object)])
        closure_name = np.concatenate([closure_name, np.array(extra_name, dtype=object)])
        counts = {k: np.concatenate([c, np.zeros(len(extra_keys), dtype=np.int64)]) for k, c in counts.items()}
    n_rows = len(sym)
    check_names, check_idx = np.unique(v["check"].to_numpy(dtype=object).astype(str), return_inverse=True) if len(v) else (np.zeros(0, dtype=str), np.zeros(0, dtype=np.int64))
    by_check = np.zeros((n_rows, len(check_names)), dtype=np.int64)
    np.add.at(by_check, (where, check_idx), 1)
    rows = v["row"].to_numpy(dtype=np.float64, na_value=-1.0).astype(np.int64)
    action = v["action"].to_numpy(dtype=object)
    for name, wanted in (("quarantined_rows", "quarantine"), ("flagged_rows", "flag")):
        sel = action == wanted
        distinct = np.unique(np.stack([where[sel], rows[sel]]), axis=1) if sel.any() else np.zeros((2, 0), dtype=np.int64)
        counts[name] = np.bincount(distinct[0], minlength=n_rows).astype(np.int64)
    counts["outliers"] = by_check[:, list(check_names).index("outlier")] if "outlier" in check_names else np.zeros(n_rows, dtype=np.int64)
    violations_col = np.empty(n_rows, dtype=object)
    for i in range(n_rows):
        violations_col[i] = {}
    for at in np.flatnonzero(by_check.any(axis=1)).tolist():
        violations_col[at] = {str(check_names[j]): int(by_check[at, j]) for j in np.flatnonzero(by_check[at])}

    missing = counts["provider_hole_bars"] + counts["halt_bars"] + counts["quarantined_bars"]
    expected = counts["expected_bars"]
    with np.errstate(invalid="ignore", divide="ignore"):
        completeness = np.where(expected > 0, counts["present_bars"] / np.maximum(expected, 1), np.nan)
    out = pd.DataFrame(
        {
            "symbol": np.array(symbols, dtype=object)[sym] if n_rows else np.zeros(0, dtype=object),
            "timeframe": timeframe,
            "session": days.astype(object),
            "status": status,
            "closure_name": pd.Series(closure_name, dtype=object),
            "expected_bars": expected,
            "present_bars": counts["present_bars"],
            "missing_bars": missing,
            "completeness": completeness,
            "provider_hole_bars": counts["provider_hole_bars"],
            "halt_bars": counts["halt_bars"],
            "quarantined_bars": counts["quarantined_bars"],
            "no_data_bars": counts["no_data_bars"],
            "half_day_bars": counts["half_day_bars"],
            "gap_stretches": counts["gap_stretches"],
            "quarantined_rows": counts["quarantined_rows"],
            "flagged_rows": counts["flagged_rows"],
            "outliers": counts["outliers"],
            "violations": violations_col,
        }
    )
    return out.sort_values(["symbol", "session"], kind="stable").reset_index(drop=True)[list(REPORT_COLUMNS)]


_DAYS: Final = 1 << 20  # a (symbol, day) key is symbol * _DAYS + day number + _DAY0
_DAY0: Final = 1 << 19  # day numbers since 1970 in +-_DAY0 cover every datetime64[ns] instant
