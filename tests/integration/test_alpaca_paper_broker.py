"""The Alpaca paper broker: alpaca-py's real TradingClient against a local stand-in of Alpaca's trading API.

The stand-in is a real HTTP server (http.server in a thread on 127.0.0.1) serving
responses recorded in Alpaca's formats (tests/fixtures/alpaca_trading/): /v2/account,
/v2/positions, /v2/orders (GET, POST, DELETE), /v2/orders:by_client_order_id,
DELETE /v2/positions and the error bodies ``{"code": ..., "message": ...}``. Tests
assert on what the server received: method, path, query, JSON body and the key
headers, which must never show up in a log line or an error message. Keys are
generated per test.
"""

from __future__ import annotations

import json
import logging
import secrets
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from decimal import Decimal as D
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import pytest
from sqlalchemy import select
from structlog.testing import capture_logs

from omni_tasks.contracts.portfolio import read_book, refresh_book
from omni_tasks.contracts.venue import InvalidOrder, OrderBlocked, OrderRequest, Venue, VenueError
from omni_tasks.core.errors import ConfigError
from omni_tasks.settings import Settings, load_settings
from omni_tasks.storage import migrations
from omni_tasks.storage.engine import make_engine, session_factory
from omni_tasks.storage.models import BrokerAccount
from omni_tasks.trading.alpaca_paper import AlpacaPaperVenue

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "alpaca_trading"
NOW = datetime(2026, 3, 9, 15, 0, tzinfo=UTC)


def recorded(name: str) -> Any:
    return json.loads((FIXTURES / name).read_text())


# ---- the stand-in --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Seen:
    """One request the stand-in received."""

    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


@dataclass(frozen=True)
class Reply:
    status: int
    payload: Any = None
    delay_s: float = 0.0
    raw: bytes | None = None

    def body(self) -> bytes:
        return self.raw if self.raw is not None else (b"" if self.payload is None else json.dumps(self.payload).encode())


Handler = Callable[[Seen], Reply]


@dataclass
class TradingStandIn:
    """Routes (method, path) to a Reply or a function of the request; records every request."""

    url: str = ""
    seen: list[Seen] = field(default_factory=list)
    routes: dict[tuple[str, str], Handler] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def route(self, method: str, path: str, reply: Reply | Handler) -> None:
        self.routes[(method, path)] = reply if callable(reply) else (lambda _seen, fixed=reply: fixed)

    def answer(self, seen: Seen) -> Reply:
        with self.lock:
            self.seen.append(seen)
        handler = self.routes.get((seen.method, seen.path))
        return handler(seen) if handler is not None else Reply(404, {"code": 40410000, "message": "endpoint not found"})

    def requests(self, method: str, path: str) -> list[Seen]:
        return [s for s in self.seen if (s.method, s.path) == (method, path)]


def _handler_class(standin: TradingStandIn) -> type[BaseHTTPRequestHandler]:
    class _Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def _serve(self) -> None:
            parts = urlsplit(self.path)
            length = int(self.headers.get("Content-Length") or 0)
            seen = Seen(
                method=self.command,
                path=parts.path,
                query=dict(parse_qsl(parts.query, keep_blank_values=True)),
                headers=dict(self.headers.items()),
                body=self.rfile.read(length) if length else b"",
            )
            reply = standin.answer(seen)
            if reply.delay_s:
                time.sleep(reply.delay_s)  # the action: a broker as slow as the scripted reply
            body = reply.body()
            try:
                self.send_response(reply.status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)
            except (BrokenPipeError, ConnectionResetError):
                self.close_connection = True  # the client gave up (the timeout test)

        do_GET = _serve  # http.server's naming
        do_POST = _serve
        do_DELETE = _serve

        def log_message(self, format: str, *args: object) -> None:  # http.server's signature
            pass

    return _Handler


@pytest.fixture
def standin() -> Iterator[TradingStandIn]:
    stand = TradingStandIn()
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler_class(stand))
    host, port = server.server_address[:2]
    stand.url = f"http://{host}:{port}"
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.02}, name="alpaca-trading-standin", daemon=True)
    thread.start()
    try:
        yield stand
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


@pytest.fixture
def keys() -> tuple[str, str]:
    """A key pair made up for this test (never a real credential)."""
    return "PK" + secrets.token_hex(9).upper(), secrets.token_urlsafe(30)


