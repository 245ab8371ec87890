"""Alpaca adapter: request building and wire mapping on their own, then alpaca-py's real client
against a local stand-in serving recorded /v2/stocks/bars payloads (tests/fixtures/alpaca/)."""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pandas as pd
import pytest
from structlog.testing import capture_logs

from omni_tasks.contracts import bars as frames
from omni_tasks.marketdata.errors import (
    AuthenticationFailed,
    EmptyData,
    MalformedPayload,
    NoBarsInRange,
    ProviderUnavailable,
    RateLimited,
    UnknownSymbol,
    UnsupportedRequest,
)
from omni_tasks.marketdata.providers.alpaca import client as alpaca
from omni_tasks.marketdata.providers.alpaca import mappings as alpaca_mappings
from omni_tasks.marketdata.providers.alpaca import requests as alpaca_requests
from omni_tasks.marketdata.providers.base import BarProvider, BarRequest
from omni_tasks.settings import load_settings

from .conftest import Reply, Seen, StandIn, fixture_bytes

JAN2 = datetime(2024, 1, 2, tzinfo=UTC)
KEY_PAIR = ("PKTESTKEY123", "test-secret-456")  # test doubles, not credentials
NEXT_PAGE = "QUFQTHxNfDIwMjQtMDEtMDJUMTQ6MzI6MDAuMDAwMDAwMDAwWg=="  # the cursor in bars_AAPL_1Min_page1.json


def _json(name: str) -> dict:
    return json.loads(fixture_bytes("alpaca", name))


def _reply(name: str, status: int = 200, headers: dict[str, str] | None = None) -> Reply:
    return Reply(status, fixture_bytes("alpaca", name), headers or {})


def _one_page(*names: str) -> bytes:
    """The bars of several recorded pages as one last page."""
    bars = [bar for name in names for bar in _json(name)["bars"]["AAPL"]]
    return json.dumps({"bars": {"AAPL": bars}, "next_page_token": None}).encode()


def _minute_request(feed: str = "iex", *, end: datetime | None = None, adjustment: str = "raw") -> BarRequest:
    return BarRequest("AAPL", "1Min", JAN2.replace(hour=14, minute=30), end or JAN2.replace(hour=14, minute=35), feed=feed, adjustment=adjustment)


def _adapter(url: str, *, now: datetime = datetime(2024, 6, 3, 12, 0, tzinfo=UTC), timeout_s: float = 5.0) -> alpaca.AlpacaBars:
    return alpaca.AlpacaBars(api_key=KEY_PAIR[0], secret_key=KEY_PAIR[1], data_url=url, timeout_s=timeout_s, clock=lambda: now)


# ---- request building ------------------------------------------------------------------------


def test_bars_query_sip_split_5min_serialises_every_value_as_alpaca_expects() -> None:
    request = BarRequest("AAPL", "5Min", JAN2, JAN2 + timedelta(days=1), feed="sip", adjustment="split")

    query = alpaca_requests.bars_query(request, feed="sip", end=request.end, page_token=NEXT_PAGE)

    assert query == {
        "symbols": "AAPL",
        "timeframe": "5Min",
        "start": "2024-01-02T00:00:00+00:00",
        "end": "2024-01-03T00:00:00+00:00",
        "feed": "sip",
        "adjustment": "split",
        "limit": "10000",
        "page_token": NEXT_PAGE,
    }


@pytest.mark.parametrize(("code", "wire"), [("1Min", "1Min"), ("15Min", "15Min"), ("30Min", "30Min"), ("1Hour", "1Hour"), ("1Day", "1Day")])
def test_bars_query_each_timeframe_code_maps_to_alpacas_code(code: str, wire: str) -> None:
    request = BarRequest("AAPL", code, JAN2, JAN2 + timedelta(days=1))

    assert alpaca_requests.bars_query(request, feed="iex", end=request.end)["timeframe"] == wire


def test_bars_query_unknown_timeframe_raises_value_error_naming_choices() -> None:
    request = BarRequest("AAPL", "2Min", JAN2, JAN2 + timedelta(days=1))

    with pytest.raises(ValueError, match="1Min, 5Min"):
        alpaca_requests.bars_query(request, feed="iex", end=request.end)


