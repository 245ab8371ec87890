"""The watchdog's health rules (DESIGN section 8): what each one watches, when it breaches, what it does.

| rule              | breaches when                                                          | action                     |
|-------------------|------------------------------------------------------------------------|----------------------------|
| ``risk_breach``   | the latest risk snapshot lists limit breaches                          | engage the kill switch     |
| ``stale_stream``  | in market hours, the stream's last quote is older than ``stream_stale_s`` (no stream status at all counts only when ``stream`` is an expected worker) | engage the kill switch |
| ``providers_down``| every configured market-data provider's breaker is open                | alert                      |
| ``error_storm``   | more than ``error_storm_max_per_min`` failed task runs in the last minute | engage the kill switch  |
| ``missing_workers``| an expected worker kind (``expected_workers``, none by default) has no heartbeat within ``heartbeat_stale_s``, after ``startup_grace_s`` | engage the kill switch |
| ``queue_backlog`` | a queue is longer than ``queue_backlog_max``                           | the orders queue: trip the broker breaker; others: alert |
| ``latency_budget``| more than ``latency_violations_max`` new violations of a latency budget since the last evaluation | alert |

A breach must persist for ``breach_evaluations`` (N) consecutive evaluations
before its action fires. The count per rule lives in Redis
(:data:`WATCHDOG_STREAK_KEY`), so a watchdog restart does not reset it; a clean
evaluation resets it; a rule whose inputs could not be read this time (the
database down, say) is "not evaluated" and leaves its count as it was. An action
fires once per streak (when the count reaches N): a breach that persists after
an operator released the kill switch does not re-engage it; the breach has to
clear and come back. If firing fails (the database down while engaging), it is
tried again at the next breaching evaluation.

The watchdog never releases anything: it engages (``actor="watchdog:<rule>"``),
trips a breaker automatically (reporting failures until it opens, so its own
cooldown and half-open trial decide when it closes again), or alerts.

Inputs are gathered by :func:`gather` (Redis, the database, the exchange calendar)
into one :class:`Observations`; the rules themselves are pure functions of it,
and :func:`advance` is the pure N-consecutive logic.
"""

from __future__ import annotations

import json
import math
import time
import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Final, Literal, Protocol

import redis as redis_lib
import structlog
from sqlalchemy import func, select

from omni_tasks.core import budgets
from omni_tasks.core.keys import (
    BREAKER_KEY,
    RISK_LATEST_KEY,
    STREAM_STATUS_KEY,
    WATCHDOG_EVALUATION_LOCK_KEY,
    WATCHDOG_FIRED_KEY,
    WATCHDOG_FIRST_EVALUATION_KEY,
    WATCHDOG_LAST_FINDINGS_KEY,
    WATCHDOG_LATENCY_SEEN_KEY,
    WATCHDOG_STREAK_KEY,
)
from omni_tasks.ops import alerts
from omni_tasks.ops import prometheus as metrics
from omni_tasks.settings import WATCHDOG_RULES, Settings
from omni_tasks.storage.models import TaskRun

_log = structlog.get_logger("omni.watchdog")

#: Written by the stream worker (omni_tasks.core.keys.STREAM_STATUS_KEY); expires 300 s after its last write.
FAILED_STATES: Final = ("FAILURE", "DEAD_LETTER")

ActionKind = Literal["trip_breaker", "engage_kill", "alert"]


@dataclass(frozen=True)
class Action:
    """What a finding asks for once it has persisted: ``trip_breaker`` (``target`` names it), ``engage_kill`` or ``alert``."""

    kind: ActionKind
    target: str | None = None

    def __str__(self) -> str:
        return f"{self.kind} {self.target}" if self.target else self.kind


@dataclass(frozen=True)
class Finding:
    """One rule breaching at one evaluation: the figure, its limit, a sentence, and the action."""

    rule: str
    severity: Literal["warning", "critical"]
    value: float
    limit: float
    message: str
    action: Action

    def to_json(self) -> dict[str, Any]:
        out = asdict(self)
        out["action"] = str(self.action)
        out["value"] = self.value if math.isfinite(self.value) else None
        return out


