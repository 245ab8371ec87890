"""Safety alarms: what a part of the pipeline publishes when a limit breaks, and the listener that acts on them.

An alarm is one JSON object on Redis channel :data:`ALARM_CHANNEL`::

    {"kind": "daily_loss", "severity": "critical", "source": "stream",
     "value": -1250.0, "limit": -1000.0, "ts_ns": 1700000000000000000, "detail": {...}}

:func:`publish_alarm` also pushes it on the capped list :data:`ALARM_LOG_KEY`,
so an alarm published while no listener was subscribed is still seen: the
listener reads the log whenever it (re)subscribes and every few seconds.

The listener runs as a daemon thread in the watchdog worker only (started by
the worker's bootstep), reconnecting with backoff. On a critical alarm it
engages the kill switch as ``watchdog:alarm:<kind>``; a warning is logged and
alerted. It never releases anything: there is no code path from here to a
release. With several watchdog workers, the first to claim an alarm (SET NX)
acts on it.
"""

from __future__ import annotations

import json
import random
import re
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import redis
import structlog

from omni_tasks.core.errors import OmniError
from omni_tasks.core.keys import ALARM_CHANNEL, ALARM_CLAIM_KEY, ALARM_LOG_KEY

_log = structlog.get_logger("omni.alarms")

ALARM_LOG_MAX = 1000
CLAIM_TTL_S = 24 * 3600
SEVERITIES = ("critical", "warning")
_KIND = re.compile(r"^[a-z][a-z0-9_.\-]{0,39}$")
_SOURCE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:\-]{0,59}$")
MAX_ALARM_BYTES = 16_384


class AlarmFormatError(OmniError, ValueError):
    """An alarm that does not follow the format; the message names the field."""


@dataclass(frozen=True)
class Alarm:
    """One alarm. ``value`` and ``limit`` in the unit of the kind (dollars for daily_loss); ``ts_ns`` UTC ns since the epoch."""

    kind: str
    severity: Literal["critical", "warning"]
    source: str
    value: float
    limit: float
    ts_ns: int
    detail: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not isinstance(self.kind, str) or not _KIND.match(self.kind):
            raise AlarmFormatError(f"kind {self.kind!r}: 1-40 of a-z, 0-9, '_', '.', '-', starting with a letter")
        if self.severity not in SEVERITIES:
            raise AlarmFormatError(f"severity {self.severity!r}: must be 'critical' or 'warning'")
        if not isinstance(self.source, str) or not _SOURCE.match(self.source):
            raise AlarmFormatError(f"source {self.source!r}: 1-60 of letters, digits, '_', '.', ':', '-'")
        for name in ("value", "limit"):
            number = getattr(self, name)
            if (
                isinstance(number, bool)
                or not isinstance(number, int | float)
                or number != number
                or number in (float("inf"), float("-inf"))
            ):
                raise AlarmFormatError(f"{name} {number!r}: must be a finite number")
        if isinstance(self.ts_ns, bool) or not isinstance(self.ts_ns, int) or self.ts_ns <= 0:
            raise AlarmFormatError(f"ts_ns {self.ts_ns!r}: must be a positive integer (ns since the epoch)")
        if not isinstance(self.detail, dict):
            raise AlarmFormatError(f"detail must be an object, got {type(self.detail).__name__}")

    @property
    def critical(self) -> bool:
        return self.severity == "critical"

    @property
    def ident(self) -> str:
        return f"{self.kind}:{self.source}:{self.ts_ns}"

    def to_json(self) -> str:
        try:
            return json.dumps(asdict(self), separators=(",", ":"), allow_nan=False)
        except (TypeError, ValueError) as exc:
            raise AlarmFormatError(f"detail is not plain JSON: {exc}") from None

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any]) -> Alarm:
        if not isinstance(data, Mapping):
            raise AlarmFormatError(f"an alarm is a JSON object, got {type(data).__name__}")
        missing = [name for name in ("kind", "severity", "source", "value", "limit", "ts_ns") if name not in data]
        if missing:
            raise AlarmFormatError(f"missing field {missing[0]!r}")
        unknown = sorted(set(data) - {"kind", "severity", "source", "value", "limit", "ts_ns", "detail"})
        if unknown:
            raise AlarmFormatError(f"unknown field {unknown[0]!r}")
        return cls(
            kind=data["kind"],
            severity=data["severity"],
            source=data["source"],
            value=data["value"],
            limit=data["limit"],
            ts_ns=data["ts_ns"],
            detail={} if data.get("detail") is None else data["detail"],
        )

    @classmethod
    def from_json(cls, raw: bytes | str) -> Alarm:
        if isinstance(raw, bytes):
            if len(raw) > MAX_ALARM_BYTES:
                raise AlarmFormatError(f"alarm of {len(raw)} bytes is larger than {MAX_ALARM_BYTES}")
            raw = raw.decode("utf-8", "replace")
        if len(raw) > MAX_ALARM_BYTES:
            raise AlarmFormatError(f"alarm of {len(raw)} characters is larger than {MAX_ALARM_BYTES}")
        try:
            data = json.loads(raw)
        except ValueError as exc:
            raise AlarmFormatError(f"not JSON: {exc}") from None
        return cls.from_mapping(data)


