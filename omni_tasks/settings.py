"""One validated settings object, read once from ``OMNI_*`` variables and an optional .env.

Every group maps to a prefix: ``OMNI_BROKER_URL`` is ``settings.broker.url``,
``OMNI_RISK_MAX_DAILY_LOSS_USD`` is ``settings.risk.max_daily_loss_usd``. The
``.env`` file is ``./.env`` unless ``OMNI_ENV_FILE`` names another; real
environment variables win over the file. Fields carry their units in their
names (``_s`` seconds, ``_usd`` dollars, ``_pct`` percent).

Nothing else in the package reads ``os.environ``: the CLI calls
:func:`load_settings` once and passes the object down. An invalid value raises
:class:`~omni_tasks.core.errors.ConfigError` whose message names the variable.
Unknown ``OMNI_*`` variables are refused too, so a typo cannot silently leave
a default (say, a risk limit) in force.
"""

from __future__ import annotations

import difflib
import os
import re
import sys
from collections.abc import Callable, Iterator, Mapping
from datetime import date
from decimal import Decimal
from pathlib import Path
from typing import Any, ClassVar, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from dotenv import dotenv_values
from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, ValidationInfo, field_validator

from omni_tasks.core import secrets as secret_box
from omni_tasks.core.errors import ConfigError
from omni_tasks.core.inputs import EARLIEST_DATE, SYMBOL_PATTERN

ENV_PREFIX = "OMNI_"
#: Variables that are not settings but are read by the test-suite or the launcher.
NON_SETTING_VARIABLES = frozenset({"OMNI_ENV_FILE", "OMNI_REQUIRE_SERVICES", "OMNI_PROCESS_ROLE"})
#: Old names still read, each as the setting it became (a one-line deprecation message names the new one).
RENAMED_VARIABLES: Mapping[str, str] = {"OMNI_TRADING_BROKER": "OMNI_TRADING_VENUE"}

PROVIDER_NAMES = ("alpaca", "yahoo", "alpha_vantage", "synthetic", "replay")
STREAM_FEEDS = ("synthetic", "replay", "alpaca")
#: The watchdog's rules (omni_tasks.watchdog.rules), named here so a disabled rule is checked at start-up.
WATCHDOG_RULES = ("risk_breach", "stale_stream", "providers_down", "error_storm", "missing_workers", "queue_backlog", "latency_budget")

#: The first session exchange_calendars knows for XNYS: no backfill or check can reach earlier.
EARLIEST_CALENDAR_DATE = EARLIEST_DATE
#: Default earliest backfill date: the first session of 1962, where the oldest daily series
#: of US listings at Yahoo begin; decades of daily history for research backfills.
DEFAULT_EARLIEST_BACKFILL = date(1962, 1, 2)

_SYMBOL = SYMBOL_PATTERN


def _split_csv(value: Any) -> Any:
    if isinstance(value, str):
        return [part.strip() for part in value.split(",") if part.strip()]
    return value


CsvList = list[str]


def _check_symbols(value: list[str]) -> list[str]:
    out = [symbol.upper() for symbol in value]
    for symbol in out:
        if not _SYMBOL.match(symbol):
            raise ValueError(f"{symbol!r} is not a ticker symbol (1-10 of A-Z, 0-9, '.', '-')")
    return out


def check_key_pairs(text: str) -> list[tuple[str, str]]:
    """``KEYID:SECRET,KEYID:SECRET`` as (key id, secret) pairs; a ValueError (never quoting a secret) when malformed or a key id repeats."""
    pairs: list[tuple[str, str]] = []
    for number, part in enumerate((p.strip() for p in text.split(",") if p.strip()), start=1):
        key_id, sep, secret = part.partition(":")
        if not sep or not key_id.strip() or not secret.strip():
            raise ValueError(f"entry {number} is not KEYID:SECRET")
        pairs.append((key_id.strip(), secret.strip()))
    if not pairs:
        raise ValueError("no KEYID:SECRET entry")
    if len({key_id for key_id, _ in pairs}) != len(pairs):
        raise ValueError("a key id appears twice (one connection per key: each shard needs its own key)")
    return pairs


