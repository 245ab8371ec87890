"""The trading state's row under lock on SQLite (the embedded default): two writers never read the same version.

SQLite ignores ``FOR UPDATE`` and pysqlite begins a transaction only at the first
write, so without the write lock taken before the read two writers both read
version N and both write N + 1: one change is lost (seen by hand under `omni up`:
an operator's engage left the row attributed to the watchdog's reconciler).
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

from omni_tasks.safety.state_store import durable_state, locked_row
from omni_tasks.storage import migrations
from omni_tasks.storage.engine import make_engine, session_factory


def test_two_writers_of_the_row_are_serialised_on_sqlite(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'omni.sqlite3'}"
    engine = make_engine(url)
    migrations.upgrade(engine)
    sessions = session_factory(engine)
    with locked_row(sessions) as (_session, row, _now):
        row.version = 5
    first_read = threading.Event()
    seen: dict[str, int] = {}

    def writer(name: str, hold_s: float) -> None:
        with locked_row(sessions) as (_session, row, _now):
            seen[name] = int(row.version)
            first_read.set()
            time.sleep(hold_s)  # the other writer tries meanwhile
            row.version = int(row.version) + 1
            row.actor = name

    slow = threading.Thread(target=writer, args=("operator:slow", 0.5))
    slow.start()
    assert first_read.wait(10)
    fast = threading.Thread(target=writer, args=("watchdog:fast", 0.0))
    fast.start()
    slow.join(20)
    fast.join(20)
    assert seen == {"operator:slow": 5, "watchdog:fast": 6}, "the second writer waited and read the first one's version"
    assert durable_state(sessions).version == 7
    engine.dispose()
