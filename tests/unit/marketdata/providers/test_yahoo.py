"""Yahoo adapter: request building, URL re-basing and frame mapping on their own, then the real
yfinance against a local stand-in serving recorded v8 chart payloads (tests/fixtures/yahoo/).

yfinance has no base-URL option; the adapter gives it an HTTP session (yfinance's public
``session=`` argument) that re-bases Yahoo URLs onto ``settings.yahoo.base_url``, so here every
request yfinance makes, cookie and crumb included, reaches the stand-in.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from curl_cffi.requests.exceptions import ConnectionError as CurlConnectionError
from yfinance.exceptions import YFPricesMissingError, YFRateLimitError, YFTzMissingError

from omni_tasks.contracts import bars as frames
from omni_tasks.marketdata.errors import (
    EmptyData,
    MalformedPayload,
    ProviderUnavailable,
    RateLimited,
    UnknownSymbol,
    UnsupportedRequest,
)
from omni_tasks.marketdata.providers.base import BarProvider, BarRequest
from omni_tasks.marketdata.providers.yahoo import client as yahoo
from omni_tasks.marketdata.providers.yahoo import mappings as yahoo_mappings
from omni_tasks.marketdata.providers.yahoo import requests as yahoo_requests
from omni_tasks.settings import load_settings

from .conftest import Reply, StandIn, fixture_bytes

DAILY = BarRequest("AAPL", "1Day", datetime(2024, 1, 2, tzinfo=UTC), datetime(2024, 1, 6, tzinfo=UTC), adjustment="split")
FIVE_MIN = BarRequest("AAPL", "5Min", datetime(2024, 1, 2, 14, 30, tzinfo=UTC), datetime(2024, 1, 2, 15, 0, tzinfo=UTC), adjustment="split")
CHART = "/v8/finance/chart/"

# yfinance 1.7 still passes inplace= to pandas 3.1 (its warning, not ours).
pytestmark = pytest.mark.filterwarnings("ignore:The inplace keyword")


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """yfinance's cache folder for these tests (it is per process: the first adapter sets it)."""
    return tmp_path_factory.mktemp("yfinance")


@pytest.fixture
def yahoo_standin(standin: StandIn) -> StandIn:
    standin.route("/v1/test/getcrumb", Reply(200, fixture_bytes("yahoo", "getcrumb.txt"), content_type="text/plain"))
    return standin


def _adapter(url: str, cache_dir: Path) -> yahoo.YahooBars:
    return yahoo.YahooBars(base_url=url, cache_dir=cache_dir, timeout_s=5.0)


def _chart(name: str, status: int = 200) -> Reply:
    return Reply(status, fixture_bytes("yahoo", name))


# ---- request building and URL re-basing ----------------------------------------------------


def test_history_kwargs_split_is_auto_adjust_false_and_all_is_true() -> None:
    split = yahoo_requests.history_kwargs(DAILY, timeout_s=3.0)
    everything = yahoo_requests.history_kwargs(BarRequest("AAPL", "1Hour", DAILY.start, DAILY.end, adjustment="all"), timeout_s=3.0)

    assert (split["auto_adjust"], split["interval"], split["start"], split["end"]) == (False, "1d", DAILY.start, DAILY.end)
    assert (everything["auto_adjust"], everything["interval"]) == (True, "1h")
    assert split["repair"] is False
    assert split["prepost"] is True
    assert split["keepna"] is False
    assert split["timeout"] == 3.0


@pytest.mark.parametrize("adjustment", ["raw", "dividend"])
def test_history_kwargs_raw_or_dividend_raises_value_error_saying_yahoo_is_split_adjusted(adjustment: str) -> None:
    with pytest.raises(ValueError, match="split-adjusted"):
        yahoo_requests.history_kwargs(BarRequest("AAPL", "1Day", DAILY.start, DAILY.end, adjustment=adjustment), timeout_s=3.0)


