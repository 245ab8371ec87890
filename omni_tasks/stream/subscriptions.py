"""What the stream worker asks the provider to send, one request at a time, and what the provider refused.

Alpaca answers every ``subscribe`` and ``unsubscribe`` with either the whole
current subscription (``T: "subscription"``) or an error, in order. Two errors
refuse a subscribe as a whole and leave the subscription as it was before the
request (Alpaca's stream docs, "Errors"):

- **405 "symbol limit exceeded"**: the request would pass the plan's symbol
  limit (about 30 on the free IEX plan);
- **400 "invalid syntax"**: the message did not follow the specification,
  which Alpaca also answers when a symbol in it is badly formatted.

Neither names a symbol, and neither goes away by reconnecting, so the worker
does not reconnect; it splits the refused request in halves and asks again,
keeping what is accepted:

- 405: halves until one symbol alone is refused; the plan is then full, and
  every symbol not yet accepted is not served (retried at the next connection
  or when an unsubscribe frees room);
- 400: halves until the badly formatted symbols stand alone; those are named
  and never asked for again (the others are served).

The symbols not served, each with the provider's words and code, are kept in
:attr:`Subscriptions.refused`: the status hash publishes them (``refused``),
``omni status`` and ``/health`` show them, and the mute-socket and
stale-symbol checks leave them out (a socket with nothing it may serve is not
mute, and a refused symbol is not stale).

One request is in flight at a time (a feed with ``answers_subscriptions``
false, a replay, answers none: its requests go one after the other) so that every answer is known to be the
answer to it; a request unanswered for ``answer_timeout_s`` is given up (the
subscription is then taken as unchanged).
"""

from __future__ import annotations

import logging
import time
from collections import deque
from typing import TYPE_CHECKING, Any, Final

if TYPE_CHECKING:
    from omni_tasks.stream.feeds import Feed
    from omni_tasks.stream.worker import StreamWorker

log = logging.getLogger(__name__)

SYMBOL_LIMIT_CODE: Final = 405
INVALID_SYNTAX_CODE: Final = 400
#: The errors that answer a subscribe by refusing it whole (the subscription stays as it was).
REFUSING_CODES: Final = frozenset({INVALID_SYNTAX_CODE, SYMBOL_LIMIT_CODE})
SHOWN: Final = 12  # symbols named in one error line (all of them are in the status's ``refused``)


def _named(symbols: list[str]) -> str:
    more = len(symbols) - SHOWN
    return ", ".join(symbols[:SHOWN]) + (f" and {more} more" if more > 0 else "")


