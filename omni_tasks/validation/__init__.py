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

from omni_tasks.core.lazy import lazy_exports

# Exported names and their modules, imported on first use (PEP 562): the checks carry pandas, pandera and
# the exchange calendar, and a process that only routes a validation task should not pay for them.
_EXPORTS = {
    "DEFAULT_CONFIG": "bars",
    "ValidationConfig": "bars",
    "validate_bars": "bars",
    "BAR_CHECKS": "checks",
    "QUOTE_CHECKS": "checks",
    "BarChecks": "checks",
    "Check": "checks",
    "QuoteChecks": "checks",
    "CLOSED_KINDS": "gaps",
    "GAP_KINDS": "gaps",
    "KINDS": "gaps",
    "Gaps": "gaps",
    "detect_gaps": "gaps",
    "SessionGrid": "grid",
    "Window": "grid",
    "xnys_grid": "grid",
    "QuoteValidation": "quotes",
    "validate_quotes": "quotes",
    "REPORT_COLUMNS": "report",
    "SERIES_COLUMNS": "report",
    "VIOLATION_COLUMNS": "report",
    "QualityReport": "report",
    "ValidationResult": "report",
}

__all__ = sorted(_EXPORTS)

__getattr__ = lazy_exports(__name__, {name: f"{__name__}.{module}" for name, module in _EXPORTS.items()})