def test_sip_recent_limit_is_now_minus_15_minutes_floored_to_the_minute() -> None:
    assert alpaca_requests.sip_recent_limit(datetime(2024, 1, 2, 15, 0, 42, 5, tzinfo=UTC)) == datetime(2024, 1, 2, 14, 45, tzinfo=UTC)


# ---- wire mapping --------------------------------------------------------------------------


def test_page_bars_multi_symbol_page_returns_rows_and_next_token() -> None:
    rows, token = alpaca_mappings.page_bars(_json("bars_AAPL_1Min_page1.json"), "AAPL")

    assert [row["t"] for row in rows] == ["2024-01-02T14:30:00Z", "2024-01-02T14:31:00Z", "2024-01-02T14:32:00Z"]
    assert token == NEXT_PAGE


def test_page_bars_single_symbol_endpoint_shape_returns_rows() -> None:
    rows, token = alpaca_mappings.page_bars(_json("bars_AAPL_1Min_single_symbol.json"), "AAPL")

    assert len(rows) == 2
    assert token is None


def test_page_bars_without_bars_key_raises_malformed_naming_the_keys() -> None:
    with pytest.raises(MalformedPayload, match="no 'bars' key.*message"):
        alpaca_mappings.page_bars({"message": "hello"}, "AAPL")


def test_page_bars_other_symbol_raises_malformed_naming_it() -> None:
    with pytest.raises(MalformedPayload, match="MSFT"):
        alpaca_mappings.page_bars({"bars": {"MSFT": []}, "next_page_token": None}, "AAPL")


def test_bars_frame_maps_wire_keys_to_canonical_columns() -> None:
    frame = alpaca_mappings.bars_frame(_json("bars_AAPL_1Min_page1.json")["bars"]["AAPL"])

    first = frame.iloc[0]
    assert first["ts"] == pd.Timestamp("2024-01-02T14:30:00Z")
    assert (first["open"], first["high"], first["low"], first["close"]) == (187.15, 187.73, 186.95, 187.31)
    assert (first["volume"], first["trade_count"], first["vwap"]) == (1183422, 14215, 187.336113)


def test_bars_frame_bar_without_close_raises_malformed_naming_bar_and_key() -> None:
    rows = _json("bars_AAPL_missing_close.json")["bars"]["AAPL"]

    with pytest.raises(MalformedPayload, match=r"bar #1 has no c"):
        alpaca_mappings.bars_frame(rows)


@pytest.mark.parametrize(("key", "value"), [("o", "187.1"), ("v", None), ("vw", True), ("t", 1704205800)])
def test_bars_frame_wrong_value_type_raises_malformed_naming_the_key(key: str, value: object) -> None:
    bar = dict(_json("bars_AAPL_1Min_page1.json")["bars"]["AAPL"][0], **{key: value})

    with pytest.raises(MalformedPayload, match=f"'{key}'"):
        alpaca_mappings.bars_frame([bar])


@pytest.mark.parametrize(
    ("status", "message", "expected"),
    [
        (401, "unauthorized.", AuthenticationFailed),
        (403, "forbidden.", AuthenticationFailed),
        (403, "subscription does not permit querying OTC data", UnsupportedRequest),
        (422, "invalid symbol: ZZZZ9", UnknownSymbol),
        (400, "invalid symbol: AAPL$", UnknownSymbol),
        (429, "too many requests.", RateLimited),
        (500, "internal server error occurred", ProviderUnavailable),
        (503, "service unavailable", ProviderUnavailable),
        (504, "gateway timeout", ProviderUnavailable),
    ],
)
def test_error_for_status_and_message_maps_to_the_error_hierarchy(status: int, message: str, expected: type) -> None:
    error = alpaca_mappings.error_for(status, message, symbol="AAPL")

    assert type(error) is expected
    assert error.provider == "alpaca"
    assert message in str(error)


