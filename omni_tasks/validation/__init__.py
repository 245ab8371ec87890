"""Validation of market data (DESIGN section 5): invariants, calendar-aware gaps, outliers, stale series, quotes.

Plain Python over frames: no Celery, no database. A task reads bars
(``BarStore.read``), calls :func:`validate_bars`, and stores what comes back:

* ``result.clean``: rows to keep (flagged rows included: flags never drop data);
* ``result.quarantine``: rows that broke an invariant, with ``reason``
  (the shape ``BarStore.quarantine`` takes);
* ``result.reports``: the quality report per (symbol, session day);
* ``result.gaps``, ``result.violations``, ``result.series``, ``result.closures``:
  the detail behind it (shapes in :mod:`omni_tasks.validation.report`);
* ``result.ok`` and ``result.summary()`` for the task's outcome.

Modules: :mod:`checks` (check names, vectorised invariants, pandera models
``BarChecks``/``QuoteChecks``), :mod:`grid` (exchange sessions as arrays),
:mod:`gaps`, :mod:`outliers`, :mod:`stale`, :mod:`quotes`, :mod:`report`,
:mod:`bars` (``validate_bars``).
"""

from __future__ import annotations

from omni_tasks.validation.bars import DEFAULT_CONFIG, ValidationConfig, validate_bars
from omni_tasks.validation.checks import BAR_CHECKS, QUOTE_CHECKS, BarChecks, Check, QuoteChecks
from omni_tasks.validation.gaps import CLOSED_KINDS, GAP_KINDS, KINDS, Gaps, detect_gaps
from omni_tasks.validation.grid import SessionGrid, Window, xnys_grid
from omni_tasks.validation.quotes import QuoteValidation, validate_quotes
from omni_tasks.validation.report import REPORT_COLUMNS, SERIES_COLUMNS, VIOLATION_COLUMNS, QualityReport, ValidationResult

__all__ = [
    "BAR_CHECKS",
    "CLOSED_KINDS",
    "DEFAULT_CONFIG",
    "GAP_KINDS",
    "KINDS",
    "QUOTE_CHECKS",
    "REPORT_COLUMNS",
    "SERIES_COLUMNS",
    "VIOLATION_COLUMNS",
    "BarChecks",
    "Check",
    "Gaps",
    "QualityReport",
    "QuoteChecks",
    "QuoteValidation",
    "SessionGrid",
    "ValidationConfig",
    "ValidationResult",
    "Window",
    "detect_gaps",
    "validate_bars",
    "validate_quotes",
    "xnys_grid",
]
