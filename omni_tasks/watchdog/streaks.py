"""The watchdog's streaks: how many consecutive evaluations each rule has breached, and whether its action fired.

:func:`advance` is the pure N-consecutive logic; the counts live in Redis (:data:`WATCHDOG_STREAK_KEY`,
:data:`WATCHDOG_FIRED_KEY`), so a watchdog restart does not reset them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import redis as redis_lib

from omni_tasks.core.keys import WATCHDOG_FIRED_KEY, WATCHDOG_STREAK_KEY
from omni_tasks.watchdog.rules import RULES, Evaluation


@dataclass(frozen=True)
class Streaks:
    """Per rule: consecutive breaching evaluations, and whether its action already fired in this streak."""

    counts: dict[str, int]
    fired: frozenset[str]


def advance(before: Streaks, evaluation: Evaluation, n: int) -> tuple[Streaks, list[str]]:
    """The streaks after ``evaluation``, and the rules whose action is due now.

    A breaching rule's count grows by one; a clean rule's count and fired mark are
    cleared; a rule not evaluated keeps both. An action is due when the count has
    reached ``n`` and has not fired in this streak.
    """
    if n < 1:
        raise ValueError(f"n must be at least 1, got {n}")
    counts = dict(before.counts)
    fired = set(before.fired)
    for rule in evaluation.evaluated:
        if rule in evaluation.findings:
            counts[rule] = counts.get(rule, 0) + 1
        else:
            counts.pop(rule, None)
            fired.discard(rule)
    due = [rule for rule in RULES if rule in evaluation.findings and counts.get(rule, 0) >= n and rule not in fired]
    return Streaks(counts, frozenset(fired)), due


def load_streaks(client: redis_lib.Redis) -> Streaks:
    pipe = client.pipeline(transaction=False)
    pipe.hgetall(WATCHDOG_STREAK_KEY)
    pipe.hkeys(WATCHDOG_FIRED_KEY)
    raw_counts, raw_fired = pipe.execute()
    counts = {_text(k): int(v) for k, v in raw_counts.items()}
    return Streaks(counts, frozenset(_text(k) for k in raw_fired))


def save_streaks(client: redis_lib.Redis, before: Streaks, after: Streaks) -> None:
    """Write what changed (one round trip)."""
    pipe = client.pipeline(transaction=True)
    for rule in set(before.counts) - set(after.counts):
        pipe.hdel(WATCHDOG_STREAK_KEY, rule)
    for rule, count in after.counts.items():
        if before.counts.get(rule) != count:
            pipe.hset(WATCHDOG_STREAK_KEY, rule, count)
    for rule in before.fired - after.fired:
        pipe.hdel(WATCHDOG_FIRED_KEY, rule)
    pipe.execute()


def mark_fired(client: redis_lib.Redis, rule: str, at: float) -> None:
    client.hset(WATCHDOG_FIRED_KEY, rule, repr(at))


def _text(value: Any) -> str:
    if value is None:
        return ""
    return value.decode() if isinstance(value, bytes) else str(value)
