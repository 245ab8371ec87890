"""The safety package stands below trading: no safety module loads ``omni_tasks.trading`` (the venue comes in as a factory)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

SAFETY = Path(__file__).resolve().parents[3] / "omni_tasks" / "safety"
MODULES = sorted(p.stem for p in SAFETY.glob("*.py") if p.stem != "__init__")


@pytest.mark.parametrize("name", MODULES)
def test_a_safety_module_loads_no_trading_module(name: str) -> None:
    code = f"import sys, omni_tasks.safety.{name}\nprint(','.join(sorted(m for m in sys.modules if m.startswith('omni_tasks.trading'))))\n"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "", f"omni_tasks.safety.{name} pulls in {out}"


def test_every_safety_module_is_checked() -> None:
    assert {"engage", "killswitch", "transitions", "watchdog_listener", "drill", "alarms"} <= set(MODULES)
