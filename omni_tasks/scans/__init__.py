"""Market scans: momentum, volume surge, volatility, gaps, RSI and the 52-week high over a universe.

Plain modules: :mod:`.indicators` (per-symbol, vectorised), :mod:`.scoring`
(cross-sectional z-scores, score, rank), :mod:`.scanner` (scan, chunk,
merge), :mod:`.loading` (bars from the bar store). Celery only in ``tasks.py``.
"""

from __future__ import annotations

from omni_tasks.core.lazy import lazy_exports

# Exported names and their modules, imported on first use (PEP 562): the indicators carry pandas and
# numpy, and a process that only reads a scan run's ledger (the watchdog) should not pay for them.
_EXPORTS = {
    "INDICATORS": "indicators",
    "Lookbacks": "indicators",
    "compute_indicators": "indicators",
    "ScanConfig": "scanner",
    "ScanPartial": "scanner",
    "ScanResult": "scanner",
    "chunk": "scanner",
    "merge": "scanner",
    "scan": "scanner",
    "scan_chunk": "scanner",
    "ScoreWeights": "scoring",
}

__all__ = sorted(_EXPORTS)

__getattr__ = lazy_exports(__name__, {name: f"{__name__}.{module}" for name, module in _EXPORTS.items()})
