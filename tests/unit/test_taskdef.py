"""Unit tests of omni_tasks.pipeline.taskdef: the @omni_task decorator, the router, argument and ETA guards.

No broker is needed: every refusal tested here happens before a message is published.
"""

from __future__ import annotations

import importlib
import math
import sys
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from celery.signals import before_task_publish

from omni_tasks.core import runtime
from omni_tasks.pipeline.queues import Queue
from omni_tasks.pipeline.taskdef import ROUTES, TIME_LIMITS, OmniTask, omni_task, route_task
from omni_tasks.settings import load_settings

VISIBILITY_TIMEOUT_S = 600


def _name(action: str = "t") -> str:
    """A unique stable task name: names are process-global."""
    return f"omni.unittest.{action}_{uuid.uuid4().hex[:12]}"


@pytest.fixture(autouse=True)
def _installed_settings(tmp_path: Path) -> Iterator[None]:
    """Settings with a known visibility timeout, installed through the runtime's public entry point."""
    previous = runtime._settings  # read only, to put it back afterwards
    runtime.install_settings(
        load_settings({"OMNI_DATA_DIR": str(tmp_path / "data"), "OMNI_BROKER_VISIBILITY_TIMEOUT_S": str(VISIBILITY_TIMEOUT_S)})
    )
    yield
    if previous is not None:
        runtime.install_settings(previous)


@pytest.fixture
def published() -> Iterator[list[str]]:
    """Names of tasks that reached the publishing step (Celery's before_task_publish signal)."""
    sent: list[str] = []

    def record(sender: Any = None, **_: Any) -> None:
        sent.append(str(sender))

    before_task_publish.connect(record, weak=False)
    yield sent
    before_task_publish.disconnect(record)


def _task(**overrides: Any) -> OmniTask:
    options: dict[str, Any] = {"name": _name(), "queue": Queue.SCANS, "soft_time_limit_s": 5, "time_limit_s": 10}
    options.update(overrides)

    def body(symbol: str = "AAPL") -> str:
        return symbol

    return omni_task(**options)(body)


# ---- the decorator ------------------------------------------------------------


