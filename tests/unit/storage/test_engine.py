"""PostgreSQL engines ask the server to drop a vanished client: the options each connection sends."""

from __future__ import annotations

import pytest

from omni_tasks.storage.engine import server_keepalive_options


def _options(text: str) -> dict[str, str]:
    pairs = text.split("-c ")[1:]
    return dict(pair.strip().split("=", 1) for pair in pairs)


def test_keepalives_probe_after_half_the_time_and_give_up_by_the_whole() -> None:
    options = _options(server_keepalive_options(30))
    assert options == {
        "tcp_keepalives_idle": "15",
        "tcp_keepalives_interval": "4",
        "tcp_keepalives_count": "4",
        "tcp_user_timeout": "30000",
    }
    idle, interval, count = (
        int(options["tcp_keepalives_idle"]),
        int(options["tcp_keepalives_interval"]),
        int(options["tcp_keepalives_count"]),
    )
    assert idle + interval * count == pytest.approx(30, abs=2)


def test_short_times_never_ask_for_zero_which_would_mean_the_system_default() -> None:
    options = _options(server_keepalive_options(2))
    assert options["tcp_keepalives_idle"] == "1"
    assert options["tcp_keepalives_interval"] == "1"
    assert options["tcp_user_timeout"] == "2000"