def settings_for(url: str, keys: tuple[str, str] | None, **extra: str) -> Settings:
    env = {"OMNI_ALPACA_TRADING_URL": url, "OMNI_TRADING_BROKER": "alpaca_paper", **extra}
    if keys is not None:
        env.update({"OMNI_ALPACA_API_KEY": keys[0], "OMNI_ALPACA_SECRET_KEY": keys[1]})
    return load_settings(env)


@pytest.fixture
def broker(standin: TradingStandIn, keys: tuple[str, str]) -> AlpacaPaperVenue:
    return AlpacaPaperVenue(settings_for(standin.url, keys, OMNI_TRADING_ALPACA_TIMEOUT_S="2"), clock=lambda: NOW)


def echo_order(fixture: str) -> Handler:
    """POST /v2/orders as Alpaca answers it: the recorded order with the request's own fields."""

    def handle(seen: Seen) -> Reply:
        sent = seen.json()
        order = recorded(fixture)
        order.update(
            {k: sent[k] for k in ("client_order_id", "symbol", "qty", "side", "type", "limit_price", "time_in_force") if k in sent}
        )
        order["order_type"] = order["type"]
        return Reply(200, order)

    return handle


def market(cid: str = "omni-0001", qty: str = "10", symbol: str = "AAPL", side: str = "buy") -> OrderRequest:
    return OrderRequest(cid, symbol, side, D(qty))  # type: ignore[arg-type]


def assert_keys_sent(seen: Seen, keys: tuple[str, str]) -> None:
    assert (seen.headers.get("APCA-API-KEY-ID"), seen.headers.get("APCA-API-SECRET-KEY")) == keys


# ---- construction --------------------------------------------------------------------------------


def test_broker_satisfies_the_protocol(broker: AlpacaPaperVenue) -> None:
    assert isinstance(broker, Venue)
    assert broker.name == "alpaca_paper"


def test_without_keys_it_refuses_to_build_naming_both_variables(standin: TradingStandIn) -> None:
    with pytest.raises(ConfigError, match="OMNI_ALPACA_API_KEY and OMNI_ALPACA_SECRET_KEY: the alpaca_paper broker needs"):
        AlpacaPaperVenue(settings_for(standin.url, None))


def test_it_refuses_the_live_trading_url_and_paper_false(keys: tuple[str, str]) -> None:
    with pytest.raises(ConfigError, match="OMNI_ALPACA_TRADING_URL: https://api.alpaca.markets is Alpaca's live trading API"):
        AlpacaPaperVenue(settings_for("https://api.alpaca.markets", keys))
    with pytest.raises(ConfigError, match="OMNI_ALPACA_PAPER"):
        AlpacaPaperVenue(settings_for("https://paper-api.alpaca.markets", keys, OMNI_ALPACA_PAPER="false"))


# ---- reads ---------------------------------------------------------------------------------------


def test_account_maps_cash_equity_and_starts_the_day_at_last_equity(broker, standin, keys) -> None:  # type: ignore[no-untyped-def]
    standin.route("GET", "/v2/account", Reply(200, recorded("account.json")))

    view = broker.account()

    # a down day: equity below last_equity, so without a ledger the peak is last_equity
    assert (view.cash, view.equity, view.day_start_equity, view.peak_equity) == (
        D("98127.5"),
        D("99054.0486698"),
        D("99871.4"),
        D("99871.4"),
    )
    assert view.extra["peak"] == "this call (no ledger)"
    assert (view.extra["day"], view.extra["status"], view.extra["buying_power"]) == ("2026-03-09", "ACTIVE", "395482.56")
    (seen,) = standin.requests("GET", "/v2/account")
    assert_keys_sent(seen, keys)


def test_account_with_a_ledger_keeps_a_running_peak(standin: TradingStandIn, keys: tuple[str, str], tmp_path: Path) -> None:
    engine = make_engine(f"sqlite:///{tmp_path / 'ledger.sqlite3'}")
    migrations.upgrade(engine)
    sessions = session_factory(engine)
    broker = AlpacaPaperVenue(settings_for(standin.url, keys), sessions=sessions, clock=lambda: NOW)
    high, low = recorded("account.json"), recorded("account.json")
    high.update({"equity": "100033.12"})
    low.update({"equity": "99500.01", "cash": "97594.39"})
    standin.route("GET", "/v2/account", Reply(200, high))
    assert broker.account().peak_equity == D("100033.12")

    standin.route("GET", "/v2/account", Reply(200, low))
    view = broker.account()

    assert (view.equity, view.peak_equity, view.extra["peak"]) == (D("99500.01"), D("100033.12"), "ledger")
    with sessions() as session:
        row = session.execute(select(BrokerAccount).where(BrokerAccount.broker == "alpaca_paper")).scalar_one()
    assert (row.cash, row.day, row.day_start_equity, row.peak_equity) == (D("97594.39"), date(2026, 3, 9), D("99871.4"), D("100033.12"))
    engine.dispose()