@dataclass(frozen=True)
class Observations:
    """What one evaluation saw. A field left None could not be read: its rule is not evaluated this time.

    ``now`` is UNIX seconds. ``stream_status`` is the stream worker's status hash
    ({} when there is none). ``workers_alive`` counts live workers per kind
    (heartbeat younger than ``heartbeat_stale_s``). ``latency_new`` is the
    violations per budget since the previous evaluation.
    """

    now: float
    first_evaluation: float
    market_open: bool | None = None
    risk: dict[str, Any] | None = None
    risk_read: bool = False
    stream_status: dict[str, str] | None = None
    provider_breakers: dict[str, str] | None = None
    failed_runs_last_min: int | None = None
    workers_alive: dict[str, int] | None = None
    queue_depths: dict[str, int] | None = None
    latency_new: dict[str, int] | None = None
    errors: dict[str, str] = field(default_factory=dict)


class NotEvaluated(Exception):  # noqa: N818 - reads as the outcome it reports
    """A rule's inputs could not be read: its streak is left as it was."""


# ---- the rules (pure) ----------------------------------------------------------------------------------


def risk_breach(obs: Observations, settings: Settings) -> Finding | None:
    if not obs.risk_read:
        raise NotEvaluated(obs.errors.get("risk", "risk snapshot unreadable"))
    breaches = list((obs.risk or {}).get("breaches") or [])
    if not breaches:
        return None
    words = "; ".join(str(b.get("message") or b.get("rule")) if isinstance(b, dict) else str(b) for b in breaches)
    snapshot = (obs.risk or {}).get("id")
    return Finding("risk_breach", "critical", float(len(breaches)), 0.0, f"risk snapshot {snapshot}: {words}", Action("engage_kill"))


def stale_stream(obs: Observations, settings: Settings) -> Finding | None:
    if obs.market_open is None or obs.stream_status is None:
        raise NotEvaluated(obs.errors.get("stream", "market hours or stream status unreadable"))
    if not obs.market_open:
        return None
    limit = settings.watchdog.stream_stale_s
    if not obs.stream_status:
        if "stream" not in settings.watchdog.expected_workers:
            return None  # no stream deployed (its status expires 300 s after its last write); a running one is judged below
        return Finding(
            "stale_stream",
            "critical",
            math.inf,
            limit,
            "market open and no stream status in Redis (no stream worker for 300 s)",
            Action("engage_kill"),
        )
    last_ns = _int(obs.stream_status.get("last_quote_ns")) or _int(obs.stream_status.get("last_msg_ns"))
    if last_ns <= 0:
        return Finding(
            "stale_stream", "critical", math.inf, limit, "market open and the stream has served no quote yet", Action("engage_kill")
        )
    age = obs.now - last_ns / 1e9
    if age > limit:
        return Finding(
            "stale_stream",
            "critical",
            age,
            limit,
            f"market open and the last quote is {age:.1f} s old (limit {limit:g} s)",
            Action("engage_kill"),
        )
    return None


def providers_down(obs: Observations, settings: Settings) -> Finding | None:
    if obs.provider_breakers is None:
        raise NotEvaluated(obs.errors.get("breakers", "breakers unreadable"))
    states = obs.provider_breakers
    if not states:
        return None
    down = sorted(name for name, state in states.items() if state == "open")
    if len(down) < len(states):
        return None
    return Finding(
        "providers_down", "critical", float(len(down)), float(len(states)),
        f"every market-data provider's breaker is open: {', '.join(down)}", Action("alert"),
    )  # fmt: skip


def error_storm(obs: Observations, settings: Settings) -> Finding | None:
    if obs.failed_runs_last_min is None:
        raise NotEvaluated(obs.errors.get("task_runs", "task-run ledger unreadable"))
    limit = settings.watchdog.error_storm_max_per_min
    if obs.failed_runs_last_min <= limit:
        return None
    return Finding(
        "error_storm", "critical", float(obs.failed_runs_last_min), float(limit),
        f"{obs.failed_runs_last_min} failed task runs in the last minute (limit {limit})", Action("engage_kill"),
    )  # fmt: skip


