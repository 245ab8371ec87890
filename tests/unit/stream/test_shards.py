"""Sharded streaming: the stable split of the symbols, the keys setting, each shard's config, and the readers' view per shard."""

from __future__ import annotations

import random
import time
from typing import Any

import pytest
from prometheus_client import CollectorRegistry, generate_latest

from omni_tasks.core.errors import ConfigError
from omni_tasks.core.keys import STREAM_LATENCY_KEY, STREAM_STATUS_KEY
from omni_tasks.ops.desk_collectors import StreamCollector
from omni_tasks.settings import Settings, load_settings
from omni_tasks.stream.connlock import key_fingerprint
from omni_tasks.stream.shards import (
    check_shard,
    latency_key,
    shard_count,
    shard_labels,
    shard_of,
    split,
    status_key,
    stream_keys,
    worker_name,
)
from omni_tasks.stream.wiring import stream_config
from omni_tasks.watchdog.rules import Observations, stale_stream

# Obviously fake keys: the stand-in and these tests accept anything.
FAKE_KEYS = "fake-key-0:fake-secret-0,fake-key-1:fake-secret-1,fake-key-2:fake-secret-2"
SYMBOLS = [f"S{i:04d}" for i in range(5000)]


def _settings(**env: str) -> Settings:
    return load_settings({"OMNI_STREAM_FEED": "alpaca", **env}, warn=lambda _m: None)


def test_a_symbol_lands_on_the_same_shard_whatever_the_order_or_the_other_symbols() -> None:
    shuffled = SYMBOLS[:]
    random.Random(7).shuffle(shuffled)
    for shards in (1, 2, 3, 7):
        first = split(SYMBOLS, shards)
        again = split(shuffled, shards)
        assert [sorted(s) for s in first] == [sorted(s) for s in again]
        assert sorted(s for shard in first for s in shard) == sorted(SYMBOLS), "every symbol on exactly one shard"
        for index, shard in enumerate(first):
            assert all(shard_of(symbol, shards) == index for symbol in shard)
    # Adding symbols never moves another one between connections.
    before = {s: shard_of(s, 3) for s in SYMBOLS[:100]}
    assert {s: shard_of(s, 3) for s in SYMBOLS[:100]} == before
    assert split([*SYMBOLS[:100], "NEWCO"], 3)[shard_of("NEWCO", 3)][-1] == "NEWCO"


def test_the_split_is_pinned_so_hosts_and_releases_agree() -> None:
    # SHA-256, not Python's salted hash(): the same answer in every process. A change here would reshuffle live desks.
    names = ("AAPL", "MSFT", "NVDA", "AMZN", "SPY")
    assert [shard_of(s, 2) for s in names] == [1, 1, 0, 0, 0]
    assert [shard_of(s, 4) for s in names] == [3, 1, 2, 0, 2]
    assert [shard_of(s.lower(), 4) for s in names] == [3, 1, 2, 0, 2]
    assert split(["AAPL", "AAPL", "MSFT"], 1) == [["AAPL", "MSFT"]]
    with pytest.raises(ValueError, match="shards"):
        shard_of("AAPL", 0)


def test_the_split_is_even_on_a_desk_sized_universe() -> None:
    figures = []
    for shards in (2, 3, 4, 8):
        sizes = [len(s) for s in split(SYMBOLS, shards)]
        mean = len(SYMBOLS) / shards
        worst = max(abs(size - mean) for size in sizes)
        figures.append(f"{shards} shards: {sizes} (largest {max(sizes) / mean - 1:+.1%} from even)")
        # As even as a random split (a hash is one): within 4 standard deviations of the binomial count.
        assert worst < 4 * (mean * (1 - 1 / shards)) ** 0.5, sizes
    print(f"symbols per shard, N={len(SYMBOLS)} symbols: " + "; ".join(figures))


def test_keys_are_parsed_and_never_shown() -> None:
    settings = _settings(OMNI_STREAM_KEYS=FAKE_KEYS)
    keys = stream_keys(settings)
    assert [k.key_id for k in keys] == ["fake-key-0", "fake-key-1", "fake-key-2"]
    assert keys[1].secret == "fake-secret-1"  # noqa: S105 - an obviously fake secret
    assert "fake-secret" not in repr(keys)
    assert shard_count(settings) == 3
    assert ("OMNI_STREAM_KEYS", "********") in settings.masked()
    assert "fake-secret-1" in settings.secret_values(), "the log redaction filter knows them"


