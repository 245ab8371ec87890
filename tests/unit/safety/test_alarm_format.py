"""The safety alarm format: every field checked, a clear error naming the bad one, round trips through JSON."""

from __future__ import annotations

import json
from typing import Any

import pytest

from omni_tasks.safety.alarms import MAX_ALARM_BYTES, Alarm, AlarmFormatError, alarm_reason


def _good(**changes: Any) -> dict[str, Any]:
    data: dict[str, Any] = {
        "kind": "daily_loss",
        "severity": "critical",
        "source": "stream",
        "value": -1250.5,
        "limit": -1000.0,
        "ts_ns": 1_700_000_000_000_000_000,
        "detail": {"equity": "98749.50"},
    }
    data.update(changes)
    return data


def test_a_good_alarm_round_trips_through_json() -> None:
    alarm = Alarm.from_mapping(_good())
    again = Alarm.from_json(alarm.to_json())
    assert again == alarm
    assert again.critical
    assert again.ident == "daily_loss:stream:1700000000000000000"
    assert json.loads(alarm.to_json())["detail"] == {"equity": "98749.50"}


def test_detail_is_optional() -> None:
    data = _good()
    del data["detail"]
    assert Alarm.from_mapping(data).detail == {}


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"kind": "Daily Loss"}, "kind"),
        ({"kind": ""}, "kind"),
        ({"severity": "fatal"}, "severity"),
        ({"source": ""}, "source"),
        ({"source": "a b"}, "source"),
        ({"value": "12"}, "value"),
        ({"value": float("nan")}, "value"),
        ({"limit": float("inf")}, "limit"),
        ({"value": True}, "value"),
        ({"ts_ns": 0}, "ts_ns"),
        ({"ts_ns": 1.5}, "ts_ns"),
        ({"detail": [1, 2]}, "detail"),
        ({"extra": 1}, "extra"),
    ],
)
def test_a_bad_field_is_refused_with_its_name(changes: dict[str, Any], field: str) -> None:
    with pytest.raises(AlarmFormatError, match=field):
        Alarm.from_mapping(_good(**changes))


@pytest.mark.parametrize("missing", ["kind", "severity", "source", "value", "limit", "ts_ns"])
def test_a_missing_field_is_named(missing: str) -> None:
    data = _good()
    del data[missing]
    with pytest.raises(AlarmFormatError, match=f"missing field '{missing}'"):
        Alarm.from_mapping(data)


@pytest.mark.parametrize("raw", [b"not json", b"[1,2]", b"null", b"{}"])
def test_garbage_on_the_channel_is_an_alarm_format_error(raw: bytes) -> None:
    with pytest.raises(AlarmFormatError):
        Alarm.from_json(raw)


def test_an_oversized_alarm_is_refused_before_parsing() -> None:
    with pytest.raises(AlarmFormatError, match="larger than"):
        Alarm.from_json(b"{" + b" " * MAX_ALARM_BYTES + b"}")


def test_detail_that_is_not_plain_json_cannot_be_serialised() -> None:
    alarm = Alarm.from_mapping(_good(detail={"when": object()}))
    with pytest.raises(AlarmFormatError, match="detail"):
        alarm.to_json()


def test_the_recorded_reason_names_kind_source_value_and_limit() -> None:
    text = alarm_reason(Alarm.from_mapping(_good()))
    assert text == "critical alarm daily_loss from stream: value -1250.5 past limit -1000"
