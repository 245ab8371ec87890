"""The trading state (ACTIVE, REDUCING, HALTED) and the one rule that says which of its two copies applies.

Pure: no I/O. The copies are read and written by :mod:`omni_tasks.safety.state_store`;
every reader that can let an order through applies :func:`resolve` through
:func:`omni_tasks.safety.killswitch.read_state` (the module docstring there tells the whole story).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Literal


class TradingState(StrEnum):
    """What orders may do. HALTED == the kill switch is engaged."""

    ACTIVE = "ACTIVE"
    REDUCING = "REDUCING"
    HALTED = "HALTED"


#: A state change that makes trading *less* restricted; only an operator may make one.
LOOSER = {
    (TradingState.HALTED, TradingState.ACTIVE),
    (TradingState.HALTED, TradingState.REDUCING),
    (TradingState.REDUCING, TradingState.ACTIVE),
}


@dataclass(frozen=True)
class StoredState:
    """One copy of the state (Redis value or database row) with its version."""

    state: TradingState
    version: int


def format_value(state: TradingState, version: int) -> str:
    """The Redis value for ``state`` at ``version``: ``"HALTED 7"``."""
    if version < 0:
        raise ValueError(f"version must not be negative, got {version}")
    return f"{TradingState(state).value} {int(version)}"


def parse_value(raw: bytes | str | None) -> StoredState | None:
    """Parse a Redis value; None when it is missing or malformed (callers treat both as HALTED)."""
    if raw is None:
        return None
    text = raw.decode("utf-8", "replace") if isinstance(raw, bytes) else str(raw)
    parts = text.split(" ")
    if len(parts) != 2 or not parts[1].isdigit():
        return None
    try:
        state = TradingState(parts[0])
    except ValueError:
        return None
    return StoredState(state, int(parts[1]))


#: How strict each state is; while the two copies disagree the stricter one applies.
STRICTNESS = {TradingState.ACTIVE: 0, TradingState.REDUCING: 1, TradingState.HALTED: 2}

CopyStatus = Literal["ok", "missing", "malformed", "unreadable"]


def stricter(a: TradingState, b: TradingState) -> TradingState:
    """The stricter of two states (HALTED > REDUCING > ACTIVE)."""
    return a if STRICTNESS[a] >= STRICTNESS[b] else b


@dataclass(frozen=True)
class Copy:
    """One store's copy as read: ``ok`` with its value; Redis ``missing`` (no key) or ``malformed``; ``unreadable``.

    ``raw`` is the Redis value exactly as read (None for a missing key or for the database), which a
    repair compares before it writes; ``detail`` is the malformed text or the error.
    """

    status: CopyStatus
    value: StoredState | None = None
    raw: str | None = None
    detail: str | None = None

    def text(self) -> str:
        if self.value is not None:
            return f"{self.value.state.value} {self.value.version}"
        return {"missing": "no key", "malformed": f"malformed ({self.detail})", "unreadable": f"unreadable ({self.detail})"}.get(
            self.status, self.status
        )


@dataclass(frozen=True)
class Reading:
    """What applies now, by :func:`resolve`, and why.

    ``source``: which copy's state applies: ``both`` (they agree), ``redis``, ``database``, or
    ``unreadable`` (a copy could not be read: HALTED). ``newer``: the copy with the higher version
    when they disagree. ``repair``: the copy that is behind and is to be rewritten from the other
    (``redis`` or ``database``). ``immediate``: the repair does not loosen what applies, so any
    reader may make it at once; otherwise only the watchdog makes it, after seeing it twice.
    """

    state: TradingState
    version: int | None
    source: Literal["both", "redis", "database", "unreadable"]
    agree: bool | None
    newer: Literal["redis", "database"] | None
    repair: Literal["redis", "database"] | None
    immediate: bool
    why: str
    redis: Copy
    database: Copy


def resolve(redis_copy: Copy, database: Copy) -> Reading:
    """THE rule for the trading state: both copies in, what applies out (pure; every reader uses it).

    * the database unreadable, or Redis unreachable or malformed: HALTED (fail closed);
    * Redis without a key: the database's value (Redis is repaired from it);
    * both the same: that value;
    * otherwise the stricter of the two states applies until they are reconciled; the higher
      version says which copy is behind. A Redis copy behind the database is rewritten from it; a
      database behind Redis adopts Redis's state when it is at least as strict, and otherwise keeps
      its own, stricter state under a version above Redis's (Redis never loosens the database).
    """

    def reading(state: TradingState, version: int | None, source: Any, why: str, **kw: Any) -> Reading:
        fields = {"agree": False, "newer": None, "repair": None, "immediate": False, **kw}
        return Reading(state, version, source, why=why, redis=redis_copy, database=database, **fields)

    halted = TradingState.HALTED
    if database.status != "ok" or database.value is None:
        version = redis_copy.value.version if redis_copy.value is not None else None
        return reading(halted, version, "unreadable", f"the database cannot be read ({database.detail}): counted as HALTED", agree=None)
    db = database.value
    if redis_copy.status == "unreadable":
        return reading(halted, db.version, "unreadable", f"Redis cannot be read ({redis_copy.detail}): counted as HALTED", agree=None)
    if redis_copy.status == "malformed":
        return reading(
            halted,
            db.version,
            "unreadable",
            f"Redis holds a malformed value ({redis_copy.detail}): counted as HALTED until it is rewritten from the database",
            newer="database",
            repair="redis",
            immediate=db.state is halted,
        )
    if redis_copy.status == "missing" or redis_copy.value is None:
        return reading(
            db.state,
            db.version,
            "database",
            "Redis has no copy (restarted empty or flushed): the database's value applies and is put back in Redis",
            newer="database",
            repair="redis",
            immediate=True,
        )
    cached = redis_copy.value
    if cached == db:
        return reading(db.state, db.version, "both", "both copies agree", agree=True)
    applied = stricter(cached.state, db.state)
    version = max(cached.version, db.version)
    if db.version > cached.version or (db.version == cached.version and STRICTNESS[db.state] > STRICTNESS[cached.state]):
        tighter_or_same = STRICTNESS[db.state] >= STRICTNESS[cached.state]
        source = "database" if applied is db.state else "redis"
        why = (
            f"the copies disagree: Redis holds {cached.state.value} {cached.version}, behind the database's {db.state.value} {db.version} "
            f"(restarted from older data, restored or overwritten); {applied.value}, the stricter, applies until Redis is rewritten "
            + ("from the database" if tighter_or_same else "from the database by the watchdog")
        )
        return reading(applied, version, source, why, newer="database", repair="redis", immediate=tighter_or_same)
    source = "redis" if applied is cached.state else "database"
    if STRICTNESS[cached.state] >= STRICTNESS[db.state]:
        why = (
            f"the copies disagree: Redis holds {cached.state.value} {cached.version}, ahead of the database's {db.state.value} {db.version} "
            f"(a change the database has not recorded, e.g. an engage while it was down); {applied.value} applies "
            "until the watchdog writes it to the database"
        )
    else:
        why = (
            f"the copies disagree: Redis holds {cached.state.value} {cached.version}, ahead of the database's {db.state.value} {db.version} "
            f"but looser; Redis never loosens the database: {applied.value} applies and the watchdog records it above version {cached.version}"
        )
    return reading(applied, version, source, why, newer="redis", repair="database", immediate=True)