@pytest.mark.parametrize(
    ("value", "said"),
    [
        ("fake-key-0", "entry 1 is not KEYID:SECRET"),
        ("fake-key-0:fake-secret-0,:x", "entry 2 is not KEYID:SECRET"),
        ("fake-key-0:a,fake-key-0:b", "a key id appears twice"),
    ],
)
def test_a_malformed_keys_setting_is_refused_without_echoing_it(value: str, said: str) -> None:
    with pytest.raises(ConfigError, match="OMNI_STREAM_KEYS") as caught:
        _settings(OMNI_STREAM_KEYS=value)
    assert said in str(caught.value)
    assert "secret" not in str(caught.value).replace("KEYID:SECRET", "")


def test_encrypted_keys_are_decrypted_at_load() -> None:
    from cryptography.fernet import Fernet

    fernet_key = Fernet.generate_key()
    token = Fernet(fernet_key).encrypt(FAKE_KEYS.encode()).decode()
    settings = _settings(OMNI_STREAM_KEYS=f"enc:{token}", OMNI_SECRET_KEY=fernet_key.decode())
    assert [k.secret for k in stream_keys(settings)] == ["fake-secret-0", "fake-secret-1", "fake-secret-2"]


def test_each_shard_gets_its_name_key_lock_and_symbols() -> None:
    symbols = ",".join(SYMBOLS[:300])
    settings = _settings(OMNI_STREAM_KEYS=FAKE_KEYS, OMNI_STREAM_SYMBOLS=symbols)
    configs = [stream_config(settings, shard=i) for i in range(3)]
    assert [c.name for c in configs] == ["stream-0", "stream-1", "stream-2"]
    assert [c.lock_fingerprint for c in configs] == [key_fingerprint(f"fake-key-{i}") for i in range(3)]
    assert [c.symbols for c in configs] == split(SYMBOLS[:300], 3)
    assert check_shard(settings, 2) == 2
    with pytest.raises(ConfigError, match="shards 0 to 2"):
        check_shard(settings, 3)


def test_without_keys_the_stream_is_one_unsharded_worker_as_before() -> None:
    settings = _settings(OMNI_ALPACA_API_KEY="fake-key", OMNI_ALPACA_SECRET_KEY="fake-secret")  # noqa: S106 - obviously fake
    config = stream_config(settings)
    assert (config.name, config.shard, config.lock_fingerprint) == ("stream", None, key_fingerprint("fake-key"))
    assert config.symbols == ["AAPL", "MSFT", "NVDA", "AMZN", "SPY"]
    assert shard_count(settings) == 0
    assert shard_labels(0) == [None]
    assert (status_key(None), latency_key(None), worker_name(None)) == (STREAM_STATUS_KEY, STREAM_LATENCY_KEY, "stream")
    assert status_key(1) != STREAM_STATUS_KEY
    assert latency_key(1) != STREAM_LATENCY_KEY
    with pytest.raises(ConfigError, match="needs OMNI_STREAM_KEYS"):
        check_shard(settings, 0)


def _status(last_quote_s_ago: float) -> dict[str, str]:
    ns = str(int((time.time() - last_quote_s_ago) * 1e9))
    return {"last_quote_ns": ns, "last_msg_ns": ns}


def test_the_stale_stream_rule_names_the_shard_that_is_down() -> None:
    settings = _settings(OMNI_STREAM_KEYS=FAKE_KEYS, OMNI_WATCHDOG_STREAM_STALE_S="5")
    now = time.time()
    fresh = Observations(now=now, first_evaluation=now, market_open=True, stream_shards={"0": _status(1), "1": _status(2), "2": _status(0)})
    assert stale_stream(fresh, settings) is None
    one_down = Observations(now=now, first_evaluation=now, market_open=True, stream_shards={"0": _status(1), "1": _status(60), "2": {}})
    finding = stale_stream(one_down, settings)
    assert finding is not None
    assert finding.message.startswith("shard 1: market open and the last quote is 60")
    assert "shard 0" not in finding.message
    assert "shard 2" not in finding.message, "a shard with no status is judged as before (stream not in expected_workers)"
    assert finding.message.endswith("(2 of 3 shards serving)")
    assert finding.value == pytest.approx(60, abs=1)


def test_the_metrics_carry_a_shard_label_only_when_sharded() -> None:
    now = time.time_ns()
    status = {"connected": 1, "updated_ns": now, "last_quote_ns": now, "counts": {"served": 3}, "counters": {}}

    def scrape(source: Any) -> str:
        registry = CollectorRegistry()
        registry.register(StreamCollector(source))
        return generate_latest(registry).decode()

    single = scrape(lambda: (status, {}))
    assert "omni_stream_up 1.0" in single
    assert "shard=" not in single
    sharded = scrape(lambda: {"0": (status, {}), "1": ({}, {})})
    assert 'omni_stream_up{shard="0"} 1.0' in sharded
    assert 'omni_stream_up{shard="1"} 0.0' in sharded
    assert 'omni_stream_messages_total{outcome="served",shard="0"} 3.0' in sharded
