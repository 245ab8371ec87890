"""Calendar-aware gaps: the bars the exchange's sessions should have produced, against the bars we hold.

Every missing stretch is classified before it is reported. Relative to a
regular weekday, a bar can be missing because:

============== ======= =========================================================
kind           is_gap  meaning
============== ======= =========================================================
holiday        no      the exchange was closed all day (a regular holiday)
adhoc_closure  no      the exchange was closed all day, announced ad hoc
                       (Hurricane Sandy 2012-10-29/30, a national day of mourning)
half_day       no      the minutes after a half day's early close
halt           yes     a run of minutes missing for *every* symbol of the batch
                       (at least ``market_wide_min_symbols``): a probable trading
                       halt or market-wide outage. Never for daily bars; never a
                       whole session (every symbol missing a whole session means
                       the data is missing, not the market)
quarantined    yes     a bar was received but broke an invariant (see quarantine)
provider_hole  yes     no bar from the provider, while others had one (or the
                       batch has one symbol); a missing daily session
unknown_symbol no      no data because the provider does not know the symbol
                       (the backfill ledger says so: ``no_data`` ranges)
no_bars_in_range no    no data because the symbol had no bars in that range at
                       the provider (before its listing, after its delisting)
============== ======= =========================================================

The two "no data" kinds come only from what the caller passes as ``no_data``
(the backfill ledger's causes); missing bars there are not holes, and a
series with no data is not a halt for the others.

Closures and half days come from the calendar, so an exchange closure is never
a gap. Nothing is forward-filled here: a gap is a record, not a repair.

Stretches are runs of consecutive expected bars of one symbol with one kind,
inside one session (daily: one session each). ``end`` is exclusive (the end of
the last missing bar).

Cost: a few bytes per (symbol, expected bar) for the presence matrices: 1M
cells (200 symbols x 13 sessions of minutes) is a few MB; 500 symbols x a
year of minutes is ~150 MB, so validate minute bars a partition at a time.

Minutes without trades: most providers send no bar for a minute without a
trade, so an illiquid symbol shows provider holes. They are reported as such
(completeness says how many); telling "no trade" from "not delivered" needs the
trades themselves.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

import numpy as np
import pandas as pd

from omni_tasks.validation.grid import Window, utc_index

PRESENT: Final = 0
PROVIDER_HOLE: Final = 1
HALT: Final = 2
QUARANTINED: Final = 3
UNKNOWN_SYMBOL: Final = 4
NO_BARS_IN_RANGE: Final = 5
MISSING_KINDS: Final = {PROVIDER_HOLE: "provider_hole", HALT: "halt", QUARANTINED: "quarantined"}
#: "No data" causes (router.UNKNOWN_SYMBOL / router.NO_BARS_IN_RANGE) and their codes in ``no_data`` matrices.
NO_DATA_CODES: Final = {"unknown_symbol": UNKNOWN_SYMBOL, "no_bars_in_range": NO_BARS_IN_RANGE}
GAP_KINDS: Final = ("provider_hole", "halt", "quarantined")
CLOSED_KINDS: Final = ("holiday", "adhoc_closure", "half_day")
NO_DATA_KINDS: Final = tuple(NO_DATA_CODES)
KINDS: Final = (*GAP_KINDS, *CLOSED_KINDS, *NO_DATA_KINDS)


@dataclass(frozen=True)
class Gaps:
    """What :func:`detect_gaps` found, for ``symbols`` x the window's sessions.

    ``stretches``: one row per classified stretch, columns ``symbol`` (str),
    ``session`` (datetime.date), ``start``/``end`` (datetime64[ns, UTC], end
    exclusive), ``bars`` (int), ``kind`` (one of :data:`KINDS`), ``is_gap``
    (bool: False for closures and half days), ``reason`` (str).
    The arrays are per (symbol, window session): ``present`` clean bars on an
    expected start, ``missing[kind]`` missing bars of each gap kind (and
    ``half_day`` bars not expected), ``gap_stretches`` stretches with is_gap.
    ``expected`` is per window session; ``last_present`` per symbol is the
    index in ``window.starts`` of its last present bar (-1: none).
    ``missing["no_data"]``: missing bars the ledger explains (unknown symbol, no bars in range).
    """

    symbols: tuple[str, ...]
    window: Window
    stretches: pd.DataFrame
    expected: np.ndarray
    present: np.ndarray
    missing: dict[str, np.ndarray]
    gap_stretches: np.ndarray
    last_present: np.ndarray


def _matrix(window: Window, n_symbols: int, codes: np.ndarray, ts: np.ndarray) -> np.ndarray:
    """(n_symbols, n_expected) bool: does a row of that symbol start on that expected bar start?"""
    starts = window.starts
    out = np.zeros((n_symbols, len(starts)), dtype=bool)
    if len(starts) == 0 or len(ts) == 0:
        return out
    pos = np.searchsorted(starts, ts)
    ok = (codes >= 0) & (pos < len(starts))
    ok[ok] = starts[pos[ok]] == ts[ok]
    out[codes[ok], pos[ok]] = True
    return out


def detect_gaps(
    window: Window,
    symbols: Sequence[str],
    codes: np.ndarray,
    ts: np.ndarray,
    *,
    received_codes: np.ndarray | None = None,
    received_ts: np.ndarray | None = None,
    market_wide_min_symbols: int = 2,
    no_data: np.ndarray | None = None,
) -> Gaps:
    """Classified missing stretches of ``symbols`` in ``window``.

    ``codes``/``ts`` (int index into ``symbols``, int64 ns UTC) are the clean
    bars; ``received_*`` every bar received including quarantined ones (default:
    the clean bars), so a bar that came but was quarantined is told apart from
    one that never came, and a minute where any symbol has a bar is no halt.
    ``no_data``: (n_symbols, n_expected) int8, a code of :data:`NO_DATA_CODES`
    where the backfill ledger says there is no data (0 elsewhere).
    """
    symbols = tuple(symbols)
    n_sym, starts, offsets = len(symbols), window.starts, window.offsets
    n_exp, n_sess = len(starts), len(window.sessions)
    step = window.grid.step_ns
    present = _matrix(window, n_sym, np.asarray(codes, dtype=np.int64), np.asarray(ts, dtype=np.int64))
    if received_codes is None or received_ts is None:
        received = present
    else:
        received = present | _matrix(window, n_sym, np.asarray(received_codes, dtype=np.int64), np.asarray(received_ts, dtype=np.int64))

    cls = np.zeros((n_sym, n_exp), dtype=np.int8)
    explained = np.zeros((n_sym, n_exp), dtype=np.int8) if no_data is None else np.asarray(no_data, dtype=np.int8)
    if n_exp and n_sym:
        # A symbol without data (per the ledger) takes no part in deciding a market-wide halt.
        active = explained == 0
        nobody = ~(received & active).any(axis=0)
        if window.grid.daily or n_sym < market_wide_min_symbols:
            halt_cols = np.zeros(n_exp, dtype=bool)
        else:
            whole_session = np.logical_and.reduceat(nobody, offsets[:-1])
            halt_cols = nobody & ~whole_session[window.start_session] & (active.sum(axis=0) >= market_wide_min_symbols)
        not_received = ~received
        cls[not_received] = PROVIDER_HOLE
        cls[not_received & halt_cols[None, :]] = HALT
        cls[received & ~present] = QUARANTINED
        cls[not_received & ~active] = explained[not_received & ~active]

    missing: dict[str, np.ndarray] = {}
    for code, kind in MISSING_KINDS.items():
        missing[kind] = np.add.reduceat(cls == code, offsets[:-1], axis=1).astype(np.int64) if n_exp and n_sym else np.zeros((n_sym, n_sess), dtype=np.int64)
    no_data_cells = cls >= UNKNOWN_SYMBOL
    missing["no_data"] = np.add.reduceat(no_data_cells, offsets[:-1], axis=1).astype(np.int64) if n_exp and n_sym else np.zeros((n_sym, n_sess), dtype=np.int64)
    present_by_session = np.add.reduceat(present, offsets[:-1], axis=1).astype(np.int64) if n_exp and n_sym else np.zeros((n_sym, n_sess), dtype=np.int64)
    expected = np.diff(offsets).astype(np.int64)

    # Runs of one kind per symbol, broken at session starts.
    flat = cls.ravel()
    brk = np.zeros(n_exp, dtype=bool)
    brk[offsets[:-1][offsets[:-1] < n_exp]] = True
    flat_brk = np.tile(brk, n_sym)
    prev = np.concatenate(([PRESENT], flat[:-1])) if len(flat) else flat
    nxt = np.concatenate((flat[1:], [PRESENT])) if len(flat) else flat
    nxt_brk = np.concatenate((flat_brk[1:], [True])) if len(flat) else flat_brk
    run_first = np.flatnonzero((flat != PRESENT) & ((flat != prev) | flat_brk))
    run_last = np.flatnonzero((flat != PRESENT) & ((flat != nxt) | nxt_brk))
    sym_of = run_first // max(n_exp, 1)
    col_first, col_last = run_first % max(n_exp, 1), run_last % max(n_exp, 1)
    run_session = window.start_session[col_first] if len(run_first) else np.zeros(0, dtype=np.int64)
    run_kind = flat[run_first]
    run_is_gap = run_kind < UNKNOWN_SYMBOL
    gap_stretches = np.zeros((n_sym, n_sess), dtype=np.int64)
    np.add.at(gap_stretches, (sym_of[run_is_gap], run_session[run_is_gap]), 1)
    kind_names = np.array(["", "provider_hole", "halt", "quarantined", "unknown_symbol", "no_bars_in_range"], dtype=object)[run_kind]
    reasons = np.array(
        [
            "",
            "no bar from the provider",
            f"none of the {n_sym} symbols has a bar: probable trading halt or market-wide outage",
            "a bar was received but broke an invariant: see quarantine",
            "no data: the provider does not know the symbol (backfill ledger)",
            "no data: the provider has no bars for the symbol in this range, e.g. before its listing or after its delisting (backfill ledger)",
        ],
        dtype=object,
    )[run_kind]
    symbol_names = np.array(symbols, dtype=object)
    dates = window.dates
    pieces = [
        pd.DataFrame(
            {
                "symbol": symbol_names[sym_of],
                "session": dates[run_session].astype(object),
                "start": starts[col_first],
                "end": starts[col_last] + step,
                "bars": (col_last - col_first + 1).astype(np.int64),
                "kind": kind_names,
                "is_gap": run_is_gap,
                "reason": reasons,
            }
        )
    ]

    # Half days: the regular-day minutes after the early close were never expected.
    half_day_bars = np.zeros((n_sym, n_sess), dtype=np.int64)
    for j in np.flatnonzero(window.half_days):
        first, end, bars = window.after_early_close(int(j))
        if bars == 0:
            continue
        half_day_bars[:, j] = bars
        close = pd.Timestamp(int(window.grid.closes[window.sessions[j]]), tz="UTC").tz_convert(window.grid.tz)
        pieces.append(_per_symbol(symbol_names, dates[j], first, end, bars, "half_day", f"half day: the exchange closed early at {close:%H:%M} {close.tzname()}"))
    missing["half_day"] = half_day_bars

    # Closures: whole weekdays without a session.
    grid = window.grid
    for k in grid.closures_between(window.start_ns, window.end_ns):
        first, end, bars = window.closure_bars(int(k))
        if bars == 0:
            continue
        kind, name = str(grid.closure_kinds[k]), str(grid.closure_names[k])
        label = "ad hoc exchange closure" if kind == "adhoc_closure" else "exchange holiday"
        pieces.append(_per_symbol(symbol_names, grid.closure_dates[k], first, end, bars, kind, f"{label}: {name}"))

    stretches = pd.concat(pieces, ignore_index=True) if len(pieces) > 1 else pieces[0]
    stretches["start"] = utc_index(stretches["start"].to_numpy(dtype=np.int64))
    stretches["end"] = utc_index(stretches["end"].to_numpy(dtype=np.int64))
    stretches["is_gap"] = stretches["is_gap"].astype(bool)
    stretches = stretches.sort_values(["symbol", "start", "kind"], kind="stable").reset_index(drop=True)

    last_present = np.full(n_sym, -1, dtype=np.int64)
    if n_exp and n_sym:
        any_present = present.any(axis=1)
        last_present[any_present] = n_exp - 1 - np.argmax(present[any_present, ::-1], axis=1)
    return Gaps(symbols, window, stretches, expected, present_by_session, missing, gap_stretches, last_present)


def _per_symbol(symbols: np.ndarray, day: np.datetime64, first: int, end: int, bars: int, kind: str, reason: str) -> pd.DataFrame:
    n = len(symbols)
    return pd.DataFrame(
        {
            "symbol": symbols,
            "session": np.full(n, pd.Timestamp(day).date(), dtype=object),
            "start": np.full(n, first, dtype=np.int64),
            "end": np.full(n, end, dtype=np.int64),
            "bars": np.full(n, bars, dtype=np.int64),
            "kind": kind,
            "is_gap": False,
            "reason": reason,
        }
    )