class _Group(BaseModel):
    """A group of settings read from variables sharing one prefix (``prefix`` + FIELD)."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)
    prefix: ClassVar[str] = ENV_PREFIX


class CoreSettings(_Group):
    """Process-wide settings: data folder, logging, secret keys, exchange zone."""

    prefix: ClassVar[str] = "OMNI_"

    data_dir: Path = Field(default_factory=lambda: Path.home() / ".omni-tasks", description="where the embedded Redis, SQLite and metrics live")
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field(default="INFO", description="least severe log level written: DEBUG, INFO, WARNING or ERROR")
    log_format: Literal["json", "console"] = Field(default="json", description="json (one object a line, for collectors) or console (for people)")
    log_file: Path | None = Field(default=None, description="rotating log file (10 MB x 5); the process role is added to the name")
    secret_key: SecretStr | None = Field(default=None, description="Fernet keys, newest first, comma separated")
    secret_key_file: Path | None = Field(default=None, description="file with Fernet keys, one per line, newest first")
    exchange_tz: str = Field(default="America/New_York", description="zone of the beat schedule and market hours")

    @field_validator("log_level", mode="before")
    @classmethod
    def _upper(cls, value: Any) -> Any:
        return value.upper() if isinstance(value, str) else value

    @field_validator("data_dir", "log_file", "secret_key_file", mode="after")
    @classmethod
    def _expand(cls, value: Path | None) -> Path | None:
        return value.expanduser() if value is not None else None

    @field_validator("exchange_tz")
    @classmethod
    def _zone(cls, value: str) -> str:
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"unknown time zone {value!r} (use an IANA name such as America/New_York)") from None
        return value


class BrokerSettings(_Group):
    """The Celery broker, the Redis used for locks and latest quotes, and delivery guarantees."""

    prefix: ClassVar[str] = "OMNI_BROKER_"

    url: str | None = Field(default=None, description="redis://, rediss://, redis+socket:// or amqp://; unset: embedded Redis")
    cache_url: str | None = Field(default=None, description="Redis for results, locks and quotes; default: the broker when it is Redis")
    visibility_timeout_s: int = Field(default=3600, gt=0, description="must exceed every task's hard time limit")
    result_expires_s: int = Field(default=86400, gt=0, description="task results are kept this long in the result backend")
    restore_sweep_s: int = Field(default=2, gt=0, description="seconds between kombu's unacked-restore sweeps")
    heartbeat_s: float = Field(default=2.0, gt=0, description="worker heartbeat period")
    dead_after_s: float = Field(default=10.0, gt=0, description="a worker silent this long is dead; its unacked tasks are redelivered")
    max_deliveries: int = Field(default=5, ge=1, description="a task delivered more often is dead-lettered")
    beat_lock_ttl_s: float = Field(default=10.0, gt=0, description="the beat leader lock expires this long after its last renewal")
    require_noeviction: bool = Field(default=True, description="refuse to start when Redis may evict keys")
    consumer_timeout_s: int = Field(
        default=1800,
        gt=0,
        description="RabbitMQ's consumer_timeout (rabbitmq.conf; 1800 s is its default): must exceed every task's hard time limit, "
        "or the broker closes the channel of a task still running; declared per queue (x-consumer-timeout) on RabbitMQ 3.12+",
    )
    management_url: str | None = Field(
        default=None,
        description="RabbitMQ management API (http://host:15672), the broker URL's user and password: queue depths and Flower's broker page; unset: AMQP only",
    )

    @field_validator("url", "cache_url")
    @classmethod
    def _scheme(cls, value: str | None) -> str | None:
        if value is None or value == "":
            return None
        allowed = ("redis://", "rediss://", "redis+socket://", "unix://", "amqp://", "amqps://", "pyamqp://")
        if not value.startswith(allowed):
            raise ValueError(f"unsupported URL scheme in {value.split('://')[0]!r}: use one of {', '.join(allowed)}")
        return value


class DatabaseSettings(_Group):
    """SQLAlchemy database: SQLite in the data folder by default, PostgreSQL in production."""

    prefix: ClassVar[str] = "OMNI_DATABASE_"

    url: str | None = Field(default=None, description="postgresql+psycopg2://... or sqlite:///...; unset: SQLite in the data folder")
    pool_size: int = Field(default=5, ge=1, le=200, description="database connections each process keeps open")
    max_overflow: int = Field(default=10, ge=0, le=500, description="connections opened beyond the pool under load (closed when returned)")
    pool_timeout_s: float = Field(default=30.0, gt=0, description="how long a caller waits for a free pooled connection before failing")
    echo: bool = Field(default=False, description="log every SQL statement (debugging only)")
    dead_client_after_s: float = Field(
        default=30.0,
        ge=2,
        le=7200,
        description="PostgreSQL ends the session of a client silent this long (TCP keepalives asked per connection): a worker cut off mid-write has its transaction rolled back and its locks released, so its redelivered work goes on",
    )
    outage_retries: int = Field(
        default=12, ge=0, le=100, description="retries of a backfill, scan, validation or risk task cut short by a database outage (their own budget)"
    )
    outage_backoff_max_s: float = Field(default=30.0, gt=0, le=600, description="longest wait between those retries (exponential from 1 s, jittered)")

    @field_validator("url")
    @classmethod
    def _scheme(cls, value: str | None) -> str | None:
        if value is None or value == "":
            return None
        if not value.startswith(("postgresql", "sqlite")):
            raise ValueError("only postgresql:// and sqlite:// databases are supported")
        if value.startswith("postgresql://"):
            value = "postgresql+psycopg2://" + value[len("postgresql://") :]
        return value


class AlpacaSettings(_Group):
    """Alpaca market data and paper trading (alpaca-py)."""

    prefix: ClassVar[str] = "OMNI_ALPACA_"

    api_key: SecretStr | None = Field(default=None, description="Alpaca key id (a secret: never logged); unset: Alpaca is skipped")
    secret_key: SecretStr | None = Field(default=None, description="Alpaca secret key (a secret: never logged)")
    feed: Literal["iex", "sip"] = Field(default="iex", description="feed of Alpaca's live quote stream: iex (free) or sip (paid plan); backfills use OMNI_BACKFILL_FEED")
    paper: bool = Field(default=True, description="trade on Alpaca's paper account (true) or the live one (false)")
    data_url: str = Field(default="https://data.alpaca.markets", description="Alpaca market-data REST endpoint (a local stand-in in tests)")
    stream_url: str = Field(default="wss://stream.data.alpaca.markets", description="Alpaca market-data websocket endpoint")
    trading_url: str = Field(default="https://paper-api.alpaca.markets", description="Alpaca trading API endpoint (paper by default)")


class AlphaVantageSettings(_Group):
    """Alpha Vantage (alpha_vantage): daily and intraday bars, news sentiment."""

    prefix: ClassVar[str] = "OMNI_ALPHA_VANTAGE_"

    api_key: SecretStr | None = Field(default=None, description="Alpha Vantage API key (a secret: never logged); unset: the provider is skipped")
    base_url: str = Field(default="https://www.alphavantage.co", description="where the Alpha Vantage calls go (a local stand-in in tests)")
    daily_quota: int = Field(default=25, ge=1, description="calls per key per day; when spent, no call is made until 00:00 UTC")
    calls_per_window: int = Field(default=5, ge=1, le=10000, description="calls per rate window (OMNI_PROVIDERS_RATE_WINDOW_S) the key allows, shared by all workers")


class YahooSettings(_Group):
    """Yahoo Finance (yfinance): no key."""

    prefix: ClassVar[str] = "OMNI_YAHOO_"

    enabled: bool = Field(default=True, description="false: the Yahoo provider is skipped")
    base_url: str = Field(default="https://query2.finance.yahoo.com", description="where yfinance's calls go (a local stand-in in tests)")


class ProviderSettings(_Group):
    """Order in which the market-data router tries providers."""

    prefix: ClassVar[str] = "OMNI_PROVIDERS_"

    order: CsvList = Field(default_factory=lambda: ["alpaca", "yahoo", "alpha_vantage"], description="providers tried in this order (comma separated): alpaca, yahoo, alpha_vantage, synthetic, replay")
    replay_dir: Path | None = Field(default=None, description="folder of recorded bars the replay provider serves")
    rate_window_s: float = Field(default=60.0, gt=0, le=3600, description="length of the shared rate-limit window the providers' per-minute limits apply to (tests scale it down)")
    rate_wait_max_s: float = Field(default=10.0, ge=0, le=120, description="a call waits in the worker at most this long for a slot of the shared window; a longer wait defers the partition to the slot")
    series_cache_s: float = Field(default=3600.0, gt=0, le=86400, description="a whole-series answer (Alpha Vantage daily) is kept this long for the other partitions of the same job and symbol")
    max_refusals: int = Field(default=3, ge=1, le=100, description="times one symbol may be refused by a provider (a rate-limit body about it alone) before its partition fails with the provider's words")

    _split = field_validator("order", mode="before")(classmethod(lambda cls, v: _split_csv(v)))

    @field_validator("order")
    @classmethod
    def _known(cls, value: list[str]) -> list[str]:
        unknown = [name for name in value if name not in PROVIDER_NAMES]
        if unknown:
            raise ValueError(f"unknown provider {unknown[0]!r}: choose from {', '.join(PROVIDER_NAMES)}")
        return value


class BackfillSettings(_Group):
    """Historical backfills: the universe and the nightly incremental run."""

    prefix: ClassVar[str] = "OMNI_BACKFILL_"

    universe_file: Path | None = Field(default=None, description="symbols, one per line or comma separated; unset: the built-in ~100")
    universe: CsvList = Field(default_factory=list, description="symbols (comma separated) instead of a file")
    timeframe: str = Field(default="1Day", description="timeframe of the nightly incremental backfill")
    feed: str = Field(default="iex", description="feed requested from Alpaca (iex or sip)")
    adjustment: Literal["raw", "split", "dividend", "all"] = Field(default="raw", description="price adjustment of the nightly backfill: raw, split, dividend or all")
    overlap_days: int = Field(default=5, ge=0, le=60, description="the nightly run re-reads this many days before the last stored bar")
    lookback_days: int = Field(default=730, ge=1, le=20000, description="history fetched for a symbol with no stored bars")
    first_run_days: int = Field(
        default=365, ge=0, le=3650,
        description="`omni up` offline (synthetic feed) on a data folder short of history backfills this many days of daily bars for the universe, once, then runs a validation, a scan and a risk recalculation (0: never)",
    )  # fmt: skip
    earliest_date: date = Field(
        default=DEFAULT_EARLIEST_BACKFILL,
        description="no backfill starts before this date (YYYY-MM-DD); at the earliest 1885-01-02, the exchange calendar's first session",
    )

    _split = field_validator("universe", mode="before")(classmethod(lambda cls, v: _split_csv(v)))

    @field_validator("earliest_date")
    @classmethod
    def _calendar_bound(cls, value: date) -> date:
        if value < EARLIEST_CALENDAR_DATE:
            raise ValueError(f"{value.isoformat()} is before {EARLIEST_CALENDAR_DATE.isoformat()}, the first session of the exchange calendar")
        return value

    @field_validator("universe_file", mode="after")
    @classmethod
    def _expand(cls, value: Path | None) -> Path | None:
        return value.expanduser() if value is not None else None

    @field_validator("timeframe")
    @classmethod
    def _timeframe(cls, value: str) -> str:
        allowed = ("1Min", "5Min", "15Min", "30Min", "1Hour", "1Day")
        if value not in allowed:
            raise ValueError(f"unknown timeframe {value!r}: choose from {', '.join(allowed)}")
        return value

    _symbols = field_validator("universe")(classmethod(lambda cls, v: _check_symbols(v)))


class NewsSettings(_Group):
    """News sentiment from Alpha Vantage (NEWS_SENTIMENT), fetched per symbol once a day."""

    prefix: ClassVar[str] = "OMNI_NEWS_"

    symbols: CsvList = Field(default_factory=list, description="symbols whose news is fetched daily (comma separated); unset: the backfill universe")
    max_symbols_per_run: int = Field(default=20, ge=1, le=5000, description="symbols per daily run: one call each against the Alpha Vantage daily quota (25 on a free key)")
    limit: int = Field(default=50, description="articles per call (Alpha Vantage accepts 50 or 1000)")
    lookback_days: int = Field(default=7, ge=1, le=3650, description="how far back a symbol with no stored news is fetched; otherwise from its latest stored article")
    time_zone: str = Field(default="UTC", description="zone of Alpha Vantage's time_published (it does not say; UTC by default)")

    _split = field_validator("symbols", mode="before")(classmethod(lambda cls, v: _split_csv(v)))
    _symbols = field_validator("symbols")(classmethod(lambda cls, v: _check_symbols(v)))

    @field_validator("limit")
    @classmethod
    def _limit(cls, value: int) -> int:
        if value not in (50, 1000):
            raise ValueError(f"Alpha Vantage returns 50 or 1000 articles per call, not {value}")
        return value

    @field_validator("time_zone")
    @classmethod
    def _zone(cls, value: str) -> str:
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"unknown time zone {value!r} (use an IANA name such as UTC or America/New_York)") from None
        return value


class ReconcileSettings(_Group):
    """A second opinion: stored sessions compared with another configured provider (close and volume)."""

    prefix: ClassVar[str] = "OMNI_RECONCILE_"

    sample_sessions: int = Field(default=5, ge=1, le=10000, description="stored sessions (bars) compared per series and run")
    tolerance_bp: float = Field(default=25.0, gt=0, le=10000, description="a close differing by more than this many basis points is recorded as a difference")
    volume_tolerance_pct: float = Field(default=10.0, gt=0, le=1000, description="a volume differing by more than this percent is recorded (only when both feeds are comparable)")
    nightly: bool = Field(default=True, description="the nightly validation also reconciles a sample of the day's window")


class StreamSettings(_Group):
    """The real-time quote path."""

    prefix: ClassVar[str] = "OMNI_STREAM_"

    feed: Literal["synthetic", "replay", "alpaca"] = Field(default="synthetic", description="where live quotes come from: synthetic, replay (a recording) or alpaca")
    symbols: CsvList = Field(default_factory=lambda: ["AAPL", "MSFT", "NVDA", "AMZN", "SPY"], description="symbols the streaming worker subscribes to (comma separated)")
    quote_ttl_s: int = Field(default=30, gt=0, description="latest quotes expire from Redis after this long")
    stale_after_s: float = Field(default=10.0, gt=0, description="a symbol with no quote this long in market hours is stale")
    client: Literal["lean", "alpaca-py"] = Field(default="lean", description="Alpaca websocket client: our lean one, or alpaca-py's StockDataStream")
    url: str | None = Field(default=None, description="websocket URL; unset: OMNI_ALPACA_STREAM_URL + /v2/<feed>")
    channels: CsvList = Field(
        default_factory=lambda: ["quotes", "trades", "bars", "statuses", "lulds"],
        description="channels to subscribe; trades bring their corrections and cancels; statuses (halts) and lulds (bands) feed the pre-trade checks",
    )
    mute_after_s: float = Field(default=15.0, gt=0, description="connected but no market data this long while the market is open: reconnect")
    market_hours: Literal["calendar", "always"] = Field(default="calendar", description="when the Alpaca feed's mute and stale checks apply: calendar (only in XNYS sessions) or always (every hour)")
    reconnect_min_s: float = Field(default=0.5, gt=0, description="first wait before reconnecting a dropped stream (doubles up to the max, jittered)")
    reconnect_max_s: float = Field(default=30.0, gt=0, description="longest wait between reconnect attempts")
    connection_limit_cooldown_s: float = Field(default=60.0, gt=0, description="wait after Alpaca's 406 connection limit exceeded")
    stream_maxlen: int = Field(default=100_000, ge=0, description="approximate length of the omni:quotes stream; 0: no stream")
    synthetic_rate: float = Field(default=200.0, gt=0, description="quotes per second of the synthetic feed")
    synthetic_halt_every_s: float = Field(default=0.0, ge=0, description="the synthetic feed halts one symbol this often (0: never)")
    synthetic_halt_for_s: float = Field(default=10.0, gt=0, description="how long a synthetic halt lasts before the resume")
    replay_file: str | None = Field(default=None, description="recording the replay feed plays")
    replay_speed: float = Field(default=1.0, ge=0, description="1: real time, N: N times faster, 0: as fast as possible")
    keys: SecretStr | None = Field(
        default=None,
        description="Alpaca data keys for a sharded stream, `KEYID:SECRET,KEYID:SECRET` (a secret: never logged; may be `enc:...`): "
        "one stream worker per key (Alpaca allows one data connection per key), each with the symbols whose stable hash falls on its shard; "
        "unset: one worker with OMNI_ALPACA_API_KEY",
    )

    _split = field_validator("symbols", "channels", mode="before")(classmethod(lambda cls, v: _split_csv(v)))

    _symbols = field_validator("symbols")(classmethod(lambda cls, v: _check_symbols(v)))

    @field_validator("channels")
    @classmethod
    def _known_channels(cls, value: list[str]) -> list[str]:
        unknown = [c for c in value if c not in ("quotes", "trades", "bars", "statuses", "lulds")]
        if unknown or not value:
            raise ValueError(f"unknown channel(s) {', '.join(unknown) or '(none given)'}: use quotes, trades, bars, statuses, lulds")
        return value

    @field_validator("keys")
    @classmethod
    def _key_pairs(cls, value: SecretStr | None) -> SecretStr | None:
        if value is None or not value.get_secret_value().strip():
            return None
        # An encrypted value (enc:...) is checked after decryption, when the stream reads it.
        if not secret_box.is_encrypted(value.get_secret_value()):
            check_key_pairs(value.get_secret_value())
        return value

    @field_validator("url")
    @classmethod
    def _ws_scheme(cls, value: str | None) -> str | None:
        if value and not value.startswith(("ws://", "wss://")):
            raise ValueError(f"not a websocket URL: {value!r} (ws:// or wss://)")
        return value or None


class RiskSettings(_Group):
    """The desk's risk limits (DESIGN section 7)."""

    prefix: ClassVar[str] = "OMNI_RISK_"

    max_position_notional_usd: Decimal = Field(default=Decimal("10000"), gt=0, description="largest position in one symbol, in dollars; an order beyond it is denied")
    max_trades_per_day: int = Field(default=100, ge=0, description="orders accepted per trading day; beyond it orders are denied")
    max_daily_loss_usd: Decimal = Field(default=Decimal("1000"), gt=0, description="a day's loss (realised and unrealised) beyond this breaches the limit")
    max_drawdown_pct: float = Field(default=2.0, gt=0, le=100, description="a drawdown beyond this percent breaches the limit")
    drawdown_from: Literal["peak", "day_start"] = Field(default="peak", description="the drawdown is measured from the equity peak or from the day's start")
    max_concentration_pct: float = Field(default=30.0, gt=0, le=100, description="largest share of gross exposure one symbol may take, percent")
    max_correlation: float = Field(default=0.80, gt=0, le=1, description="a new position more correlated than this with a held one is flagged")
    max_gross_leverage: float = Field(default=2.0, gt=0, description="gross exposure over equity allowed")
    var_lookback_days: int = Field(default=250, ge=2, le=5000, description="daily returns (trading days) behind VaR/ES, correlation, Sharpe and beta")
    var_min_history_days: int = Field(default=20, ge=2, le=5000, description="fewer daily returns for any held position: VaR/ES, Sharpe, beta and correlation are not computed (None, with the reason)")
    benchmark_symbol: str = Field(default="SPY", description="the beta is measured against this symbol's daily returns")
    risk_free_rate_pct: float = Field(default=0.0, ge=-5, le=50, description="annual risk-free rate, percent, subtracted in the Sharpe ratio")
    price_collar_pct: Decimal = Field(default=Decimal("1.0"), gt=0, le=100, description="a limit price (or a market order's far side) further than this from the mid is denied")
    quote_max_age_s: float = Field(default=5.0, gt=0, description="the price collar needs a quote at most this old")
    fill_refresh_s: float = Field(default=5.0, ge=0, le=3600, description="after a fill, a risk recalculation runs this many seconds later, at any hour; fills meanwhile share it (0: fills trigger none)")

    _benchmark = field_validator("benchmark_symbol")(classmethod(lambda cls, v: _check_symbols([v])[0]))


