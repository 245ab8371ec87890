"""A sequence of steps that must each run: one runner that records a failing step under its name and goes on.

The engage (:mod:`omni_tasks.safety.engage`) is such a sequence: no step may stop the ones after it,
every failure is reported by name, and each step's end is timed from the sequence's start.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def ms_since(t0: float) -> float:
    """Milliseconds since ``t0`` (a ``time.perf_counter()`` reading), to the microsecond."""
    return round((time.perf_counter() - t0) * 1000, 3)


def attempt(action: Callable[[], T], *, limit: int = 300) -> tuple[T | None, str | None]:
    """``(action(), None)``, or ``(None, "<Error>: <message>")`` when it raised (the message cut at ``limit`` characters)."""
    try:
        return action(), None
    except Exception as exc:  # noqa: BLE001 - a step's failure is recorded, never raised: the sequence goes on
        return None, f"{type(exc).__name__}: {str(exc)[:limit]}"


class Steps:
    """Runs the steps of one sequence into its ``errors`` (by step name) and ``timings_ms`` (ms from ``t0``)."""

    def __init__(self, errors: dict[str, str], timings_ms: dict[str, float], t0: float) -> None:
        self.errors = errors
        self.timings_ms = timings_ms
        self.t0 = t0

    def run(self, name: str, action: Callable[[], T], *, part: str | None = None, first: bool = False, limit: int = 300) -> T | None:
        """``action()``; None when it raised, its error then recorded under ``name``.

        ``part``: the error is one part of the step (``"<part>: <error>"``, after the step's earlier ones);
        ``first``: an error already recorded under ``name`` is kept.
        """
        value, error = attempt(action, limit=limit)
        if error is not None:
            if part is not None:
                self.errors[name] = (self.errors.get(name, "") + f" {part}: {error}").strip()
            elif first:
                self.errors.setdefault(name, error)
            else:
                self.errors[name] = error
        return value

    def timed(self, name: str) -> None:
        """The step ``name`` ended now (ms since ``t0``)."""
        self.timings_ms[name] = ms_since(self.t0)