def test_positions_are_signed_exact_and_marked_at_alpacas_price(broker, standin) -> None:  # type: ignore[no-untyped-def]
    standin.route("GET", "/v2/positions", Reply(200, recorded("positions.json")))

    positions = {p.symbol: p for p in broker.positions()}

    assert {s: (p.qty, p.avg_price, p.market_price) for s, p in positions.items()} == {
        "AAPL": (D(10), D("187.25"), D("188.05")),
        "TSLA": (D(-5), D("212.6"), D("212.6")),
        "SPY": (D("0.213456789"), D("510.12"), D("510.87")),
    }
    assert positions["TSLA"].market_value == D("-1063.0")


def test_open_orders_asks_for_open_status_and_maps_alpacas_statuses(broker, standin) -> None:  # type: ignore[no-untyped-def]
    standin.route("GET", "/v2/orders", Reply(200, recorded("orders_open.json")))

    orders = broker.open_orders()

    (seen,) = standin.requests("GET", "/v2/orders")
    assert seen.query == {"status": "open", "limit": "500", "direction": "desc", "nested": "false"}
    assert [(o.client_order_id, o.symbol, o.side, o.status, o.qty, o.filled_qty, o.limit_price) for o in orders] == [
        ("omni-0003", "TSLA", "sell", "partially_filled", D(20), D(7), D("213.1")),  # oldest first
        ("omni-0002", "AAPL", "buy", "new", D(5), D(0), D("187.05")),
        ("omni-0004", "SPY", "buy", "accepted", D(1), D(0), D(500)),  # pending_cancel: may still fill, so open
    ]
    assert all(o.is_open for o in orders)
    assert orders[0].avg_fill_price == D("213.12")
    assert orders[0].submitted_at == datetime(2026, 3, 9, 14, 59, 30, 500000, tzinfo=UTC)


# ---- orders --------------------------------------------------------------------------------------


def test_submit_market_posts_exact_decimal_text_with_the_client_order_id(broker, standin, keys) -> None:  # type: ignore[no-untyped-def]
    standin.route("POST", "/v2/orders", echo_order("order_accepted_market.json"))

    order = broker.submit(market("omni-0001", "10"))

    (seen,) = standin.requests("POST", "/v2/orders")
    assert seen.json() == {
        "symbol": "AAPL",
        "qty": "10",
        "side": "buy",
        "type": "market",
        "time_in_force": "day",
        "client_order_id": "omni-0001",
    }
    assert_keys_sent(seen, keys)
    assert (order.client_order_id, order.broker_order_id, order.status, order.qty) == (
        "omni-0001",
        "61e69015-8549-4bfd-b9c3-01e75843f47d",
        "accepted",
        D(10),
    )


def test_submit_limit_sends_the_limit_price_as_exact_text(broker, standin) -> None:  # type: ignore[no-untyped-def]
    standin.route("POST", "/v2/orders", echo_order("order_new_limit.json"))

    order = broker.submit(OrderRequest("omni-0002", "AAPL", "buy", D("0.5"), "limit", D("187.05")))

    assert standin.requests("POST", "/v2/orders")[0].json() == {
        "symbol": "AAPL",
        "qty": "0.5",
        "side": "buy",
        "type": "limit",
        "time_in_force": "day",
        "client_order_id": "omni-0002",
        "limit_price": "187.05",
    }
    assert (order.status, order.order_type, order.limit_price, order.qty) == ("new", "limit", D("187.05"), D("0.5"))