def test_is_recent_sip_refusal_only_for_403_with_the_recent_sip_message() -> None:
    message = alpaca_mappings.error_message(fixture_bytes("alpaca", "error_recent_sip.json").decode())

    assert alpaca_mappings.is_recent_sip_refusal(403, message)
    assert not alpaca_mappings.is_recent_sip_refusal(403, "forbidden.")
    assert not alpaca_mappings.is_recent_sip_refusal(429, message)


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ({"Retry-After": "7"}, 7.0),
        ({"retry-after": "Tue, 02 Jan 2024 15:00:30 GMT"}, 30.0),
        ({"X-RateLimit-Reset": str(int(datetime(2024, 1, 2, 15, 0, 12, tzinfo=UTC).timestamp()))}, 12.0),
        ({}, None),
        ({"Retry-After": "soon"}, None),
    ],
)
def test_retry_after_s_reads_retry_after_or_alpacas_reset_header(headers: dict[str, str], expected: float | None) -> None:
    assert alpaca_mappings.retry_after_s(headers, datetime(2024, 1, 2, 15, 0, tzinfo=UTC)) == expected


# ---- the adapter through alpaca-py against the stand-in ------------------------------------


def test_alpaca_bars_implements_the_provider_protocol() -> None:
    adapter = _adapter("http://127.0.0.1:9")

    assert isinstance(adapter, BarProvider)
    assert adapter.name == "alpaca"
    assert adapter.capabilities.feeds == {"iex", "sip"}
    assert adapter.capabilities.adjustments == {"raw", "split", "dividend", "all"}
    assert adapter.capabilities.timeframes == set(frames.TIMEFRAMES)


def test_fetch_two_pages_sends_page_token_on_the_second_and_returns_both_in_order(standin: StandIn) -> None:
    standin.route("/v2/stocks/bars", [_reply("bars_AAPL_1Min_page1.json"), _reply("bars_AAPL_1Min_page2.json")])

    result = _adapter(standin.url).fetch_bars(_minute_request())

    first, second = standin.requests_to("/v2/stocks/bars")
    assert "page_token" not in first.query
    assert second.query["page_token"] == NEXT_PAGE
    assert first.query["symbols"] == "AAPL"
    assert first.query["feed"] == "iex"
    assert first.query["timeframe"] == "1Min"
    assert first.headers["APCA-API-KEY-ID"] == KEY_PAIR[0]
    assert list(result.bars["ts"]) == [pd.Timestamp(f"2024-01-02T14:3{m}:00Z") for m in range(5)]
    assert list(result.bars["close"]) == [187.31, 186.8, 186.6, 186.33, 186.05]
    assert result.calls == 2
    assert result.notes == []


def test_fetch_output_has_provenance_on_every_row_and_passes_bar_frame_validation(standin: StandIn) -> None:
    standin.route("/v2/stocks/bars", Reply(200, _one_page("bars_AAPL_1Min_page1.json", "bars_AAPL_1Min_page2.json")))

    bars = _adapter(standin.url).fetch_bars(_minute_request(adjustment="split")).bars

    assert tuple(bars.columns) == frames.BAR_COLUMNS
    assert set(bars["provider"]) == {"alpaca"}
    assert set(bars["feed"]) == {"iex"}
    assert set(bars["adjustment"]) == {"split"}
    assert set(bars["symbol"]) == {"AAPL"}
    assert set(bars["timeframe"]) == {"1Min"}
    assert str(bars["ts"].dtype) == "datetime64[ns, UTC]"
    valid, rejected = frames.split_valid(bars)
    assert rejected.empty
    assert len(valid) == 5


def test_fetch_recent_sip_refused_clamps_end_to_now_minus_15min_and_says_so(standin: StandIn) -> None:
    now = datetime(2024, 1, 2, 14, 50, 30, tzinfo=UTC)
    limit = datetime(2024, 1, 2, 14, 35, tzinfo=UTC)

    def sip_up_to_the_limit(seen: Seen) -> Reply:
        if seen.query["feed"] == "sip" and datetime.fromisoformat(seen.query["end"]) > limit:
            return _reply("error_recent_sip.json", 403)
        return Reply(200, _one_page("bars_AAPL_1Min_page1.json", "bars_AAPL_1Min_page2.json"))

    standin.route("/v2/stocks/bars", sip_up_to_the_limit)
    request = _minute_request("sip", end=datetime(2024, 1, 2, 14, 50, tzinfo=UTC))

    with capture_logs() as logs:
        result = _adapter(standin.url, now=now).fetch_bars(request)

    refused, served = standin.requests_to("/v2/stocks/bars")
    assert refused.query["end"] == "2024-01-02T14:50:00+00:00"
    assert served.query["end"] == "2024-01-02T14:35:00+00:00"
    assert served.query["feed"] == "sip"
    assert set(result.bars["feed"]) == {"sip"}
    assert result.bars["ts"].max() < pd.Timestamp(limit)
    assert len(result.notes) == 1
    assert "clamped" in result.notes[0]
    assert "2024-01-02T14:35:00+00:00" in result.notes[0]
    assert [log["log_level"] for log in logs if "recent SIP" in log["event"]] == ["warning"]
    assert result.calls == 2