class TradingSettings(_Group):
    """The trading venue orders go to (DESIGN section 7): the built-in simulated venue, or Alpaca paper trading."""

    prefix: ClassVar[str] = "OMNI_TRADING_"

    venue: Literal["simulated", "alpaca_paper"] = Field(default="simulated", description="simulated: fills against the latest quotes in Redis, ledger in the database; alpaca_paper: Alpaca's paper account (needs OMNI_ALPACA_API_KEY/SECRET_KEY); the old name OMNI_TRADING_BROKER is still read, with a deprecation message")
    starting_cash_usd: Decimal = Field(default=Decimal("100000"), gt=0, description="the simulated venue's cash when its account is first created")
    quote_max_age_s: float = Field(default=5.0, gt=0, description="the simulated venue never fills on a quote older than this (the order is rejected)")
    alpaca_timeout_s: float = Field(default=10.0, gt=0, le=120, description="timeout of each Alpaca trading API call")
    order_ttl_s: float = Field(default=120.0, gt=0, le=86400, description="an accepted order not sent within this long is recorded expired (never sent later)")
    order_expiry_grace_s: float = Field(default=30.0, ge=0, le=3600, description="the watchdog records a pending order expired this long after its deadline")
    order_retry_max_s: float = Field(default=10.0, gt=0, le=300, description="longest wait between attempts of an order while the database is unavailable (backoff with jitter, until its deadline)")