class Subscriptions:
    """One worker's subscribe and unsubscribe requests on the current connection, and the symbols refused."""

    def __init__(self, worker: StreamWorker, *, answer_timeout_s: float = 10.0) -> None:
        self.worker = worker
        self.answer_timeout_s = answer_timeout_s
        self.refused: dict[str, str] = {}  # symbol -> the provider's words and code
        self.accepted: set[str] = set()  # accepted on this connection
        self.requests = 0  # subscribe/unsubscribe requests sent (all connections)
        self.splits = 0  # refused requests split in halves
        self._queue: deque[tuple[str, list[str]]] = deque()
        self._in_flight: tuple[str, list[str]] | None = None
        self._due = 0  # answers still due to the request in flight (alpaca-py unsubscribes one channel per message)
        self._sent_at = 0.0
        self._sending = False
        self._full = False  # a single symbol got the 405 on this connection: the plan holds no more

    # --- what the worker asks

    def streaming(self) -> list[str]:
        """The worker's symbols less those refused: what it expects data for."""
        return [s for s in self.worker.subscribed if s not in self.refused]

    def connected(self) -> None:
        """A new connection: nothing is subscribed on it yet. Ask for every symbol not refused as malformed."""
        self._queue.clear()
        self._in_flight = None
        self._full = False
        earlier = self.accepted
        self.accepted = set()
        for symbol, reason in list(self.refused.items()):
            if f"code {SYMBOL_LIMIT_CODE}" in reason:
                del self.refused[symbol]  # the plan may allow it now: asked again, after the symbols served before
        wanted = [s for s in self.worker.subscribed if s not in self.refused]
        known = [s for s in wanted if s in earlier]
        rest = [s for s in wanted if s not in earlier]
        for batch in (known, rest) if known else (rest,):
            if batch:
                self._queue.append(("subscribe", batch))

    def subscribe(self, symbols: list[str]) -> None:
        wanted = [s for s in symbols if f"code {INVALID_SYNTAX_CODE}" not in self.refused.get(s, "")]
        for symbol in wanted:
            self.refused.pop(symbol, None)
        if wanted:
            self._queue.append(("subscribe", wanted))

    def unsubscribe(self, symbols: list[str]) -> None:
        for symbol in symbols:
            self.refused.pop(symbol, None)
        asked = list(symbols)
        if asked:
            self._queue.append(("unsubscribe", asked))
        waiting = [s for s, reason in self.refused.items() if f"code {SYMBOL_LIMIT_CODE}" in reason]
        if asked and waiting:  # room was freed: the symbols the plan had no room for are asked for again
            self._full = False
            for symbol in waiting:
                del self.refused[symbol]
            self._queue.append(("subscribe", waiting))

    def resubscribe(self, symbols: list[str]) -> None:
        """Unsubscribe and subscribe again (a stale symbol), in order with the other requests."""
        self._queue.append(("unsubscribe", list(symbols)))
        self._queue.append(("subscribe", list(symbols)))

    # --- sending

    async def pump(self, feed: Feed | None) -> None:
        """Send the next request when none is in flight (and give up on one unanswered for too long)."""
        if feed is None or self._sending:
            return
        if self._in_flight is not None:
            if time.monotonic() - self._sent_at < self.answer_timeout_s:
                return
            action, batch = self._in_flight
            log.warning("stream: no answer to %s %s within %.0f s; taking the subscription as unchanged", action, _named(batch), self.answer_timeout_s)
            self._in_flight = None
        while self._queue:
            action, batch = self._queue.popleft()
            if action == "subscribe":
                batch = [s for s in batch if s not in self.refused]
                if self._full:
                    self._refuse(batch, f"symbol limit exceeded (code {SYMBOL_LIMIT_CODE})")
                    continue
            if not batch:
                continue
            self._in_flight = (action, batch)
            self._sent_at = time.monotonic()
            self._sending = True
            try:
                channels = self.worker.channels_for(batch)
                await (feed.subscribe(channels) if action == "subscribe" else feed.unsubscribe(channels))
                self.requests += 1
                self._due = int(getattr(feed, "last_messages", 1))
                if not getattr(feed, "answers_subscriptions", True) or self._due <= 0:
                    self._in_flight = None  # a replay answers nothing (nor a message never sent): the next request goes at once
            except Exception:
                self._in_flight = None
                raise
            finally:
                self._sending = False
            return

    # --- the provider's answers

    def on_subscription(self, message: dict[str, Any]) -> None:
        """The whole subscription after our request: what it accepted."""
        self.accepted = {s for k, v in message.items() if k in self.worker.config.channels and isinstance(v, list) for s in v}
        self._due -= 1
        if self._due <= 0:
            self._in_flight = None

    def on_error(self, message: dict[str, Any], feed: Feed | None) -> bool:
        """An error answering the request in flight (400, 405): split it or name what is refused. False: not ours."""
        code = message.get("code")
        if code not in REFUSING_CODES or self._in_flight is None:
            return False
        action, batch = self._in_flight
        self._due -= 1
        if action != "subscribe":
            if self._due <= 0:
                self._in_flight = None
            return False  # an unsubscribe refused: nothing was added, nothing to name
        self._in_flight = None
        said = f"{message.get('msg') or 'refused'} (code {code})"
        forget = getattr(feed, "forget", None)
        if forget is not None:
            forget(self.worker.channels_for(batch))  # alpaca-py re-sends every symbol it holds handlers for
        if len(batch) > 1:
            self.splits += 1
            half = len(batch) // 2
            self._queue.appendleft(("subscribe", batch[half:]))
            self._queue.appendleft(("subscribe", batch[:half]))
            log.warning("stream: %s for %d symbols; the subscription is unchanged; asking in halves", said, len(batch))
            return True
        if code == SYMBOL_LIMIT_CODE:
            self._full = True
        self._refuse(batch, said)
        return True

    def _refuse(self, batch: list[str], said: str) -> None:
        if not batch:
            return
        for symbol in batch:
            self.refused[symbol] = said
        worker = self.worker
        refused = [s for s in worker.subscribed if self.refused.get(s) == said]
        if said.endswith(f"(code {SYMBOL_LIMIT_CODE})"):
            text = (
                f"{said}: the data plan's symbol limit is reached with {len(self.accepted)} symbols served; "
                f"not served: {_named(refused)} (shard the universe over keys with OMNI_STREAM_KEYS, or trim it)"
            )
        else:
            text = f"{said}: the provider refused the subscription of {_named(refused)} (badly formatted symbols?); the others are served"
        worker.set_error(text)
        log.error("stream: %s", text)
