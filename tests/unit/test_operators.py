"""The one operator/actor policy (omni_tasks.core.operators), as the CLI and the kill endpoint apply it."""

from __future__ import annotations

import pytest

from omni_tasks.core import inputs, operators
from omni_tasks.ops.httpserver import parse_engage_body


@pytest.mark.parametrize("name", ["alice", "bob.smith", "ops@desk", "a_b-c", "x" * 60])
def test_is_operator_name_accepts_letters_digits_and_punctuation_up_to_60(name: str) -> None:
    assert operators.is_operator_name(name)
    assert inputs.operator(name) == name


@pytest.mark.parametrize("name", ["", "x" * 61, "alice smith", "eve\nforged", "bob;rm", "ünicode", None, 7])
def test_is_operator_name_refuses_anything_else(name: object) -> None:
    assert not operators.is_operator_name(name)
    with pytest.raises(inputs.InputError, match="--operator"):
        inputs.operator(name)


def test_operator_actor_is_prefixed_operator() -> None:
    assert operators.operator_actor("carol") == "operator:carol"


def test_http_actor_names_the_operator_else_the_client_address() -> None:
    assert operators.http_actor("bob", "10.0.0.7") == "http:bob"
    assert operators.http_actor(None, "10.0.0.7") == "http:10.0.0.7"


def test_kill_endpoint_body_applies_the_same_operator_rule() -> None:
    assert parse_engage_body(b'{"reason": "desk call", "operator": "bob"}') == ("desk call", "bob", None)
    with pytest.raises(ValueError, match=operators.OPERATOR_RULE):
        parse_engage_body(b'{"reason": "desk call", "operator": "bob smith"}')
