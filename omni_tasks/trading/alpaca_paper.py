"""Alpaca paper trading through alpaca-py's ``TradingClient`` (paper=True, ``settings.alpaca.trading_url``).

I/O is alpaca-py's: it builds the URLs (``{trading_url}/v2/...``), sends the key
headers and turns HTTP errors into ``APIError``. The client answers raw JSON
(``raw_data=True``) and this module maps it (``_order_of``, ``_position_of``) so
every quantity and price goes from Alpaca's decimal text straight to ``Decimal``.
An order is validated with alpaca-py's request models and sent with its quantity
and limit price as exact decimal text, which Alpaca's API accepts (the models
would turn them into floats).

Two alpaca-py defaults are changed, as in the market-data adapter: its retry loop
(sleep 3 s, three times, on 429 and 504) is off, because the orders task decides
about retries and a kill switch must not sleep inside a call; and its ``requests``
session gets a timeout (``OMNI_TRADING_ALPACA_TIMEOUT_S``).

Errors: HTTP 429 and 5xx, timeouts and refused connections are
``VenueError(retryable=True)``; other 4xx are not retryable, Alpaca's message kept
("insufficient buying power", ...). A timed-out submit may still have reached
Alpaca: resending it with the same ``client_order_id`` is safe, because a
duplicate ``client_order_id`` (HTTP 422 "client_order_id must be unique") is
answered with the order Alpaca already has. The keys never leave the client's
headers: not in messages, not in logs.

Alpaca has no day-start or peak equity of ours: ``day_start_equity`` is Alpaca's
``last_equity`` (the equity at the previous close), and with ``sessions`` the
peak is kept in the broker_accounts row ``alpaca_paper`` (raised on every
:meth:`AlpacaPaperVenue.account`); without them it is the higher of today's
equity and last_equity (``extra["peak"]`` says which).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from decimal import Decimal, InvalidOperation
from functools import partial
from typing import Any, Final
from urllib.parse import urlsplit
from zoneinfo import ZoneInfo

import requests
import structlog
from alpaca.common.exceptions import APIError
from alpaca.trading.client import TradingClient
from alpaca.trading.enums import OrderSide, TimeInForce
from alpaca.trading.requests import LimitOrderRequest, MarketOrderRequest
from sqlalchemy import case, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.orm import Session, sessionmaker

from omni_tasks.contracts.venue import (
    Guard,
    InvalidOrder,
    OrderBlocked,
    OrderRequest,
    VenueAccountView,
    VenueError,
    VenueOrder,
    VenuePosition,
    check_order_request,
)
from omni_tasks.core.errors import ConfigError
from omni_tasks.core.http import use_timeout_session
from omni_tasks.settings import Settings
from omni_tasks.storage.models import BrokerAccount

_log = structlog.get_logger("omni.trading.alpaca")

NAME: Final = "alpaca_paper"
LIVE_HOSTS: Final = frozenset({"api.alpaca.markets"})
#: Alpaca's answer to a reused client_order_id (HTTP 422, code 40010001).
DUPLICATE_ID_MESSAGE: Final = "client_order_id must be unique"
OPEN_ORDERS_PAGE: Final = 500  # Alpaca's largest page of orders
MAX_ORDER_PAGES: Final = 20

#: Alpaca's order statuses in the desk's words. Anything that may still fill is open (new/accepted/partially_filled),
#: so the kill switch keeps polling until Alpaca says it is done; an unknown status counts as open for the same reason.
STATUS_MAP: Final[Mapping[str, str]] = {
    "new": "new",
    "partially_filled": "partially_filled",
    "filled": "filled",
    "canceled": "cancelled",
    "expired": "expired",
    "replaced": "cancelled",
    "rejected": "rejected",
    "accepted": "accepted",
    "pending_new": "accepted",
    "accepted_for_bidding": "accepted",
    "held": "accepted",
    "calculated": "accepted",
    "stopped": "accepted",
    "suspended": "accepted",
    "pending_cancel": "accepted",
    "pending_replace": "accepted",
    "done_for_day": "accepted",
}


# ---- the client --------------------------------------------------------------------------------


class _Client(TradingClient):
    """alpaca-py's trading client (paper, raw JSON) without its internal retry loop, with a request timeout."""

    def __init__(self, api_key: str, secret_key: str, *, trading_url: str, timeout_s: float) -> None:
        super().__init__(api_key=api_key, secret_key=secret_key, paper=True, raw_data=True, url_override=trading_url.rstrip("/"))
        use_timeout_session(self, timeout_s)