class WatchdogSettings(_Group):
    """Health rules that trip breakers and the kill switch."""

    prefix: ClassVar[str] = "OMNI_WATCHDOG_"

    interval_s: float = Field(default=5.0, gt=0, description="period of the watchdog beat entry")
    breach_evaluations: int = Field(default=3, ge=1, description="consecutive breaching evaluations before an action")
    heartbeat_stale_s: float = Field(default=30.0, gt=0, description="a worker heartbeat older than this is stale")
    queue_backlog_max: int = Field(default=1000, ge=1, description="messages waiting in one queue tolerated before the backlog rule breaches")
    stream_stale_s: float = Field(default=30.0, gt=0, description="in market hours, a stream whose last message is older than this is stale")
    error_storm_max_per_min: int = Field(default=20, ge=1, description="failed task runs in the last minute tolerated")
    expected_workers: CsvList = Field(
        default_factory=list,
        description="worker kinds that must be heartbeating, e.g. `orders,risk,stream` (unset: none is required; 'stream' also makes a missing stream status a stale stream in market hours)",
    )
    latency_violations_max: int = Field(default=20, ge=1, description="new latency-budget violations tolerated per evaluation")
    disabled_rules: CsvList = Field(default_factory=list, description="watchdog rules not evaluated (comma separated)")
    startup_grace_s: float = Field(default=30.0, ge=0, description="workers are not reported missing this soon after the watchdog's first evaluation")
    stuck_after_s: float = Field(
        default=60.0, gt=0, description="a backfill partition or scan run not final, with no live delivery (not queued, not held by a worker) this long, is requeued or failed"
    )
    stuck_requeues: int = Field(default=3, ge=0, le=100, description="times the watchdog requeues one stuck backfill partition before it fails it")

    _split = field_validator("expected_workers", "disabled_rules", mode="before")(classmethod(lambda cls, v: _split_csv(v)))

    @field_validator("disabled_rules")
    @classmethod
    def _known_rules(cls, value: list[str]) -> list[str]:
        unknown = [name for name in value if name not in WATCHDOG_RULES]
        if unknown:
            raise ValueError(f"unknown watchdog rule {unknown[0]!r}: choose from {', '.join(WATCHDOG_RULES)}")
        return value


