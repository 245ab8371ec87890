"""The HTTP session our REST clients use: every call times out, and alpaca-py's clients do not retry on their own.

Alpaca market data (:mod:`omni_tasks.marketdata.providers.alpaca.client`)
and Alpaca paper trading (:mod:`omni_tasks.trading.alpaca_paper`) both build
alpaca-py clients; both get their session here, so a timeout or a retry
policy is decided once. Retries are ours (the Celery task's, with backoff and
jitter), never the client library's hidden loop.
"""

from __future__ import annotations

from typing import Any

import requests


class TimeoutSession(requests.Session):
    """A requests session whose calls time out after ``timeout_s`` (seconds) unless told otherwise."""

    def __init__(self, timeout_s: float) -> None:
        super().__init__()
        self.timeout_s = timeout_s

    def request(self, method: str, url: str, *args: Any, **kwargs: Any) -> requests.Response:  # type: ignore[override]  # same call, one default added
        kwargs.setdefault("timeout", self.timeout_s)
        return super().request(method, url, *args, **kwargs)


def timeout_session(timeout_s: float) -> TimeoutSession:
    """A new session whose calls time out after ``timeout_s`` seconds."""
    return TimeoutSession(timeout_s)


def use_timeout_session(client: Any, timeout_s: float) -> None:
    """Give an alpaca-py REST client (``alpaca.common.rest.RESTClient``) our session and no internal retry loop.

    alpaca-py exposes no switch for these; its RESTClient reads both attributes on every call.
    """
    client._retry = 0  # alpaca-py's only handle on its retry loop
    client._session = timeout_session(timeout_s)  # and on its session
