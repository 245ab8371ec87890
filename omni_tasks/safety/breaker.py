"""Circuit breakers whose state every process shares (in Redis), with every transition reported.

    CLOSED --(threshold consecutive failures, or failure rate over the window)--> OPEN
    OPEN --(cooldown elapsed; next caller)--> HALF_OPEN
    HALF_OPEN --(trial succeeded, `close_after_successes` times)--> CLOSED
    HALF_OPEN --(a trial failed)--> OPEN (cooldown starts again)

In HALF_OPEN at most ``half_open_max_trials`` calls are let through at once.
An operator may force a breaker OPEN or CLOSED; a forced state is kept apart
from the automatic one and wins until it is cleared. Each decision is one
Lua script, so concurrent processes never see half a transition.

Every transition is queued for the audit log in the same Lua script (or the
same MULTI) that makes it: a JSON record on ``omni:breaker:audit:pending``. So
a transition is never lost, whatever process made it and whether or not it
had an audit hook, and even when the database is the thing that is down (the
database breaker's own CLOSED -> OPEN). :mod:`omni_tasks.safety.reporting`
moves the records into ``audit_log`` (the hook right away, the watchdog every
tick), claiming each one first so two processes never write it twice.

When Redis cannot be read, ``allow`` answers by ``fail_open``: a market-data
provider may be tried (the call itself will tell), the order path must not
(``fail_open=False``: a breaker that cannot be read counts as open).
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

import redis
import structlog

from omni_tasks.core import counters
from omni_tasks.core.errors import OmniError
from omni_tasks.core.keys import (
    BREAKER_AUDIT_INFLIGHT_KEY,
    BREAKER_AUDIT_PENDING_KEY,
    BREAKER_CALLS_KEY,
    BREAKER_KEY,
    BREAKER_REGISTRY_KEY,
    BREAKER_TRIALS_KEY,
)

_log = structlog.get_logger("omni.breaker")
#: Records kept while the database is down for long; beyond this the oldest go (and the log says so).
AUDIT_PENDING_MAX = 100_000


class BreakerState(StrEnum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


@dataclass(frozen=True)
class BreakerPolicy:
    """When a breaker opens and how it recovers. Times in seconds."""

    failure_threshold: int = 5
    failure_rate: float = 0.5
    rate_window_s: float = 60.0
    rate_min_calls: int = 20
    cooldown_s: float = 30.0
    half_open_max_trials: int = 1
    close_after_successes: int = 1
    #: a trial whose outcome never comes back (killed worker) frees its slot after this long
    trial_lease_s: float = 60.0


@dataclass(frozen=True)
class Transition:
    breaker: str
    from_state: str
    to_state: str
    reason: str
    at: float
    #: The queued audit record (JSON) of this transition, as stored in BREAKER_AUDIT_PENDING_KEY.
    record: str = ""


@dataclass(frozen=True)
class Decision:
    """``trial`` is the half-open trial's id ('' when this is not a trial); pass it back to ``record``."""

    allowed: bool
    state: str
    trial: str = ""
    forced: str | None = None
    reason: str = ""


# Queues an audit record of a transition on KEYS[n] (the pending list); returns it.
_QUEUE = """
local function queue_audit(key, id, name, from_state, to_state, reason, now, max_len)
  local record = cjson.encode({id = id, breaker = name, from_state = from_state, to_state = to_state, reason = reason, at = now, actor = 'system'})
  redis.call('rpush', key, record)
  if redis.call('llen', key) > max_len then redis.call('ltrim', key, -max_len, -1) end
  return record
end
"""