def missing_workers(obs: Observations, settings: Settings) -> Finding | None:
    if obs.workers_alive is None:
        raise NotEvaluated(obs.errors.get("workers", "heartbeats unreadable"))
    expected = list(dict.fromkeys(settings.watchdog.expected_workers))
    if not expected or obs.now - obs.first_evaluation < settings.watchdog.startup_grace_s:
        return None
    missing = [kind for kind in expected if obs.workers_alive.get(kind, 0) == 0]
    if not missing:
        return None
    return Finding(
        "missing_workers", "critical", float(len(missing)), 0.0,
        f"no heartbeat within {settings.watchdog.heartbeat_stale_s:g} s from expected worker kind(s): {', '.join(missing)}",
        Action("engage_kill"),
    )  # fmt: skip


def queue_backlog(obs: Observations, settings: Settings) -> Finding | None:
    if obs.queue_depths is None:
        raise NotEvaluated(obs.errors.get("queues", "queue depths unreadable"))
    limit = settings.watchdog.queue_backlog_max
    over = {name: depth for name, depth in obs.queue_depths.items() if depth > limit}
    if not over:
        return None
    words = ", ".join(f"{name} {depth}" for name, depth in sorted(over.items()))
    # Orders waiting that long would leave at stale prices: open the broker breaker so they are denied, on the record.
    action = Action("trip_breaker", f"broker:{settings.trading.broker}") if "orders" in over else Action("alert")
    return Finding("queue_backlog", "warning", float(max(over.values())), float(limit), f"queue backlog over {limit}: {words}", action)


def latency_budget(obs: Observations, settings: Settings) -> Finding | None:
    if obs.latency_new is None:
        raise NotEvaluated(obs.errors.get("latency", "latency counters unreadable"))
    limit = settings.watchdog.latency_violations_max
    over = {name: count for name, count in obs.latency_new.items() if count > limit}
    if not over:
        return None
    words = ", ".join(f"{name} {count} (budget {budgets.BUDGETS_MS.get(name, 0):g} ms)" for name, count in sorted(over.items()))
    return Finding(
        "latency_budget", "warning", float(max(over.values())), float(limit),
        f"latency budget violations since the last evaluation over {limit}: {words}", Action("alert"),
    )  # fmt: skip


RuleFunc = Callable[[Observations, Settings], "Finding | None"]
RULES: Final[dict[str, RuleFunc]] = {
    "risk_breach": risk_breach,
    "stale_stream": stale_stream,
    "providers_down": providers_down,
    "error_storm": error_storm,
    "missing_workers": missing_workers,
    "queue_backlog": queue_backlog,
    "latency_budget": latency_budget,
}
assert tuple(RULES) == WATCHDOG_RULES, "settings.WATCHDOG_RULES must name every rule, in order"


@dataclass(frozen=True)
class Evaluation:
    """One evaluation's verdicts: the rules evaluated, their findings, and why the others were not evaluated."""

    evaluated: frozenset[str]
    findings: dict[str, Finding]
    skipped: dict[str, str]


def evaluate(obs: Observations, settings: Settings) -> Evaluation:
    """Every enabled rule over ``obs``. A rule that raises for any other reason counts as not evaluated (and is logged)."""
    evaluated: set[str] = set()
    findings: dict[str, Finding] = {}
    skipped: dict[str, str] = {}
    disabled = set(settings.watchdog.disabled_rules)
    for name, rule in RULES.items():
        if name in disabled:
            skipped[name] = "disabled"
            continue
        try:
            finding = rule(obs, settings)
        except NotEvaluated as exc:
            skipped[name] = str(exc)
            continue
        except Exception as exc:  # noqa: BLE001 - one broken rule must not stop the others
            _log.exception("watchdog rule failed", rule=name)
            skipped[name] = f"rule failed: {type(exc).__name__}: {exc}"
            continue
        evaluated.add(name)
        if finding is not None:
            findings[name] = finding
    return Evaluation(frozenset(evaluated), findings, skipped)