def test_rebase_default_base_leaves_every_url_alone() -> None:
    for url in ("https://query2.finance.yahoo.com/v8/finance/chart/AAPL?interval=1d", "https://fc.yahoo.com", "https://query1.finance.yahoo.com/v1/test/getcrumb"):
        assert yahoo_requests.rebase(url, yahoo_requests.DEFAULT_BASE_URL) == url


def test_rebase_standin_base_moves_every_yahoo_url_keeping_path_and_query() -> None:
    base = "http://127.0.0.1:8123/yahoo/"

    assert yahoo_requests.rebase("https://query2.finance.yahoo.com/v8/finance/chart/AAPL?interval=1d", base) == "http://127.0.0.1:8123/yahoo/v8/finance/chart/AAPL?interval=1d"
    assert yahoo_requests.rebase("https://query1.finance.yahoo.com/v1/test/getcrumb", base) == "http://127.0.0.1:8123/yahoo/v1/test/getcrumb"
    assert yahoo_requests.rebase("https://fc.yahoo.com", base) == "http://127.0.0.1:8123/yahoo"
    assert yahoo_requests.rebase("https://example.com/x", base) == "https://example.com/x"


def test_rebase_other_yahoo_base_moves_only_the_chart_host() -> None:
    base = "https://query1.finance.yahoo.com"

    assert yahoo_requests.rebase("https://query2.finance.yahoo.com/v8/finance/chart/AAPL", base) == "https://query1.finance.yahoo.com/v8/finance/chart/AAPL"
    assert yahoo_requests.rebase("https://fc.yahoo.com", base) == "https://fc.yahoo.com"


# ---- frame mapping -------------------------------------------------------------------------


def _yf_frame(index: pd.DatetimeIndex, columns: list[str] | None = None) -> pd.DataFrame:
    columns = columns or ["Open", "High", "Low", "Close", "Adj Close", "Volume"]
    values = {"open": 10.0, "high": 11.0, "low": 9.0, "close": 10.5, "adjclose": 10.2, "volume": 1000.0}
    return pd.DataFrame({name: [values[name.replace(" ", "").replace("_", "").lower()]] * len(index) for name in columns}, index=index)


def test_history_frame_capitalised_columns_maps_close_not_adj_close() -> None:
    index = pd.DatetimeIndex([pd.Timestamp("2024-01-02 09:30", tz="America/New_York")], name="Datetime")

    frame = yahoo_mappings.history_frame(_yf_frame(index), timeframe="5Min", source_tz="America/New_York")

    assert list(frame.columns) == ["ts", "open", "high", "low", "close", "volume"]
    assert frame.loc[0, "close"] == 10.5
    assert frame.loc[0, "ts"] == pd.Timestamp("2024-01-02 14:30", tz="UTC")


def test_history_frame_lower_case_and_download_style_multiindex_columns_are_read() -> None:
    index = pd.DatetimeIndex([pd.Timestamp("2024-01-02", tz="America/New_York")], name="Date")
    lower = _yf_frame(index, ["open", "high", "low", "close", "adj_close", "volume"])
    download = _yf_frame(index)
    download.columns = pd.MultiIndex.from_product([download.columns, ["AAPL"]], names=["Price", "Ticker"])

    for df in (lower, download):
        frame = yahoo_mappings.history_frame(df, timeframe="1Day", source_tz="America/New_York")
        assert frame.loc[0, "close"] == 10.5
        assert frame.loc[0, "volume"] == 1000.0


def test_history_frame_naive_daily_index_keeps_its_session_dates() -> None:
    index = pd.DatetimeIndex([pd.Timestamp("2024-01-02"), pd.Timestamp("2024-07-01")], name="Date")

    frame = yahoo_mappings.history_frame(_yf_frame(index), timeframe="1Day", source_tz="America/New_York")
    bars = frames.canonical_bars(frame, symbol="AAPL", timeframe="1Day", provider="yahoo", feed="yahoo", adjustment="split")

    assert [ts.isoformat() for ts in bars["ts"]] == ["2024-01-02T00:00:00+00:00", "2024-07-01T00:00:00+00:00"]