def test_a_duplicate_client_order_id_returns_alpacas_existing_order(broker, standin) -> None:  # type: ignore[no-untyped-def]
    standin.route("POST", "/v2/orders", Reply(422, recorded("error_duplicate_client_order_id.json")))
    standin.route("GET", "/v2/orders:by_client_order_id", Reply(200, recorded("order_filled_by_client_id.json")))

    order = broker.submit(market("omni-dup-1", "10"))

    (lookup,) = standin.requests("GET", "/v2/orders:by_client_order_id")
    assert lookup.query == {"client_order_id": "omni-dup-1"}
    assert (order.status, order.filled_qty, order.avg_fill_price) == ("filled", D(10), D("187.2514"))
    with pytest.raises(InvalidOrder, match="already Alpaca's order 4a0d4c42"):
        broker.submit(market("omni-dup-1", "11"))


@pytest.mark.parametrize(
    ("status", "fixture", "retryable", "words"),
    [
        (403, "error_insufficient_buying_power.json", False, "HTTP 403 (code 40310000): insufficient buying power"),
        (422, "error_invalid_qty.json", False, "HTTP 422 (code 42210000): qty must be > 0"),
        (401, "error_unauthorized.json", False, "HTTP 401 (code 40110000): request is not authorized"),
        (429, "error_rate_limited.json", True, "HTTP 429 (code 42910000): rate limit exceeded"),
        (500, "error_internal.json", True, "HTTP 500 (code 50010000): internal server error occurred"),
        (503, None, True, "HTTP 503 (code None): upstream unavailable"),
    ],
)
def test_http_errors_map_to_broker_errors_429_and_5xx_retryable_in_one_request(  # type: ignore[no-untyped-def]
    broker, standin, keys, status: int, fixture: str | None, retryable: bool, words: str
) -> None:
    reply = Reply(status, recorded(fixture)) if fixture else Reply(status, raw=b"upstream unavailable")
    standin.route("POST", "/v2/orders", reply)

    with pytest.raises(VenueError) as caught:
        broker.submit(market())

    assert (caught.value.retryable, caught.value.http_status) == (retryable, status)
    assert words in str(caught.value)
    assert len(standin.requests("POST", "/v2/orders")) == 1  # alpaca-py's sleep-and-retry loop is off
    assert keys[0] not in str(caught.value)
    assert keys[1] not in str(caught.value)


def test_a_timeout_is_retryable_and_says_the_order_may_have_arrived(standin, keys) -> None:  # type: ignore[no-untyped-def]
    broker = AlpacaPaperVenue(settings_for(standin.url, keys, OMNI_TRADING_ALPACA_TIMEOUT_S="0.3"))
    standin.route("POST", "/v2/orders", Reply(200, recorded("order_accepted_market.json"), delay_s=1.0))

    started = time.monotonic()
    with pytest.raises(VenueError, match="may have reached Alpaca: resend with the same client_order_id") as caught:
        broker.submit(market())

    assert caught.value.retryable is True
    assert time.monotonic() - started < 0.9


def test_a_refused_connection_is_retryable(keys: tuple[str, str]) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    broker = AlpacaPaperVenue(settings_for(f"http://127.0.0.1:{port}", keys))

    with pytest.raises(VenueError, match="ConnectionError") as caught:
        broker.account()
    assert caught.value.retryable is True


def test_the_guard_runs_before_the_order_leaves_and_a_block_sends_nothing(standin, keys) -> None:  # type: ignore[no-untyped-def]
    def halted(_request: OrderRequest) -> None:
        raise OrderBlocked("kill switch engaged (HALTED)")

    def broken(_request: OrderRequest) -> None:
        raise TimeoutError("state unreadable")

    standin.route("POST", "/v2/orders", echo_order("order_accepted_market.json"))
    with pytest.raises(OrderBlocked, match="kill switch engaged"):
        AlpacaPaperVenue(settings_for(standin.url, keys), guard=halted).submit(market())
    with pytest.raises(OrderBlocked, match="guard failed .TimeoutError: state unreadable"):
        AlpacaPaperVenue(settings_for(standin.url, keys), guard=broken).submit(market())

    assert standin.requests("POST", "/v2/orders") == []


def test_malformed_requests_are_refused_before_any_request(broker, standin) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(InvalidOrder, match="qty"):
        broker.submit(OrderRequest("omni-bad", "AAPL", "buy", D("-1")))
    assert standin.seen == []