def test_fetch_recent_sip_still_refused_after_clamp_switches_to_iex_and_labels_rows_iex(standin: StandIn) -> None:
    def never_sip(seen: Seen) -> Reply:
        if seen.query["feed"] == "sip":
            return _reply("error_recent_sip.json", 403)
        return _reply("bars_AAPL_1Min_iex.json")

    standin.route("/v2/stocks/bars", never_sip)
    request = _minute_request("sip", end=datetime(2024, 1, 2, 14, 50, tzinfo=UTC))

    with capture_logs() as logs:
        result = _adapter(standin.url, now=datetime(2024, 1, 2, 14, 50, 30, tzinfo=UTC)).fetch_bars(request)

    feeds = [seen.query["feed"] for seen in standin.requests_to("/v2/stocks/bars")]
    assert feeds == ["sip", "sip", "iex"]
    assert standin.requests_to("/v2/stocks/bars")[-1].query["end"] == "2024-01-02T14:50:00+00:00"
    assert set(result.bars["feed"]) == {"iex"}
    assert list(result.bars["volume"]) == [21877, 6120, 5214]
    assert any("switched from sip to iex" in note for note in result.notes)
    # This request's warnings (a background flusher of another test's counters may log beside them).
    assert len([log for log in logs if log["log_level"] == "warning" and log.get("symbol") == "AAPL"]) == 2
    assert result.calls == 3


def test_fetch_recent_sip_refused_for_a_range_entirely_within_15_minutes_switches_to_iex(standin: StandIn) -> None:
    standin.route("/v2/stocks/bars", lambda seen: _reply("error_recent_sip.json", 403) if seen.query["feed"] == "sip" else _reply("bars_AAPL_1Min_iex.json"))

    result = _adapter(standin.url, now=datetime(2024, 1, 2, 14, 40, tzinfo=UTC)).fetch_bars(_minute_request("sip"))

    assert [seen.query["feed"] for seen in standin.seen] == ["sip", "iex"]
    assert set(result.bars["feed"]) == {"iex"}
    assert "switched from sip to iex" in result.notes[0]


@pytest.mark.parametrize(("status", "name"), [(401, "error_unauthorized.json"), (403, "error_forbidden.json")])
def test_fetch_rejected_key_raises_authentication_failed(standin: StandIn, status: int, name: str) -> None:
    standin.route("/v2/stocks/bars", _reply(name, status))

    with pytest.raises(AuthenticationFailed, match=f"HTTP {status}"):
        _adapter(standin.url).fetch_bars(_minute_request())


def test_fetch_without_secret_key_is_unavailable_and_raises_authentication_failed_without_calling() -> None:
    adapter = alpaca.AlpacaBars(api_key=KEY_PAIR[0], secret_key=None, data_url="http://127.0.0.1:9")

    assert adapter.available() is False
    with pytest.raises(AuthenticationFailed, match="OMNI_ALPACA_SECRET_KEY"):
        adapter.fetch_bars(_minute_request())


def test_fetch_invalid_symbol_422_raises_unknown_symbol(standin: StandIn) -> None:
    standin.route("/v2/stocks/bars", _reply("error_invalid_symbol.json", 422))

    with pytest.raises(UnknownSymbol, match="invalid symbol"):
        _adapter(standin.url).fetch_bars(_minute_request())


def test_fetch_empty_bars_object_raises_unknown_symbol(standin: StandIn) -> None:
    standin.route("/v2/stocks/bars", _reply("bars_empty.json"))

    with pytest.raises(UnknownSymbol, match="no 1Min bars for AAPL"):
        _adapter(standin.url).fetch_bars(_minute_request())


