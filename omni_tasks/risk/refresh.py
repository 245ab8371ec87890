"""After a fill, one risk recalculation for every fill of the next few seconds (a trailing debounce in Redis).

A fill at night must not leave `omni status` at the old positions until the
next session's minute beat. The first fill of a window claims it (``SET NX
EX``, the key below is its one home) and schedules one recalculation at the
window's end; fills inside the window find the claim taken and are covered
by that run, which reads the ledger after them. The claim lives exactly as
long as the wait, so a fill after the run starts claims a new window: no
fill is left out, and at most one refresh runs per window.

Plain Python: the caller (a task) enqueues the recalculation when
:func:`claim_refresh` says so.
"""

from __future__ import annotations

import math
from typing import Any

from omni_tasks.core.keys import RISK_REFRESH_PENDING_KEY

#: Set while a fill-triggered recalculation is scheduled; its value says which fill claimed the window.


def claim_refresh(client: Any, window_s: float, *, by: str) -> bool:
    """True when this fill opened a window (the caller schedules one recalculation ``window_s`` from now).

    False when a recalculation is already scheduled (it will see this fill too), or when ``window_s`` is 0 (off).
    """
    if window_s <= 0:
        return False
    # Whole milliseconds, at least 1: the claim never outlives the wait (a fill after the run starts opens a new window).
    return bool(client.set(RISK_REFRESH_PENDING_KEY, by[:200], nx=True, px=max(1, math.floor(window_s * 1000))))
