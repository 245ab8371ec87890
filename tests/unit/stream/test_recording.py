"""Recordings: what `omni stream --record` writes is what the replay feed plays, at the speed asked."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from omni_tasks.stream import wire
from omni_tasks.stream.feeds import FeedExhausted
from omni_tasks.stream.recording import Recorder, ReplayFeed, read_recording


def _frames() -> list[bytes | str]:
    t = 1_700_000_000_000_000_000
    return [
        wire.encode_frame([wire.quote_message("AAPL", t, 100.0, 1, 100.01, 2)]),
        wire.encode_frame([wire.quote_message("MSFT", t + 1, 400.0, 1, 400.02, 2, binary=False)], binary=False),
    ]


def test_raw_frames_and_decoded_messages_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "s.omnirec"
    recorder = Recorder(path)
    frames = _frames()
    recorder.write(frames[0], 10)
    recorder.write(frames[1], 20)
    decoded = [{"T": "q", "S": "NVDA", "bp": 1.0, "bs": 1, "ap": 1.01, "as": 1, "t": 1_700_000_000_000_000_002}]
    recorder.write(decoded, 30)  # alpaca-py's client hands over decoded messages
    recorder.close()
    records = list(read_recording(path))
    assert [ts for ts, _ in records] == [10, 20, 30]
    assert records[0][1] == frames[0]
    assert records[1][1] == frames[1]
    assert wire.decode_frame(records[2][1]) == decoded


def test_a_truncated_last_record_ends_the_file_and_a_foreign_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "s.omnirec"
    recorder = Recorder(path)
    for i, frame in enumerate(_frames()):
        recorder.write(frame, i)
    recorder.close()
    path.write_bytes(path.read_bytes()[:-3])
    assert len(list(read_recording(path))) == 1
    other = tmp_path / "other.bin"
    other.write_bytes(b"not a recording")
    with pytest.raises(ValueError, match="not an omni stream recording"):
        list(read_recording(other))


@pytest.mark.parametrize(("speed", "low", "high"), [(1.0, 0.18, 0.6), (4.0, 0.04, 0.3), (0.0, 0.0, 0.1)])
def test_replay_keeps_the_recorded_pace_at_the_speed_asked(tmp_path: Path, speed: float, low: float, high: float) -> None:
    path = tmp_path / "s.omnirec"
    recorder = Recorder(path)
    frame = _frames()[0]
    for i in range(5):
        recorder.write(frame, 1_000_000_000 + i * 50_000_000)  # 5 frames, 50 ms apart: 200 ms of stream
    recorder.close()

    async def play() -> float:
        feed = ReplayFeed(path, speed=speed)
        await feed.connect()
        started = time.monotonic()
        for _ in range(5):
            assert await feed.recv() == frame
        with pytest.raises(FeedExhausted):
            await feed.recv()
        return time.monotonic() - started

    elapsed = asyncio.run(play())
    assert low <= elapsed <= high, elapsed
