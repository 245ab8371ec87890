"""Unit tests of omni_tasks.ops.startup_checks: refuse to boot rather than lose or duplicate work."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import redis

from omni_tasks.core.errors import BootRefused
from omni_tasks.ops.startup_checks import check_noeviction, check_visibility_timeout
from omni_tasks.pipeline.taskdef import task_time_limits
from omni_tasks.settings import load_settings


class FakeRedis:
    """Answers INFO memory like redis-py does: a dict of the section's fields."""

    def __init__(self, policy: str | None = None, error: Exception | None = None) -> None:
        self._policy = policy
        self._error = error
        self.sections: list[str] = []

    def info(self, section: str) -> dict[str, Any]:
        self.sections.append(section)
        if self._error is not None:
            raise self._error
        fields: dict[str, Any] = {"used_memory": 1024, "maxmemory": 0}
        if self._policy is not None:
            fields["maxmemory_policy"] = self._policy
        return fields


# ---- visibility timeout --------------------------------------------------------------


@pytest.mark.parametrize("visibility_s", [150, 149, 10])
def test_check_visibility_timeout_not_above_largest_limit_refuses_naming_task_and_variable(visibility_s: int) -> None:
    limits = [("omni.system.ping", 10.0), ("omni.backfill.partition", 150.0), ("omni.scans.momentum", 60.0)]

    with pytest.raises(BootRefused) as caught:
        check_visibility_timeout(visibility_s, limits)

    message = str(caught.value)
    assert message.startswith(f"OMNI_BROKER_VISIBILITY_TIMEOUT_S={visibility_s} ")
    assert "omni.backfill.partition" in message
    assert "150" in message


def test_check_visibility_timeout_above_largest_limit_passes() -> None:
    check_visibility_timeout(150.5, [("omni.system.ping", 10.0), ("omni.backfill.partition", 150.0)])


def test_check_visibility_timeout_no_tasks_passes() -> None:
    check_visibility_timeout(1, [])


def test_check_visibility_timeout_default_settings_pass_for_the_registered_tasks(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)  # no stray ./.env
    settings = load_settings({})
    limits = task_time_limits()
    names = [name for name, _ in limits]

    check_visibility_timeout(settings.broker.visibility_timeout_s, limits)

    assert "omni.system.ping" in names  # the check saw the real task modules, not an empty list
    assert "omni.system.probe" in names


# ---- maxmemory-policy ------------------------------------------------------------------


@pytest.mark.parametrize("policy", ["allkeys-lru", "volatile-lru", "allkeys-random", "volatile-ttl"])
def test_check_noeviction_evicting_policy_refuses_naming_the_policy(policy: str) -> None:
    client = FakeRedis(policy)

    with pytest.raises(BootRefused, match=rf"maxmemory-policy is '{policy}'"):
        check_noeviction(client)  # type: ignore[arg-type]  # a fake with redis.Redis's info()

    assert client.sections == ["memory"]


def test_check_noeviction_noeviction_policy_passes() -> None:
    client = FakeRedis("noeviction")

    check_noeviction(client)  # type: ignore[arg-type]  # a fake with redis.Redis's info()

    assert client.sections == ["memory"]


def test_check_noeviction_info_refused_by_server_refuses_to_boot() -> None:
    client = FakeRedis(error=redis.ResponseError("unknown command 'INFO'"))

    with pytest.raises(BootRefused, match="OMNI_BROKER_REQUIRE_NOEVICTION"):
        check_noeviction(client)  # type: ignore[arg-type]  # a fake with redis.Redis's info()
