"""Every feed a stored bar can carry: the one home of the list (no import beyond typing: `omni --help` stays light).

Alpaca serves ``sip`` or ``iex``; every other provider labels its rows with
its own name; the offline ``replay`` feed keeps what its files record.
Listed in the order reads prefer them: consolidated SIP, then IEX, then the
other providers' own feeds, the offline ones last.
"""

from __future__ import annotations

from typing import Final

FEEDS: Final = ("sip", "iex", "yahoo", "alpha_vantage", "synthetic", "replay")
#: What `--feed` of the commands that read stored bars says in its help.
READ_FEED_HELP: Final = f"only bars of this feed: {', '.join(FEEDS)} (default: every feed stored for these symbols)"


def feeds_to_read(requested: str | None, stored: tuple[str, ...], fallback: tuple[str, ...]) -> tuple[str, ...]:
    """The feeds a check of stored bars reads: the one asked for; else every feed stored; else (nothing stored) ``fallback``."""
    if requested is not None:
        return (requested,)
    return stored or fallback