# ---- N consecutive evaluations (pure) ----------------------------------------------------------------


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


# ---- Redis state -----------------------------------------------------------------------------------------


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


# ---- gathering the inputs -----------------------------------------------------------------------------


class RuntimeLike(Protocol):
    settings: Settings

    @property
    def redis(self) -> redis_lib.Redis: ...

    @property
    def sessions(self) -> Any: ...


def gather(
    runtime: RuntimeLike,
    *,
    queue_depths: Mapping[str, int] | None,
    now: float | None = None,
    market_open: Callable[[datetime], bool] | None = None,
    database_ok: bool = True,
) -> Observations:
    """Read every rule's inputs; a failure to read one leaves its field None (and says why in ``errors``).

    ``queue_depths`` come from the monitor's snapshot (None: it could not be taken).
    ``database_ok`` is the database breaker's verdict for this evaluation: False skips the database reads.
    """
    settings = runtime.settings
    client = runtime.redis
    now = time.time() if now is None else now
    errors: dict[str, str] = {}
    # When this watchdog (any of them, across restarts) first evaluated: the start-up grace for missing workers.
    client.set(WATCHDOG_FIRST_EVALUATION_KEY, repr(now), nx=True)
    first = float(_text(client.get(WATCHDOG_FIRST_EVALUATION_KEY)) or now)

    is_open: bool | None = None
    try:
        if market_open is None:
            from omni_tasks.marketdata.calendar import is_open as calendar_is_open

            market_open = calendar_is_open
        is_open = bool(market_open(datetime.fromtimestamp(now, tz=UTC)))
    except Exception as exc:  # noqa: BLE001 - the calendar may not cover the date
        errors["stream"] = f"market hours unknown: {type(exc).__name__}: {exc}"

    risk: dict[str, Any] | None = None
    risk_read = False
    try:
        from omni_tasks.risk.snapshot import latest_snapshot

        risk = latest_snapshot(runtime) if database_ok else _risk_from_redis(client)
        risk_read = risk is not None or database_ok
        if not risk_read:
            errors["risk"] = "database breaker open and no snapshot in Redis"
    except Exception as exc:  # noqa: BLE001 - reported; the rule is not evaluated
        errors["risk"] = f"risk snapshot unreadable: {type(exc).__name__}: {str(exc)[:200]}"

    stream_status: dict[str, str] | None
    try:
        stream_status = {_text(k): _text(v) for k, v in client.hgetall(STREAM_STATUS_KEY).items()}
    except redis_lib.RedisError as exc:
        stream_status = None
        errors["stream"] = f"stream status unreadable: {exc}"

    provider_breakers: dict[str, str] | None
    try:
        provider_breakers = _provider_states(client, settings.providers.order)
    except redis_lib.RedisError as exc:
        provider_breakers = None
        errors["breakers"] = f"breakers unreadable: {exc}"

    failed: int | None = None
    if database_ok:
        try:
            since = datetime.fromtimestamp(now, tz=UTC) - timedelta(seconds=60)
            with runtime.sessions() as session:
                failed = int(
                    session.execute(
                        select(func.count()).select_from(TaskRun).where(TaskRun.state.in_(FAILED_STATES), TaskRun.finished_at >= since)
                    ).scalar_one()
                )
        except Exception as exc:  # noqa: BLE001 - reported; the rule is not evaluated
            errors["task_runs"] = f"task-run ledger unreadable: {type(exc).__name__}: {str(exc)[:200]}"
    else:
        errors["task_runs"] = "database breaker open"

    workers: dict[str, int] | None
    try:
        from omni_tasks.pipeline import heartbeats

        workers = {}
        for info in heartbeats.alive(client, settings.watchdog.heartbeat_stale_s, now=now):
            workers[info.kind] = workers.get(info.kind, 0) + 1
    except redis_lib.RedisError as exc:
        workers = None
        errors["workers"] = f"heartbeats unreadable: {exc}"

    latency: dict[str, int] | None
    try:
        latency = _latency_since_last(client)
    except redis_lib.RedisError as exc:
        latency = None
        errors["latency"] = f"latency counters unreadable: {exc}"

    return Observations(
        now=now,
        first_evaluation=first,
        market_open=is_open,
        risk=risk,
        risk_read=risk_read,
        stream_status=stream_status,
        provider_breakers=provider_breakers,
        failed_runs_last_min=failed,
        workers_alive=workers,
        queue_depths=None if queue_depths is None else dict(queue_depths),
        latency_new=latency,
        errors=errors,
    )


