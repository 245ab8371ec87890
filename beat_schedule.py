"""The whole beat schedule in one readable place.

Keys say what and when. Every entry names its queue and an ``expires`` so a
backlog never replays stale work. Times of crontab entries are in the
exchange's zone (OMNI_EXCHANGE_TZ, America/New_York by default). Sub-minute
entries are intervals; anything a minute or longer is a crontab.
"""

from __future__ import annotations

from datetime import timedelta

from celery.schedules import crontab

BEAT_SCHEDULE: dict[str, dict[str, object]] = {
    "watchdog-tick-every-5-seconds": {
        "task": "omni.watchdog.tick",
        "schedule": timedelta(seconds=5),
        "options": {"queue": "watchdog", "expires": 5},
    },
    # The task itself checks the exchange calendar (holidays, half days): closed means skipped.
    "scan-universe-every-5-minutes-in-market-hours": {
        "task": "omni.scans.scheduled",
        "schedule": crontab(minute="*/5", hour="9-16", day_of_week="mon-fri"),
        "options": {"queue": "scans", "expires": 240},
    },
    # After the close (16:00 New York) and the providers' end-of-day settlement.
    "backfill-nightly-incremental-at-18-15-weekdays": {
        "task": "omni.backfill.nightly",
        "schedule": crontab(minute=15, hour=18, day_of_week="mon-fri"),
        "options": {"queue": "backfill", "expires": 6 * 3600},
    },
    # Each backfill job is validated as soon as it finishes (chained); this pass also
    # catches what a failed or missing nightly job left behind.
    "validation-nightly-at-19-30-weekdays": {
        "task": "omni.validation.nightly",
        "schedule": crontab(minute=30, hour=19, day_of_week="mon-fri"),
        "options": {"queue": "validation", "expires": 4 * 3600},
    },
    # Before the open, once a day: one Alpha Vantage call per symbol against the key's daily quota.
    "news-sentiment-daily-at-06-30": {
        "task": "omni.news.daily",
        "schedule": crontab(minute=30, hour=6),
        "options": {"queue": "backfill", "expires": 6 * 3600},
    },
    # As the scans entry: the task checks the calendar (in session: run; otherwise skipped).
    "risk-recalculate-every-minute-in-market-hours": {
        "task": "omni.risk.recalculate",
        "schedule": crontab(minute="*", hour="9-16", day_of_week="mon-fri"),
        "kwargs": {"when": "market_hours", "requested_by": "beat"},
        "options": {"queue": "risk", "expires": 55},
    },
    # After the close (16:00 New York; half days close at 13:00), on session days only.
    "risk-recalculate-after-the-close-at-16-10-weekdays": {
        "task": "omni.risk.recalculate",
        "schedule": crontab(minute=10, hour=16, day_of_week="mon-fri"),
        "kwargs": {"when": "after_close", "requested_by": "beat"},
        "options": {"queue": "risk", "expires": 3600},
    },
}
