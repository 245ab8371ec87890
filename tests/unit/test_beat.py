"""Unit tests of omni_tasks.pipeline.beat: time slots and the deterministic task id of a scheduled send."""

from __future__ import annotations

import uuid
from datetime import timedelta

import pytest
from celery.schedules import crontab
from celery.schedules import schedule as interval_schedule

from omni_tasks.pipeline.beat import slot_start, slot_task_id

# 2024-03-15 14:32:17.25 UTC, a Friday in market hours.
NOW_S = 1710513137.25


@pytest.mark.parametrize("period_s", [5, 60, 300, 3600])
def test_slot_start_interval_aligns_to_the_period(period_s: int) -> None:
    every = interval_schedule(run_every=timedelta(seconds=period_s))

    slot = slot_start(every, NOW_S)

    assert slot % period_s == 0
    assert slot <= NOW_S < slot + period_s


def test_slot_start_interval_same_slot_for_times_inside_one_period() -> None:
    every = interval_schedule(run_every=timedelta(minutes=5))
    start = slot_start(every, NOW_S)

    assert slot_start(every, start) == start
    assert slot_start(every, start + 299.999) == start
    assert slot_start(every, start + 300) == start + 300
    assert slot_start(every, start - 0.001) == start - 300


def test_slot_start_sub_second_interval_uses_one_second_slots() -> None:
    every = interval_schedule(run_every=timedelta(milliseconds=250))

    assert slot_start(every, NOW_S) == int(NOW_S)


@pytest.mark.parametrize("entry", [crontab(), crontab(minute="*/5"), crontab(minute=0, hour=17, day_of_week="mon-fri")])
def test_slot_start_crontab_aligns_to_the_minute(entry: crontab) -> None:
    slot = slot_start(entry, NOW_S)

    assert slot == 1710513120  # 14:32:00
    assert slot_start(entry, 1710513120 + 59.9) == slot
    assert slot_start(entry, 1710513120 + 60) == slot + 60


def test_slot_task_id_same_task_args_and_slot_give_the_same_id() -> None:
    first = slot_task_id("omni.scans.momentum", ["AAPL", 5], {"window": 20, "universe": "sp500"}, 1710513000)
    again = slot_task_id("omni.scans.momentum", ("AAPL", 5), {"universe": "sp500", "window": 20}, 1710513000)

    assert first == again
    assert uuid.UUID(first).version == 5


@pytest.mark.parametrize(
    ("task", "args", "kwargs", "slot"),
    [
        pytest.param("omni.scans.momentum", ["AAPL", 5], {"window": 20}, 1710513300, id="next-slot"),
        pytest.param("omni.scans.momentum", ["MSFT", 5], {"window": 20}, 1710513000, id="other-arg"),
        pytest.param("omni.scans.momentum", [5, "AAPL"], {"window": 20}, 1710513000, id="args-reordered"),
        pytest.param("omni.scans.momentum", ["AAPL", 5], {"window": 21}, 1710513000, id="other-kwarg"),
        pytest.param("omni.scans.momentum", ["AAPL", 5], {}, 1710513000, id="no-kwargs"),
        pytest.param("omni.scans.volume", ["AAPL", 5], {"window": 20}, 1710513000, id="other-task"),
    ],
)
def test_slot_task_id_different_slot_args_or_task_give_a_different_id(
    task: str, args: list[object], kwargs: dict[str, object], slot: int
) -> None:
    base = slot_task_id("omni.scans.momentum", ["AAPL", 5], {"window": 20}, 1710513000)

    assert slot_task_id(task, args, kwargs, slot) != base


def test_slot_task_id_none_args_equal_empty_args() -> None:
    assert slot_task_id("omni.watchdog.tick", None, None, 1710513135) == slot_task_id("omni.watchdog.tick", [], {}, 1710513135)


def test_slot_task_id_two_beats_in_the_same_slot_agree() -> None:
    every = interval_schedule(run_every=timedelta(seconds=5))
    # Two leaders a split second apart (or a restart) inside one 5 s slot.
    first = slot_task_id("omni.watchdog.tick", [], {}, slot_start(every, NOW_S))
    second = slot_task_id("omni.watchdog.tick", [], {}, slot_start(every, NOW_S + 2.5))
    later = slot_task_id("omni.watchdog.tick", [], {}, slot_start(every, NOW_S + 5))

    assert first == second
    assert later != first
