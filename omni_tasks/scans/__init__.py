"""Market scans: momentum, volume surge, volatility, gaps, RSI and the 52-week high over a universe.

Plain modules: :mod:`.indicators` (per-symbol, vectorised), :mod:`.scoring`
(cross-sectional z-scores, score, rank), :mod:`.scanner` (scan, chunk,
merge), :mod:`.loading` (bars from the bar store). Celery only in ``tasks.py``.
"""

from omni_tasks.scans.indicators import INDICATORS, Lookbacks, compute_indicators
from omni_tasks.scans.scanner import ScanConfig, ScanPartial, ScanResult, chunk, merge, scan, scan_chunk
from omni_tasks.scans.scoring import ScoreWeights

__all__ = [
    "INDICATORS",
    "Lookbacks",
    "ScanConfig",
    "ScanPartial",
    "ScanResult",
    "ScoreWeights",
    "chunk",
    "compute_indicators",
    "merge",
    "scan",
    "scan_chunk",
]
