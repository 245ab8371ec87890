"""Unit tests of omni_tasks.core.secrets: Fernet round trip, MultiFernet rotation of a .env file, the CLI."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from dotenv import dotenv_values

from omni_tasks.core import secrets as secret_box
from omni_tasks.core.errors import ConfigError, SecretError


def _key() -> bytes:
    return secret_box.new_key().encode("ascii")


def _cli_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("OMNI_")}
    env["OMNI_DATA_DIR"] = str(tmp_path / "data")
    env.update(extra)
    return env


def _omni(args: list[str], *, env: dict[str, str], cwd: Path, stdin: str = "") -> subprocess.CompletedProcess[str]:
    return subprocess.run(  # our own interpreter and module, fixed arguments
        [sys.executable, "-m", "omni_tasks", *args],
        env=env,
        cwd=cwd,
        input=stdin,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


# ---- encrypt / decrypt -------------------------------------------------------------


def test_encrypt_then_decrypt_returns_the_plaintext() -> None:
    key = _key()

    token = secret_box.encrypt("s3cret value ünïcode", [key])

    assert token.startswith("enc:")
    assert "s3cret" not in token
    assert secret_box.decrypt(token, [key]) == "s3cret value ünïcode"


def test_decrypt_plain_value_is_returned_unchanged() -> None:
    assert secret_box.decrypt("not-encrypted", []) == "not-encrypted"


def test_decrypt_wrong_key_raises_secret_error_naming_the_value() -> None:
    token = secret_box.encrypt("plain", [_key()])

    with pytest.raises(SecretError, match=r"^OMNI_ALPACA_API_KEY cannot be decrypted"):
        secret_box.decrypt(token, [_key()], name="OMNI_ALPACA_API_KEY")


def test_decrypt_no_key_raises_secret_error_naming_the_value() -> None:
    token = secret_box.encrypt("plain", [_key()])

    with pytest.raises(SecretError, match=r"^OMNI_FLOWER_PASSWORD is encrypted .* no key is given"):
        secret_box.decrypt(token, [], name="OMNI_FLOWER_PASSWORD")


def test_decrypt_damaged_token_raises_secret_error() -> None:
    key = _key()
    token = secret_box.encrypt("plain", [key])
    damaged = token[:20] + ("A" if token[20] != "A" else "B") + token[21:]

    with pytest.raises(SecretError, match="cannot be decrypted"):
        secret_box.decrypt(damaged, [key])


def test_encrypt_uses_the_first_key_of_the_list() -> None:
    new, old = _key(), _key()

    token = secret_box.encrypt("plain", [new, old])

    assert secret_box.decrypt(token, [new]) == "plain"
    with pytest.raises(SecretError):
        secret_box.decrypt(token, [old])


@pytest.mark.parametrize(
    ("text", "position"),
    [
        pytest.param("not-a-key", 1, id="garbage"),
        pytest.param("c2hvcnQ=", 1, id="too-short-base64"),
        pytest.param(f"{secret_box.new_key()},bad-second-key", 2, id="second-of-two"),
    ],
)
def test_parse_keys_malformed_key_raises_secret_error_with_its_position(text: str, position: int) -> None:
    with pytest.raises(SecretError, match=rf"Fernet key #{position} is malformed"):
        secret_box.parse_keys(text)


def test_parse_keys_empty_list_raises_secret_error() -> None:
    with pytest.raises(SecretError, match="empty"):
        secret_box.parse_keys(" , \n# only a comment\n")


def test_parse_keys_commas_newlines_and_comments_keep_newest_first_order() -> None:
    first, second, third = (secret_box.new_key() for _ in range(3))

    keys = secret_box.parse_keys(f"{first}, {second}\n# retired below\n{third}\n")

    assert keys == [first.encode(), second.encode(), third.encode()]


def test_secret_error_is_a_config_error() -> None:
    # The CLI turns ConfigError into one line and exit code 2; secrets must take that path.
    assert issubclass(SecretError, ConfigError)


# ---- rotation of a .env file -----------------------------------------------------


def test_rotate_env_file_new_key_opens_every_value_and_old_key_alone_does_not(tmp_path: Path) -> None:
    old, new = _key(), _key()
    env_file = tmp_path / ".env"
    env_file.write_text(
        "# credentials\n"
        f'export OMNI_ALPACA_API_KEY="{secret_box.encrypt("alpaca-plain", [old])}"\n'
        f"OMNI_ALPACA_SECRET_KEY='{secret_box.encrypt('alpaca-secret-plain', [old])}'\n"
        f"OMNI_ALPHA_VANTAGE_API_KEY = {secret_box.encrypt('av-plain', [old])}\n"
        "\n"
        "OMNI_FLOWER_USER=operator\n",
        encoding="utf-8",
    )
    env_file.chmod(0o600)

    rotated = secret_box.rotate_env_file(env_file, [new, old])

    assert rotated == ["OMNI_ALPACA_API_KEY", "OMNI_ALPACA_SECRET_KEY", "OMNI_ALPHA_VANTAGE_API_KEY"]
    values = dotenv_values(env_file)
    expected = {
        "OMNI_ALPACA_API_KEY": "alpaca-plain",
        "OMNI_ALPACA_SECRET_KEY": "alpaca-secret-plain",
        "OMNI_ALPHA_VANTAGE_API_KEY": "av-plain",
    }
    for variable, plaintext in expected.items():
        token = values[variable]
        assert token is not None
        assert secret_box.decrypt(token, [new], name=variable) == plaintext
        with pytest.raises(SecretError):
            secret_box.decrypt(token, [old], name=variable)
    assert values["OMNI_FLOWER_USER"] == "operator"
    assert env_file.stat().st_mode & 0o777 == 0o600


def test_rotate_env_file_keeps_export_quotes_comments_and_plain_lines(tmp_path: Path) -> None:
    old, new = _key(), _key()
    env_file = tmp_path / ".env"
    lines = [
        "# credentials, newest key first\n",
        f'export OMNI_ALPACA_API_KEY="{secret_box.encrypt("a", [old])}"\n',
        f"OMNI_ALPACA_SECRET_KEY='{secret_box.encrypt('b', [old])}'\n",
        "\n",
        "OMNI_FLOWER_USER=operator\n",
        "OMNI_LOG_LEVEL='DEBUG'\n",
    ]
    env_file.write_text("".join(lines), encoding="utf-8")

    secret_box.rotate_env_file(env_file, [new, old])

    after = env_file.read_text(encoding="utf-8").splitlines(keepends=True)
    assert len(after) == len(lines)
    assert after[0] == lines[0]
    assert after[1].startswith('export OMNI_ALPACA_API_KEY="enc:')
    assert after[1].endswith('"\n')
    assert after[1] != lines[1]
    assert after[2].startswith("OMNI_ALPACA_SECRET_KEY='enc:")
    assert after[2].endswith("'\n")
    assert after[2] != lines[2]
    assert after[3:] == lines[3:]


def test_rotate_env_file_value_no_key_opens_leaves_file_byte_for_byte_unchanged(tmp_path: Path) -> None:
    old, new, lost = _key(), _key(), _key()
    env_file = tmp_path / ".env"
    env_file.write_bytes(
        (
            f"OMNI_ALPACA_API_KEY={secret_box.encrypt('opens', [old])}\n"
            f"OMNI_ALPHA_VANTAGE_API_KEY={secret_box.encrypt('lost', [lost])}\n"
            "OMNI_FLOWER_USER=operator"  # no final newline: must survive too
        ).encode()
    )
    before = env_file.read_bytes()

    with pytest.raises(SecretError, match="^OMNI_ALPHA_VANTAGE_API_KEY cannot be decrypted"):
        secret_box.rotate_env_file(env_file, [new, old])

    assert env_file.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == [".env"]  # no temporary file left behind


def test_rotate_env_file_without_keys_raises_and_leaves_file_alone(tmp_path: Path) -> None:
    env_file = tmp_path / ".env"
    env_file.write_text(f"OMNI_ALPACA_API_KEY={secret_box.encrypt('x', [_key()])}\n", encoding="utf-8")
    before = env_file.read_bytes()

    with pytest.raises(SecretError, match="no Fernet key"):
        secret_box.rotate_env_file(env_file, [])

    assert env_file.read_bytes() == before


def test_rotate_env_file_inline_comment_rotates_and_keeps_the_comment(tmp_path: Path) -> None:
    old, new = _key(), _key()
    plaintext = "x" * 40  # the length of an Alpaca secret key
    env_file = tmp_path / ".env"
    env_file.write_text(f"OMNI_ALPACA_SECRET_KEY={secret_box.encrypt(plaintext, [old])}  # added in May\n", encoding="utf-8")
    token_before = dotenv_values(env_file)["OMNI_ALPACA_SECRET_KEY"]
    assert token_before is not None
    assert secret_box.decrypt(token_before, [old]) == plaintext  # the settings loader reads it fine

    secret_box.rotate_env_file(env_file, [new, old])

    token_after = dotenv_values(env_file)["OMNI_ALPACA_SECRET_KEY"]
    assert token_after is not None
    assert secret_box.decrypt(token_after, [new]) == plaintext
    assert env_file.read_text(encoding="utf-8").rstrip("\n").endswith("# added in May")


# ---- the CLI ---------------------------------------------------------------------------


def test_cli_secrets_encrypt_reads_stdin_and_prints_a_token_that_decrypts(tmp_path: Path) -> None:
    key = secret_box.new_key()

    result = _omni(["secrets", "encrypt"], env=_cli_env(tmp_path, OMNI_SECRET_KEY=key), cwd=tmp_path, stdin="my-Plain-Secret-42\n")

    assert result.returncode == 0, result.stderr
    token = result.stdout.strip()
    assert token.startswith("enc:")
    assert secret_box.decrypt(token, [key.encode()]) == "my-Plain-Secret-42"
    assert "my-Plain-Secret-42" not in result.stdout + result.stderr


def test_cli_secrets_encrypt_value_on_the_command_line_is_refused(tmp_path: Path) -> None:
    key = secret_box.new_key()

    result = _omni(["secrets", "encrypt", "my-Plain-Secret-42"], env=_cli_env(tmp_path, OMNI_SECRET_KEY=key), cwd=tmp_path)

    assert result.returncode != 0
    assert "enc:" not in result.stdout


def test_cli_secrets_encrypt_without_key_exits_2_with_one_line(tmp_path: Path) -> None:
    result = _omni(["secrets", "encrypt"], env=_cli_env(tmp_path), cwd=tmp_path, stdin="value\n")

    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "OMNI_SECRET_KEY" in lines[0]
    assert "Traceback" not in result.stderr


def test_cli_secrets_rotate_reencrypts_the_file_under_the_newest_key(tmp_path: Path) -> None:
    old, new = secret_box.new_key(), secret_box.new_key()
    env_file = tmp_path / "prod.env"
    env_file.write_text(f"OMNI_ALPACA_API_KEY={secret_box.encrypt('alpaca-plain', [old.encode()])}\n", encoding="utf-8")

    result = _omni(["secrets", "rotate", str(env_file)], env=_cli_env(tmp_path, OMNI_SECRET_KEY=f"{new},{old}"), cwd=tmp_path)

    assert result.returncode == 0, result.stderr
    assert "OMNI_ALPACA_API_KEY" in result.stdout
    token = dotenv_values(env_file)["OMNI_ALPACA_API_KEY"]
    assert token is not None
    assert secret_box.decrypt(token, [new.encode()]) == "alpaca-plain"
    with pytest.raises(SecretError):
        secret_box.decrypt(token, [old.encode()])
