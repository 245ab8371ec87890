"""One watchdog evaluation: gather the facts, evaluate the rules, advance the streaks, fire what is due.

One evaluation at a time across every watchdog worker (a Redis lock); its summary is kept in
Redis (:data:`WATCHDOG_LAST_FINDINGS_KEY`) for ``omni status`` and ``/health``.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable, Mapping
from datetime import datetime
from typing import Any

import structlog

from omni_tasks.core.keys import WATCHDOG_EVALUATION_LOCK_KEY, WATCHDOG_LAST_FINDINGS_KEY
from omni_tasks.ops import prometheus as metrics
from omni_tasks.watchdog.actions import Actuator, fire
from omni_tasks.watchdog.gathering import RuntimeLike, gather
from omni_tasks.watchdog.rules import evaluate
from omni_tasks.watchdog.streaks import advance, load_streaks, mark_fired, save_streaks

_log = structlog.get_logger("omni.watchdog")


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
            fired[rule] = fire(actuator, finding)
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
