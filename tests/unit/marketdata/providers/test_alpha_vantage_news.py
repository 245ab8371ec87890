"""Alpha Vantage NEWS_SENTIMENT: the real alpha_vantage AlphaIntelligence builds the call, our HTTP step sends it
to a local stand-in serving answers in the real format (tests/fixtures/alpha_vantage/news_*.json), and the
mapping reads them: scores sent as strings, times without a zone, a null banner image, crypto tickers."""

from __future__ import annotations

from datetime import UTC, datetime
from zoneinfo import ZoneInfo

import pytest

from omni_tasks.marketdata.errors import AuthenticationFailed, MalformedPayload, RateLimited, UnknownSymbol, UnsupportedRequest
from omni_tasks.marketdata.providers.alpha_vantage import news as alpha_vantage_news
from omni_tasks.marketdata.providers.alpha_vantage import news_mappings as alpha_vantage_news_mappings

from .conftest import Reply, StandIn, fixture_bytes

KEY = "AVNEWSKEY0000042"


def _reply(name: str, status: int = 200) -> Reply:
    return Reply(status, fixture_bytes("alpha_vantage", name))


def _client(url: str, *, key: str | None = KEY, zone: str = "UTC") -> alpha_vantage_news.AlphaVantageNews:
    return alpha_vantage_news.AlphaVantageNews(api_key=key, base_url=url, timeout_s=5.0, time_zone=zone)


def test_fetch_sends_the_library_news_sentiment_call_with_ticker_time_from_sort_limit_and_key(standin: StandIn) -> None:
    standin.route("/query", _reply("news_sentiment_AAPL.json"))

    page = _client(standin.url).fetch("aapl", time_from=datetime(2024, 1, 2, 9, 30, 45, tzinfo=UTC), limit=1000)

    (seen,) = standin.seen
    assert seen.path == "/query"
    assert seen.query == {
        "function": "NEWS_SENTIMENT",
        "tickers": "AAPL",
        "time_from": "20240102T0930",
        "sort": "LATEST",
        "limit": "1000",
        "apikey": KEY,
        "datatype": "json",
    }
    assert page.items == 3
    assert page.calls == 1
    print(f"articles read: {len(page.articles)} of {page.items}; rejected: {len(page.rejected)}")
    assert len(page.articles) == 3
    assert page.rejected == []


def test_fetch_reads_provenance_scores_from_strings_and_times_as_utc(standin: StandIn) -> None:
    standin.route("/query", _reply("news_sentiment_AAPL.json"))

    first, second, third = _client(standin.url).fetch("AAPL").articles

    assert first.url.startswith("https://www.benzinga.com/")
    assert first.source == "Benzinga"
    assert first.source_domain == "www.benzinga.com"
    assert first.category == "Analyst Ratings"
    assert first.published_at == datetime(2024, 1, 2, 15, 30, tzinfo=UTC)
    assert first.overall_sentiment_score == pytest.approx(-0.214592)
    assert first.overall_sentiment_label == "Somewhat-Bearish"
    assert [(t.ticker, t.relevance_score, t.sentiment_score, t.sentiment_label) for t in first.tickers] == [
        ("AAPL", 0.857612, -0.392415, "Bearish"),
        ("BCS", 0.151362, 0.0, "Neutral"),
    ]
    assert first.topics == [{"topic": "Technology", "relevance_score": 1.0}, {"topic": "Financial Markets", "relevance_score": 0.316726}]
    assert second.banner_image is None
    assert second.authors == []
    assert "CRYPTO:BTC" in {t.ticker for t in second.tickers}
    # Keys in another order (url before title) and no banner_image key at all: read the same.
    assert third.title.startswith("Apple (AAPL) Vision Pro")
    assert third.banner_image is None


def test_fetch_time_published_read_in_the_configured_zone(standin: StandIn) -> None:
    standin.route("/query", _reply("news_sentiment_AAPL.json"))

    first = _client(standin.url, zone="America/New_York").fetch("AAPL").articles[0]

    assert first.published_at == datetime(2024, 1, 2, 20, 30, tzinfo=UTC)  # 15:30 EST


def test_fetch_empty_feed_is_no_news_not_an_error(standin: StandIn) -> None:
    standin.route("/query", _reply("news_sentiment_empty.json"))

    page = _client(standin.url).fetch("AAPL")

    assert page.articles == []
    assert page.items == 0


def test_fetch_article_with_a_bad_score_is_rejected_with_the_reason_others_kept(standin: StandIn) -> None:
    standin.route("/query", _reply("news_sentiment_one_bad_score.json"))

    page = _client(standin.url).fetch("AAPL")

    assert [a.source for a in page.articles] == ["Reuters"]
    (bad,) = page.rejected
    assert bad.index == 1
    assert "relevance_score is not a number: 'n/a'" in bad.reason


@pytest.mark.parametrize("name", ["note_rate_limit.json", "information_rate_limit.json"])
def test_fetch_note_or_information_body_is_a_rate_limit_not_an_empty_feed(standin: StandIn, name: str) -> None:
    standin.route("/query", _reply(name))

    with pytest.raises(RateLimited, match="Thank you for using Alpha Vantage"):
        _client(standin.url).fetch("AAPL")


def test_fetch_invalid_inputs_information_is_an_unknown_symbol(standin: StandIn) -> None:
    standin.route("/query", _reply("information_invalid_inputs.json"))

    with pytest.raises(UnknownSymbol, match="Invalid inputs"):
        _client(standin.url).fetch("ZZZZ")


def test_fetch_answer_without_a_feed_list_is_malformed(standin: StandIn) -> None:
    standin.route("/query", Reply(200, b'{"items": "0", "sentiment_score_definition": "x"}'))

    with pytest.raises(MalformedPayload, match="no 'feed' list"):
        _client(standin.url).fetch("AAPL")


def test_fetch_refuses_without_key_a_bad_symbol_or_limit_before_any_request(standin: StandIn) -> None:
    with pytest.raises(AuthenticationFailed):
        _client(standin.url, key=None).fetch("AAPL")
    with pytest.raises(UnsupportedRequest):
        _client(standin.url).fetch("AAPL;DROP")
    with pytest.raises(UnsupportedRequest, match="50 or 1000"):
        _client(standin.url).fetch("AAPL", limit=7)
    assert standin.seen == []


def test_published_at_accepts_a_trailing_z_and_minutes_and_refuses_garbage() -> None:
    zone = ZoneInfo("America/New_York")

    assert alpha_vantage_news_mappings.published_at("20240103T165940Z", zone=zone) == datetime(2024, 1, 3, 16, 59, 40, tzinfo=UTC)
    assert alpha_vantage_news_mappings.published_at("20240103T1659", zone=ZoneInfo("UTC")) == datetime(2024, 1, 3, 16, 59, tzinfo=UTC)
    with pytest.raises(MalformedPayload, match="not YYYYMMDDTHHMMSS"):
        alpha_vantage_news_mappings.published_at("2024-01-03 16:59", zone=zone)
