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

This module is the rules themselves: pure functions of one :class:`Observations`
(no I/O), each returning a :class:`Finding` or None, or raising :class:`NotEvaluated`.
The rest of the watchdog's rooms:

* :mod:`omni_tasks.watchdog.gathering`: reads Redis, the database and the exchange
  calendar into one :class:`Observations`;
* :mod:`omni_tasks.watchdog.streaks`: the N-consecutive logic (:func:`~omni_tasks.watchdog.streaks.advance`,
  pure) and its counts in Redis;
* :mod:`omni_tasks.watchdog.actions`: engaging the kill switch, tripping a breaker, alerting;
* :mod:`omni_tasks.watchdog.evaluation`: one evaluation, from gathering to firing.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any, Final, Literal

import structlog

from omni_tasks.core import budgets
from omni_tasks.core.errors import OmniError
from omni_tasks.settings import WATCHDOG_RULES, Settings

_log = structlog.get_logger("omni.watchdog")

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
    ({} when there is none); with OMNI_STREAM_KEYS, ``stream_shards`` holds each
    shard's hash instead (shard -> hash, {} for a shard with none). ``workers_alive`` counts live workers per kind
    (heartbeat younger than ``heartbeat_stale_s``). ``latency_new`` is the
    violations per budget since the previous evaluation.
    """

    now: float
    first_evaluation: float
    market_open: bool | None = None
    risk: dict[str, Any] | None = None
    risk_read: bool = False
    stream_status: dict[str, str] | None = None
    stream_shards: dict[str, dict[str, str]] | None = None
    provider_breakers: dict[str, str] | None = None
    failed_runs_last_min: int | None = None
    workers_alive: dict[str, int] | None = None
    queue_depths: dict[str, int] | None = None
    latency_new: dict[str, int] | None = None
    errors: dict[str, str] = field(default_factory=dict)


class NotEvaluated(OmniError):  # reads as the outcome it reports
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
    """The stream (every shard, when sharded) must have served a quote within ``stream_stale_s`` while the market is open."""
    statuses = obs.stream_shards if obs.stream_shards is not None else None if obs.stream_status is None else {"": obs.stream_status}
    if obs.market_open is None or statuses is None:
        raise NotEvaluated(obs.errors.get("stream", "market hours or stream status unreadable"))
    if not obs.market_open:
        return None
    limit = settings.watchdog.stream_stale_s
    stale: list[tuple[float, str, str]] = []  # (age, shard, why)
    for shard, status in statuses.items():
        found = _stale_one(status, obs.now, limit, settings)
        if found is not None:
            stale.append((found[0], shard, found[1]))
    if not stale:
        return None
    value, _, message = max(stale, key=lambda item: item[0])
    if obs.stream_shards is not None:
        # Which shards are down, and who still serves: one shard's key can fail while the others stream on.
        down = ", ".join(f"shard {shard}: {text}" for _, shard, text in sorted(stale, key=lambda item: item[1]))
        serving = len(statuses) - len(stale)
        message = f"{down} ({serving} of {len(statuses)} shards serving)"
    return Finding("stale_stream", "critical", value, limit, message, Action("engage_kill"))


def _stale_one(status: dict[str, str], now: float, limit: float, settings: Settings) -> tuple[float, str] | None:
    """(age, why) when this stream worker's status is stale in market hours; None when it is fresh (or no stream is deployed)."""
    if not status:
        if "stream" not in settings.watchdog.expected_workers:
            return None  # no stream deployed (its status expires 300 s after its last write); a running one is judged below
        return math.inf, "market open and no stream status in Redis (no stream worker for 300 s)"
    last_ns = _int(status.get("last_quote_ns")) or _int(status.get("last_msg_ns"))
    if last_ns <= 0:
        return math.inf, "market open and the stream has served no quote yet"
    age = now - last_ns / 1e9
    if age > limit:
        return age, f"market open and the last quote is {age:.1f} s old (limit {limit:g} s)"
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
    action = Action("trip_breaker", f"broker:{settings.trading.venue}") if "orders" in over else Action("alert")
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


def _int(value: Any) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        return 0
