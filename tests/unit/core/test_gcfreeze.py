"""Start-up objects leave the collector's full passes (omni_tasks.core.gcfreeze)."""

from __future__ import annotations

import gc
import time

from omni_tasks.core.gcfreeze import freeze_startup_objects


def test_objects_alive_at_the_freeze_are_no_longer_walked_by_a_full_collection() -> None:
    startup = [[i] for i in range(200_000)]  # a start-up's worth of long-lived container objects
    try:
        started = time.perf_counter()
        gc.collect()
        walked_all_s = time.perf_counter() - started
        assert any(o is startup for o in gc.get_objects())
        frozen = freeze_startup_objects()
        assert frozen >= len(startup)
        assert not any(o is startup for o in gc.get_objects()), "a frozen object is still in a collected generation"
        started = time.perf_counter()
        gc.collect()
        assert time.perf_counter() - started < walked_all_s / 2, "a full pass after the freeze still walks the start-up objects"
        later = [1]  # objects made after the freeze are collected as before
        assert any(o is later for o in gc.get_objects())
    finally:
        gc.unfreeze()
