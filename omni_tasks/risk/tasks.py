"""Risk task: recalculate the portfolio's risk, keep the snapshot, and wake the watchdog at once on a breach."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any
from zoneinfo import ZoneInfo

import structlog

from omni_tasks.contracts.portfolio import refresh_book
from omni_tasks.contracts.venue import VenueError
from omni_tasks.core.errors import PermanentError, RetryableError
from omni_tasks.core.runtime import get_runtime
from omni_tasks.pipeline import canvas
from omni_tasks.pipeline.context import running_task
from omni_tasks.pipeline.queues import Queue
from omni_tasks.pipeline.taskdef import omni_task
from omni_tasks.storage.outage import outages_retried
from omni_tasks.trading.wiring import make_venue

_log = structlog.get_logger("omni.risk")

#: ``when`` values: ``market_hours`` runs only while the exchange is in session (the minute beat entry),
#: ``after_close`` only on a session day (the close entry), ``now`` always (operators, `omni risk --recalc`).
WHEN = ("now", "market_hours", "after_close")
#: Woken at once on a breach (:mod:`omni_tasks.watchdog.tasks`), sent by its stable name.
WATCHDOG_TICK = "omni.watchdog.tick"


@omni_task(
    name="omni.risk.recalculate",
    queue=Queue.RISK,
    soft_time_limit_s=45,
    time_limit_s=60,
    max_retries=2,
    retry_backoff_max_s=20,
    ignore_result=False,  # kept (within the result expiry) so `omni risk --recalc` can wait for it
)
def recalculate(when: str = "now", requested_by: str = "operator", store_retries: int = 0) -> dict[str, Any]:
    """Read the book from the venue, mark it, compute the figures and breaches, store and publish the snapshot."""
    # The calendar, the bar store and the figures carry pandas: imported where a recalculation runs, so a
    # process that only registers or sends this task (every worker, beat, `omni up`) starts without them.
    from omni_tasks.marketdata import calendar
    from omni_tasks.risk import snapshot
    from omni_tasks.storage.bars import BarStore

    if when not in WHEN:
        raise PermanentError(f"when={when!r}: choose from {', '.join(WHEN)}")
    runtime = get_runtime()
    settings = runtime.settings
    now = datetime.now(tz=UTC)
    if when == "market_hours" and not calendar.is_open(now):
        return {"skipped": "the exchange is not in session"}
    if when == "after_close":
        today = now.astimezone(ZoneInfo(settings.core.exchange_tz)).date()
        if not calendar.sessions(today, today):
            return {"skipped": f"{today.isoformat()} is not a session day"}
    venue = make_venue(runtime)
    try:
        with outages_retried(running_task(), "recalculating risk", settings.database):
            if not venue.keeps_ledger:
                # A venue without our ledger does not publish its book itself; the stream's day-loss guard reads it.
                refresh_book(venue, runtime.redis)
            summary = snapshot.recalculate(
                venue,
                redis=runtime.redis,
                store=BarStore(runtime.engine),
                sessions=runtime.sessions,
                risk=settings.risk,
                quote_max_age_s=settings.stream.stale_after_s,
                now=now,
            )
    except VenueError as exc:
        if exc.retryable:
            raise RetryableError(f"broker {venue.name}: {exc}") from exc
        raise
    if summary["breaches"]:
        # The watchdog acts on breaches; it should not wait for its next beat tick to see them.
        canvas.send(WATCHDOG_TICK, expires=60)
        _log.warning(
            "risk limits breached: watchdog evaluation enqueued", rules=[b["rule"] for b in summary["breaches"]], snapshot_id=summary["id"]
        )
    return {
        "snapshot_id": summary["id"],
        "requested_by": requested_by,
        "risk_score": summary["risk_score"],
        "breaches": [b["rule"] for b in summary["breaches"]],
        "mark_sources": summary["mark_sources"],
    }


def refresh_after_fill(client_order_id: str) -> bool:
    """A fill happened: schedule one recalculation at the end of the debounce window, unless one is already scheduled.

    Runs at any hour (``when="now"``), so `omni status` shows the position a night fill opened. True when this call scheduled it.
    """
    from omni_tasks.pipeline import heartbeats
    from omni_tasks.risk.refresh import claim_refresh

    runtime = get_runtime()
    window_s = runtime.settings.risk.fill_refresh_s
    if window_s <= 0:
        return False
    # The claim first: inside the window (most fills of a busy minute) this one SET is all a fill costs.
    if not claim_refresh(runtime.redis, window_s, by=client_order_id):
        return False
    # No risk worker alive: nothing would run the refresh, and a request left queued would surface in some later
    # worker's run long after its fill; the next beat run (or `omni risk --recalc`) takes the snapshot instead.
    if not any(w.kind == "risk" for w in heartbeats.alive(runtime.redis, runtime.settings.broker.dead_after_s)):
        # The claim stays for its window (at most ``fill_refresh_s``): the fills inside it are not checked again.
        _log.info("no risk worker alive: no recalculation scheduled after the fill", client_order_id=client_order_id)
        return False
    recalculate.apply_async(kwargs={"when": "now", "requested_by": "fill"}, countdown=window_s, expires=window_s + 60)
    _log.info("risk recalculation scheduled after a fill", client_order_id=client_order_id, in_s=window_s)
    return True
