"""Alpha Vantage adapter: call building and body mapping on their own, then the real alpha_vantage
TimeSeries against a local stand-in serving recorded /query answers (tests/fixtures/alpha_vantage/).

alpha_vantage has no base-URL option and fetches with a bare ``requests.get``; the adapter keeps the
package's URL building and answer unpacking and replaces its HTTP step (``_handle_api_call``) in a
subclass that sends the same URL to ``settings.alpha_vantage.base_url``. These tests go through it.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pandas as pd
import pytest

from omni_tasks.contracts import bars as frames
from omni_tasks.marketdata.errors import (
    AuthenticationFailed,
    EmptyData,
    MalformedPayload,
    NoBarsInRange,
    ProviderUnavailable,
    QuotaExhausted,
    RateLimited,
    UnknownSymbol,
    UnsupportedRequest,
)
from omni_tasks.marketdata.providers.alpha_vantage import client as alpha_vantage
from omni_tasks.marketdata.providers.alpha_vantage import mappings as alpha_vantage_mappings
from omni_tasks.marketdata.providers.alpha_vantage import requests as alpha_vantage_requests
from omni_tasks.marketdata.providers.base import BarProvider, BarRequest
from omni_tasks.settings import load_settings

from .conftest import Reply, StandIn, fixture_bytes

KEY = "AVTESTKEY0000042"
DAILY = BarRequest("AAPL", "1Day", datetime(2024, 1, 2, tzinfo=UTC), datetime(2024, 1, 6, tzinfo=UTC))
FIVE_MIN = BarRequest("AAPL", "5Min", datetime(2024, 1, 2, 14, 30, tzinfo=UTC), datetime(2024, 1, 2, 15, 0, tzinfo=UTC))


def _reply(name: str, status: int = 200, headers: dict[str, str] | None = None) -> Reply:
    return Reply(status, fixture_bytes("alpha_vantage", name), headers or {})


def _adapter(url: str, *, key: str | None = KEY) -> alpha_vantage.AlphaVantageBars:
    return alpha_vantage.AlphaVantageBars(api_key=key, base_url=url, timeout_s=5.0)


def _json(name: str) -> object:
    import json

    return json.loads(fixture_bytes("alpha_vantage", name))


# ---- call building -------------------------------------------------------------------------


def test_calls_for_daily_raw_is_one_full_time_series_daily_call() -> None:
    (call,) = alpha_vantage_requests.calls_for(DAILY)

    assert call.method == "get_daily"
    assert call.kwargs == {"symbol": "AAPL", "outputsize": "full"}
    assert call.series_key == "Time Series (Daily)"


def test_calls_for_daily_adjusted_raises_value_error_raw_only() -> None:
    with pytest.raises(ValueError, match="raw only"):
        alpha_vantage_requests.calls_for(BarRequest("AAPL", "1Day", DAILY.start, DAILY.end, adjustment="all"))


def test_calls_for_intraday_across_a_month_end_is_one_call_per_new_york_month() -> None:
    request = BarRequest("AAPL", "1Hour", datetime(2024, 1, 31, 14, 0, tzinfo=UTC), datetime(2024, 2, 1, 21, 0, tzinfo=UTC), adjustment="all")

    calls = alpha_vantage_requests.calls_for(request)

    assert [call.kwargs["month"] for call in calls] == ["2024-01", "2024-02"]
    assert {call.kwargs["interval"] for call in calls} == {"60min"}
    assert {(call.kwargs["adjusted"], call.kwargs["extended_hours"], call.kwargs["outputsize"]) for call in calls} == {("true", "true", "full")}


def test_months_touched_reads_the_month_in_new_york_not_utc() -> None:
    # 02:00Z on 1 Feb is 21:00 on 31 Jan in New York.
    request = BarRequest("AAPL", "5Min", datetime(2024, 1, 31, 20, 0, tzinfo=UTC), datetime(2024, 2, 1, 2, 0, tzinfo=UTC))

    assert alpha_vantage_requests.months_touched(request) == ["2024-01"]


def test_rebase_moves_the_library_query_url_onto_the_base_url() -> None:
    url = "https://www.alphavantage.co/query?function=TIME_SERIES_DAILY&symbol=AAPL&apikey=K&datatype=json"

    assert alpha_vantage_requests.rebase(url, "http://127.0.0.1:8000/av/") == "http://127.0.0.1:8000/av/query?function=TIME_SERIES_DAILY&symbol=AAPL&apikey=K&datatype=json"
    with pytest.raises(ValueError, match="outside its query endpoint"):
        alpha_vantage_requests.rebase("https://example.com/query?x=1", "http://127.0.0.1:8000")


# ---- body mapping --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("note_rate_limit.json", RateLimited),
        ("information_rate_limit.json", QuotaExhausted),  # "... rate limit is 25 requests per day": the daily quota
        ("information_burst.json", RateLimited),  # "... more sparingly (1 request per second)": a burst, though it quotes the daily limit
        ("information_premium_endpoint.json", UnsupportedRequest),
        ("information_demo_key.json", AuthenticationFailed),
        ("error_invalid_api_call.json", UnknownSymbol),
        ("error_invalid_apikey.json", AuthenticationFailed),
    ],
)
def test_body_error_http_200_body_that_is_not_data_maps_to_an_error(name: str, expected: type) -> None:
    error = alpha_vantage_mappings.body_error(_json(name), symbol="AAPL")

    assert type(error) is expected
    assert error is not None
    assert error.provider == "alpha_vantage"


def test_body_error_series_is_none_and_non_objects_are_malformed() -> None:
    assert alpha_vantage_mappings.body_error(_json("daily_AAPL.json"), symbol="AAPL") is None
    assert isinstance(alpha_vantage_mappings.body_error([], symbol="AAPL"), MalformedPayload)
    assert isinstance(alpha_vantage_mappings.body_error({}, symbol="AAPL"), MalformedPayload)


def test_series_frame_intraday_reads_us_eastern_times_as_utc_oldest_first() -> None:
    payload = _json("intraday_AAPL_5min.json")

    frame = alpha_vantage_mappings.series_frame(payload["Time Series (5min)"], payload["Meta Data"], daily=False)

    assert frame.loc[0, "ts"] == pd.Timestamp("2024-01-02 14:25", tz="UTC")
    assert frame["ts"].is_monotonic_increasing
    assert frame.loc[1, ["open", "high", "low", "close", "volume"]].tolist() == [187.15, 187.5, 187.0, 187.15, 3312021.0]


def test_series_frame_daily_keys_become_naive_session_dates() -> None:
    payload = _json("daily_AAPL.json")

    frame = alpha_vantage_mappings.series_frame(payload["Time Series (Daily)"], payload["Meta Data"], daily=True)

    assert frame["ts"].dt.tz is None
    assert [ts.date().isoformat() for ts in frame["ts"]][:2] == ["2023-12-29", "2024-01-02"]


def test_series_frame_non_number_raises_malformed_naming_row_and_field() -> None:
    payload = _json("daily_AAPL_bad_close.json")

    with pytest.raises(MalformedPayload, match=r"'2024-01-03' close is not a number: 'n/a'"):
        alpha_vantage_mappings.series_frame(payload["Time Series (Daily)"], payload["Meta Data"], daily=True)


def test_series_frame_row_without_volume_raises_malformed_naming_it() -> None:
    series = {"2024-01-02": {"1. open": "1", "2. high": "2", "3. low": "0.5", "4. close": "1.5"}}

    with pytest.raises(MalformedPayload, match="no volume"):
        alpha_vantage_mappings.series_frame(series, {"5. Time Zone": "US/Eastern"}, daily=True)


def test_series_frame_intraday_without_time_zone_raises_malformed() -> None:
    payload = _json("intraday_AAPL_5min.json")
    meta = {key: value for key, value in payload["Meta Data"].items() if "Time Zone" not in key}

    with pytest.raises(MalformedPayload, match="no time zone"):
        alpha_vantage_mappings.series_frame(payload["Time Series (5min)"], meta, daily=False)


# ---- the adapter through alpha_vantage against the stand-in ----------------------------------


def test_alpha_vantage_bars_implements_the_protocol_and_declares_its_daily_quota() -> None:
    adapter = alpha_vantage.AlphaVantageBars(api_key=KEY, daily_quota=75)

    assert isinstance(adapter, BarProvider)
    assert adapter.name == "alpha_vantage"
    assert adapter.capabilities.daily_quota == 75
    assert adapter.capabilities.needs_key
    assert adapter.capabilities.timeframes == set(frames.TIMEFRAMES)


def test_fetch_daily_returns_raw_bars_inside_the_range_on_their_session_dates(standin: StandIn) -> None:
    standin.route("/query", _reply("daily_AAPL.json"))

    result = _adapter(standin.url).fetch_bars(DAILY)

    (seen,) = standin.seen
    assert seen.query == {"function": "TIME_SERIES_DAILY", "symbol": "AAPL", "outputsize": "full", "apikey": KEY, "datatype": "json"}
    bars = result.bars
    assert tuple(bars.columns) == frames.BAR_COLUMNS
    assert [ts.isoformat() for ts in bars["ts"]] == [f"2024-01-0{day}T00:00:00+00:00" for day in (2, 3, 4, 5)]
    assert list(bars["close"]) == [185.64, 184.25, 181.91, 181.18]
    assert set(bars["provider"]) == {"alpha_vantage"}
    assert set(bars["feed"]) == {"alpha_vantage"}
    assert set(bars["adjustment"]) == {"raw"}
    assert frames.split_valid(bars)[1].empty
    assert result.series_start == datetime(2023, 12, 29, tzinfo=UTC), "the whole history's first bar, before the range trimmed it"
    assert result.calls == 1


def test_fetch_intraday_asks_the_month_raw_with_extended_hours_and_returns_utc_bars_in_range(standin: StandIn) -> None:
    standin.route("/query", _reply("intraday_AAPL_5min.json"))

    bars = _adapter(standin.url).fetch_bars(FIVE_MIN).bars

    (seen,) = standin.seen
    assert {key: seen.query[key] for key in ("function", "interval", "outputsize", "month", "extended_hours", "adjusted")} == {
        "function": "TIME_SERIES_INTRADAY", "interval": "5min", "outputsize": "full", "month": "2024-01", "extended_hours": "true", "adjusted": "false",
    }
    assert [ts.strftime("%H:%M") for ts in bars["ts"]] == ["14:30", "14:35", "14:40", "14:45", "14:50", "14:55"]
    assert str(bars["ts"].dtype) == "datetime64[ns, UTC]"
    assert frames.split_valid(bars)[1].empty


def test_fetch_intraday_across_two_months_makes_one_call_each_and_joins_them_in_order(standin: StandIn) -> None:
    standin.route("/query", lambda seen: _reply("intraday_AAPL_5min_2023-12.json" if seen.query["month"] == "2023-12" else "intraday_AAPL_5min.json"))
    request = BarRequest("AAPL", "5Min", datetime(2023, 12, 29, 20, 0, tzinfo=UTC), datetime(2024, 1, 2, 14, 40, tzinfo=UTC))

    result = _adapter(standin.url).fetch_bars(request)

    assert [seen.query["month"] for seen in standin.seen] == ["2023-12", "2024-01"]
    assert [ts.isoformat() for ts in result.bars["ts"]] == [
        "2023-12-29T20:50:00+00:00", "2023-12-29T20:55:00+00:00", "2024-01-02T14:25:00+00:00", "2024-01-02T14:30:00+00:00", "2024-01-02T14:35:00+00:00",
    ]
    assert result.calls == 2


@pytest.mark.parametrize("name", ["note_rate_limit.json", "information_rate_limit.json"])
def test_fetch_http_200_note_or_information_body_raises_rate_limited(standin: StandIn, name: str) -> None:
    standin.route("/query", _reply(name))

    with pytest.raises(RateLimited, match="Thank you for using Alpha Vantage"):
        _adapter(standin.url).fetch_bars(DAILY)


def test_fetch_information_premium_endpoint_raises_unsupported_request_not_rate_limited(standin: StandIn) -> None:
    standin.route("/query", _reply("information_premium_endpoint.json"))

    with pytest.raises(UnsupportedRequest, match="premium endpoint"):
        _adapter(standin.url).fetch_bars(DAILY)


def test_fetch_error_message_invalid_api_call_raises_unknown_symbol(standin: StandIn) -> None:
    standin.route("/query", _reply("error_invalid_api_call.json"))

    with pytest.raises(UnknownSymbol, match="Invalid API call"):
        _adapter(standin.url).fetch_bars(BarRequest("ZZZZ", "1Day", DAILY.start, DAILY.end))


@pytest.mark.parametrize("name", ["error_invalid_apikey.json", "information_demo_key.json"])
def test_fetch_bad_key_raises_authentication_failed(standin: StandIn, name: str) -> None:
    standin.route("/query", _reply(name))

    with pytest.raises(AuthenticationFailed, match="OMNI_ALPHA_VANTAGE_API_KEY"):
        _adapter(standin.url).fetch_bars(DAILY)


def test_fetch_without_key_is_unavailable_and_raises_authentication_failed(standin: StandIn) -> None:
    adapter = _adapter(standin.url, key=None)

    assert adapter.available() is False
    with pytest.raises(AuthenticationFailed):
        adapter.fetch_bars(DAILY)
    assert standin.seen == []


@pytest.mark.parametrize("status", [500, 502, 503])
def test_fetch_5xx_raises_provider_unavailable(standin: StandIn, status: int) -> None:
    standin.route("/query", Reply(status, b"<html><body>Bad Gateway</body></html>", content_type="text/html"))

    with pytest.raises(ProviderUnavailable, match=f"HTTP {status}"):
        _adapter(standin.url).fetch_bars(DAILY)


def test_fetch_429_raises_rate_limited_with_retry_after(standin: StandIn) -> None:
    standin.route("/query", Reply(429, b"Too Many Requests", {"Retry-After": "60"}, content_type="text/plain"))

    with pytest.raises(RateLimited) as caught:
        _adapter(standin.url).fetch_bars(DAILY)

    assert caught.value.retry_after_s == 60.0


def test_fetch_truncated_json_raises_malformed_payload(standin: StandIn) -> None:
    standin.route("/query", _reply("daily_AAPL_truncated.json"))

    with pytest.raises(MalformedPayload, match="not JSON"):
        _adapter(standin.url).fetch_bars(DAILY)


def test_fetch_answer_without_the_series_raises_malformed_naming_the_key(standin: StandIn) -> None:
    standin.route("/query", Reply(200, b'{"Meta Data": {"1. Information": "Daily Prices", "2. Symbol": "AAPL"}}'))

    with pytest.raises(MalformedPayload, match=r"no 'Time Series \(Daily\)' key"):
        _adapter(standin.url).fetch_bars(DAILY)


def test_fetch_row_with_a_non_number_raises_malformed_not_fewer_rows(standin: StandIn) -> None:
    standin.route("/query", _reply("daily_AAPL_bad_close.json"))

    with pytest.raises(MalformedPayload, match="2024-01-03"):
        _adapter(standin.url).fetch_bars(DAILY)


def test_fetch_range_outside_the_series_raises_no_bars_in_range_naming_where_the_series_runs(standin: StandIn) -> None:
    # The answer is the symbol's whole series: the symbol is known, the range (before its history) is empty.
    standin.route("/query", _reply("daily_AAPL.json"))

    with pytest.raises(NoBarsInRange, match=r"6 outside it; its series runs 2023-12-29\.\.2024-01-08"):
        _adapter(standin.url).fetch_bars(BarRequest("AAPL", "1Day", datetime(2023, 6, 1, tzinfo=UTC), datetime(2023, 6, 3, tzinfo=UTC)))


def test_fetch_empty_series_object_raises_empty_data(standin: StandIn) -> None:
    import json

    body = json.loads(fixture_bytes("alpha_vantage", "daily_AAPL.json"))
    body["Time Series (Daily)"] = {}
    standin.route("/query", Reply(200, json.dumps(body).encode()))

    with pytest.raises(EmptyData, match="0 outside it"):
        _adapter(standin.url).fetch_bars(DAILY)


def test_fetch_connection_refused_raises_provider_unavailable_without_the_key_in_the_message(closed_port_url: str) -> None:
    with pytest.raises(ProviderUnavailable) as caught:
        _adapter(closed_port_url).fetch_bars(DAILY)

    assert KEY not in str(caught.value)
    assert caught.value.__cause__ is None
    assert caught.value.__suppress_context__


def test_from_settings_reads_key_base_url_and_daily_quota(standin: StandIn, tmp_path: Path) -> None:
    env_file = tmp_path / "empty.env"
    env_file.write_text("")
    settings = load_settings(
        {
            "OMNI_ENV_FILE": str(env_file),
            "OMNI_ALPHA_VANTAGE_API_KEY": "AVFROMSETTINGS",
            "OMNI_ALPHA_VANTAGE_BASE_URL": standin.url,
            "OMNI_ALPHA_VANTAGE_DAILY_QUOTA": "500",
        }
    )
    standin.route("/query", _reply("daily_AAPL.json"))

    adapter = alpha_vantage.from_settings(settings)
    adapter.fetch_bars(DAILY)

    assert adapter.capabilities.daily_quota == 500
    assert standin.seen[0].query["apikey"] == "AVFROMSETTINGS"
    assert "AVFROMSETTINGS" not in repr(adapter)