def test_cancel_all_deletes_every_order_and_returns_the_ids_asked(broker, standin) -> None:  # type: ignore[no-untyped-def]
    standin.route("DELETE", "/v2/orders", Reply(207, recorded("cancel_orders.json")))

    with capture_logs() as logs:
        ids = broker.cancel_all()

    assert ids == ["0b11f089-722d-4ced-9beb-e2eeed3637dc", "9f7d75bc-a9a2-40b0-9082-0fc0a09817ff", "d1a7f6b3-51c8-4f3f-9a77-0e2f1d2c3b4a"]
    assert [e["broker_order_id"] for e in logs if e["event"] == "alpaca could not cancel an order"] == [
        "d1a7f6b3-51c8-4f3f-9a77-0e2f1d2c3b4a"
    ]
    assert len(standin.requests("DELETE", "/v2/orders")) == 1


def test_close_all_cancels_orders_and_maps_each_position_result(broker, standin) -> None:  # type: ignore[no-untyped-def]
    standin.route("DELETE", "/v2/positions", Reply(207, recorded("close_positions.json")))

    orders = {o.symbol: o for o in broker.close_all()}

    (seen,) = standin.requests("DELETE", "/v2/positions")
    assert seen.query == {"cancel_orders": "True"}
    assert (orders["AAPL"].side, orders["AAPL"].qty, orders["AAPL"].status) == ("sell", D(10), "accepted")
    assert (orders["SPY"].qty, orders["SPY"].status) == (D("0.213456789"), "accepted")  # pending_new
    tsla = orders["TSLA"]
    assert (tsla.side, tsla.qty, tsla.status) == ("buy", D(5), "rejected")
    assert tsla.reason is not None
    assert "HTTP 403 (code 40310000): insufficient qty available for order" in tsla.reason


def test_keys_never_appear_in_logs_or_errors(broker, standin, keys, caplog) -> None:  # type: ignore[no-untyped-def]
    standin.route("GET", "/v2/account", Reply(200, recorded("account.json")))
    standin.route("POST", "/v2/orders", echo_order("order_accepted_market.json"))
    standin.route("DELETE", "/v2/orders", Reply(207, recorded("cancel_orders.json")))
    caplog.set_level(logging.DEBUG)
    texts: list[str] = []
    with capture_logs() as logs:
        broker.account()
        broker.submit(market())
        broker.cancel_all()
        standin.route("POST", "/v2/orders", Reply(403, recorded("error_insufficient_buying_power.json")))
        try:
            broker.submit(market("omni-0009"))
        except VenueError as exc:
            texts.append(str(exc))
    texts += [json.dumps(entry, default=str) for entry in logs] + [record.getMessage() for record in caplog.records] + [repr(broker)]
    assert {"order submitted", "orders cancelled", "alpaca refused an order"} <= {entry["event"] for entry in logs}
    leaks = [text for text in texts for key in keys if key in text]
    print(f"\nsecrets found in logs and errors: {len(leaks)} of {len(texts)} lines")
    assert all(seen.headers.get("APCA-API-SECRET-KEY") == keys[1] for seen in standin.seen)
    assert leaks == []


# ---- the book ------------------------------------------------------------------------------------


@pytest.mark.services
def test_refresh_book_publishes_alpacas_account_and_positions(broker, standin, redis_client) -> None:  # type: ignore[no-untyped-def]
    standin.route("GET", "/v2/account", Reply(200, recorded("account.json")))
    standin.route("GET", "/v2/positions", Reply(200, recorded("positions.json")))

    book = refresh_book(broker, redis_client)

    assert read_book(redis_client) == book
    assert (book.broker, book.cash, book.day_start_equity, book.peak_equity, book.day) == (
        "alpaca_paper",
        D("98127.5"),
        D("99871.4"),
        D("99871.4"),
        date(2026, 3, 9),
    )
    assert {s: (p.qty, p.avg_price) for s, p in book.positions.items()} == {
        "AAPL": (D(10), D("187.25")),
        "TSLA": (D(-5), D("212.6")),
        "SPY": (D("0.213456789"), D("510.12")),
    }
    # at Alpaca's own marks the book's equity is Alpaca's equity (which rounds market values to 7 places)
    marks = {"AAPL": D("188.05"), "TSLA": D("212.6"), "SPY": D("510.87")}
    assert book.equity(marks) == D("98127.5") + D("1880.5") - D("1063") + D("0.213456789") * D("510.87")
    assert abs(book.equity(marks) - D("99054.0486698")) < D("0.0000001")
    assert book.day_pnl(marks) == book.equity(marks) - D("99871.4")