# ---- wire mappings -----------------------------------------------------------------------------


def _decimal(value: Any, what: str) -> Decimal:
    try:
        number = Decimal(str(value))
    except (InvalidOperation, ValueError) as exc:
        raise VenueError(f"alpaca sent {what}={value!r}, not a number") from exc
    if not number.is_finite():
        raise VenueError(f"alpaca sent {what}={value!r}, not a finite number")
    return number


def _optional_decimal(value: Any, what: str) -> Decimal | None:
    return None if value is None or value == "" else _decimal(value, what)


def _timestamp(value: Any) -> datetime | None:
    if not value:
        return None
    try:
        moment = datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    except ValueError:
        return None
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


def _order_of(raw: Mapping[str, Any]) -> VenueOrder:
    """An Alpaca order object as a :class:`VenueOrder` (status in the desk's words)."""
    try:
        status = str(raw["status"])
        side = str(raw["side"])
        kind = str(raw.get("type") or raw.get("order_type") or "market")
        return VenueOrder(
            client_order_id=str(raw["client_order_id"]),
            broker_order_id=str(raw["id"]),
            symbol=str(raw["symbol"]),
            side="buy" if side == "buy" else "sell",
            qty=_decimal(raw["qty"], "qty") if raw.get("qty") is not None else Decimal(0),
            order_type="limit" if kind == "limit" else "market",
            limit_price=_optional_decimal(raw.get("limit_price"), "limit_price"),
            status=STATUS_MAP.get(status, "accepted"),
            filled_qty=_decimal(raw.get("filled_qty") or "0", "filled_qty"),
            avg_fill_price=_optional_decimal(raw.get("filled_avg_price"), "filled_avg_price"),
            submitted_at=_timestamp(raw.get("submitted_at")),
            reason=None if status in STATUS_MAP else f"alpaca status {status!r} (unknown here: counted as open)",
        )
    except (KeyError, TypeError, AttributeError) as exc:
        raise VenueError(f"alpaca sent an order without {exc}: {dict(raw)!r:.300}") from exc


def _position_of(raw: Mapping[str, Any]) -> VenuePosition:
    """An Alpaca position as a signed :class:`VenuePosition` (a short's qty is negative)."""
    try:
        qty = _decimal(raw["qty"], "qty")
        if raw.get("side") == "short" and qty > 0:
            qty = -qty
        return VenuePosition(
            symbol=str(raw["symbol"]),
            qty=qty,
            avg_price=_decimal(raw["avg_entry_price"], "avg_entry_price"),
            market_price=_optional_decimal(raw.get("current_price"), "current_price"),
        )
    except (KeyError, TypeError, AttributeError) as exc:
        raise VenueError(f"alpaca sent a position without {exc}: {dict(raw)!r:.300}") from exc


def _error_body(exc: APIError) -> tuple[Any, str]:
    """(code, message) of an Alpaca error body; the raw text (cut) when it is not JSON."""
    text = str(exc)
    try:
        body = json.loads(text)
    except ValueError:
        return None, text[:300]
    if not isinstance(body, dict):
        return None, text[:300]
    return body.get("code"), str(body.get("message", text[:300]))


def broker_error(exc: APIError | requests.RequestException, what: str) -> VenueError:
    """The :class:`VenueError` for a failed call: 429, 5xx and transport failures are retryable, other 4xx not."""
    if isinstance(exc, requests.RequestException):
        return VenueError(f"alpaca {what}: {type(exc).__name__} (no answer): {exc}", retryable=True)
    status = exc.status_code
    code, message = _error_body(exc)
    retryable = status is None or status == 429 or status >= 500
    return VenueError(f"alpaca {what}: HTTP {status} (code {code}): {message}", retryable=retryable, http_status=status)