class AlertSettings(_Group):
    """Webhook alerts on kill switch and breaker transitions and validation failures. Off unless a URL is set."""

    prefix: ClassVar[str] = "OMNI_ALERTS_"

    webhook_url: SecretStr | None = Field(default=None, description="Slack incoming webhook or Telegram sendMessage URL (a secret: never logged; may be `enc:...`)")
    format: Literal["slack", "telegram"] = Field(default="slack", description="alert payload format: slack or telegram")
    telegram_chat_id: str | None = Field(default=None, validate_default=True, description="Telegram chat the alerts go to; required with format telegram")
    timeout_s: float = Field(default=5.0, gt=0, le=60, description="timeout of one alert delivery")
    retries: int = Field(default=3, ge=0, le=10, description="further attempts after a 5xx, 429 or timeout")
    backoff_s: float = Field(default=0.5, ge=0, le=30, description="first retry delay; doubles each time")

    @field_validator("webhook_url")
    @classmethod
    def _http(cls, value: SecretStr | None) -> SecretStr | None:
        if value is None or not value.get_secret_value():
            return None
        plain = value.get_secret_value()
        # An encrypted value (enc:...) is checked after decryption, when it is used.
        if not plain.startswith(("https://", "http://", secret_box.ENC_PREFIX)):
            raise ValueError("the webhook URL must start with https:// or http://")
        return value

    @field_validator("telegram_chat_id")
    @classmethod
    def _chat_id(cls, value: str | None, info: ValidationInfo) -> str | None:
        if info.data.get("format") == "telegram" and info.data.get("webhook_url") is not None and not value:
            raise ValueError("required when OMNI_ALERTS_FORMAT=telegram")
        return value or None


