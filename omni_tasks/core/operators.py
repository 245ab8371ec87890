"""Who acted: the one policy for naming a person or a process in the records (audit log, kill events, orders).

An actor is ``<kind>:<name>``: ``operator:<name>`` for a person at the command
line (the name given with ``--operator``, else the login name), ``http:<operator
or client address>`` for the health server's kill endpoint. An operator's name
is 1-60 of letters, digits, ``_``, ``.``, ``@``, ``-``: it goes into logs and
records as it is, so nothing else is accepted.
"""

from __future__ import annotations

import getpass
import re
from typing import Final

#: An operator's name in the records.
OPERATOR_PATTERN: Final = re.compile(r"[A-Za-z0-9_.@\-]{1,60}", re.ASCII)
#: The rule in words, for refusals.
OPERATOR_RULE: Final = "1-60 of letters, digits, '_', '.', '@', '-'"
OPERATOR_PREFIX: Final = "operator:"
HTTP_PREFIX: Final = "http:"


def is_operator_name(value: object) -> bool:
    """True when ``value`` is a string that may name an operator."""
    return isinstance(value, str) and OPERATOR_PATTERN.fullmatch(value) is not None


def login_name() -> str:
    """The name of the person running this process (an operator who gave no ``--operator``)."""
    return getpass.getuser()


def operator_actor(name: str) -> str:
    """The actor of a person at the command line: ``operator:<name>`` (``name`` already checked)."""
    return f"{OPERATOR_PREFIX}{name}"


def http_actor(operator: str | None, client_address: str) -> str:
    """The actor of a request to the kill endpoint: ``http:<operator>``, or ``http:<client address>`` when it named none."""
    return f"{HTTP_PREFIX}{operator or client_address}"