def _is_duplicate_id(exc: APIError) -> bool:
    _code, message = _error_body(exc)
    return DUPLICATE_ID_MESSAGE in message.lower()


def _order_body(request: OrderRequest) -> dict[str, Any]:
    """The POST /v2/orders body: validated by alpaca-py's request model, money as exact decimal text."""
    side = OrderSide.BUY if request.side == "buy" else OrderSide.SELL
    common = {
        "symbol": request.symbol,
        "qty": float(request.qty),
        "side": side,
        "time_in_force": TimeInForce.DAY,
        "client_order_id": request.client_order_id,
    }
    try:
        model = (
            LimitOrderRequest(**common, limit_price=float(request.limit_price))  # type: ignore[arg-type]  # checked: a limit order has a price
            if request.order_type == "limit"
            else MarketOrderRequest(**common)
        )
    except ValueError as exc:
        raise InvalidOrder(f"alpaca-py refused the order {request.client_order_id}: {exc}") from exc
    body = model.to_request_fields()
    body["qty"] = str(request.qty)
    if request.limit_price is not None:
        body["limit_price"] = str(request.limit_price)
    return body


# ---- the broker --------------------------------------------------------------------------------


class AlpacaPaperVenue:
    """The Venue protocol over Alpaca's paper trading API (see the module docstring)."""

    name: str = NAME
    keeps_ledger: bool = False

    def __init__(
        self,
        settings: Settings,
        *,
        guard: Guard | None = None,
        sessions: sessionmaker[Session] | None = None,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        """Refuses (ConfigError) without both keys, with ``OMNI_ALPACA_PAPER=false`` or a live trading URL."""
        alpaca = settings.alpaca
        api_key = alpaca.api_key.get_secret_value() if alpaca.api_key else ""
        secret_key = alpaca.secret_key.get_secret_value() if alpaca.secret_key else ""
        if not api_key or not secret_key:
            missing = " and ".join(
                name for name, value in (("OMNI_ALPACA_API_KEY", api_key), ("OMNI_ALPACA_SECRET_KEY", secret_key)) if not value
            )
            raise ConfigError(f"{missing}: the alpaca_paper broker needs Alpaca paper keys (or set OMNI_TRADING_BROKER=simulated)")
        if not alpaca.paper:
            raise ConfigError("OMNI_ALPACA_PAPER: the alpaca_paper broker trades the paper account only; it is false here")
        host = urlsplit(alpaca.trading_url).hostname or ""
        if host in LIVE_HOSTS:
            raise ConfigError(
                f"OMNI_ALPACA_TRADING_URL: {alpaca.trading_url} is Alpaca's live trading API; the alpaca_paper broker refuses it"
            )
        self._client = _Client(api_key, secret_key, trading_url=alpaca.trading_url, timeout_s=settings.trading.alpaca_timeout_s)
        self._guard = guard
        self._sessions = sessions
        self._clock = clock
        self._tz = ZoneInfo(settings.core.exchange_tz)
        self._url = alpaca.trading_url

    def __repr__(self) -> str:
        return f"AlpacaPaperVenue(trading_url={self._url!r})"

    def _call(self, what: str, call: Callable[[], Any]) -> Any:
        try:
            return call()
        except (APIError, requests.RequestException) as exc:
            raise broker_error(exc, what) from None

    # ---- reads -----------------------------------------------------------------------------------

    def account(self) -> VenueAccountView:
        """Alpaca's cash and equity; the day starts at ``last_equity``; the peak as the module docstring says."""
        raw = self._call("GET /v2/account", self._client.get_account)
        cash = _decimal(raw.get("cash"), "cash")
        equity = _decimal(raw.get("equity"), "equity")
        last_equity = _decimal(raw.get("last_equity", raw.get("equity")), "last_equity")
        day = self._clock().astimezone(self._tz).date()
        if self._sessions is not None:
            peak, peak_source = self._ledger_peak(self._sessions, cash=cash, equity=equity, day_start=last_equity), "ledger"
        else:
            peak, peak_source = max(equity, last_equity), "this call (no ledger)"
        return VenueAccountView(
            cash=cash,
            equity=equity,
            day_start_equity=last_equity,
            peak_equity=peak,
            extra={
                "broker": NAME,
                "day": day.isoformat(),
                "marks": "alpaca",
                "peak": peak_source,
                "status": str(raw.get("status", "")),
                "buying_power": str(raw.get("buying_power", "")),
                "currency": str(raw.get("currency", "")),
                "trading_blocked": str(raw.get("trading_blocked", "")),
            },
        )

    def positions(self) -> list[VenuePosition]:
        """Every open position, signed, marked at Alpaca's current price."""
        raw = self._call("GET /v2/positions", self._client.get_all_positions)
        return [_position_of(item) for item in raw or []]

    def open_orders(self) -> list[VenueOrder]:
        """Every open order (all pages), oldest first."""
        seen: dict[str, VenueOrder] = {}
        until: str | None = None
        for _ in range(MAX_ORDER_PAGES):
            params: dict[str, Any] = {"status": "open", "limit": OPEN_ORDERS_PAGE, "direction": "desc", "nested": "false"}
            if until is not None:
                params["until"] = until
            page: list[dict[str, Any]] = self._call("GET /v2/orders", partial(self._client.get, "/orders", params)) or []
            fresh = [item for item in page if str(item.get("id")) not in seen]
            for item in fresh:
                seen[str(item["id"])] = _order_of(item)
            if len(page) < OPEN_ORDERS_PAGE or not fresh:
                break
            until = str(page[-1].get("submitted_at") or page[-1].get("created_at"))
        else:
            raise VenueError(f"alpaca GET /v2/orders: more than {MAX_ORDER_PAGES * OPEN_ORDERS_PAGE} open orders", retryable=False)
        return sorted(seen.values(), key=lambda order: (order.submitted_at or datetime.min.replace(tzinfo=UTC), order.broker_order_id))

    # ---- orders ----------------------------------------------------------------------------------

    def submit(self, request: OrderRequest) -> VenueOrder:
        """Guard, then POST /v2/orders; a reused ``client_order_id`` returns Alpaca's existing order."""
        check_order_request(request)
        body = _order_body(request)
        self._run_guard(request)
        try:
            raw: dict[str, Any] = self._client.post("/orders", body)  # type: ignore[assignment]  # raw_data: the JSON object
        except APIError as exc:
            if not _is_duplicate_id(exc):
                error = broker_error(exc, "POST /v2/orders")
                _log.warning("alpaca refused an order", client_order_id=request.client_order_id, symbol=request.symbol, error=str(error))
                raise error from None
            existing: dict[str, Any] = self._call(
                "GET /v2/orders:by_client_order_id", partial(self._client.get_order_by_client_id, request.client_order_id)
            )
            order = _order_of(existing)
            _check_same(order, request)
            _log.info("order resubmitted: alpaca's existing order returned", client_order_id=request.client_order_id, status=order.status)
            return order
        except requests.RequestException as exc:
            raise broker_error(exc, "POST /v2/orders (it may have reached Alpaca: resend with the same client_order_id)") from None
        order = _order_of(raw)
        _log.info(
            "order submitted",
            broker=NAME,
            client_order_id=request.client_order_id,
            symbol=request.symbol,
            side=request.side,
            qty=str(request.qty),
            status=order.status,
            broker_order_id=order.broker_order_id,
        )
        return order

    def _run_guard(self, request: OrderRequest) -> None:
        if self._guard is None:
            return
        try:
            self._guard(request)
        except OrderBlocked:
            _log.warning("order blocked by the guard", broker=NAME, client_order_id=request.client_order_id)
            raise
        except Exception as exc:  # a guard that cannot decide must block, whatever broke
            raise OrderBlocked(f"the order guard failed ({type(exc).__name__}: {exc}): blocked") from exc

    def cancel_all(self) -> list[str]:
        """DELETE /v2/orders; returns the ids Alpaca was asked to cancel (confirm with :meth:`open_orders`)."""
        raw = self._call("DELETE /v2/orders", self._client.cancel_orders) or []
        ids = [str(item.get("id")) for item in raw]
        failed = [item for item in raw if int(item.get("status", 200)) >= 400]
        for item in failed:
            _log.warning(
                "alpaca could not cancel an order", broker_order_id=item.get("id"), status=item.get("status"), body=item.get("body")
            )
        _log.info("orders cancelled", broker=NAME, asked=len(ids), refused=len(failed))
        return ids

    def close_all(self) -> list[VenueOrder]:
        """DELETE /v2/positions?cancel_orders=true: Alpaca cancels the open orders, then sends one closing order per position.

        A position Alpaca refused to close comes back as a ``rejected`` order (side and qty from its error body) with the reason.
        """
        raw = self._call("DELETE /v2/positions", lambda: self._client.close_all_positions(cancel_orders=True)) or []
        orders: list[VenueOrder] = []
        for item in raw:
            status = int(item.get("status", 200))
            body = item.get("body") or {}
            if status < 300 and isinstance(body, Mapping) and "id" in body:
                orders.append(_order_of(body))
                continue
            held = _optional_decimal(body.get("existing_qty"), "existing_qty") if isinstance(body, Mapping) else None
            message = body.get("message") if isinstance(body, Mapping) else body
            code = body.get("code") if isinstance(body, Mapping) else None
            orders.append(
                VenueOrder(
                    client_order_id="",
                    broker_order_id="",
                    symbol=str(item.get("symbol", "")),
                    side="buy" if held is not None and held < 0 else "sell",
                    qty=abs(held) if held is not None else Decimal(0),
                    order_type="market",
                    limit_price=None,
                    status="rejected",
                    filled_qty=Decimal(0),
                    avg_fill_price=None,
                    submitted_at=None,
                    reason=f"alpaca refused to close {item.get('symbol')}: HTTP {status} (code {code}): {message}",
                )
            )
            _log.warning("alpaca refused to close a position", symbol=item.get("symbol"), status=status, code=code, message=message)
        return orders

    # ---- the peak ledger -------------------------------------------------------------------------

    def _ledger_peak(self, sessions: sessionmaker[Session], *, cash: Decimal, equity: Decimal, day_start: Decimal) -> Decimal:
        """Record cash and the day's start in broker_accounts and raise the stored peak (atomically); returns the peak."""
        now = self._clock()
        highest = max(equity, day_start)
        with sessions() as session, session.begin():
            insert = pg_insert if session.get_bind().dialect.name == "postgresql" else sqlite_insert
            values = {
                "broker": NAME,
                "cash": cash,
                "day": now.astimezone(self._tz).date(),
                "day_start_equity": day_start,
                "peak_equity": highest,
                "updated_at": now,
            }
            session.execute(insert(BrokerAccount).values(**values).on_conflict_do_nothing(index_elements=["broker"]))
            session.execute(
                update(BrokerAccount)
                .where(BrokerAccount.broker == NAME)
                .values(
                    cash=cash,
                    day=values["day"],
                    day_start_equity=day_start,
                    peak_equity=case((BrokerAccount.peak_equity < highest, highest), else_=BrokerAccount.peak_equity),
                    updated_at=now,
                )
                .execution_options(synchronize_session=False)
            )
            return session.execute(select(BrokerAccount.peak_equity).where(BrokerAccount.broker == NAME)).scalar_one()


def _check_same(order: VenueOrder, request: OrderRequest) -> None:
    """A reused client_order_id must name the same order; a different one is a bug upstream, not a resubmit."""
    recorded = (order.symbol, order.side, order.qty, order.order_type, order.limit_price)
    asked = (request.symbol, request.side, request.qty, request.order_type, request.limit_price)
    if recorded != asked:
        raise InvalidOrder(
            f"client_order_id {request.client_order_id!r} is already Alpaca's order {order.broker_order_id} "
            f"({order.side} {order.qty} {order.symbol} {order.order_type}); a different order needs a new id"
        )
