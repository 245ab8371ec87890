"""The whole beat schedule in one readable place.

Keys say what and when. Every entry names its queue and an ``expires`` so a
backlog never replays stale work. Times of crontab entries are in the
exchange's zone (OMNI_EXCHANGE_TZ, America/New_York by default). Sub-minute
entries are intervals; anything a minute or longer is a crontab.
"""

from __future__ import annotations

from datetime import timedelta

BEAT_SCHEDULE: dict[str, dict[str, object]] = {
    "watchdog-tick-every-5-seconds": {
        "task": "omni.watchdog.tick",
        "schedule": timedelta(seconds=5),
        "options": {"queue": "watchdog", "expires": 5},
    },
}
