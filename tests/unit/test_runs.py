"""Unit tests of omni_tasks.pipeline.outcomes: the outcome record and argument summaries (drain_outcomes needs Redis)."""

from __future__ import annotations

import json

from omni_tasks.pipeline.outcomes import ARGS_MAX_CHARS, summarize_args


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