# KEYS[1] breaker hash, KEYS[2] registry set, KEYS[3] trials zset, KEYS[4] audit pending list.
# ARGV: now, cooldown, max_trials, name, trial id, trial lease (s), event id, pending max
_ALLOW = (
    _QUEUE
    + """
local h = KEYS[1]
local now = tonumber(ARGV[1])
local cooldown = tonumber(ARGV[2])
local max_trials = tonumber(ARGV[3])
redis.call('sadd', KEYS[2], ARGV[4])
local forced = redis.call('hget', h, 'forced')
local state = redis.call('hget', h, 'state') or 'closed'
if forced == 'open' then return {0, state, '', forced, ''} end
if forced == 'closed' then return {1, state, '', forced, ''} end
local transition = ''
if state == 'open' then
  local opened = tonumber(redis.call('hget', h, 'opened_at') or '0')
  if now - opened < cooldown then return {0, state, '', '', ''} end
  state = 'half_open'
  redis.call('hset', h, 'state', 'half_open', 'successes', 0, 'updated_at', ARGV[1])
  redis.call('del', KEYS[3])
  transition = queue_audit(KEYS[4], ARGV[7], ARGV[4], 'open', 'half_open', 'cooldown elapsed', now, tonumber(ARGV[8]))
end
if state == 'half_open' then
  -- A trial whose outcome never came back (worker killed, time limit) frees its slot after its lease.
  redis.call('zremrangebyscore', KEYS[3], '-inf', now - tonumber(ARGV[6]))
  if redis.call('zcard', KEYS[3]) >= max_trials then return {0, state, '', '', transition} end
  redis.call('zadd', KEYS[3], now, ARGV[5])
  redis.call('expire', KEYS[3], math.ceil(tonumber(ARGV[6])) + 60)
  return {1, state, ARGV[5], '', transition}
end
return {1, state, '', '', transition}
"""
)

# KEYS[1] hash, KEYS[2] calls zset, KEYS[3] trials zset, KEYS[4] audit pending list.
# ARGV: now, ok(1/0), trial id or '', threshold, rate, window, min_calls, close_after, member, name, event id, pending max
# Returns the audit record of the transition made ('' when none).
_RECORD = (
    _QUEUE
    + """
local h = KEYS[1]
local now = tonumber(ARGV[1])
local ok = ARGV[2] == '1'
local trial = ARGV[3]
local state = redis.call('hget', h, 'state') or 'closed'
local window = tonumber(ARGV[6])
redis.call('zadd', KEYS[2], now, ARGV[9] .. (ok and ':ok' or ':fail'))
redis.call('zremrangebyscore', KEYS[2], '-inf', now - window)
redis.call('expire', KEYS[2], math.ceil(window) + 60)
if state == 'half_open' then
  -- Only an outcome of this round's trials decides the round; a late one from an earlier round is ignored.
  if trial == '' or redis.call('zrem', KEYS[3], trial) == 0 then return '' end
  if ok then
    local s = redis.call('hincrby', h, 'successes', 1)
    if s >= tonumber(ARGV[8]) then
      redis.call('hset', h, 'state', 'closed', 'failures', 0, 'successes', 0, 'updated_at', ARGV[1])
      redis.call('del', KEYS[2], KEYS[3])
      return queue_audit(KEYS[4], ARGV[11], ARGV[10], 'half_open', 'closed', 'trial succeeded', now, tonumber(ARGV[12]))
    end
    return ''
  end
  redis.call('hset', h, 'state', 'open', 'opened_at', ARGV[1], 'successes', 0, 'updated_at', ARGV[1])
  redis.call('del', KEYS[3])
  return queue_audit(KEYS[4], ARGV[11], ARGV[10], 'half_open', 'open', 'trial failed', now, tonumber(ARGV[12]))
end
if state == 'open' then return '' end
if ok then
  redis.call('hset', h, 'failures', 0)
  return ''
end
local failures = redis.call('hincrby', h, 'failures', 1)
if failures >= tonumber(ARGV[4]) then
  redis.call('hset', h, 'state', 'open', 'opened_at', ARGV[1], 'updated_at', ARGV[1])
  return queue_audit(KEYS[4], ARGV[11], ARGV[10], 'closed', 'open', failures .. ' consecutive failures', now, tonumber(ARGV[12]))
end
local total = redis.call('zcard', KEYS[2])
if total >= tonumber(ARGV[7]) then
  local members = redis.call('zrange', KEYS[2], 0, -1)
  local fails = 0
  for _, m in ipairs(members) do
    if string.sub(m, -5) == ':fail' then fails = fails + 1 end
  end
  if fails / total >= tonumber(ARGV[5]) then
    redis.call('hset', h, 'state', 'open', 'opened_at', ARGV[1], 'updated_at', ARGV[1])
    return queue_audit(KEYS[4], ARGV[11], ARGV[10], 'closed', 'open', string.format('failure rate %d of %d calls', fails, total), now, tonumber(ARGV[12]))
  end
end
return ''
"""
)

TransitionHook = Callable[[Transition], None]


