"""Unit tests of omni_tasks.settings: defaults, one clear error per bad value, .env handling, secrets."""

from __future__ import annotations

import os
import subprocess
import sys
from decimal import Decimal
from pathlib import Path

import pytest

from omni_tasks.core import secrets as secret_box
from omni_tasks.core.errors import ConfigError, SecretError
from omni_tasks.settings import load_settings, mask_url

MASK = "********"
UNSET = "(unset)"


@pytest.fixture(autouse=True)
def _isolated_cwd(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Run every test in an empty folder, so no stray ./.env is read."""
    monkeypatch.chdir(tmp_path)
    return tmp_path


def _config_error(environ: dict[str, str]) -> str:
    with pytest.raises(ConfigError) as caught:
        load_settings(environ)
    return str(caught.value)


# ---- defaults ------------------------------------------------------------------


def test_load_settings_no_variables_gives_design_risk_limits() -> None:
    risk = load_settings({}).risk

    assert risk.max_position_notional_usd == Decimal("10000")
    assert risk.max_trades_per_day == 100
    assert risk.max_daily_loss_usd == Decimal("1000")
    assert risk.max_drawdown_pct == pytest.approx(2.0)
    assert risk.max_concentration_pct == pytest.approx(30.0)
    assert risk.max_correlation == pytest.approx(0.80)
    assert risk.max_gross_leverage == pytest.approx(2.0)


def test_load_settings_non_omni_variables_are_ignored() -> None:
    settings = load_settings({"PATH": "/usr/bin", "HOME": "/root", "REDIS_URL": "http://not-ours"})

    assert settings.broker.url is None
    assert settings.embedded is True


def test_load_settings_default_data_dir_is_expanded() -> None:
    settings = load_settings({})

    assert "~" not in str(settings.data_dir)
    assert "~" not in settings.broker_url
    assert "~" not in settings.database_url


def test_load_settings_data_dir_variable_is_expanded() -> None:
    settings = load_settings({"OMNI_DATA_DIR": "~/omni-data"})

    assert settings.data_dir == Path("~/omni-data").expanduser()


# ---- one ConfigError per bad value, naming the variable --------------------------


@pytest.mark.parametrize(
    ("variable", "value", "what"),
    [
        pytest.param("OMNI_RISK_MAX_TRADES_PER_DAY", "ten", "valid integer", id="non-integer"),
        pytest.param("OMNI_FLOWER_PORT", "70000", "less than or equal to 65535", id="port-out-of-range"),
        pytest.param("OMNI_DATABASE_POOL_SIZE", "0", "greater than or equal to 1", id="pool-size-zero"),
        pytest.param("OMNI_RISK_MAX_DRAWDOWN_PCT", "150", "less than or equal to 100", id="percent-over-100"),
        pytest.param("OMNI_RISK_MAX_DAILY_LOSS_USD", "nan", "finite number", id="loss-limit-nan"),
        pytest.param("OMNI_LOG_FORMAT", "xml", "'json' or 'console'", id="bad-literal"),
        pytest.param("OMNI_BROKER_URL", "http://x", "unsupported URL scheme", id="broker-http-scheme"),
        pytest.param("OMNI_DATABASE_URL", "mysql://db/omni", "only postgresql:// and sqlite://", id="database-mysql"),
        pytest.param("OMNI_EXCHANGE_TZ", "Mars/Olympus_Mons", "unknown time zone", id="unknown-zone"),
        pytest.param("OMNI_PROVIDERS_ORDER", "alpaca,bloomberg", "unknown provider 'bloomberg'", id="unknown-provider"),
        pytest.param("OMNI_STREAM_SYMBOLS", "AAPL,$$$", "'$$$' is not a ticker symbol", id="malformed-symbol"),
        pytest.param("OMNI_STREAM_SYMBOLS", "AAPL,ABCDEFGHIJK", "is not a ticker symbol", id="symbol-too-long"),
    ],
)
def test_load_settings_invalid_value_raises_one_config_error_naming_the_variable(variable: str, value: str, what: str) -> None:
    message = _config_error({variable: value})

    assert message.startswith(f"{variable}: ")
    assert what in message
    assert "\n" not in message


def test_load_settings_unknown_omni_variable_raises_with_did_you_mean() -> None:
    message = _config_error({"OMNI_RISK_MAX_DAILY_LOS_USD": "5"})

    assert message.startswith("OMNI_RISK_MAX_DAILY_LOS_USD: ")
    assert "unknown setting in the environment" in message
    assert "did you mean OMNI_RISK_MAX_DAILY_LOSS_USD?" in message


def test_load_settings_unknown_variable_in_env_file_raises_naming_the_file(tmp_path: Path) -> None:
    (tmp_path / ".env").write_text("OMNI_FLOWER_PORT=6000\nOMNI_RISK_MAX_TRADE_PER_DAY=5\n", encoding="utf-8")

    message = _config_error({})

    assert message.startswith("OMNI_RISK_MAX_TRADE_PER_DAY: ")
    assert ".env" in message
    assert "did you mean OMNI_RISK_MAX_TRADES_PER_DAY?" in message


def test_load_settings_bad_value_in_env_file_names_the_variable(tmp_path: Path) -> None:
    (tmp_path / ".env").write_text("OMNI_FLOWER_PORT=not-a-port\n", encoding="utf-8")

    message = _config_error({})

    assert message.startswith("OMNI_FLOWER_PORT: ")


def test_load_settings_missing_env_file_raises_naming_omni_env_file(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere" / "prod.env"

    message = _config_error({"OMNI_ENV_FILE": str(missing)})

    assert message.startswith("OMNI_ENV_FILE: ")
    assert str(missing) in message


@pytest.mark.parametrize(
    ("variable", "url"),
    [
        pytest.param("OMNI_DATABASE_URL", "mysql://omni:dbPassw0rd@db/omni", id="database"),
        pytest.param("OMNI_BROKER_URL", "http://:dbPassw0rd@broker:6379/0", id="broker"),
    ],
)
def test_load_settings_bad_url_scheme_error_hides_the_password(variable: str, url: str) -> None:
    message = _config_error({variable: url})

    assert message.startswith(f"{variable}: ")
    assert "dbPassw0rd" not in message


# ---- .env file and precedence ------------------------------------------------------


def test_load_settings_env_variable_wins_over_env_file(tmp_path: Path) -> None:
    (tmp_path / ".env").write_text("OMNI_FLOWER_PORT=6000\nOMNI_METRICS_PORT=9100\n", encoding="utf-8")

    settings = load_settings({"OMNI_FLOWER_PORT": "7000"})

    assert settings.flower.port == 7000
    assert settings.metrics.port == 9100  # the file is still read for the rest


def test_load_settings_omni_env_file_replaces_the_default_env_file(tmp_path: Path) -> None:
    (tmp_path / ".env").write_text("OMNI_FLOWER_PORT=6000\n", encoding="utf-8")
    other = tmp_path / "conf" / "prod.env"
    other.parent.mkdir()
    other.write_text('export OMNI_FLOWER_PORT="6500"\nOMNI_RISK_MAX_TRADES_PER_DAY=7\n', encoding="utf-8")

    settings = load_settings({"OMNI_ENV_FILE": str(other)})

    assert settings.flower.port == 6500
    assert settings.risk.max_trades_per_day == 7


def test_load_settings_comma_lists_are_split_trimmed_and_upper_cased() -> None:
    settings = load_settings({"OMNI_STREAM_SYMBOLS": " aapl, msft ,,brk.b ", "OMNI_PROVIDERS_ORDER": "yahoo, synthetic"})

    assert settings.stream.symbols == ["AAPL", "MSFT", "BRK.B"]
    assert settings.providers.order == ["yahoo", "synthetic"]


def test_load_settings_postgresql_url_is_normalised_to_psycopg2() -> None:
    settings = load_settings({"OMNI_DATABASE_URL": "postgresql://omni:pw@db:5432/omni"})

    assert settings.database_url == "postgresql+psycopg2://omni:pw@db:5432/omni"


def test_load_settings_explicit_driver_url_is_kept() -> None:
    settings = load_settings({"OMNI_DATABASE_URL": "sqlite:////tmp/x.sqlite3"})

    assert settings.database_url == "sqlite:////tmp/x.sqlite3"


# ---- masking and secrets -----------------------------------------------------------------


def test_masked_secret_settings_never_show_plaintext_and_url_passwords_are_hidden() -> None:
    key = secret_box.new_key()
    environ = {
        "OMNI_SECRET_KEY": key,
        "OMNI_FLOWER_PASSWORD": "flower-Plain-pw",
        "OMNI_ALPACA_API_KEY": "alpaca-Plain-key",
        "OMNI_ALPHA_VANTAGE_API_KEY": secret_box.encrypt("av-Plain-key", [secret_box.parse_keys(key)[0]]),
        "OMNI_BROKER_URL": "redis://:brokerPw123@localhost:6379/0",
        "OMNI_DATABASE_URL": "postgresql://omni:dbPw456@db/omni",
    }

    rows = dict(load_settings(environ).masked())
    text = "\n".join(f"{k}={v}" for k, v in rows.items())

    for plaintext in ("flower-Plain-pw", "alpaca-Plain-key", "av-Plain-key", "brokerPw123", "dbPw456", key):
        assert plaintext not in text
    assert rows["OMNI_FLOWER_PASSWORD"] == MASK
    assert rows["OMNI_ALPHA_VANTAGE_API_KEY"] == MASK
    assert rows["OMNI_SECRET_KEY"] == MASK
    assert rows["OMNI_ALPACA_SECRET_KEY"] == UNSET
    assert rows["OMNI_BROKER_URL"] == "redis://:****@localhost:6379/0"
    assert rows["OMNI_DATABASE_URL"] == "postgresql+psycopg2://omni:****@db/omni"


def test_mask_url_user_and_password_hides_only_the_password() -> None:
    assert mask_url("amqp://guest:guestpw@rabbit:5672//") == "amqp://guest:****@rabbit:5672//"
    assert mask_url("redis://localhost:6379/0") == "redis://localhost:6379/0"


def test_mask_url_password_with_at_sign_is_hidden_whole() -> None:
    masked = mask_url("redis://:p@ssTail99@cache:6379/0")

    assert "ssTail99" not in masked


def test_load_settings_enc_value_is_decrypted_with_omni_secret_key() -> None:
    old, new = secret_box.new_key(), secret_box.new_key()
    token = secret_box.encrypt("alpaca-plaintext", [old.encode()])

    settings = load_settings({"OMNI_SECRET_KEY": f"{new},{old}", "OMNI_ALPACA_API_KEY": token})

    assert settings.alpaca.api_key is not None
    assert settings.alpaca.api_key.get_secret_value() == "alpaca-plaintext"
    assert "alpaca-plaintext" in settings.secret_values()  # so the log redactor knows it


def test_load_settings_enc_value_is_decrypted_with_key_file(tmp_path: Path) -> None:
    key = secret_box.new_key()
    key_file = tmp_path / "keys"
    key_file.write_text(f"# newest first\n{key}\n", encoding="utf-8")
    token = secret_box.encrypt("av-plaintext", [key.encode()])

    settings = load_settings({"OMNI_SECRET_KEY_FILE": str(key_file), "OMNI_ALPHA_VANTAGE_API_KEY": token})

    assert settings.alpha_vantage.api_key is not None
    assert settings.alpha_vantage.api_key.get_secret_value() == "av-plaintext"


def test_load_settings_enc_value_without_key_raises_naming_the_variable() -> None:
    token = secret_box.encrypt("alpaca-plaintext", [secret_box.new_key().encode()])

    with pytest.raises(SecretError) as caught:
        load_settings({"OMNI_ALPACA_API_KEY": token})

    message = str(caught.value)
    assert message.startswith("OMNI_ALPACA_API_KEY ")
    assert "no key is given" in message
    assert "OMNI_SECRET_KEY" in message
    assert "alpaca-plaintext" not in message


def test_load_settings_enc_value_with_wrong_key_raises_naming_the_variable() -> None:
    token = secret_box.encrypt("flower-plaintext", [secret_box.new_key().encode()])

    with pytest.raises(SecretError) as caught:
        load_settings({"OMNI_SECRET_KEY": secret_box.new_key(), "OMNI_FLOWER_PASSWORD": token})

    message = str(caught.value)
    assert message.startswith("OMNI_FLOWER_PASSWORD ")
    assert "cannot be decrypted" in message
    assert isinstance(caught.value, ConfigError)  # the CLI's one-line, exit-2 path


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        pytest.param("OMNI_SECRET_KEY", "not-a-fernet-key", id="malformed-key"),
        pytest.param("OMNI_SECRET_KEY_FILE", "/nonexistent/omni.keys", id="missing-key-file"),
    ],
)
def test_load_settings_bad_secret_key_setting_error_names_the_variable(variable: str, value: str) -> None:
    token = secret_box.encrypt("alpaca-plaintext", [secret_box.new_key().encode()])

    message = _config_error({variable: value, "OMNI_ALPACA_API_KEY": token})

    assert message.startswith(variable)


# ---- the CLI -----------------------------------------------------------------------


def test_cli_config_show_bad_value_exits_2_with_one_line_naming_the_variable(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("OMNI_")}
    env["OMNI_DATA_DIR"] = str(tmp_path / "data")
    env["OMNI_FLOWER_PORT"] = "70000"

    result = subprocess.run(  # our own interpreter and module, fixed arguments
        [sys.executable, "-m", "omni_tasks", "config", "show"],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )

    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "OMNI_FLOWER_PORT" in lines[0]
    assert "Traceback" not in result.stderr + result.stdout


def test_load_settings_earliest_backfill_date_default_allows_decades_and_is_bounded_by_the_calendar() -> None:
    from datetime import date

    assert load_settings({}).backfill.earliest_date == date(1962, 1, 2)
    assert load_settings({"OMNI_BACKFILL_EARLIEST_DATE": "1927-01-03"}).backfill.earliest_date == date(1927, 1, 3)
    assert "OMNI_BACKFILL_EARLIEST_DATE" in _config_error({"OMNI_BACKFILL_EARLIEST_DATE": "1884-12-31"})
    assert "first session of the exchange calendar" in _config_error({"OMNI_BACKFILL_EARLIEST_DATE": "1884-12-31"})


def test_load_settings_news_and_reconcile_settings_are_validated() -> None:
    settings = load_settings({"OMNI_NEWS_SYMBOLS": "aapl,msft", "OMNI_NEWS_LIMIT": "1000", "OMNI_RECONCILE_TOLERANCE_BP": "10"})
    assert settings.news.symbols == ["AAPL", "MSFT"]
    assert settings.news.limit == 1000
    assert settings.reconcile.tolerance_bp == 10.0
    assert "OMNI_NEWS_LIMIT" in _config_error({"OMNI_NEWS_LIMIT": "100"})
    assert "OMNI_NEWS_TIME_ZONE" in _config_error({"OMNI_NEWS_TIME_ZONE": "Mars/Olympus"})