class KillSwitchSettings(_Group):
    """The kill switch (DESIGN section 8): what engaging does, how long it waits, who may engage over HTTP."""

    prefix: ClassVar[str] = "OMNI_KILL_"

    flatten_on_engage: bool = Field(default=False, description="engaging also closes every position with market orders")
    cancel_confirm_timeout_s: float = Field(default=5.0, gt=0, le=300, description="how long engaging polls the trading venue until no order is open")
    poll_interval_ms: int = Field(default=20, ge=1, le=5000, description="milliseconds between the venue polls while engaging waits for the cancels")
    snapshot_dir: Path | None = Field(default=None, description="emergency snapshots (JSON) go here; unset: `<data dir>/emergency`")
    http_token: SecretStr | None = Field(default=None, description="bearer token of `POST /kill/engage` on the health server (a secret; may be `enc:...`); unset: the endpoint is off")
    alarm_catchup_s: float = Field(default=600.0, gt=0, description="a critical alarm published while no listener ran is still acted on when younger than this (and newer than the last state change)")
    reconcile_every_s: float = Field(
        default=1.0, gt=0, le=60, description="how often the watchdog worker reconciles the two copies of the trading state (a Redis behind the database is rewritten from it; an engage the database missed is written down)"
    )

    @field_validator("snapshot_dir", mode="after")
    @classmethod
    def _expand(cls, value: Path | None) -> Path | None:
        return value.expanduser() if value is not None else None

    @field_validator("http_token")
    @classmethod
    def _long_enough(cls, value: SecretStr | None) -> SecretStr | None:
        if value is None or not value.get_secret_value():
            return None
        plain = value.get_secret_value()
        # An encrypted value (enc:...) is checked after decryption, when it is used.
        if not plain.startswith(secret_box.ENC_PREFIX) and len(plain) < 24:
            raise ValueError("the token must be at least 24 characters (generate one: python -c 'import secrets; print(secrets.token_urlsafe(32))')")
        return value


class FlowerSettings(_Group):
    """Flower, the operators' Celery dashboard."""

    prefix: ClassVar[str] = "OMNI_FLOWER_"

    host: str = Field(default="127.0.0.1", description="address Flower listens on")
    port: int = Field(default=5555, ge=1, le=65535, description="port Flower listens on")
    user: str = Field(default="operator", pattern=r"^[A-Za-z0-9_.\-]+$", description="Flower's basic-auth user")
    password: SecretStr | None = Field(default=None, description="Flower's basic-auth password (a secret); unset: `omni up` generates one and prints it once")


class MetricsSettings(_Group):
    """The metrics and health HTTP server."""

    prefix: ClassVar[str] = "OMNI_METRICS_"

    host: str = Field(default="127.0.0.1", description="address the /metrics and /health server listens on")
    port: int = Field(default=9808, ge=1, le=65535, description="port of the /metrics and /health server")
    request_timeout_s: float = Field(default=10.0, gt=0, le=300, description="a request to /metrics or /health must arrive whole within this many seconds of connecting, or the connection is dropped")
    workers: int = Field(default=8, ge=1, le=256, description="threads answering /metrics and /health requests (slow clients hold none of them)")
    max_connections: int = Field(default=256, ge=1, le=65535, description="connections waiting for their request at once; more are closed at once")
    scrape_cache_s: float = Field(default=1.0, ge=0, le=60, description="scrapes within this many seconds share one merge of every process's metric files (0: merge on every scrape); the live gauges are read on every scrape")


GROUPS: dict[str, type[_Group]] = {
    "core": CoreSettings,
    "broker": BrokerSettings,
    "database": DatabaseSettings,
    "providers": ProviderSettings,
    "backfill": BackfillSettings,
    "news": NewsSettings,
    "reconcile": ReconcileSettings,
    "alpaca": AlpacaSettings,
    "alpha_vantage": AlphaVantageSettings,
    "yahoo": YahooSettings,
    "stream": StreamSettings,
    "risk": RiskSettings,
    "watchdog": WatchdogSettings,
    "trading": TradingSettings,
    "alerts": AlertSettings,
    "kill": KillSwitchSettings,
    "flower": FlowerSettings,
    "metrics": MetricsSettings,
}


