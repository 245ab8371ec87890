"""serving_feeds: the feeds rows served for a requested feed are stored under."""

from __future__ import annotations

import pytest

from omni_tasks.marketdata.router import serving_feeds


@pytest.mark.parametrize(
    ("order", "feed", "expected"),
    [
        (["alpaca"], "iex", ("iex",)),
        (["alpaca"], "sip", ("sip",)),
        (["yahoo"], "iex", ("yahoo",)),
        (["alpha_vantage"], "sip", ("alpha_vantage",)),
        (["synthetic"], "iex", ("synthetic",)),
        (["replay"], "iex", ("iex", "replay")),
        (["replay"], "sip", ("sip", "replay")),
        (["alpaca", "yahoo", "alpha_vantage"], "iex", ("iex", "yahoo", "alpha_vantage")),
        (["yahoo", "alpaca"], "sip", ("yahoo", "sip")),
        (["synthetic", "replay", "alpaca"], "iex", ("synthetic", "iex", "replay")),
        (["alpaca", "replay", "alpaca", "yahoo", "yahoo"], "iex", ("iex", "replay", "yahoo")),
        ([], "sip", ("sip",)),
    ],
    ids=[
        "alpaca-iex",
        "alpaca-sip",
        "yahoo",
        "alpha_vantage",
        "synthetic",
        "replay-iex",
        "replay-sip",
        "default-order",
        "order-kept",
        "replay-in-the-middle",
        "no-duplicates",
        "no-providers",
    ],
)
def test_serving_feeds_are_the_feeds_each_provider_stores_rows_under(order: list[str], feed: str, expected: tuple[str, ...]) -> None:
    assert serving_feeds(order, feed) == expected


def test_serving_feeds_accepts_any_sequence_and_returns_a_tuple() -> None:
    assert serving_feeds(("alpaca", "synthetic"), "iex") == ("iex", "synthetic")
    assert isinstance(serving_feeds(["yahoo"], "iex"), tuple)
