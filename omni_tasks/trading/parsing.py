"""An order from text: the CLI's words and a task's JSON arguments become a checked :class:`OrderRequest`."""

from __future__ import annotations

from decimal import Decimal
from typing import Final

from omni_tasks.contracts.venue import MONEY_PLACES, InvalidOrder, OrderRequest, check_order_request
from omni_tasks.core import inputs

#: The ledger's Numeric(24, 8) holds 16 digits before the point.
MAX_INTEGER_DIGITS: Final = 16


def parse_order(
    *,
    symbol: str,
    side: str,
    qty: str,
    order_type: str = "market",
    limit_price: str | None = None,
    client_order_id: str,
    requested_by: str,
) -> OrderRequest:
    """An :class:`OrderRequest` from text (the CLI's words, a task's JSON arguments); InvalidOrder names the bad field.

    ``qty`` and ``limit_price`` are plain decimal text (never floats: money is exact), parsed
    strictly by :func:`omni_tasks.core.inputs.decimal`: ASCII digits and one point, no sign,
    exponent, underscore (``Decimal("1_0")`` is 10), non-ASCII digits (``Decimal("١٠")``
    is 10), NaN or infinity.
    """

    def number(name: str, text: str) -> Decimal:
        try:
            return inputs.decimal(text, what=name, max_integer_digits=MAX_INTEGER_DIGITS, max_places=MONEY_PLACES)
        except inputs.InputError as exc:
            raise InvalidOrder(str(exc)) from None

    kind = (order_type or "").strip().lower()
    if limit_price is not None and kind == "market":
        raise InvalidOrder(f"limit_price {limit_price!r}: a market order takes no limit price (use order_type 'limit')")
    if isinstance(symbol, str) and not symbol.isascii():
        raise InvalidOrder(f"symbol {inputs.shown(symbol)} is not an upper-case ticker (1-10 of A-Z, 0-9, '.', '-')")
    request = OrderRequest(
        client_order_id=client_order_id,
        symbol=symbol.strip().upper() if isinstance(symbol, str) else symbol,
        side=(side or "").strip().lower(),  # type: ignore[arg-type]  # checked below
        qty=number("qty", qty),
        order_type=kind,  # type: ignore[arg-type]  # checked below
        limit_price=None if limit_price is None else number("limit_price", limit_price),
        requested_by=(requested_by or "unknown")[:100],
    )
    check_order_request(request)
    return request
