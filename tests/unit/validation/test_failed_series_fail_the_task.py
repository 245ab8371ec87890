"""A validation task whose series fail raises (issue 11: a failed validation shows as a failure in Flower and `omni status`).

The verdicts are stored before the raise (``tests/integration/test_validation_store.py``); a task that raises
``PermanentError`` is a FAILURE in Flower and in the task ledger, as the failed scan in ``tests/integration/test_flower.py`` shows.
"""

from __future__ import annotations

import pytest

from omni_tasks.core.errors import PermanentError
from omni_tasks.validation.tasks import _fail_when_failed


def test_failed_series_make_the_task_fail_naming_them() -> None:
    with pytest.raises(PermanentError, match=r"validation of backfill job 7: 2 series failed validation \(MSFT, NVDA\)"):
        _fail_when_failed({"failed_series": ["MSFT", "NVDA"]}, "validation of backfill job 7")


def test_many_failed_series_are_named_up_to_ten() -> None:
    failed = [f"S{i:02d}" for i in range(12)]
    with pytest.raises(PermanentError, match=r"12 series failed validation \(S00, .*, S09 and 2 more\)"):
        _fail_when_failed({"failed_series": failed}, "nightly validation")


def test_no_failed_series_is_a_success() -> None:
    _fail_when_failed({"failed_series": []}, "nightly validation")