def test_history_frame_daily_index_east_of_utc_lands_on_the_local_session_date() -> None:
    # Midnight in Tokyo is 15:00Z the day before: converting to UTC first would date the bar wrongly.
    index = pd.DatetimeIndex([pd.Timestamp("2024-01-04", tz="Asia/Tokyo")], name="Date")

    frame = yahoo_mappings.history_frame(_yf_frame(index), timeframe="1Day", source_tz="Asia/Tokyo")
    bars = frames.canonical_bars(frame, symbol="TM", timeframe="1Day", provider="yahoo", feed="yahoo", adjustment="split")

    assert bars.loc[0, "ts"] == pd.Timestamp("2024-01-04", tz="UTC")


def test_history_frame_naive_intraday_index_is_read_in_the_exchange_zone() -> None:
    index = pd.DatetimeIndex([pd.Timestamp("2024-07-01 09:30")], name="Datetime")

    frame = yahoo_mappings.history_frame(_yf_frame(index), timeframe="1Min", source_tz="America/New_York")

    assert frame.loc[0, "ts"] == pd.Timestamp("2024-07-01 13:30", tz="UTC")


def test_history_frame_without_volume_raises_malformed_naming_the_column() -> None:
    index = pd.DatetimeIndex([pd.Timestamp("2024-01-02", tz="America/New_York")])

    with pytest.raises(MalformedPayload, match="no volume column"):
        yahoo_mappings.history_frame(_yf_frame(index, ["Open", "High", "Low", "Close"]), timeframe="1Day", source_tz="America/New_York")


def test_chart_error_404_not_found_is_unknown_symbol_and_5xx_unavailable_and_429_left_to_yfinance() -> None:
    not_found = fixture_bytes("yahoo", "chart_not_found.json").decode()

    assert isinstance(yahoo_mappings.chart_error(404, not_found, symbol="ZZZZ"), UnknownSymbol)
    assert isinstance(yahoo_mappings.chart_error(503, "<html>Will be right back</html>", symbol="AAPL"), ProviderUnavailable)
    assert yahoo_mappings.chart_error(429, "Too Many Requests", symbol="AAPL") is None
    assert yahoo_mappings.chart_error(404, "not json", symbol="AAPL") is None
    assert yahoo_mappings.chart_error(200, "{}", symbol="AAPL") is None


@pytest.mark.parametrize(
    ("exc", "expected"),
    [
        (YFRateLimitError(), RateLimited),
        (YFTzMissingError("ZZZZ"), UnknownSymbol),
        (YFPricesMissingError("AAPL", "(1d 2024-01-02 -> 2024-01-06)"), EmptyData),
        (YFPricesMissingError("ZZZZ", "", yahoo_reason="No data found, symbol may be delisted"), UnknownSymbol),
        (YFPricesMissingError("AAPL", "", yahoo_reason="1m data not available for startTime=1 and endTime=2. The requested range must be within the last 30 days."), UnsupportedRequest),
        (json.JSONDecodeError("Expecting value", "<html>", 0), MalformedPayload),
        (KeyError("close"), MalformedPayload),
        (CurlConnectionError("Failed to connect"), ProviderUnavailable),
    ],
)
def test_error_for_yfinance_exception_maps_to_the_error_hierarchy(exc: BaseException, expected: type) -> None:
    error = yahoo_mappings.error_for(exc, symbol="AAPL")

    assert type(error) is expected
    assert error.provider == "yahoo"


# ---- the adapter through yfinance against the stand-in --------------------------------------


def test_yahoo_bars_implements_the_provider_protocol_without_a_key(cache_dir: Path) -> None:
    adapter = _adapter("http://127.0.0.1:9", cache_dir)

    assert isinstance(adapter, BarProvider)
    assert adapter.name == "yahoo"
    assert adapter.available()
    assert adapter.capabilities.adjustments == {"split", "all"}
    assert adapter.capabilities.timeframes == set(frames.TIMEFRAMES)


