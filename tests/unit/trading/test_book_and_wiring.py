"""The book's JSON contract (cheap parse, garbage is None, exact decimals), the Alpaca wire mappings, and make_venue."""

from __future__ import annotations

import json
import secrets
from dataclasses import dataclass
from datetime import date
from decimal import Decimal as D
from pathlib import Path

import pytest
import requests
from alpaca.common.exceptions import APIError

from omni_tasks.contracts.portfolio import BookPosition, PortfolioBook, book_json, decimal_text, parse_book
from omni_tasks.contracts.venue import OPEN_STATUSES, VenueAccountView, VenuePosition
from omni_tasks.core.errors import ConfigError
from omni_tasks.core.runtime import Runtime
from omni_tasks.settings import load_settings
from omni_tasks.trading.alpaca_paper import STATUS_MAP, AlpacaPaperVenue, _order_of, _position_of, broker_error
from omni_tasks.trading.simulated import SimulatedVenue
from omni_tasks.trading.wiring import make_venue

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures" / "alpaca_trading"


@dataclass
class Row:
    """Stands in for a BrokerAccount row (it has a ``day``)."""

    cash: D
    day: date
    day_start_equity: D
    peak_equity: D


def test_book_round_trips_exactly_and_leaves_flat_positions_out() -> None:
    row = Row(D("98127.50000000"), date(2026, 3, 9), D("100000"), D("100250.5"))
    positions = [
        VenuePosition("AAPL", D("10"), D("187.25")),
        VenuePosition("MSFT", D("0"), D("0")),
        VenuePosition("TSLA", D("-5"), D("212.6")),
    ]

    text = book_json("simulated", row, positions, updated_ns=1_773_066_600_000_000_000)
    book = parse_book(text.encode())

    assert json.loads(text) == {
        "broker": "simulated",
        "cash": "98127.50000000",
        "day": "2026-03-09",
        "day_start_equity": "100000",
        "peak_equity": "100250.5",
        "positions": {"AAPL": {"qty": "10", "avg_price": "187.25"}, "TSLA": {"qty": "-5", "avg_price": "212.6"}},
        "updated_ns": 1_773_066_600_000_000_000,
    }
    assert book == PortfolioBook(
        broker="simulated",
        cash=D("98127.5"),
        day=date(2026, 3, 9),
        day_start_equity=D(100000),
        peak_equity=D("100250.5"),
        positions={"AAPL": BookPosition(D(10), D("187.25")), "TSLA": BookPosition(D(-5), D("212.6"))},
        updated_ns=1_773_066_600_000_000_000,
    )


def test_book_day_comes_from_a_views_extra() -> None:
    view = VenueAccountView(D(1), D(1), D(1), D(1), extra={"day": "2026-03-10"})
    assert json.loads(book_json("alpaca_paper", view, []))["day"] == "2026-03-10"


def test_book_equity_and_day_pnl_mark_at_given_prices_else_at_the_average() -> None:
    book = parse_book(
        book_json(
            "simulated",
            Row(D(1000), date(2026, 3, 9), D(1200), D(1300)),
            [VenuePosition("AAPL", D(2), D(100)), VenuePosition("TSLA", D(-1), D(200))],
        )
    )
    assert book is not None

    # 1000 + 2 x 90 - 1 x 200 (TSLA has no mark: its average) = 980
    assert book.equity({"AAPL": D(90)}) == D(980)
    assert book.day_pnl({"AAPL": D(90)}) == D(-220)


@pytest.mark.parametrize(
    "raw",
    [
        None,
        b"",
        "not json",
        "[]",
        '{"broker": "simulated"}',
        '{"broker":"s","cash":"abc","day":"2026-03-09","day_start_equity":"1","peak_equity":"1","positions":{},"updated_ns":1}',
        '{"broker":"s","cash":"NaN","day":"2026-03-09","day_start_equity":"1","peak_equity":"1","positions":{},"updated_ns":1}',
        '{"broker":"s","cash":"1","day":"09/03/2026","day_start_equity":"1","peak_equity":"1","positions":{},"updated_ns":1}',
        '{"broker":"s","cash":"1","day":"2026-03-09","day_start_equity":"1","peak_equity":"1","positions":[],"updated_ns":1}',
        '{"broker":"s","cash":"1","day":"2026-03-09","day_start_equity":"1","peak_equity":"1","positions":{"A":{"qty":"1"}},"updated_ns":1}',
        '{"broker":"s","cash":"1","day":"2026-03-09","day_start_equity":"1","peak_equity":"1","positions":{},"updated_ns":"soon"}',
    ],
)
def test_parse_book_is_none_for_missing_or_garbage(raw: bytes | str | None) -> None:
    assert parse_book(raw) is None