def _risk_from_redis(client: redis_lib.Redis) -> dict[str, Any] | None:

    raw = client.get(RISK_LATEST_KEY)
    return json.loads(raw) if raw else None


def _provider_states(client: redis_lib.Redis, providers: Iterable[str]) -> dict[str, str]:
    """Each configured provider's breaker as it acts now: a forced state wins over the automatic one."""
    names = [f"provider:{p}" for p in providers]
    pipe = client.pipeline(transaction=False)
    for name in names:
        pipe.hmget(BREAKER_KEY.format(name=name), "state", "forced")
    out: dict[str, str] = {}
    for name, (state, forced) in zip(names, pipe.execute(), strict=True):
        out[name] = _text(forced) or _text(state) or "closed"
    return out


def _latency_since_last(client: redis_lib.Redis) -> dict[str, int]:
    """Violations per budget since the previous evaluation (the counters only grow; the last values are kept in Redis)."""
    current = budgets.read_violations(client)
    previous = {_text(k): int(v) for k, v in client.hgetall(WATCHDOG_LATENCY_SEEN_KEY).items()}
    client.hset(WATCHDOG_LATENCY_SEEN_KEY, mapping={k: v for k, v in current.items()})
    # A first evaluation (nothing seen yet) counts nothing: old violations are history, not news.
    return {name: max(0, count - previous[name]) for name, count in current.items() if name in previous}


# ---- acting ------------------------------------------------------------------------------------------


class Actuator(Protocol):
    """How actions reach the world; raising means "not done" (tried again at the next breaching evaluation)."""

    def trip_breaker(self, name: str, finding: Finding) -> None: ...

    def engage_kill(self, finding: Finding) -> None: ...

    def alert(self, finding: Finding) -> None: ...


class LiveActuator:
    """The real actions: the kill switch's :func:`~omni_tasks.safety.engage.engage`, the shared breakers, the webhook."""

    def __init__(
        self, runtime: RuntimeLike, *, purge: Callable[[], int] | None, venue_factory: Callable[[Any], Any] | None = None
    ) -> None:
        self._runtime = runtime
        self._purge = purge
        self._venue_factory = venue_factory

    def engage_kill(self, finding: Finding) -> None:
        from omni_tasks.safety.engage import engage

        broker = None
        try:
            if self._venue_factory is not None:
                broker = self._venue_factory(self._runtime)
            else:
                from omni_tasks.trading.wiring import make_venue

                broker = make_venue(self._runtime)  # type: ignore[arg-type]  # the process runtime
        except Exception:  # noqa: BLE001 - engage still halts; its result says the orders were not cancelled
            _log.error("no broker for the kill switch (open orders cannot be cancelled)", exc_info=True)
        result = engage(
            self._runtime,  # type: ignore[arg-type]  # RuntimeLike of engage is the same shape
            actor=f"watchdog:{finding.rule}",
            reason=finding.message,
            broker=broker,
            purge=self._purge,
        )
        if not result.durable:
            raise RuntimeError(f"kill switch not durable: {result.errors}")

    def trip_breaker(self, name: str, finding: Finding) -> None:
        from omni_tasks.safety.breaker import CircuitBreaker
        from omni_tasks.safety.reporting import audit_transitions

        runtime = self._runtime
        breaker = CircuitBreaker(name, runtime.redis, on_transition=audit_transitions(runtime.sessions, settings=runtime.settings, actor=f"watchdog:{finding.rule}", client=runtime.redis))
        # Automatic, not forced: report failures through the breaker's own call path until it opens
        # (a half-open breaker needs its trial slot to count one); its cooldown and trial close it again.
        for _ in range(breaker.policy.failure_threshold + 1):
            if breaker.state()["automatic"] == "open":
                return
            decision = breaker.allow()
            breaker.record(False, trial=decision.trial)
        if breaker.state()["automatic"] != "open":
            raise RuntimeError(f"breaker {name} did not open")

    def alert(self, finding: Finding) -> None:
        alerts.emit(
            {
                "kind": f"watchdog.{finding.rule}",
                "severity": finding.severity,
                "message": finding.message,
                "value": finding.value if math.isfinite(finding.value) else "none",
                "limit": finding.limit,
            },
            settings=self._runtime.settings,
        )