class Settings(BaseModel):
    """Every setting of omni-tasks, validated. Build it with :func:`load_settings`."""

    model_config = ConfigDict(frozen=True)

    core: CoreSettings
    broker: BrokerSettings
    database: DatabaseSettings
    providers: ProviderSettings
    backfill: BackfillSettings
    news: NewsSettings
    reconcile: ReconcileSettings
    alpaca: AlpacaSettings
    alpha_vantage: AlphaVantageSettings
    yahoo: YahooSettings
    stream: StreamSettings
    risk: RiskSettings
    watchdog: WatchdogSettings
    trading: TradingSettings
    alerts: AlertSettings
    kill: KillSwitchSettings
    flower: FlowerSettings
    metrics: MetricsSettings

    # ---- derived values -------------------------------------------------
    @property
    def data_dir(self) -> Path:
        return self.core.data_dir

    @property
    def embedded(self) -> bool:
        """True when no broker URL is given: `omni up` starts its own Redis."""
        return self.broker.url is None

    @property
    def embedded_redis_socket(self) -> Path:
        return self.data_dir / "redis.sock"

    @property
    def broker_url(self) -> str:
        if self.broker.url:
            return self.broker.url
        return f"redis+socket://{self.embedded_redis_socket}"

    @property
    def redis_url(self) -> str:
        """The Redis used for results, locks, heartbeats and quotes."""
        if self.broker.cache_url:
            return self.broker.cache_url
        url = self.broker_url
        if url.startswith(("amqp", "pyamqp")):
            raise ConfigError("OMNI_BROKER_CACHE_URL: required when the broker is RabbitMQ (a Redis URL for results and locks)")
        return url

    @property
    def database_url(self) -> str:
        if self.database.url:
            return self.database.url
        return f"sqlite:///{self.data_dir / 'omni.sqlite3'}"

    @property
    def metrics_dir(self) -> Path:
        return self.data_dir / "metrics"

    def secret_values(self) -> list[str]:
        """Every secret's plaintext, for the log redaction filter."""
        out: list[str] = []
        for _, _, value in self.iter_fields():
            if isinstance(value, SecretStr):
                plain = value.get_secret_value()
                if plain:
                    out.append(plain)
        keys = self.stream.keys.get_secret_value() if self.stream.keys else ""
        if keys and not secret_box.is_encrypted(keys):
            out.extend(part for pair in check_key_pairs(keys) for part in pair)  # each key id and secret alone, as a log line may show one
        return out

    def iter_fields(self) -> Iterator[tuple[str, str, Any]]:
        """(variable name, group, value) for every setting."""
        for group_name, group_cls in GROUPS.items():
            group = getattr(self, group_name)
            for field_name in group_cls.model_fields:
                yield group_cls.prefix + field_name.upper(), group_name, getattr(group, field_name)

    def masked(self) -> list[tuple[str, str]]:
        """(variable, printable value) with every secret masked."""
        rows: list[tuple[str, str]] = []
        for variable, _, value in self.iter_fields():
            if isinstance(value, SecretStr):
                shown = "(unset)" if not value.get_secret_value() else "********"
            elif value is None:
                shown = "(unset)"
            elif isinstance(value, list):
                shown = ",".join(str(v) for v in value)
            else:
                shown = str(value)
            rows.append((variable, mask_url(shown)))
        return rows


def mask_url(text: str) -> str:
    """Hide the password of a URL such as redis://:pw@host or postgresql://u:pw@host."""
    # Greedy up to the last '@' before the host, so a password containing '@' is hidden whole.
    return re.sub(r"(://[^:/@\s]*:)[^/\s]*@", r"\1****@", text)


def known_variables() -> set[str]:
    names = set(NON_SETTING_VARIABLES) | set(RENAMED_VARIABLES)
    for group_cls in GROUPS.values():
        names.update(group_cls.prefix + field.upper() for field in group_cls.model_fields)
    return names


def _env_file_path(environ: Mapping[str, str]) -> Path | None:
    explicit = environ.get("OMNI_ENV_FILE")
    if explicit:
        path = Path(explicit).expanduser()
        if not path.is_file():
            raise ConfigError(f"OMNI_ENV_FILE: no such file {path}")
        return path
    default = Path(".env")
    return default if default.is_file() else None


def _check_unknown(names: set[str], source: str) -> None:
    known = known_variables()
    for name in sorted(names):
        upper = name.upper()
        if upper.startswith(ENV_PREFIX) and upper not in known:
            guess = difflib.get_close_matches(upper, sorted(known), n=1)
            hint = f" (did you mean {guess[0]}?)" if guess else ""
            raise ConfigError(f"{upper}: unknown setting in {source}{hint}")


def _describe(error: Mapping[str, Any]) -> str:
    message = str(error["msg"])
    message = message.removeprefix("Value error, ")
    value = error.get("input")
    if isinstance(value, str) and error["type"] not in {"missing"}:
        return f"{message} (got {mask_url(value)!r})"
    return message


def _apply_renamed(merged: dict[str, str], warn: Callable[[str], None]) -> None:
    """Read each old name (:data:`RENAMED_VARIABLES`) as its new one, with a one-line deprecation message.

    Both names set to different values is a ConfigError: which one was meant cannot be guessed.
    """
    for old, new in RENAMED_VARIABLES.items():
        if old not in merged:
            continue
        value = merged.pop(old)
        if new in merged and merged[new].strip() != value.strip():
            raise ConfigError(
                f"{old}={mask_url(value)!r} and {new}={mask_url(merged[new])!r} disagree: {old} is the old name of {new}; set only {new}"
            )
        merged.setdefault(new, value)
        warn(f"{old} is deprecated: it is read as {new}, set {new} instead")


def _warn_once(message: str) -> None:
    """Print a deprecation message on stderr, once per process (settings are loaded more than once by some commands)."""
    if message not in _warned:
        _warned.add(message)
        print(f"omni: warning: {message}", file=sys.stderr, flush=True)


_warned: set[str] = set()


