"""Whole-series answers shared by the partitions of one job, and per-symbol refusals (in Redis).

A provider whose one call returns a symbol's whole history (Alpha Vantage's
daily series) is called once per job and symbol: the first partition to get
the lock makes the call over the job's whole range and stores the answer
here (Parquet, with a TTL); its siblings read it and keep their own range.
Running a partition again (a redelivery) reads the same answer.

A provider refusing one symbol (a rate-limit body about it, "Information")
is remembered per job, provider and symbol: the siblings wait for the refusal
to pass instead of asking again, and after ``max_refusals`` the symbol's
partitions fail with the provider's own words.

A provider's final word on the whole range (it does not know the symbol, or
knows it and has no bars anywhere in the job's range) is kept the same way
(:meth:`SeriesCache.verdict`): the siblings take it instead of asking again,
so an unknown symbol costs one call per job, not one per partition.
"""

from __future__ import annotations

import io
import json
import uuid
from datetime import datetime
from typing import cast

import pandas as pd
import redis

from omni_tasks.core.keys import SERIES_KEY

#: How long the partition making the one call holds it (longer than a provider call's timeout).
LOCK_TTL_S = 90


class SeriesCache:
    """The shared answers and refusals of one Redis."""

    def __init__(self, client: redis.Redis, *, ttl_s: float = 3600.0) -> None:
        self._client = client
        self._ttl_s = int(max(1.0, ttl_s))

    @staticmethod
    def key(job: int, provider: str, symbol: str, timeframe: str, adjustment: str) -> str:
        return SERIES_KEY.format(job=job, provider=provider, symbol=symbol, timeframe=timeframe, adjustment=adjustment)

    def get(self, key: str) -> pd.DataFrame | None:
        raw = self._client.get(key)
        if raw is None:
            return None
        return pd.read_parquet(io.BytesIO(cast(bytes, raw)))  # a client without decode_responses: the Parquet bytes put() stored

    def put(self, key: str, bars: pd.DataFrame, *, series_start: datetime | None = None) -> None:
        """Store the answer; ``series_start``: where the provider's whole series of the symbol begins, when it said."""
        buffer = io.BytesIO()
        bars.reset_index(drop=True).to_parquet(buffer, index=False)
        pipe = self._client.pipeline(transaction=True)
        if series_start is not None:
            pipe.set(f"{key}:from", series_start.isoformat(), ex=self._ttl_s)
        pipe.set(key, buffer.getvalue(), ex=self._ttl_s)
        pipe.execute()

    def series_start(self, key: str) -> datetime | None:
        """Where the provider's whole series begins (stored with the answer), or None when it did not say."""
        raw = self._client.get(f"{key}:from")
        return datetime.fromisoformat(cast(bytes, raw).decode()) if raw is not None else None

    def lock(self, key: str) -> str | None:
        """A token when this caller is to make the one call; None while another holds it."""
        token = uuid.uuid4().hex
        return token if self._client.set(f"{key}:lock", token, nx=True, ex=LOCK_TTL_S) else None

    def unlock(self, key: str, token: str) -> None:
        lock = f"{key}:lock"
        if (cast(bytes | None, self._client.get(lock)) or b"").decode() == token:  # a client without decode_responses
            self._client.delete(lock)

    def refusal(self, key: str) -> tuple[str, float] | None:
        """The provider's standing refusal of this symbol (its words, seconds left), or None."""
        pipe = self._client.pipeline(transaction=False)
        pipe.get(f"{key}:refused")
        pipe.pttl(f"{key}:refused")
        said, ttl_ms = pipe.execute()
        if said is None:
            return None
        return said.decode(), max(0.0, int(ttl_ms) / 1000.0)

    def refuse(self, key: str, said: str, wait_s: float, *, at: float | None = None) -> int:
        """Record a refusal of this symbol standing for ``wait_s``; returns how many this job has had.

        ``at``: when (the limiter's clock), kept for the job's first refusal of the symbol (:meth:`first_refused`).
        """
        pipe = self._client.pipeline(transaction=True)
        pipe.set(f"{key}:refused", said[:2000], px=max(1, int(wait_s * 1000)))
        pipe.incr(f"{key}:refusals")
        pipe.expire(f"{key}:refusals", self._ttl_s)
        pipe.set(f"{key}:said", said[:2000], ex=self._ttl_s)
        if at is not None:
            pipe.set(f"{key}:first_refused", repr(at), ex=self._ttl_s, nx=True)
        return int(pipe.execute()[1])

    def first_refused(self, key: str) -> float | None:
        """When this job's first refusal of the symbol was recorded (the ``at`` given to :meth:`refuse`), or None."""
        raw = self._client.get(f"{key}:first_refused")
        return float(cast(bytes, raw)) if raw is not None else None

    def hold(self, key: str, said: str, wait_s: float) -> None:
        """The refusals were not the symbol's own (the provider's daily quota is spent): count them no more, and
        let the refusal stand for ``wait_s`` (until the quota resets), so the partitions defer instead of failing."""
        pipe = self._client.pipeline(transaction=True)
        pipe.set(f"{key}:refused", said[:2000], px=max(1, int(wait_s * 1000)))
        pipe.delete(f"{key}:refusals", f"{key}:first_refused")
        pipe.execute()

    def given_up(self, key: str, max_refusals: int) -> str | None:
        """The provider's last words when this symbol has been refused ``max_refusals`` times in the job, else None."""
        pipe = self._client.pipeline(transaction=False)
        pipe.get(f"{key}:refusals")
        pipe.get(f"{key}:said")
        count, said = pipe.execute()
        if int(count or 0) < max_refusals:
            return None
        return (said or b"refused").decode()

    def put_verdict(self, key: str, kind: str, said: str, notes: list[str]) -> None:
        """Record the provider's final word on the job's whole range: ``kind`` unknown_symbol or no_bars_in_range."""
        self._client.set(f"{key}:verdict", json.dumps({"kind": kind, "said": said[:2000], "notes": notes[:20]}), ex=self._ttl_s)

    def verdict(self, key: str) -> tuple[str, str, list[str]] | None:
        """(kind, the provider's words, its notes) when a partition of this job was given the final word, else None."""
        raw = self._client.get(f"{key}:verdict")
        if raw is None:
            return None
        data = json.loads(cast(bytes, raw))
        return str(data["kind"]), str(data["said"]), [str(n) for n in data.get("notes", [])]
