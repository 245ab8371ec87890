"""Unit tests of omni_tasks.runs: the outcome record and argument summaries (drain_outcomes needs Redis)."""

from __future__ import annotations

import json
import uuid
from dataclasses import replace

from omni_tasks.runs import ARGS_MAX_CHARS, TaskOutcome, summarize_args


def _outcome(**overrides: object) -> TaskOutcome:
    fields: dict[str, object] = {
        "task_id": "3f1c0a8e-0000-4000-8000-000000000001",
        "name": "omni.backfill.partition",
        "queue": "backfill",
        "state": "FAILURE",
        "worker": "celery@host-1",
        "pid": 4242,
        "started_at": 1710513137.25,
        "finished_at": 1710513140.5,
        "runtime_s": 3.25,
        "args_json": '{"args":["AAPL"],"kwargs":{}}',
        "delivery": 2,
        "sent_at": 1710513130.0,
        "queue_wait_s": 7.25,
        "error": "RetryableError: provider timed out",
    }
    fields.update(overrides)
    return TaskOutcome(**fields)  # type: ignore[arg-type]  # test data, types as declared


def test_task_outcome_to_json_round_trips_every_field() -> None:
    outcome = _outcome(outcome_id="fixed-outcome-id")

    again = TaskOutcome(**json.loads(outcome.to_json()))

    assert again == outcome


def test_task_outcome_to_json_without_outcome_id_assigns_a_uuid() -> None:
    outcome = _outcome(sent_at=None, queue_wait_s=None, error=None)

    data = json.loads(outcome.to_json())

    assert uuid.UUID(data["outcome_id"])
    assert replace(outcome, outcome_id=data["outcome_id"]) == TaskOutcome(**data)


def test_task_outcome_to_json_is_one_line() -> None:
    assert "\n" not in _outcome(error="line one\nline two").to_json()


def test_summarize_args_short_arguments_are_valid_json() -> None:
    text = summarize_args(("AAPL", 5), {"start": "2024-01-02", "adjust": True})

    assert json.loads(text) == {"args": ["AAPL", 5], "kwargs": {"start": "2024-01-02", "adjust": True}}


def test_summarize_args_none_gives_empty_args_and_kwargs() -> None:
    assert json.loads(summarize_args(None, None)) == {"args": [], "kwargs": {}}


def test_summarize_args_long_arguments_are_truncated_to_the_limit() -> None:
    symbols = [f"SYM{i:05d}" for i in range(2000)]

    text = summarize_args([symbols], {})

    assert len(text) == ARGS_MAX_CHARS
    assert text.startswith('{"args":[["SYM00000","SYM00001"')


def test_summarize_args_non_json_value_is_stringified_not_raised() -> None:
    text = summarize_args([object()], {"when": {1, 2}})

    assert len(text) <= ARGS_MAX_CHARS
    assert "object object" in text