def test_fetch_daily_chart_gives_split_adjusted_close_on_utc_session_dates_with_provenance(yahoo_standin: StandIn, cache_dir: Path) -> None:
    yahoo_standin.route(CHART + "AAPL", _chart("chart_AAPL_1d.json"))

    result = _adapter(yahoo_standin.url, cache_dir).fetch_bars(DAILY)

    bars = result.bars
    assert tuple(bars.columns) == frames.BAR_COLUMNS
    assert [ts.isoformat() for ts in bars["ts"]] == [f"2024-01-0{day}T00:00:00+00:00" for day in (2, 3, 4, 5)]
    assert np.allclose(bars["close"], [185.64, 184.25, 181.91, 181.18])  # Close, not Adj Close
    assert list(bars["volume"]) == [82488700, 58414500, 71983600, 62303300]
    assert set(bars["provider"]) == {"yahoo"}
    assert set(bars["feed"]) == {"yahoo"}
    assert set(bars["adjustment"]) == {"split"}
    assert bars["vwap"].isna().all()
    assert bars["trade_count"].isna().all()
    assert frames.split_valid(bars)[1].empty
    history_call = [seen for seen in yahoo_standin.requests_to(CHART + "AAPL") if "period1" in seen.query][-1]
    assert (history_call.query["period1"], history_call.query["period2"], history_call.query["interval"]) == ("1704153600", "1704499200", "1d")
    assert yahoo_standin.requests_to("/v1/test/getcrumb"), "the crumb request reached the stand-in, not Yahoo"
    assert result.calls >= 1


def test_fetch_daily_all_adjustment_serves_yahoos_adjusted_prices(yahoo_standin: StandIn, cache_dir: Path) -> None:
    yahoo_standin.route(CHART + "AAPL", _chart("chart_AAPL_1d.json"))

    bars = _adapter(yahoo_standin.url, cache_dir).fetch_bars(BarRequest("AAPL", "1Day", DAILY.start, DAILY.end, adjustment="all")).bars

    assert np.allclose(bars["close"], [184.73497, 183.35175, 181.02318, 180.29672])
    assert set(bars["adjustment"]) == {"all"}
    assert frames.split_valid(bars)[1].empty


def test_fetch_intraday_chart_converts_new_york_times_to_utc_and_drops_the_null_bar(yahoo_standin: StandIn, cache_dir: Path) -> None:
    yahoo_standin.route(CHART + "AAPL", _chart("chart_AAPL_5m.json"))

    bars = _adapter(yahoo_standin.url, cache_dir).fetch_bars(FIVE_MIN).bars

    assert [ts.strftime("%H:%M") for ts in bars["ts"]] == ["14:30", "14:35", "14:40", "14:50", "14:55"]
    assert str(bars["ts"].dtype) == "datetime64[ns, UTC]"
    assert not bars[["open", "high", "low", "close"]].isna().any().any()
    assert set(bars["timeframe"]) == {"5Min"}
    assert frames.split_valid(bars)[1].empty


def test_fetch_empty_chart_raises_empty_data(yahoo_standin: StandIn, cache_dir: Path) -> None:
    yahoo_standin.route(CHART + "AAPL", _chart("chart_AAPL_1d_empty.json"))

    with pytest.raises(EmptyData, match="no price data"):
        _adapter(yahoo_standin.url, cache_dir).fetch_bars(DAILY)


def test_fetch_unknown_symbol_404_raises_unknown_symbol(yahoo_standin: StandIn, cache_dir: Path) -> None:
    yahoo_standin.route(CHART + "ZZZZ", _chart("chart_not_found.json", 404))

    with pytest.raises(UnknownSymbol, match="symbol may be delisted"):
        _adapter(yahoo_standin.url, cache_dir).fetch_bars(BarRequest("ZZZZ", "1Day", DAILY.start, DAILY.end, adjustment="split"))


