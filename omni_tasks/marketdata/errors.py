"""Provider errors, drawn as a hierarchy so the router knows what to do with each.

    ProviderError
    +-- RetryableProviderError (RetryableError)   try again later, maybe elsewhere
    |   +-- RateLimited                           429, Alpha Vantage "Note"/"Information", Yahoo's rate limit
    |   |   +-- QuotaExhausted                    the daily quota is spent (Alpha Vantage's "... requests per day")
    |   +-- ProviderUnavailable                   timeouts, connection errors, 5xx
    +-- PermanentProviderError (PermanentError)   retrying the same call cannot help
    |   +-- UnknownSymbol                         the provider does not know the symbol
    |   +-- NoBarsInRange                         the provider knows the symbol, and has no bars in the range
    |                                             (before its listing, after a delisting, a range without trades)
    |   +-- AuthenticationFailed                  missing or rejected key
    |   +-- UnsupportedRequest                    timeframe/range/feed the provider cannot serve
    +-- EmptyData                                 the call worked but returned nothing (yfinance's empty frame)
    +-- MalformedPayload                          the payload is not in the provider's documented format

The router falls back to the next provider on RetryableProviderError,
EmptyData, MalformedPayload and UnsupportedRequest; it fails the partition on
UnknownSymbol (when no provider knows the symbol) or NoBarsInRange (when the
providers that know it have nothing in the range), and AuthenticationFailed
is reported loudly and that provider skipped.

Every error may carry ``notes``: what the provider said on the way (a clamped
end, a switched feed), so a note survives whatever the outcome.
"""

from __future__ import annotations

from omni_tasks.core.errors import OmniError, PermanentError, RetryableError


class ProviderError(OmniError):
    """Base class: ``provider`` names the adapter that raised it."""

    def __init__(self, message: str, *, provider: str = "", notes: list[str] | None = None) -> None:
        super().__init__(message)
        self.provider = provider
        self.notes: list[str] = list(notes or [])


class RetryableProviderError(ProviderError, RetryableError):
    pass


class RateLimited(RetryableProviderError):
    def __init__(self, message: str, *, provider: str = "", retry_after_s: float | None = None) -> None:
        super().__init__(message, provider=provider)
        self.retry_after_s = retry_after_s


class QuotaExhausted(RateLimited):
    """The provider's daily quota is spent: no call helps until it resets (``retry_after_s``: until then)."""


class ProviderUnavailable(RetryableProviderError):
    pass


class PermanentProviderError(ProviderError, PermanentError):
    pass


class UnknownSymbol(PermanentProviderError):
    pass


class NoBarsInRange(PermanentProviderError):
    """The symbol is known (the provider has bars for it elsewhere) but none in the requested range."""


class AuthenticationFailed(PermanentProviderError):
    pass


class UnsupportedRequest(PermanentProviderError):
    pass


class EmptyData(ProviderError):
    pass


class MalformedPayload(ProviderError):
    pass