def run_rules(
    runtime: RuntimeLike,
    *,
    actuator: Actuator,
    queue_depths: Mapping[str, int] | None,
    now: float | None = None,
    market_open: Callable[[datetime], bool] | None = None,
    database_ok: bool = True,
) -> dict[str, Any]:
    """One evaluation: gather, evaluate, advance the streaks (in Redis), fire what is due. Returns a summary.

    One evaluation at a time across every watchdog worker (a Redis lock); a
    second one meanwhile returns ``{"skipped": ...}`` and counts nothing.
    """
    client = runtime.redis
    settings = runtime.settings
    token = uuid.uuid4().hex
    if not client.set(WATCHDOG_EVALUATION_LOCK_KEY, token, nx=True, px=30_000):
        return {"skipped": "another evaluation is running"}
    try:
        obs = gather(runtime, queue_depths=queue_depths, now=now, market_open=market_open, database_ok=database_ok)
        evaluation = evaluate(obs, settings)
        before = load_streaks(client)
        after, due = advance(before, evaluation, settings.watchdog.breach_evaluations)
        save_streaks(client, before, after)
        fired: dict[str, str] = {}
        for rule, finding in evaluation.findings.items():
            metrics.WATCHDOG_FINDINGS.labels(rule).inc()
            _log.warning("watchdog finding", rule=rule, streak=after.counts.get(rule), needed=settings.watchdog.breach_evaluations,
                         value=finding.value, limit=finding.limit, message=finding.message, action=str(finding.action))  # fmt: skip
        for rule in due:
            finding = evaluation.findings[rule]
            fired[rule] = _fire(actuator, finding)
            if fired[rule] == "done":
                mark_fired(client, rule, obs.now)
                metrics.WATCHDOG_ACTIONS.labels(rule, finding.action.kind).inc()
        summary = {
            "ts": obs.now,
            "evaluated": sorted(evaluation.evaluated),
            "findings": {rule: {**f.to_json(), "streak": after.counts.get(rule, 0)} for rule, f in evaluation.findings.items()},
            "not_evaluated": evaluation.skipped,
            "fired": fired,
            "needed": settings.watchdog.breach_evaluations,
        }
        client.set(WATCHDOG_LAST_FINDINGS_KEY, json.dumps(summary, separators=(",", ":"), default=str), ex=3600)
        return summary
    finally:
        client.eval(
            "if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) else return 0 end",
            1,
            WATCHDOG_EVALUATION_LOCK_KEY,
            token,
        )


def _fire(actuator: Actuator, finding: Finding) -> str:
    action = finding.action
    _log.critical("watchdog action", rule=finding.rule, action=str(action), message=finding.message)
    try:
        if action.kind == "engage_kill":
            actuator.engage_kill(finding)
        elif action.kind == "trip_breaker":
            actuator.trip_breaker(action.target or "", finding)
        else:
            actuator.alert(finding)
    except Exception as exc:  # noqa: BLE001 - tried again at the next breaching evaluation
        _log.exception("watchdog action failed; retried at the next breaching evaluation", rule=finding.rule, action=str(action))
        return f"failed: {type(exc).__name__}: {str(exc)[:200]}"
    return "done"


def _int(value: Any) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        return 0


def _text(value: Any) -> str:
    if value is None:
        return ""
    return value.decode() if isinstance(value, bytes) else str(value)