def test_fetch_empty_answer_asks_once_for_the_latest_bar_and_an_unknown_symbol_has_none(standin: StandIn) -> None:
    standin.route("/v2/stocks/bars", _reply("bars_empty.json"))
    standin.route("/v2/stocks/bars/latest", _reply("latest_bars_empty.json"))

    with pytest.raises(UnknownSymbol, match="no latest bar: Alpaca does not know AAPL") as caught:
        _adapter(standin.url).fetch_bars(_minute_request())

    (probe,) = standin.requests_to("/v2/stocks/bars/latest")
    assert probe.query == {"symbols": "AAPL", "feed": "iex"}
    assert caught.value.notes == []


def test_fetch_empty_range_of_a_known_symbol_raises_no_bars_in_range_naming_its_latest_bar(standin: StandIn) -> None:
    standin.route("/v2/stocks/bars", _reply("bars_empty.json"))
    standin.route("/v2/stocks/bars/latest", _reply("latest_bars_AAPL.json"))
    before_listing = BarRequest("AAPL", "1Day", datetime(1979, 1, 2, tzinfo=UTC), datetime(1979, 2, 1, tzinfo=UTC))

    with pytest.raises(NoBarsInRange, match=r"latest bar is 2024-01-02T05:00:00\+00:00, after the range"):
        _adapter(standin.url).fetch_bars(before_listing)


def test_fetch_empty_answer_whose_probe_fails_is_empty_data_not_a_verdict(standin: StandIn) -> None:
    standin.route("/v2/stocks/bars", _reply("bars_empty.json"))
    standin.route("/v2/stocks/bars/latest", _reply("error_internal.json", 500))

    with pytest.raises(EmptyData, match="unknown symbol or empty range, not known yet"):
        _adapter(standin.url).fetch_bars(_minute_request())


def test_fetch_clamped_then_refused_keeps_the_clamp_note_on_the_error(standin: StandIn) -> None:
    # SIP refused after the clamp too, then the IEX call fails: the notes so far travel on the error.
    def answer(seen: Seen) -> Reply:
        if seen.query.get("feed") == "sip":
            return _reply("error_recent_sip.json", 403)
        return _reply("error_internal.json", 500)

    standin.route("/v2/stocks/bars", answer)
    request = BarRequest("AAPL", "1Min", datetime(2024, 6, 3, 11, 0, tzinfo=UTC), datetime(2024, 6, 3, 12, 0, tzinfo=UTC), feed="sip")

    with pytest.raises(ProviderUnavailable) as caught:
        _adapter(standin.url).fetch_bars(request)

    assert any("clamped" in note for note in caught.value.notes)
    assert any("switched from sip to iex" in note for note in caught.value.notes)


def test_fetch_429_raises_rate_limited_with_retry_after_and_no_internal_retry(standin: StandIn) -> None:
    standin.route("/v2/stocks/bars", _reply("error_too_many_requests.json", 429, {"Retry-After": "7"}))

    started = time.monotonic()
    with pytest.raises(RateLimited) as caught:
        _adapter(standin.url).fetch_bars(_minute_request())

    assert caught.value.retry_after_s == 7.0
    assert len(standin.seen) == 1
    assert time.monotonic() - started < 2.0  # alpaca-py would have slept 3 s per retry


@pytest.mark.parametrize("status", [500, 502, 503, 504])
def test_fetch_5xx_raises_provider_unavailable_after_one_call(standin: StandIn, status: int) -> None:
    standin.route("/v2/stocks/bars", _reply("error_internal.json", status))

    with pytest.raises(ProviderUnavailable, match=f"HTTP {status}"):
        _adapter(standin.url).fetch_bars(_minute_request())

    assert len(standin.seen) == 1


def test_fetch_connection_refused_raises_provider_unavailable(closed_port_url: str) -> None:
    with pytest.raises(ProviderUnavailable, match="unreachable"):
        _adapter(closed_port_url).fetch_bars(_minute_request())