def queue_alarm(pipe: Any, alarm: Alarm | Mapping[str, Any]) -> None:
    """Check ``alarm`` and queue it on a Redis pipeline (sync or asyncio): into the capped log, then published.

    The PUBLISH is the pipeline's last command, so its reply counts the subscribers that got it.
    """
    checked = alarm if isinstance(alarm, Alarm) else Alarm.from_mapping(alarm)
    text = checked.to_json()
    pipe.lpush(ALARM_LOG_KEY, text)
    pipe.ltrim(ALARM_LOG_KEY, 0, ALARM_LOG_MAX - 1)
    pipe.publish(ALARM_CHANNEL, text)


def publish_alarm(client: redis.Redis, alarm: Alarm | Mapping[str, Any]) -> int:
    """Publish ``alarm`` and keep it in the capped log (one round trip). Returns the subscribers that got it."""
    pipe = client.pipeline(transaction=False)
    queue_alarm(pipe, alarm)
    return int(pipe.execute()[-1])


def recent_alarms(client: redis.Redis, limit: int = 50) -> list[Alarm]:
    """The newest alarms of the log (newest first); malformed entries are skipped."""
    out = []
    for raw in client.lrange(ALARM_LOG_KEY, 0, max(0, limit - 1)):
        try:
            out.append(Alarm.from_json(raw))
        except AlarmFormatError:
            continue
    return out