def test_decimal_text_never_uses_exponents() -> None:
    assert [decimal_text(D(v)) for v in ("0E-8", "1E+2", "-0.50000000")] == ["0.00000000", "100", "-0.50000000"]


# ---- Alpaca wire mappings ------------------------------------------------------------------------


@pytest.mark.parametrize("status", sorted(STATUS_MAP))
def test_every_alpaca_status_maps_to_a_desk_status_and_only_finished_ones_are_closed(status: str) -> None:
    raw = json.loads((FIXTURES / "order_accepted_market.json").read_text()) | {"status": status}
    order = _order_of(raw)
    finished = {"filled", "canceled", "expired", "replaced", "rejected"}
    assert order.is_open is (status not in finished)
    assert order.status in OPEN_STATUSES | {"filled", "cancelled", "expired", "rejected"}


def test_an_unknown_alpaca_status_counts_as_open_and_says_so() -> None:
    raw = json.loads((FIXTURES / "order_accepted_market.json").read_text()) | {"status": "brand_new_state"}
    order = _order_of(raw)
    assert order.is_open
    assert order.reason == "alpaca status 'brand_new_state' (unknown here: counted as open)"


def test_a_short_position_reported_with_a_positive_qty_is_made_negative() -> None:
    raw = {"symbol": "TSLA", "qty": "5", "side": "short", "avg_entry_price": "212.6", "current_price": None}
    assert _position_of(raw) == VenuePosition("TSLA", D(-5), D("212.6"), None)


def _api_error(status: int, body: str) -> APIError:
    response = requests.Response()
    response.status_code = status
    return APIError(body, requests.HTTPError(response=response))


@pytest.mark.parametrize(
    ("status", "retryable"), [(400, False), (403, False), (404, False), (422, False), (429, True), (500, True), (504, True)]
)
def test_broker_error_retries_only_429_and_5xx(status: int, retryable: bool) -> None:
    error = broker_error(_api_error(status, '{"code": 1, "message": "m"}'), "POST /v2/orders")
    assert (error.retryable, error.http_status, str(error)) == (retryable, status, f"alpaca POST /v2/orders: HTTP {status} (code 1): m")


# ---- make_venue ---------------------------------------------------------------------------------


def test_make_broker_builds_the_simulated_broker_by_default(tmp_path: Path) -> None:
    settings = load_settings(
        {"OMNI_DATA_DIR": str(tmp_path), "OMNI_TRADING_QUOTE_MAX_AGE_S": "2.5", "OMNI_TRADING_STARTING_CASH_USD": "25000"}
    )

    broker = make_venue(Runtime(settings))

    assert isinstance(broker, SimulatedVenue)
    assert (broker.name, broker._max_age_s, broker._starting_cash) == ("simulated", 2.5, D(25000))


def test_make_broker_builds_alpaca_paper_when_chosen_and_refuses_it_without_keys(tmp_path: Path) -> None:
    env = {"OMNI_DATA_DIR": str(tmp_path), "OMNI_TRADING_BROKER": "alpaca_paper"}
    with pytest.raises(ConfigError, match="OMNI_ALPACA_API_KEY and OMNI_ALPACA_SECRET_KEY"):
        make_venue(Runtime(load_settings(env)))

    made_up = {"OMNI_ALPACA_API_KEY": secrets.token_hex(10), "OMNI_ALPACA_SECRET_KEY": secrets.token_urlsafe(30)}  # generated per run
    broker = make_venue(Runtime(load_settings(env | made_up)))
    assert isinstance(broker, AlpacaPaperVenue)
    assert broker.name == "alpaca_paper"
