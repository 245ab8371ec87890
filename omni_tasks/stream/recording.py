"""Recording the raw stream and playing it back: ``omni stream --record`` and the replay feed.

One record per frame: wall ns (8 bytes), kind (1: ``b`` msgpack, ``t`` JSON
text), length (4), payload; the file starts with :data:`RECORD_MAGIC`. The
recorder keeps frames byte for byte, so a replay goes through the same decode
as the live feed.
"""

from __future__ import annotations

import asyncio
import struct
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Final

import msgpack

from omni_tasks.stream.feeds import FeedClosed, FeedExhausted

# --- Recording: one record per frame: wall ns (8 bytes), kind (1: b msgpack, t JSON text), length (4), payload.

_RECORD_HEADER: Final = struct.Struct("<qcI")
RECORD_MAGIC: Final = b"OMNIREC1"


class Recorder:
    """Appends raw frames with their receive time to a file ``omni stream --record`` names."""

    def __init__(self, path: Path) -> None:
        self.path = path
        new = not path.exists() or path.stat().st_size == 0
        self._file = path.open("ab", buffering=1 << 20)
        if new:
            self._file.write(RECORD_MAGIC)
        self.frames = 0

    def write(self, frame: bytes | str | list[dict[str, Any]], recv_wall_ns: int) -> None:
        if isinstance(frame, str):
            payload, kind = frame.encode(), b"t"
        elif isinstance(frame, list):  # alpaca-py hands over decoded messages (t as int ns): keep them as msgpack
            payload, kind = msgpack.packb(frame), b"b"
        else:
            payload, kind = bytes(frame), b"b"
        self._file.write(_RECORD_HEADER.pack(recv_wall_ns, kind, len(payload)))
        self._file.write(payload)
        self.frames += 1

    def flush(self) -> None:
        self._file.flush()

    def close(self) -> None:
        self._file.close()


def read_recording(path: Path) -> Iterable[tuple[int, bytes | str]]:
    """(wall ns, frame) of every record in a recording; a truncated last record ends the file quietly."""
    with path.open("rb") as handle:
        if handle.read(len(RECORD_MAGIC)) != RECORD_MAGIC:
            raise ValueError(f"{path}: not an omni stream recording (no {RECORD_MAGIC.decode()} header)")
        while True:
            header = handle.read(_RECORD_HEADER.size)
            if len(header) < _RECORD_HEADER.size:
                return
            ts, kind, length = _RECORD_HEADER.unpack(header)
            payload = handle.read(length)
            if len(payload) < length:
                return
            yield ts, (payload.decode() if kind == b"t" else payload)


class ReplayFeed:
    """Plays a recording back: ``speed`` 1 is real time, N is N times faster, 0 is as fast as possible."""

    def __init__(self, path: Path, *, speed: float = 1.0) -> None:
        if speed < 0:
            raise ValueError("replay speed must be >= 0 (0: as fast as possible)")
        self.name = "replay"
        self.path = path
        self.speed = speed
        self._records: Any = None
        self._first_ts: int | None = None
        self._started = 0.0
        self.frames = 0

    async def connect(self) -> None:
        if not self.path.exists():
            raise FeedExhausted(f"{self.path}: no such recording")
        self._records = iter(read_recording(self.path))
        self._first_ts = None
        self._started = time.monotonic()

    answers_subscriptions = False  # no subscription message or error answers a request (stream/subscriptions.py)

    async def subscribe(self, channels: dict[str, list[str]]) -> None:
        """A recording carries what was subscribed when it was made."""

    async def unsubscribe(self, channels: dict[str, list[str]]) -> None:
        """A recording carries what was subscribed when it was made."""

    async def recv(self) -> bytes | str:
        if self._records is None:
            raise FeedClosed("not connected")
        try:
            ts, frame = next(self._records)
        except StopIteration:
            raise FeedExhausted(f"{self.path}: end of recording after {self.frames} frames") from None
        if self._first_ts is None:
            self._first_ts = ts
        if self.speed > 0:
            due = self._started + (ts - self._first_ts) / 1e9 / self.speed
            delay = due - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
        elif self.frames % 64 == 0:
            await asyncio.sleep(0)  # let the writer run
        self.frames += 1
        return frame

    async def close(self) -> None:
        self._records = None