class AlarmListener:
    """A daemon thread subscribed to :data:`ALARM_CHANNEL` that hands critical alarms to ``on_critical``.

    * reconnects with exponential backoff (0.1 s doubling to 1 s, with jitter: it also reconciles the
      trading state, so it is back within about a second of Redis);
    * after every (re)subscription and every ``maintenance_every_s`` it reads the
      alarm log, so an alarm published while it was away is acted on when it is
      younger than ``catchup_s`` and newer than the last trading state change
      (``last_change_ns``: an operator who released after the alarm has seen it);
    * each alarm is claimed once across listeners (Redis SET NX) and once here;
    * repeats of a kind already acted on within ``coalesce_s`` while ``is_halted()``
      are counted, not acted on again (a breach re-published on every quote).
    """

    def __init__(
        self,
        *,
        client_factory: Callable[[], redis.Redis],
        on_critical: Callable[[Alarm], Any],
        on_warning: Callable[[Alarm], Any] | None = None,
        is_halted: Callable[[], bool] = lambda: False,
        last_change_ns: Callable[[], int | None] = lambda: None,
        maintenance: Callable[[], Any] | None = None,
        catchup_s: float = 600.0,
        coalesce_s: float = 60.0,
        maintenance_every_s: float = 5.0,
        owner: str = "listener",
    ) -> None:
        self._client_factory = client_factory
        self._on_critical = on_critical
        self._on_warning = on_warning
        self._is_halted = is_halted
        self._last_change_ns = last_change_ns
        self._maintenance = maintenance
        self._catchup_ns = int(catchup_s * 1e9)
        self._coalesce_s = coalesce_s
        self._maintenance_every_s = maintenance_every_s
        self._owner = owner
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._seen: deque[str] = deque(maxlen=4096)
        self._seen_set: set[str] = set()
        self._acted_at: dict[str, float] = {}
        self.subscribed = threading.Event()
        self.counts: dict[str, int] = {
            "received": 0,
            "acted": 0,
            "coalesced": 0,
            "malformed": 0,
            "claimed_elsewhere": 0,
            "warnings": 0,
            "errors": 0,
            "reconnects": 0,
            "subscriptions": 0,
            "maintenance": 0,  # rounds run (failed ones included)
        }

    # ---- lifecycle ------------------------------------------------------------
    def start(self) -> AlarmListener:
        self._thread = threading.Thread(target=self._run, name="omni-alarm-listener", daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout_s: float = 5.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=timeout_s)

    @property
    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    # ---- the loop ---------------------------------------------------------------
    def _run(self) -> None:
        backoff_s = 0.1
        while not self._stop.is_set():
            pubsub = None
            try:
                client = self._client_factory()
                pubsub = client.pubsub()
                pubsub.subscribe(ALARM_CHANNEL)
                next_maintenance = time.monotonic()
                while not self._stop.is_set():
                    message = pubsub.get_message(timeout=0.25)
                    if message is not None:
                        kind = message.get("type")
                        if kind in ("subscribe", b"subscribe"):
                            # First subscription, or redis-py re-subscribed after a reconnect: catch up.
                            self.subscribed.set()
                            self.counts["subscriptions"] += 1
                            backoff_s = 0.1
                            self._catch_up(client)
                        elif kind in ("message", b"message"):
                            self._handle(client, message.get("data"), live=True)
                    if time.monotonic() >= next_maintenance:
                        next_maintenance = time.monotonic() + self._maintenance_every_s
                        self._run_maintenance(client)
            except Exception as exc:  # noqa: BLE001 - the listener must outlive any failure; it reconnects
                self.subscribed.clear()
                self.counts["reconnects"] += 1
                _log.warning(
                    "alarm listener failed (connection lost?); subscribing again",
                    backoff_s=round(backoff_s, 2),
                    error=f"{type(exc).__name__}: {str(exc)[:200]}",
                )
                self._stop.wait(backoff_s * (0.5 + random.random()))  # noqa: S311 - jitter, not security
                backoff_s = min(backoff_s * 2, 1.0)
            finally:
                if pubsub is not None:
                    try:
                        pubsub.close()
                    except Exception:  # noqa: BLE001, S110 - closing a broken connection
                        pass
        self.subscribed.clear()

    def _run_maintenance(self, client: redis.Redis) -> None:
        self.counts["maintenance"] += 1
        if self._maintenance is not None:
            try:
                self._maintenance()
            except Exception as exc:  # noqa: BLE001 - the database may be down; the next round retries
                _log.warning("alarm listener maintenance failed", error=f"{type(exc).__name__}: {str(exc)[:200]}")
        self._catch_up(client)

    def _catch_up(self, client: redis.Redis) -> None:
        now_ns = time.time_ns()
        last_change = self._last_change_ns()
        pending: list[Alarm] = []
        for raw in client.lrange(ALARM_LOG_KEY, 0, 199):
            try:
                alarm = Alarm.from_json(raw)
            except AlarmFormatError:
                continue
            if alarm.ident in self._seen_set or now_ns - alarm.ts_ns > self._catchup_ns:
                continue
            if last_change is not None and alarm.ts_ns <= last_change:
                self._remember(alarm.ident)
                continue
            pending.append(alarm)
        for alarm in sorted(pending, key=lambda a: a.ts_ns):
            self._act(client, alarm, live=False)

    # ---- one alarm ----------------------------------------------------------------
    def _handle(self, client: redis.Redis, raw: Any, *, live: bool) -> None:
        self.counts["received"] += 1
        try:
            alarm = Alarm.from_json(raw)
        except AlarmFormatError as exc:
            self.counts["malformed"] += 1
            _log.error("malformed alarm ignored", error=str(exc), raw=repr(raw)[:200])
            return
        if alarm.ident in self._seen_set:
            return
        self._act(client, alarm, live=live)

    def _remember(self, ident: str) -> None:
        if len(self._seen) == self._seen.maxlen:
            self._seen_set.discard(self._seen[0])
        self._seen.append(ident)
        self._seen_set.add(ident)

    def _act(self, client: redis.Redis, alarm: Alarm, *, live: bool) -> None:
        self._remember(alarm.ident)
        if not alarm.critical:
            self.counts["warnings"] += 1
            _log.warning("safety alarm (warning)", kind=alarm.kind, source=alarm.source, value=alarm.value, limit=alarm.limit)
            if self._on_warning is not None:
                self._call(self._on_warning, alarm)
            return
        last = self._acted_at.get(alarm.kind)
        if last is not None and time.monotonic() - last < self._coalesce_s and self._is_halted():
            self.counts["coalesced"] += 1
            return
        claim = ALARM_CLAIM_KEY.format(kind=alarm.kind, source=alarm.source, ts_ns=alarm.ts_ns)
        try:
            claimed = bool(client.set(claim, self._owner, nx=True, ex=CLAIM_TTL_S))
        except Exception as exc:  # noqa: BLE001 - no claim possible: act anyway (twice is better than never)
            _log.warning("alarm claim unavailable; acting on it anyway", kind=alarm.kind, error=f"{type(exc).__name__}: {str(exc)[:200]}")
            claimed = True
        if not claimed:
            self.counts["claimed_elsewhere"] += 1
            return
        self._acted_at[alarm.kind] = time.monotonic()
        self.counts["acted"] += 1
        started = time.perf_counter()
        self._call(self._on_critical, alarm)
        # Logged once acted on, not before: the line would delay the engage (0.3 ms measured in the watchdog worker).
        _log.critical(
            "critical safety alarm acted on",
            kind=alarm.kind,
            source=alarm.source,
            value=alarm.value,
            limit=alarm.limit,
            live=live,
            ms=round((time.perf_counter() - started) * 1000, 3),
        )

    def _call(self, handler: Callable[[Alarm], Any], alarm: Alarm) -> None:
        try:
            handler(alarm)
        except Exception:  # noqa: BLE001 - one failing handler must not stop the listener
            self.counts["errors"] += 1
            _log.exception("alarm handler failed", kind=alarm.kind)


def alarm_reason(alarm: Alarm) -> str:
    """The kill switch reason recorded for an alarm (and the text of a warning's alert)."""
    return f"{alarm.severity} alarm {alarm.kind} from {alarm.source}: value {alarm.value:g} past limit {alarm.limit:g}"
