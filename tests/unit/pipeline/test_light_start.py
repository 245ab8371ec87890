"""Start-up weight: registering every task, serving /health and the watchdog's reads load no pandas stack.

Every process `omni up` starts imports the task modules (a worker to run its
tasks, beat and `omni up` for the start-up checks). pandas, numpy, pyarrow,
pandera and the exchange calendar cost about 1.3 s of CPU per process on the
2-core machine class; only the tasks that compute import them, when they run.
Each check runs in a fresh interpreter, so an earlier test's imports cannot hide a leak.
"""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.conftest import REPO_ROOT

HEAVY = ("pandas", "numpy", "pyarrow", "pandera", "exchange_calendars")


def _heavy_after(code: str) -> list[str]:
    script = f"import sys\n{code}\nprint(','.join(p for p in {HEAVY!r} if p in sys.modules))\n"
    done = subprocess.run([sys.executable, "-c", script], cwd=REPO_ROOT, capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    return [p for p in done.stdout.strip().split(",") if p]


def test_registering_every_task_loads_no_pandas_stack() -> None:
    code = "from omni_tasks.pipeline.taskdef import task_time_limits, ROUTES\nassert len(task_time_limits()) > 10 and ROUTES"
    assert _heavy_after(code) == []


@pytest.mark.parametrize(
    "module",
    ["omni_tasks.ops.health", "omni_tasks.risk.snapshot_reads", "omni_tasks.watchdog.ledgers", "omni_tasks.scans.runs", "omni_tasks.contracts.bars"],
)
def test_readers_load_no_pandas_stack(module: str) -> None:
    assert _heavy_after(f"import {module}") == []


def test_lazy_exports_still_resolve() -> None:
    """The packages that serve their names on first use still hand out the same objects."""
    code = (
        "from omni_tasks.contracts.bars import BarFrame, canonical_bars, empty_bars, split_valid\n"
        "from omni_tasks.contracts import bar_frames\n"
        "assert BarFrame is bar_frames.BarFrame and canonical_bars is bar_frames.canonical_bars\n"
        "from omni_tasks.scans import ScanConfig, scan, compute_indicators, ScoreWeights\n"
        "from omni_tasks.scans.scanner import ScanConfig as direct\n"
        "assert ScanConfig is direct\n"
        "from omni_tasks.validation import validate_bars, xnys_grid, QualityReport\n"
        "from omni_tasks.risk.snapshot import latest_snapshot\n"
        "from omni_tasks.risk.snapshot_reads import latest_snapshot as read\n"
        "assert latest_snapshot is read\n"
        "import omni_tasks.scans as s\n"
        "try:\n    s.nothing_here\nexcept AttributeError as exc:\n    assert 'nothing_here' in str(exc)\nelse:\n    raise SystemExit('no AttributeError')\n"
    )
    assert set(_heavy_after(code)) >= {"pandas", "pandera"}


def test_health_with_a_fresh_stream_asks_no_calendar() -> None:
    """The order-path check of /health asks the exchange calendar only for a stale stream (a fresh one passes at any hour)."""
    code = (
        "import time\n"
        "from omni_tasks.ops.health import _stale_stream\n"
        "from omni_tasks.settings import load_settings\n"
        "now = time.time()\n"
        "fresh = {b'last_quote_ns': str(int((now - 1) * 1e9)).encode(), b'last_msg_ns': str(int((now - 1) * 1e9)).encode()}\n"
        "class Client:\n"
        "    def hgetall(self, key): return fresh\n"
        "assert _stale_stream(Client(), load_settings({}), now) is None\n"
    )
    assert _heavy_after(code) == []