def test_fetch_429_raises_rate_limited_from_yfinances_rate_limit_error(yahoo_standin: StandIn, cache_dir: Path) -> None:
    yahoo_standin.route(CHART + "AAPL", Reply(429, fixture_bytes("yahoo", "too_many_requests.txt"), content_type="text/plain"))

    with pytest.raises(RateLimited) as caught:
        _adapter(yahoo_standin.url, cache_dir).fetch_bars(DAILY)

    assert isinstance(caught.value.__cause__, YFRateLimitError)


@pytest.mark.parametrize("status", [500, 503])
def test_fetch_5xx_raises_provider_unavailable(yahoo_standin: StandIn, cache_dir: Path, status: int) -> None:
    yahoo_standin.route(CHART + "AAPL", Reply(status, b"<html><body>Will be right back...</body></html>", content_type="text/html"))

    with pytest.raises(ProviderUnavailable, match=f"HTTP {status}"):
        _adapter(yahoo_standin.url, cache_dir).fetch_bars(DAILY)


def test_fetch_after_a_5xx_asks_yahoo_again_instead_of_replaying_the_failure(yahoo_standin: StandIn, cache_dir: Path) -> None:
    yahoo_standin.route(CHART + "AAPL", [Reply(503, b"<html>down</html>", content_type="text/html"), _chart("chart_AAPL_1d.json")])
    adapter = _adapter(yahoo_standin.url, cache_dir)

    with pytest.raises(ProviderUnavailable):
        adapter.fetch_bars(DAILY)
    bars = adapter.fetch_bars(DAILY).bars

    assert len(bars) == 4


def test_fetch_truncated_json_raises_malformed_payload(yahoo_standin: StandIn, cache_dir: Path) -> None:
    yahoo_standin.route(CHART + "AAPL", _chart("chart_truncated.json"))

    with pytest.raises(MalformedPayload, match="not JSON"):
        _adapter(yahoo_standin.url, cache_dir).fetch_bars(DAILY)


def test_fetch_chart_without_close_array_raises_malformed_payload(yahoo_standin: StandIn, cache_dir: Path) -> None:
    yahoo_standin.route(CHART + "AAPL", _chart("chart_AAPL_1d_no_close.json"))

    with pytest.raises(MalformedPayload, match="close"):
        _adapter(yahoo_standin.url, cache_dir).fetch_bars(DAILY)


def test_fetch_connection_refused_raises_provider_unavailable(closed_port_url: str, cache_dir: Path) -> None:
    with pytest.raises(ProviderUnavailable):
        _adapter(closed_port_url, cache_dir).fetch_bars(BarRequest("MSFT", "1Day", DAILY.start, DAILY.end, adjustment="split"))


def test_fetch_raw_adjustment_raises_unsupported_request_without_calling(yahoo_standin: StandIn, cache_dir: Path) -> None:
    with pytest.raises(UnsupportedRequest, match="split-adjusted"):
        _adapter(yahoo_standin.url, cache_dir).fetch_bars(BarRequest("AAPL", "1Day", DAILY.start, DAILY.end, adjustment="raw"))

    assert yahoo_standin.seen == []


def test_from_settings_base_url_points_yfinance_at_the_stand_in(yahoo_standin: StandIn, tmp_path: Path) -> None:
    env_file = tmp_path / "empty.env"
    env_file.write_text("")
    settings = load_settings({"OMNI_ENV_FILE": str(env_file), "OMNI_YAHOO_BASE_URL": yahoo_standin.url, "OMNI_DATA_DIR": str(tmp_path / "data")})
    yahoo_standin.route(CHART + "AAPL", _chart("chart_AAPL_1d.json"))

    bars = yahoo.from_settings(settings).fetch_bars(DAILY).bars

    assert len(bars) == 4
    assert yahoo_standin.requests_to(CHART + "AAPL")


def test_from_settings_disabled_is_unavailable(tmp_path: Path) -> None:
    env_file = tmp_path / "empty.env"
    env_file.write_text("")

    adapter = yahoo.from_settings(load_settings({"OMNI_ENV_FILE": str(env_file), "OMNI_YAHOO_ENABLED": "false", "OMNI_DATA_DIR": str(tmp_path)}))

    assert adapter.available() is False