class CircuitBreaker:
    """A named breaker backed by Redis. Cheap to construct; holds no state of its own."""

    def __init__(
        self,
        name: str,
        client: redis.Redis,
        policy: BreakerPolicy | None = None,
        *,
        fail_open: bool = True,
        on_transition: TransitionHook | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.name = name
        self.policy = policy or BreakerPolicy()
        self.fail_open = fail_open
        self._client = client
        self._on_transition = on_transition
        self._clock = clock
        self._key = BREAKER_KEY.format(name=name)
        self._calls_key = BREAKER_CALLS_KEY.format(name=name)
        self._trials_key = BREAKER_TRIALS_KEY.format(name=name)

    # ---- the call path -----------------------------------------------------
    def allow(self) -> Decision:
        """May a call go through now? In HALF_OPEN a True answer reserves one trial slot."""
        try:
            reply = self._client.eval(*self._allow_args())
        except redis.RedisError as exc:
            return self._unreadable(exc)
        return self._decision(reply)

    @staticmethod
    def allow_together(*breakers: CircuitBreaker) -> list[Decision]:
        """:meth:`allow` of several breakers in one pipelined round trip (each breaker's script runs atomically, as alone).

        Breakers on different clients are asked one by one. Redis failing: each answers by its ``fail_open``.
        """
        if not breakers:
            return []
        if any(breaker._client is not breakers[0]._client for breaker in breakers):
            return [breaker.allow() for breaker in breakers]
        pipe = breakers[0]._client.pipeline(transaction=False)
        for breaker in breakers:
            breaker.allow_in(pipe)
        try:
            replies = pipe.execute(raise_on_error=False)
        except redis.RedisError as exc:
            return [breaker.allowed(exc) for breaker in breakers]
        return [breaker.allowed(reply) for breaker, reply in zip(breakers, replies, strict=True)]

    def allow_in(self, pipe: Any) -> None:
        """Queue :meth:`allow` in ``pipe`` (a pipeline of this breaker's client, with other reads); pass its reply to :meth:`allowed`."""
        pipe.eval(*self._allow_args())

    def allowed(self, reply: Any) -> Decision:
        """The decision from the reply of an :meth:`allow_in` (an exception, or the pipeline failing: unreadable, by ``fail_open``)."""
        return self._unreadable(reply) if isinstance(reply, BaseException) else self._decision(reply)

    def _allow_args(self) -> tuple[Any, ...]:
        return (
            _ALLOW, 4, self._key, BREAKER_REGISTRY_KEY, self._trials_key, BREAKER_AUDIT_PENDING_KEY, repr(self._clock()),
            repr(self.policy.cooldown_s), self.policy.half_open_max_trials, self.name, uuid.uuid4().hex[:16],
            repr(self.policy.trial_lease_s), uuid.uuid4().hex, AUDIT_PENDING_MAX,
        )  # fmt: skip

    def _unreadable(self, exc: BaseException) -> Decision:
        verdict = self.fail_open
        _log.error("breaker state unreadable", breaker=self.name, allowed=verdict, error=str(exc))
        return Decision(allowed=verdict, state="unknown", reason=f"breaker state unreadable: {exc}")

    def _decision(self, reply: Any) -> Decision:
        allowed, state, trial, forced, transition = reply
        state_s, forced_s = _text(state), _text(forced) or None
        if _text(transition):
            self._emit_record(_text(transition))
        shown = f"forced {forced_s}" if forced_s else state_s
        return Decision(
            allowed=bool(int(allowed)),
            state=state_s,
            trial=_text(trial),
            forced=forced_s,
            reason="" if int(allowed) else f"breaker {self.name} is {shown}",
        )

    def record(self, ok: bool, *, trial: str = "") -> None:
        """Report the outcome of a call that ``allow`` let through (``trial``: the Decision's trial id)."""
        try:
            record = self._client.eval(*self._record_args(ok, trial))
        except redis.RedisError as exc:
            _log.error("breaker outcome not recorded", breaker=self.name, ok=ok, error=str(exc))
            return
        self.recorded(record, ok=ok)

    def shares_client(self, client: Any) -> bool:
        """Is ``client`` the Redis client this breaker keeps its state with (its pipelines may carry :meth:`record_in`)?"""
        return client is self._client

    def record_in(self, pipe: Any, ok: bool, *, trial: str = "") -> None:
        """Queue :meth:`record` in ``pipe`` (a pipeline of this breaker's client); pass its reply to :meth:`recorded`."""
        pipe.eval(*self._record_args(ok, trial))

    def recorded(self, reply: Any, *, ok: bool) -> None:
        """The reply of a record queued by :meth:`record_in` (an exception: not recorded, logged)."""
        if isinstance(reply, Exception):
            _log.error("breaker outcome not recorded", breaker=self.name, ok=ok, error=str(reply))
        elif _text(reply):
            self._emit_record(_text(reply))

    def _record_args(self, ok: bool, trial: str) -> tuple[Any, ...]:
        if not isinstance(trial, str):
            raise TypeError("trial is the Decision's trial id (a string), not a flag")
        return (
            _RECORD, 4, self._key, self._calls_key, self._trials_key, BREAKER_AUDIT_PENDING_KEY, repr(self._clock()),
            "1" if ok else "0", trial, self.policy.failure_threshold, repr(self.policy.failure_rate),
            repr(self.policy.rate_window_s), self.policy.rate_min_calls, self.policy.close_after_successes,
            uuid.uuid4().hex[:12], self.name, uuid.uuid4().hex, AUDIT_PENDING_MAX,
        )  # fmt: skip

    def release(self, trial: str) -> None:
        """Give back a half-open trial slot that was reserved but not used (no call was made)."""
        if not trial:
            return
        try:
            self._client.zrem(self._trials_key, trial)
        except redis.RedisError as exc:
            _log.error("breaker trial not released", breaker=self.name, error=str(exc))

    def call(self, func: Callable[[], Any], *, failure: Callable[[BaseException], bool] = lambda _e: True) -> Any:
        """Run ``func`` through the breaker. Raises BreakerOpen when refused."""
        decision = self.allow()
        if not decision.allowed:
            raise BreakerOpen(self.name, decision.reason)
        try:
            result = func()
        except BaseException as exc:
            self.record(not failure(exc), trial=decision.trial)
            raise
        self.record(True, trial=decision.trial)
        return result

    # ---- operators -----------------------------------------------------------
    def state(self) -> dict[str, Any]:
        """The breaker as calls see it: ``state`` is the effective state (a forced state wins), ``automatic`` the automatic one."""
        raw = {_text(k): _text(v) for k, v in self._client.hgetall(self._key).items()}
        automatic = raw.get("state", "closed")
        forced = raw.get("forced") or None
        return {
            "name": self.name,
            "state": forced or automatic,
            "automatic": automatic,
            "forced": forced,
            "failures": int(raw.get("failures", 0) or 0),
            "opened_at": float(raw["opened_at"]) if raw.get("opened_at") else None,
            "updated_at": float(raw["updated_at"]) if raw.get("updated_at") else None,
        }

    def forced(self) -> str | None:
        value = self._client.hget(self._key, "forced")
        return _text(value) or None

    def force(self, state: BreakerState | None, *, actor: str, reason: str) -> None:
        """Force OPEN or CLOSED (None clears the force). Kept apart from the automatic state."""
        now = self._clock()
        before = self.forced()
        target = state.value if state else "automatic"
        record = _record(
            self.name,
            "forced:" + before if before else "automatic",
            "forced:" + target if state else target,
            f"{actor}: {reason}",
            now,
            actor,
        )
        pipe = self._client.pipeline()
        pipe.sadd(BREAKER_REGISTRY_KEY, self.name)
        if state is None:
            pipe.hdel(self._key, "forced")
        else:
            pipe.hset(self._key, mapping={"forced": state.value, "forced_by": actor, "forced_reason": reason, "updated_at": repr(now)})
        pipe.rpush(BREAKER_AUDIT_PENDING_KEY, record)
        pipe.execute()
        self._emit_record(record)

    def reset(self, *, actor: str, reason: str) -> None:
        """Back to CLOSED with counters cleared, and any force removed."""
        now = self._clock()
        before = self.state()["automatic"]
        record = _record(self.name, before, "closed", f"reset by {actor}: {reason}", now, actor)
        pipe = self._client.pipeline()
        pipe.delete(self._key, self._calls_key, self._trials_key)
        pipe.sadd(BREAKER_REGISTRY_KEY, self.name)
        pipe.rpush(BREAKER_AUDIT_PENDING_KEY, record)
        pipe.execute()
        self._emit_record(record)

    def _emit_record(self, record: str) -> None:
        data = json.loads(record)
        event = Transition(self.name, data["from_state"], data["to_state"], data["reason"], float(data["at"]), record)
        _log.warning("breaker transition", breaker=self.name, transition=f"{event.from_state}>{event.to_state}", reason=event.reason)
        # Counted in the Redis that holds the breaker, whichever process made the change (the CLI included).
        counters.BREAKER_TRANSITIONS.inc(self._client, self.name, event.to_state)
        if self._on_transition is not None:
            try:
                self._on_transition(event)
            except Exception:  # noqa: BLE001 - reporting must never break the call path
                _log.exception("breaker transition hook failed", breaker=self.name)


class BreakerOpen(OmniError):  # reads as the condition it reports
    def __init__(self, name: str, reason: str) -> None:
        super().__init__(reason or f"breaker {name} is open")
        self.breaker = name


def _record(name: str, from_state: str, to_state: str, reason: str, at: float, actor: str) -> str:
    """A transition's audit record (the same fields the Lua scripts queue)."""
    fields = {
        "id": uuid.uuid4().hex,
        "breaker": name,
        "from_state": from_state,
        "to_state": to_state,
        "reason": reason,
        "at": at,
        "actor": actor,
    }
    return json.dumps(fields, separators=(",", ":"))


# ---- the audit queue: claim records before writing them, so no two processes write one twice ----------

# KEYS[1] pending, KEYS[2] inflight. ARGV: now, record.
_CLAIM_ONE = """
if redis.call('lrem', KEYS[1], 1, ARGV[2]) == 1 then
  redis.call('zadd', KEYS[2], ARGV[1], ARGV[2])
  return 1
end
return 0
"""

# KEYS[1] pending, KEYS[2] inflight. ARGV: now, limit, lease (s). Claims expired first go back to the pending list.
_CLAIM_BATCH = """
local expired = redis.call('zrangebyscore', KEYS[2], '-inf', tonumber(ARGV[1]) - tonumber(ARGV[3]))
for _, record in ipairs(expired) do
  redis.call('zrem', KEYS[2], record)
  redis.call('lpush', KEYS[1], record)
end
local out = {}
for i = 1, tonumber(ARGV[2]) do
  local record = redis.call('lpop', KEYS[1])
  if not record then break end
  redis.call('zadd', KEYS[2], ARGV[1], record)
  out[#out + 1] = record
end
return out
"""

# KEYS[1] pending, KEYS[2] inflight. ARGV: pairs of (claimed record, record to put back). Back at the head, in order.
_UNCLAIM = """
for i = #ARGV - 1, 1, -2 do
  if redis.call('zrem', KEYS[2], ARGV[i]) == 1 then redis.call('lpush', KEYS[1], ARGV[i + 1]) end
end
return 1
"""


def claim_record(client: redis.Redis, record: str, now: float | None = None) -> bool:
    """Take one pending record for writing (False: another process took it, or it is already written)."""
    return bool(
        client.eval(_CLAIM_ONE, 2, BREAKER_AUDIT_PENDING_KEY, BREAKER_AUDIT_INFLIGHT_KEY, repr(time.time() if now is None else now), record)
    )


def claim_records(client: redis.Redis, limit: int, *, lease_s: float = 60.0, now: float | None = None) -> list[str]:
    """Take up to ``limit`` pending records, oldest first; claims older than ``lease_s`` (a writer died) are pending again."""
    now = time.time() if now is None else now
    raw = client.eval(_CLAIM_BATCH, 2, BREAKER_AUDIT_PENDING_KEY, BREAKER_AUDIT_INFLIGHT_KEY, repr(now), limit, repr(lease_s))
    return [_text(r) for r in raw or []]


def settle_records(client: redis.Redis, records: list[str]) -> None:
    """The records are in the audit log: forget the claims."""
    if records:
        client.zrem(BREAKER_AUDIT_INFLIGHT_KEY, *records)


def unclaim_records(client: redis.Redis, pairs: list[tuple[str, str]]) -> None:
    """The write failed: each claimed record goes back to the head of the pending list (as its replacement, e.g. with an actor)."""
    if pairs:
        client.eval(_UNCLAIM, 2, BREAKER_AUDIT_PENDING_KEY, BREAKER_AUDIT_INFLIGHT_KEY, *[part for pair in pairs for part in pair])


def pending_records(client: redis.Redis) -> int:
    """Transitions not yet in the audit log (queued or being written)."""
    return int(client.llen(BREAKER_AUDIT_PENDING_KEY)) + int(client.zcard(BREAKER_AUDIT_INFLIGHT_KEY))


def known_breakers(client: redis.Redis) -> list[str]:
    return sorted(_text(n) for n in client.smembers(BREAKER_REGISTRY_KEY))


def _text(value: Any) -> str:
    if value is None:
        return ""
    return value.decode() if isinstance(value, bytes) else str(value)
