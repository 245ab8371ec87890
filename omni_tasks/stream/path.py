"""The quote path: frame -> decode -> books -> one Redis round trip for everything changed since the last one.

:meth:`QuotePath.on_frame` is synchronous and runs for every frame the
moment it arrives; :meth:`QuotePath.flush` writes the latest served quote of
every symbol that changed since the previous flush, in one script call
(no timer: whatever accumulated while the previous write was in flight goes
in the next). The script refuses to replace a stored quote with an older one,
so two writers (two feeds, a replay and a live stream) cannot move a symbol
back in time. The same round trip reads the trading state, which is how the
kill switch reaches this process without a listener thread, and writes what
changed besides quotes: trading statuses and LULD bands (their own script,
which also refuses older data; a halt never expires), and the VWAP of a symbol
whose trades were corrected or cancelled (only when its quote is still
served: the quote's TTL and timestamp are left alone).
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final

from redis.exceptions import NoScriptError, ResponseError

from omni_tasks.contracts.quotes import PROFILE_TTL_S, TRADING_STATUS_TTL_S
from omni_tasks.core.keys import (
    BAR_KEY_PREFIX,
    PROFILE_KEY_PREFIX,
    QUOTE_KEY_PREFIX,
    QUOTE_STREAM_KEY,
    TRADING_STATE_KEY,
    TRADING_STATUS_KEY_PREFIX,
)
from omni_tasks.stream.book import Books, StatusBook
from omni_tasks.stream.latency import StageLatencies
from omni_tasks.stream.microstructure import SymbolBook, quote_resp, resp_bulk
from omni_tasks.stream.wire import GarbageFrame, decode_frame

log = logging.getLogger(__name__)


# KEYS[1]: the capped stream. ARGV: ttl_s, maxlen, the quote key prefix, then eleven arguments per symbol:
# SYMBOL bid ask bid_size ask_size ts recv mid spread_bps vwap liq (microstructure.quote_fields). The client
# sends the command as bytes it built itself (microstructure.quote_resp), so an argument costs it nothing; in
# Redis, arguments are parsed in C, where splitting one packed argument per symbol in Lua cost more than the
# writes themselves. Per symbol: HGET ts, HSET, EXPIRE, XADD. The quote keys are derived from the symbols
# here, which standalone Redis allows (a Redis Cluster would need them declared). A stored quote with a later
# timestamp is kept (timestamps are 19-digit ns strings: compared as strings, exactly, where Lua's doubles
# would round).
WRITE_QUOTES_LUA: Final = """
local ttl = ARGV[1]
local maxlen = ARGV[2]
local prefix = ARGV[3]
local stream = KEYS[1]
local written = 0
if (#ARGV - 3) % 11 ~= 0 then return redis.error_reply('ERR quote rows must have 11 fields') end
for i = 4, #ARGV, 11 do
  local key = prefix .. ARGV[i]
  local ts = ARGV[i + 5]
  local cur = redis.call('HGET', key, 'ts')
  if (not cur) or #cur < #ts or (#cur == #ts and cur <= ts) then
    redis.call('HSET', key, 'bid', ARGV[i + 1], 'ask', ARGV[i + 2], 'bid_size', ARGV[i + 3], 'ask_size', ARGV[i + 4], 'ts', ts,
      'recv', ARGV[i + 6], 'mid', ARGV[i + 7], 'spread_bps', ARGV[i + 8], 'vwap', ARGV[i + 9], 'liq', ARGV[i + 10])
    redis.call('EXPIRE', key, ttl)
    if maxlen ~= '0' then
      redis.call('XADD', stream, 'MAXLEN', '~', maxlen, '*', 'S', ARGV[i], 'bp', ARGV[i + 1], 'ap', ARGV[i + 2],
        'bs', ARGV[i + 3], 'as', ARGV[i + 4], 't', ts, 'mid', ARGV[i + 7], 'spread_bps', ARGV[i + 8])
    end
    written = written + 1
  end
end
return written
"""

# ARGV: ttl_s, the status key prefix, then 15 arguments per symbol (StatusBook.row): symbol, state, code, message,
# reason, reason_message, since, ts, tape, info, luld_up, luld_down, luld_indicator, luld_ts, recv. The status part
# is written when its ts is not older than the stored one, the LULD part likewise by luld_ts (ns strings compared
# exactly, as for quotes). A HALTED or QUOTING symbol's hash never expires: no quote comes during a halt.
WRITE_STATUS_LUA: Final = """
local ttl = tonumber(ARGV[1])
local prefix = ARGV[2]
local written = 0
local function newer(cur, ts)
  return (not cur) or #cur < #ts or (#cur == #ts and cur <= ts)
end
for i = 3, #ARGV, 15 do
  local key = prefix .. ARGV[i]
  local cur = redis.call('HMGET', key, 'ts', 'luld_ts')
  local ts, luld_ts = ARGV[i + 7], ARGV[i + 13]
  if ts ~= '0' and newer(cur[1], ts) then
    redis.call('HSET', key, 'state', ARGV[i + 1], 'code', ARGV[i + 2], 'message', ARGV[i + 3], 'reason', ARGV[i + 4],
      'reason_message', ARGV[i + 5], 'since', ARGV[i + 6], 'ts', ts, 'tape', ARGV[i + 8], 'info', ARGV[i + 9], 'recv', ARGV[i + 14])
    written = written + 1
  end
  if luld_ts ~= '0' and newer(cur[2], luld_ts) then
    redis.call('HSET', key, 'luld_up', ARGV[i + 10], 'luld_down', ARGV[i + 11], 'luld_indicator', ARGV[i + 12],
      'luld_ts', luld_ts, 'recv', ARGV[i + 14])
    if not redis.call('HGET', key, 'state') then redis.call('HSET', key, 'state', '') end
    written = written + 1
  end
  local state = redis.call('HGET', key, 'state')
  if state == 'HALTED' or state == 'QUOTING' then
    redis.call('PERSIST', key)
  elseif state then
    redis.call('EXPIRE', key, ttl)
  end
end
return written
"""

# Only while the quote is served: HSET keeps the key's TTL, and the quote's timestamp is not touched.
SET_VWAP_LUA: Final = """
for i = 1, #KEYS do
  if redis.call('EXISTS', KEYS[i]) == 1 then redis.call('HSET', KEYS[i], 'vwap', ARGV[i]) end
end
return 0
"""


def resp_command(*args: str | int) -> str:
    """One command as RESP text (encoded as UTF-8 when sent; lengths are counted in those bytes)."""
    return f"*{len(args)}\r\n" + "".join(resp_bulk(str(arg)) for arg in args)


def parse_trading_state(raw: Any) -> str:
    """``"<STATE> <version>"`` -> STATE. Garbage counts as HALTED; a missing key is UNKNOWN (the database
    holds the truth and the kill switch re-publishes it); the order path has its own, stricter reader."""
    if raw is None:
        return "UNKNOWN"
    text = raw.decode() if isinstance(raw, bytes) else str(raw)
    state = text.split(" ", 1)[0]
    return state if state in ("ACTIVE", "REDUCING", "HALTED") else "HALTED"


@dataclass
class FlushResult:
    symbols: int
    written: int
    trading_state: str
    changed: list[SymbolBook]


class QuotePath:
    """Books, latencies and the Redis writer of one streaming worker (single-threaded, asyncio Redis)."""

    def __init__(
        self,
        redis: Any,
        *,
        quote_ttl_s: int,
        stream_maxlen: int = 100_000,
        bar_ttl_s: int = 180,
        on_garbage: Callable[[str], None] | None = None,
    ) -> None:
        self.redis = redis
        self.books = Books()
        self.latency = StageLatencies()
        self.quote_ttl_s = quote_ttl_s
        self.stream_maxlen = stream_maxlen
        self.bar_ttl_s = bar_ttl_s
        self.garbage_frames = 0
        self._flush_seq = 0
        self._state_seq = 0
        self.frames = 0
        self.flushes = 0
        self.trading_state = "UNKNOWN"  # until the first flush reads it
        self.last_msg_ns = 0
        self.last_data_ns = 0  # wall ns of the last frame carrying market data
        self._pending_recv: list[int] = []
        self._profiled: dict[str, int] = {}  # symbol -> its trade count when its profile was last queued
        self._sha = hashlib.sha1(WRITE_QUOTES_LUA.encode()).hexdigest()  # noqa: S324 - Redis names scripts by SHA-1
        self._read_state = resp_command("GET", TRADING_STATE_KEY)
        self._heads: dict[str, str] = {}  # symbol -> its RESP bulk string
        self._idle: list[Any] = []  # writer connections between flushes (taken from the client's pool and kept)
        self._idle_of: Any = None  # the client they belong to
        self._on_garbage = on_garbage
        self._process = self.latency["process"]
        self._decode = self.latency["decode"]

    @property
    def dirty(self) -> bool:
        return bool(self._pending_recv)

    def on_frame(self, data: bytes | str | list[dict[str, Any]], recv_perf_ns: int, recv_wall_ns: int) -> list[dict[str, Any]]:
        """Decode and apply one frame received at ``recv_perf_ns`` (perf counter) / ``recv_wall_ns`` (wall clock).

        Returns the frame's control messages. A garbage frame is counted and
        skipped (and reported through ``on_garbage``), never raised.
        """
        self.frames += 1
        self.last_msg_ns = recv_wall_ns
        started = time.perf_counter_ns()
        try:
            messages = data if isinstance(data, list) else decode_frame(data)  # a list: already decoded (alpaca-py), t in int ns
        except GarbageFrame as exc:
            self.garbage_frames += 1
            if self._on_garbage is not None:
                self._on_garbage(str(exc))
            return []
        decoded = time.perf_counter_ns()
        books = self.books
        before = books.counts["quotes"] + books.counts["trades"] + books.counts["bars"] + books.events
        try:
            controls = self.books.apply(messages, recv_wall_ns)
        except Exception as exc:  # one frame the books cannot take must not stop the stream
            self.garbage_frames += 1
            log.exception("stream: a frame the books could not apply was skipped")
            if self._on_garbage is not None:
                self._on_garbage(f"unappliable: {type(exc).__name__}: {exc}")
            return []
        done = time.perf_counter_ns()
        self._decode.record(decoded - started)
        self._process.record(done - recv_perf_ns)
        if books.counts["quotes"] + books.counts["trades"] + books.counts["bars"] + books.events != before:
            self.last_data_ns = recv_wall_ns
            self._pending_recv.append(recv_perf_ns)
        return controls

    async def flush(self) -> FlushResult:
        """Write every symbol changed since the last flush in one round trip, and read the trading state."""
        self._flush_seq += 1
        seq = self._flush_seq
        changed = self.books.take_dirty()
        bars = self.books.take_dirty_bars()
        statuses = self.books.take_dirty_status()
        vwaps = self.books.take_dirty_vwap()
        pending, self._pending_recv = self._pending_recv, []
        commands = []
        if changed:
            heads = self._heads
            head = ("EVALSHA", self._sha, 1, QUOTE_STREAM_KEY, self.quote_ttl_s, self.stream_maxlen, QUOTE_KEY_PREFIX)
            commands.append(
                f"*{len(head) + 11 * len(changed)}\r\n"
                + "".join([resp_bulk(str(arg)) for arg in head])
                + "".join([quote_resp(book, heads.get(book.symbol) or self._head(book.symbol)) for book in changed])
            )
        commands.extend(self._other_commands(bars, statuses, vwaps))
        commands.append(self._read_state)
        started = time.perf_counter_ns()
        try:
            try:
                results = await self._write(commands)
            except NoScriptError:  # Redis restarted (or SCRIPT FLUSH): load it and write again
                await self.redis.script_load(WRITE_QUOTES_LUA)
                results = await self._write(commands)
        except BaseException:
            # Nothing is lost: the books still hold the latest quotes; mark them for the next flush.
            self.books.dirty.update(b.symbol for b in changed)
            self.books.dirty_bars.update(b.symbol for b in bars)
            self.books.dirty_status.update(b.symbol for b in statuses)
            self.books.dirty_vwap.update(b.symbol for b in vwaps)
            self._pending_recv[:0] = pending
            raise
        done = time.perf_counter_ns()
        self.flushes += 1
        self.latency["flush"].record(done - started)
        e2e = self.latency["e2e"]
        for recv in pending:
            e2e.record(done - recv)
        if seq > self._state_seq:  # two writes may finish out of order: keep the newest reading
            self._state_seq = seq
            self.trading_state = parse_trading_state(results[-1])
        written = int(results[0]) if changed else 0
        return FlushResult(symbols=len(changed), written=written, trading_state=self.trading_state, changed=changed)

    def _head(self, symbol: str) -> str:
        head = self._heads[symbol] = resp_bulk(symbol)
        return head

    def _other_commands(self, bars: list[SymbolBook], statuses: list[StatusBook], vwaps: list[SymbolBook]) -> list[str]:
        """What changed besides quotes (rare: bars once a minute, halts, bands, corrections), as RESP."""
        commands = []
        for book in bars:
            key = BAR_KEY_PREFIX + book.symbol
            fields = [x for k, v in (book.bar or {}).items() for x in (k, v if isinstance(v, int) else repr(v))]
            if fields:
                commands.append(resp_command("HSET", key, *fields))
            commands.append(resp_command("EXPIRE", key, self.bar_ttl_s))
        if statuses:  # halts, resumes, bands every few minutes: the script text goes along, no cache to miss
            rows = (f for st in statuses for f in st.row())
            commands.append(resp_command("EVAL", WRITE_STATUS_LUA, 0, TRADING_STATUS_TTL_S, TRADING_STATUS_KEY_PREFIX, *rows))
        if vwaps:
            commands.append(
                resp_command(
                    "EVAL",
                    SET_VWAP_LUA,
                    len(vwaps),
                    *(QUOTE_KEY_PREFIX + b.symbol for b in vwaps),
                    *("" if b.vwap is None else f"{b.vwap:.6f}" for b in vwaps),
                )
            )
        return commands

    async def _write(self, commands: list[str]) -> list[Any]:
        """Send the commands in one write on a connection of our own and read every reply (an error reply is
        raised once all are read, as a pipeline does). No pipeline: the command bytes are built above, not
        argument by argument by the client, and the connection is not checked out of the pool per flush."""
        client = self.redis
        if client is not self._idle_of:  # another client (Redis moved, or a test swapped it): its own connections
            self._idle, self._idle_of = [], client
        conn = self._idle.pop() if self._idle else await client.connection_pool.get_connection()
        try:
            await conn.send_packed_command("".join(commands).encode(), check_health=False)
            results: list[Any] = []
            error: ResponseError | None = None
            for _ in commands:
                try:
                    results.append(await conn.read_response())
                except ResponseError as exc:
                    error = error or exc
                    results.append(exc)
        except BaseException:
            await conn.disconnect(nowait=True)  # a reply may be left unread: start clean next time
            raise
        finally:
            if client is self._idle_of:
                self._idle.append(conn)
        if error is not None:
            raise error
        return results

    def queue_profiles(self, pipe: Any, levels: int = 10) -> int:
        """Queue the volume profile of every symbol that traded since the last call; returns how many.

        Off the quote path: the worker calls it from housekeeping, about once a second.
        """
        queued = 0
        for book in self.books.books.values():
            if book.trade_rev == self._profiled.get(book.symbol, 0):
                continue
            self._profiled[book.symbol] = book.trade_rev
            key = PROFILE_KEY_PREFIX + book.symbol
            vwap, poc = book.vwap, book.point_of_control
            pipe.hset(
                key,
                mapping={
                    "day": book.trade_day,
                    "trades": book.trades,
                    "volume": repr(book.trade_volume),
                    "vwap": "" if vwap is None else f"{vwap:.6f}",
                    "poc": "" if poc is None else repr(poc),
                    "levels": json.dumps(book.volume_profile(levels)),
                },
            )
            pipe.expire(key, PROFILE_TTL_S)
            queued += 1
        return queued

    def stale_symbols(self, symbols: list[str], now_wall_ns: int, stale_after_s: float) -> list[str]:
        """Subscribed symbols whose last served quote was received more than ``stale_after_s`` ago (or never)."""
        limit = now_wall_ns - int(stale_after_s * 1e9)
        books = self.books.books
        return [s for s in symbols if (b := books.get(s)) is None or b.recv < limit]