def load_settings(environ: Mapping[str, str] | None = None, *, warn: Callable[[str], None] = _warn_once) -> Settings:
    """Read and validate every setting once. Raises ConfigError naming the bad variable.

    ``environ`` defaults to the process environment; tests pass their own. ``warn`` receives
    one line per old variable name in use (default: printed on stderr once per process).
    """
    env = dict(os.environ if environ is None else environ)
    env_file = _env_file_path(env)
    _check_unknown(set(env), "the environment")
    file_values: dict[str, str | None] = {}
    if env_file is not None:
        file_values = dotenv_values(env_file)
        _check_unknown(set(file_values), str(env_file))
    # Environment variables win over the file.
    merged = {k.upper(): v for k, v in file_values.items() if v is not None}
    merged.update({k.upper(): v for k, v in env.items() if k.upper().startswith(ENV_PREFIX)})
    _apply_renamed(merged, warn)

    groups: dict[str, _Group] = {}
    for group_name, group_cls in GROUPS.items():
        values = {
            field: merged[group_cls.prefix + field.upper()]
            for field in group_cls.model_fields
            if group_cls.prefix + field.upper() in merged
        }
        try:
            groups[group_name] = group_cls(**values)
        except ValidationError as exc:
            first = exc.errors()[0]
            field = str(first["loc"][0]) if first["loc"] else ""
            secret = field in group_cls.model_fields and "SecretStr" in str(group_cls.model_fields[field].annotation)
            # A secret's value is never echoed in the error (it would land in logs and terminals).
            described = _describe({**first, "input": None}) if secret else _describe(first)
            raise ConfigError(f"{group_cls.prefix}{field.upper()}: {described}") from None
    settings = Settings(**groups)  # type: ignore[arg-type]  # keys match the fields one to one
    return _decrypt_secrets(settings)


def _decrypt_secrets(settings: Settings) -> Settings:
    core = settings.core
    key_text = core.secret_key.get_secret_value() if core.secret_key else None
    keys: list[bytes] | None = None
    updates: dict[str, dict[str, SecretStr]] = {}
    for variable, group_name, value in settings.iter_fields():
        if not isinstance(value, SecretStr) or variable in {"OMNI_SECRET_KEY"}:
            continue
        plain = value.get_secret_value()
        if not secret_box.is_encrypted(plain):
            continue
        if keys is None:
            keys = _keys_or_error(key_text, core.secret_key_file)
        field = variable[len(GROUPS[group_name].prefix) :].lower()
        updates.setdefault(group_name, {})[field] = SecretStr(secret_box.decrypt(plain, keys, name=variable))
    if not updates:
        return settings
    new_groups = {name: getattr(settings, name).model_copy(update=fields) for name, fields in updates.items()}
    return settings.model_copy(update=new_groups)


def _keys_or_error(key_text: str | None, key_file: Path | None) -> list[bytes]:
    """Load the Fernet keys; an error names the variable that holds the bad key."""
    try:
        return secret_box.load_keys(key_text, key_file)
    except ConfigError as exc:
        variable = "OMNI_SECRET_KEY" if key_text else "OMNI_SECRET_KEY_FILE"
        raise type(exc)(f"{variable}: {exc}") from None


def secret_keys(settings: Settings) -> list[bytes]:
    """The configured Fernet keys (newest first); raises when none is configured."""
    core = settings.core
    keys = _keys_or_error(core.secret_key.get_secret_value() if core.secret_key else None, core.secret_key_file)
    if not keys:
        raise ConfigError("OMNI_SECRET_KEY: no Fernet key given (set OMNI_SECRET_KEY or OMNI_SECRET_KEY_FILE)")
    return keys


def _default_text(group_cls: type[_Group], field_name: str) -> str:
    """A field's default as the configuration table shows it."""
    info = group_cls.model_fields[field_name]
    if info.default_factory is not None:
        value: Any = info.get_default(call_default_factory=True)
    else:
        value = info.default
    if value is None:
        return "(unset)"
    if isinstance(value, list):
        return ",".join(str(v) for v in value) or "(unset)"
    if isinstance(value, Path):
        home = str(Path.home())
        text = str(value)
        return "~" + text[len(home) :] if text.startswith(home) else text
    return str(value)


def configuration_rows() -> list[tuple[str, str, str]]:
    """(variable, default, meaning) of every setting, in the order of the groups and their fields."""
    return [
        (group_cls.prefix + field_name.upper(), _default_text(group_cls, field_name), info.description or "")
        for group_cls in GROUPS.values()
        for field_name, info in group_cls.model_fields.items()
    ]


def configuration_table() -> str:
    """The configuration table (markdown), made from the settings' own descriptions."""
    out = ["| variable | default | meaning |", "|---|---|---|"]
    for name, default, meaning in configuration_rows():
        escaped = meaning.replace("|", "\\|")
        out.append(f"| `{name}` | `{default}` | {escaped} |")
    return "\n".join(out)


CONFIGURATION_PAGE_INTRO = """\
# Configuration

Generated by `omni config doc` from the settings' own descriptions in
`omni_tasks/settings.py`: edit a description there, then run
`omni config doc --write docs/configuration.md` (a unit test checks this page).

Every setting is an environment variable (or a line in `./.env`, or the file
named by `OMNI_ENV_FILE`); the environment wins over the file. An invalid
value or an unknown `OMNI_*` name stops the command with one line naming the
variable, exit code 2. Any value may be `enc:<fernet token>`
([operations.md](operations.md), Secrets). `omni config show` prints the
settings in force, secrets masked.
"""


def configuration_page() -> str:
    """docs/configuration.md: how settings are read, then the table of every setting (`omni config doc`)."""
    return CONFIGURATION_PAGE_INTRO + "\n" + configuration_table() + "\n"