def test_omni_task_misspelt_option_fails_when_the_module_is_imported(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    name = _name("misspelt")
    module_name = f"omni_unittest_tasks_{uuid.uuid4().hex[:12]}"
    (tmp_path / f"{module_name}.py").write_text(
        "from omni_tasks.pipeline.queues import Queue\n"
        "from omni_tasks.pipeline.taskdef import omni_task\n"
        "\n"
        f"@omni_task(name={name!r}, queue=Queue.SCANS, soft_time_limt_s=5, time_limit_s=10)\n"
        "def scan() -> None:\n"
        "    pass\n",
        encoding="utf-8",
    )
    monkeypatch.syspath_prepend(str(tmp_path))

    with pytest.raises(TypeError, match="soft_time_limt_s"):
        importlib.import_module(module_name)

    assert module_name not in sys.modules
    assert name not in ROUTES


@pytest.mark.parametrize("bad_name", ["ping", "omni.ping", "system.ping.now", "celery.system.ping"])
def test_omni_task_name_not_omni_domain_action_raises_value_error(bad_name: str) -> None:
    with pytest.raises(ValueError, match="omni.<domain>.<action>"):
        omni_task(name=bad_name, queue=Queue.SCANS, soft_time_limit_s=5, time_limit_s=10)


@pytest.mark.parametrize("template", ["omni..ping{}", "omni.system{}.", "omni.system {}.ping"])
def test_omni_task_name_with_empty_or_spaced_part_raises_value_error(template: str) -> None:
    with pytest.raises(ValueError, match="omni.<domain>.<action>"):
        omni_task(name=template.format(uuid.uuid4().hex[:8]), queue=Queue.SCANS, soft_time_limit_s=5, time_limit_s=10)


def test_omni_task_queue_given_as_plain_string_raises_type_error() -> None:
    name = _name()

    with pytest.raises(TypeError, match="queue must be a Queue member"):
        omni_task(name=name, queue="scans", soft_time_limit_s=5, time_limit_s=10)  # type: ignore[arg-type]  # the point of the test

    assert name not in ROUTES


@pytest.mark.parametrize(
    ("soft", "hard"),
    [
        pytest.param(10, 10, id="soft-equals-hard"),
        pytest.param(11, 10, id="soft-above-hard"),
        pytest.param(0, 10, id="soft-zero"),
        pytest.param(-1, 10, id="soft-negative"),
        pytest.param(5, math.inf, id="hard-infinite"),
        pytest.param(5, math.nan, id="hard-nan"),
    ],
)
def test_omni_task_soft_limit_not_below_finite_hard_limit_raises_value_error(soft: float, hard: float) -> None:
    name = _name()

    with pytest.raises(ValueError, match="soft_time_limit_s"):
        omni_task(name=name, queue=Queue.SCANS, soft_time_limit_s=soft, time_limit_s=hard)

    assert name not in TIME_LIMITS


def test_omni_task_duplicate_name_raises_value_error() -> None:
    task = _task()

    with pytest.raises(ValueError, match="registered twice"):
        omni_task(name=task.name, queue=Queue.RISK, soft_time_limit_s=1, time_limit_s=2)

    assert ROUTES[task.name] == "scans"


def test_omni_task_default_is_late_ack_with_reject_on_worker_lost() -> None:
    task = _task(soft_time_limit_s=7, time_limit_s=9)

    assert task.acks_late is True
    assert task.reject_on_worker_lost is True
    assert task.idempotent is True
    assert task.soft_time_limit == 7
    assert task.time_limit == 9
    assert task.serializer == "json"
    assert TIME_LIMITS[task.name] == 9.0


def test_omni_task_not_idempotent_acks_early_and_drops_on_worker_lost() -> None:
    task = _task(idempotent=False)

    assert task.acks_late is False
    assert task.reject_on_worker_lost is False
    assert task.idempotent is False


def test_omni_task_call_runs_the_plain_function() -> None:
    task = _task()

    assert task("MSFT") == "MSFT"


# ---- the router -------------------------------------------------------------------


def test_route_task_registered_name_returns_its_queue() -> None:
    task = _task(queue=Queue.BACKFILL)

    assert route_task(task.name, (), {}, {}) == {"queue": "backfill"}


def test_route_task_shipped_task_returns_its_queue() -> None:
    assert route_task("omni.system.ping", (), {}, {}) == {"queue": "watchdog"}


def test_route_task_unknown_omni_name_raises_lookup_error() -> None:
    name = _name("nowhere")

    with pytest.raises(LookupError, match=name):
        route_task(name, (), {}, {})


def test_route_task_celery_internal_name_goes_to_the_default() -> None:
    assert route_task("celery.chord_unlock", (), {}, {}) is None


# ---- apply_async guards (before anything is published) ---------------------------------


@pytest.mark.parametrize(
    ("args", "kwargs"),
    [
        pytest.param([datetime.now(tz=UTC)], {}, id="datetime-arg"),
        pytest.param([], {"symbol": object()}, id="object-kwarg"),
        pytest.param([{"AAPL", "MSFT"}], {}, id="set-arg"),
        pytest.param([{1: "non-string key"}], {}, id="int-dict-key"),
        pytest.param([b"bytes"], {}, id="bytes-arg"),
    ],
)
def test_apply_async_non_json_arguments_refused_before_publishing(args: list[Any], kwargs: dict[str, Any], published: list[str]) -> None:
    task = _task()

    with pytest.raises(TypeError, match="JSON primitives"):
        task.apply_async(args, kwargs, retry=False)

    assert published == []


def test_delay_non_json_argument_refused_before_publishing(published: list[str]) -> None:
    task = _task()

    with pytest.raises(TypeError, match=task.name):
        task.delay(datetime.now(tz=UTC))

    assert published == []


@pytest.mark.parametrize(
    "options",
    [
        pytest.param({"countdown": VISIBILITY_TIMEOUT_S + 1}, id="countdown-beyond"),
        pytest.param({"countdown": VISIBILITY_TIMEOUT_S}, id="countdown-equal"),
        # ETAs as seconds from now, made when the test runs (made at collection they age while the suite runs).
        pytest.param({"eta_in_s": VISIBILITY_TIMEOUT_S * 3}, id="aware-eta-beyond"),
        pytest.param({"eta_iso_in_s": 7200}, id="iso-eta-beyond"),
    ],
)
def test_apply_async_delay_beyond_visibility_timeout_refused_before_publishing(options: dict[str, Any], published: list[str]) -> None:
    task = _task()
    if "eta_in_s" in options:
        options = {"eta": datetime.now(tz=UTC) + timedelta(seconds=options["eta_in_s"])}
    elif "eta_iso_in_s" in options:
        options = {"eta": (datetime.now(tz=UTC) + timedelta(seconds=options["eta_iso_in_s"])).isoformat()}

    with pytest.raises(ValueError, match=rf"visibility timeout \({VISIBILITY_TIMEOUT_S} s\)") as caught:
        task.apply_async(["AAPL"], {}, retry=False, **options)

    assert task.name in str(caught.value)
    assert published == []


def test_apply_async_naive_eta_beyond_visibility_timeout_refused_with_clear_error(published: list[str]) -> None:
    task = _task()
    naive_eta = datetime.now(tz=UTC).replace(tzinfo=None) + timedelta(hours=2)

    with pytest.raises(ValueError, match="visibility timeout"):
        task.apply_async(["AAPL"], {}, retry=False, eta=naive_eta)

    assert published == []


def test_apply_async_with_a_configured_secret_in_arguments_is_refused_before_publishing(published: list[str]) -> None:
    from pydantic import SecretStr

    from omni_tasks.core import runtime
    from omni_tasks.settings import load_settings

    previous = runtime.get_settings()
    settings = load_settings({"OMNI_ALPACA_SECRET_KEY": "very-secret-alpaca-value"})
    runtime.install_settings(settings)
    try:
        task = _task()
        with pytest.raises(ValueError, match="secret appears in the task arguments"):
            task.apply_async(["AAPL", {"key": "very-secret-alpaca-value"}], {}, retry=False)
        assert published == []
        assert isinstance(settings.alpaca.secret_key, SecretStr)
    finally:
        runtime.install_settings(previous)
