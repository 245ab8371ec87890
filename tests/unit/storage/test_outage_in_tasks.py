"""Scans, validation and risk tasks retry a database outage on their own budget (not fail, not acknowledge it as done).

Each task body runs here as the worker would run it, against a PostgreSQL URL on
a port nothing listens on (connection refused: an outage), with the running task
replaced by a stand-in that records the retry it is asked for.
"""

from __future__ import annotations

from collections.abc import Callable
from types import SimpleNamespace
from typing import Any

import pytest

from omni_tasks.core.errors import StoreUnavailable
from omni_tasks.core.runtime import Runtime
from omni_tasks.risk import tasks as risk_tasks
from omni_tasks.scans import tasks as scan_tasks
from omni_tasks.settings import load_settings
from omni_tasks.storage.outage import STORE_RETRIES_KW
from omni_tasks.validation import tasks as validation_tasks
from tests.servers import free_port


class Retried(Exception):
    """What the stand-in's ``retry`` returns (Celery's is a ``Retry`` exception the task raises)."""

    def __init__(self, **options: Any) -> None:
        super().__init__("retried")
        self.options = options


class RunningTask:
    def __init__(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        self.request = SimpleNamespace(args=args, kwargs=kwargs, retries=0)
        self.retries: list[dict[str, Any]] = []

    def retry(self, **options: Any) -> Retried:
        self.retries.append(options)
        return Retried(**options)


@pytest.fixture
def runtime(tmp_path: Any) -> Runtime:
    settings = load_settings(
        {
            "OMNI_DATABASE_URL": f"postgresql+psycopg2://nobody@127.0.0.1:{free_port()}/gone",
            "OMNI_BROKER_URL": f"redis://127.0.0.1:{free_port()}/0",
            "OMNI_DATA_DIR": str(tmp_path),
            "OMNI_DATABASE_OUTAGE_RETRIES": "3",
        }
    )
    return Runtime(settings)


CASES: dict[str, tuple[Any, str, Callable[[Any], Any], tuple[Any, ...]]] = {
    "scan chunk": (scan_tasks, "scan_symbols", lambda t: t.scan_symbols.run(7, ["AAPL"]), (7, ["AAPL"])),
    "scan merge": (scan_tasks, "merge_chunks", lambda t: t.merge_chunks.run([], 7), ([], 7)),
    "validation of a backfill job": (validation_tasks, "validate_backfill_job", lambda t: t.validate_backfill_job.run(3), (3,)),
    "risk": (risk_tasks, "recalculate", lambda t: t.recalculate.run("now"), ("now",)),
}


@pytest.mark.parametrize("case", list(CASES))
def test_a_database_outage_retries_the_task_with_backoff_on_its_own_budget(
    case: str, runtime: Runtime, monkeypatch: pytest.MonkeyPatch
) -> None:
    module, _name, call, args = CASES[case]
    monkeypatch.setattr(module, "get_runtime", lambda: runtime)
    first = RunningTask(args, {})
    monkeypatch.setattr(module, "running_task", lambda: first)
    with pytest.raises(Retried):
        call(module)
    ((options,),) = [first.retries]
    assert options["kwargs"][STORE_RETRIES_KW] == 1
    assert 0.5 <= options["countdown"] <= 1.0
    assert isinstance(options["exc"], StoreUnavailable)
    assert "database unavailable while" in str(options["exc"])

    spent = RunningTask(args, {STORE_RETRIES_KW: 3})  # the budget (OMNI_DATABASE_OUTAGE_RETRIES=3) is spent
    monkeypatch.setattr(module, "running_task", lambda: spent)
    with pytest.raises(StoreUnavailable):
        call(module)
    assert spent.retries == []