def test_fetch_slow_server_times_out_as_provider_unavailable(standin: StandIn) -> None:
    def slow(_seen: Seen) -> Reply:
        time.sleep(1.0)  # the action: a server slower than the client's 0.2 s timeout
        return _reply("bars_AAPL_1Min_page2.json")

    standin.route("/v2/stocks/bars", slow)

    with pytest.raises(ProviderUnavailable, match="Timeout"):
        _adapter(standin.url, timeout_s=0.2).fetch_bars(_minute_request())


def test_fetch_truncated_json_raises_malformed_payload(standin: StandIn) -> None:
    standin.route("/v2/stocks/bars", _reply("bars_truncated.json"))

    with pytest.raises(MalformedPayload, match="not JSON"):
        _adapter(standin.url).fetch_bars(_minute_request())


def test_fetch_bar_without_close_raises_malformed_payload_not_fewer_rows(standin: StandIn) -> None:
    standin.route("/v2/stocks/bars", _reply("bars_AAPL_missing_close.json"))

    with pytest.raises(MalformedPayload, match="bar #1 has no c"):
        _adapter(standin.url).fetch_bars(_minute_request())


def test_fetch_page_token_repeated_forever_raises_malformed_payload(standin: StandIn) -> None:
    standin.route("/v2/stocks/bars", _reply("bars_AAPL_1Min_page1.json"))

    with pytest.raises(MalformedPayload, match="paging does not end"):
        _adapter(standin.url).fetch_bars(_minute_request())

    assert len(standin.seen) == 2


def test_fetch_daily_bars_are_utc_and_land_on_their_session_date(standin: StandIn) -> None:
    standin.route("/v2/stocks/bars", _reply("bars_AAPL_1Day.json"))
    request = BarRequest("AAPL", "1Day", JAN2, datetime(2024, 1, 6, tzinfo=UTC), feed="sip", adjustment="all")

    bars = _adapter(standin.url).fetch_bars(request).bars

    assert str(bars["ts"].dtype) == "datetime64[ns, UTC]"
    # Alpaca stamps daily bars at midnight New York (05:00Z); canonical daily bars sit at 00:00 UTC of the session date.
    assert [ts.isoformat() for ts in bars["ts"]] == [f"2024-01-0{day}T00:00:00+00:00" for day in (2, 3, 4, 5)]
    assert set(bars["feed"]) == {"sip"}
    assert set(bars["adjustment"]) == {"all"}
    assert frames.split_valid(bars)[1].empty


def test_fetch_lower_case_symbol_is_asked_and_labelled_upper_case(standin: StandIn) -> None:
    standin.route("/v2/stocks/bars", _reply("bars_AAPL_1Min_page2.json"))
    request = BarRequest("aapl", "1Min", JAN2.replace(hour=14), JAN2.replace(hour=15))

    bars = _adapter(standin.url).fetch_bars(request).bars

    assert standin.seen[0].query["symbols"] == "AAPL"
    assert set(bars["symbol"]) == {"AAPL"}


def test_from_settings_reads_keys_and_data_url_and_never_shows_the_key(tmp_path: Path, standin: StandIn) -> None:
    env_file = tmp_path / "empty.env"
    env_file.write_text("")
    settings = load_settings(
        {
            "OMNI_ENV_FILE": str(env_file),
            "OMNI_ALPACA_API_KEY": "PKFROMSETTINGS",
            "OMNI_ALPACA_SECRET_KEY": "secret-from-settings",
            "OMNI_ALPACA_DATA_URL": standin.url,
        }
    )
    standin.route("/v2/stocks/bars", _reply("bars_AAPL_1Min_page2.json"))

    adapter = alpaca.from_settings(settings)
    adapter.fetch_bars(_minute_request())

    assert adapter.available()
    assert standin.seen[0].headers["APCA-API-SECRET-KEY"] == "secret-from-settings"
    assert "PKFROMSETTINGS" not in repr(adapter)
    assert "secret-from-settings" not in repr(adapter)


def test_from_settings_without_keys_is_unavailable(tmp_path: Path) -> None:
    env_file = tmp_path / "empty.env"
    env_file.write_text("")

    adapter = alpaca.from_settings(load_settings({"OMNI_ENV_FILE": str(env_file)}))

    assert adapter.available() is False
