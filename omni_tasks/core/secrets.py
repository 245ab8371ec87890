"""Credentials encrypted at rest with Fernet, rotated with MultiFernet.

A setting may hold ``enc:<fernet token>``. Keys come from ``OMNI_SECRET_KEY``
(one or more keys separated by commas, newest first) or from a key file (one
key per line, newest first). Encryption always uses the first key; decryption
tries every key, so a new key can be put in front, every stored value
re-encrypted with :func:`rotate_env_file`, and only then the old key dropped.
"""

from __future__ import annotations

import os
import re
import tempfile
from collections.abc import Sequence
from pathlib import Path

from cryptography.fernet import Fernet, InvalidToken, MultiFernet

from omni_tasks.core.errors import SecretError

ENC_PREFIX = "enc:"

# KEY=value lines of a .env file; the value may be quoted.
_ENV_LINE = re.compile(r"^(?P<lead>\s*(?:export\s+)?(?P<key>[A-Za-z_][A-Za-z0-9_]*)\s*=\s*)(?P<value>.*?)\s*$")


def new_key() -> str:
    """A fresh url-safe base64 Fernet key."""
    return Fernet.generate_key().decode("ascii")


def parse_keys(text: str) -> list[bytes]:
    """Split a key list (commas or newlines, newest first) and check each key."""
    keys = [part.strip() for part in re.split(r"[,\n]", text) if part.strip() and not part.strip().startswith("#")]
    if not keys:
        raise SecretError("no Fernet key given (the key list is empty)")
    out: list[bytes] = []
    for position, key in enumerate(keys, start=1):
        try:
            Fernet(key.encode("ascii"))
        except (ValueError, UnicodeEncodeError):
            raise SecretError(
                f"Fernet key #{position} is malformed: a key is 32 url-safe base64-encoded bytes "
                "(make one with `omni secrets new-key`)"
            ) from None
        out.append(key.encode("ascii"))
    return out


def load_keys(key_text: str | None, key_file: Path | None) -> list[bytes]:
    """Keys from the key setting, else from the key file; empty when neither is given."""
    if key_text:
        return parse_keys(key_text)
    if key_file is not None:
        try:
            return parse_keys(key_file.read_text(encoding="utf-8"))
        except OSError as exc:
            raise SecretError(f"cannot read the Fernet key file {key_file}: {exc.strerror}") from None
    return []


def is_encrypted(value: str) -> bool:
    return value.startswith(ENC_PREFIX)


def encrypt(plaintext: str, keys: Sequence[bytes]) -> str:
    """``enc:<token>`` for ``plaintext`` under the newest key."""
    if not keys:
        raise SecretError("cannot encrypt: no Fernet key (set OMNI_SECRET_KEY or OMNI_SECRET_KEY_FILE)")
    token = MultiFernet([Fernet(k) for k in keys]).encrypt(plaintext.encode("utf-8"))
    return ENC_PREFIX + token.decode("ascii")


def decrypt(value: str, keys: Sequence[bytes], *, name: str = "value") -> str:
    """The plaintext of an ``enc:`` value; a plain value is returned unchanged."""
    if not is_encrypted(value):
        return value
    if not keys:
        raise SecretError(
            f"{name} is encrypted (enc:...) but no key is given: set OMNI_SECRET_KEY or OMNI_SECRET_KEY_FILE"
        )
    try:
        return MultiFernet([Fernet(k) for k in keys]).decrypt(value[len(ENC_PREFIX) :].encode("ascii")).decode("utf-8")
    except (InvalidToken, UnicodeEncodeError):
        raise SecretError(f"{name} cannot be decrypted: wrong key, or the token is damaged") from None


def rotate_token(value: str, keys: Sequence[bytes], *, name: str = "value") -> str:
    """Re-encrypt an ``enc:`` value under the newest key (MultiFernet.rotate)."""
    decrypt(value, keys, name=name)  # raises a clear error when no key opens it
    token = MultiFernet([Fernet(k) for k in keys]).rotate(value[len(ENC_PREFIX) :].encode("ascii"))
    return ENC_PREFIX + token.decode("ascii")


def rotate_env_file(path: Path, keys: Sequence[bytes]) -> list[str]:
    """Re-encrypt every ``enc:`` value in a .env file under the newest key.

    Every value is checked before anything is written, so a value that no key
    opens leaves the file untouched. The file is replaced atomically and keeps
    its permissions. Returns the names of the re-encrypted variables.
    """
    if not keys:
        raise SecretError("cannot rotate: no Fernet key (set OMNI_SECRET_KEY or OMNI_SECRET_KEY_FILE)")
    lines = path.read_text(encoding="utf-8").splitlines(keepends=True)
    rotated: list[str] = []
    out: list[str] = []
    for line in lines:
        match = _ENV_LINE.match(line.rstrip("\n"))
        if not match:
            out.append(line)
            continue
        raw = match["value"]
        quote = raw[0] if raw[:1] in {"'", '"'} and raw[-1:] == raw[:1] and len(raw) >= 2 else ""
        comment = ""
        if quote:
            value = raw[1:-1]
        else:
            # An unquoted value ends at " #" (python-dotenv's inline comment); tokens never hold spaces.
            value, hash_mark, rest = raw.partition(" #")
            comment = (hash_mark + rest) if hash_mark else ""
            trailing = len(value) - len(value.rstrip())
            comment = value[len(value) - trailing :] + comment if trailing else comment
            value = value.rstrip()
        if not is_encrypted(value):
            out.append(line)
            continue
        new_value = rotate_token(value, keys, name=match["key"])
        rotated.append(match["key"])
        newline = "\n" if line.endswith("\n") else ""
        out.append(f"{match['lead']}{quote}{new_value}{quote}{comment}{newline}")
    mode = path.stat().st_mode & 0o777
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.writelines(out)
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return rotated
