"""Every Redis key is spelled once, in omni_tasks/core/keys.py: two rooms can never disagree on a name."""

from __future__ import annotations

import ast
import re
from pathlib import Path

from omni_tasks.core import keys

PACKAGE = Path(keys.__file__).resolve().parents[1]
KEY_LITERAL = re.compile(r"^omni:[a-z_]")


def _key_literals(path: Path) -> list[tuple[int, str]]:
    found = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and KEY_LITERAL.match(node.value):
            found.append((node.lineno, node.value))
    return found


def test_no_module_but_keys_spells_a_redis_key() -> None:
    elsewhere = {
        f"{path.relative_to(PACKAGE.parent)}:{line}: {value}"
        for path in PACKAGE.rglob("*.py")
        if path.resolve() != Path(keys.__file__).resolve()
        for line, value in _key_literals(path)
    }
    assert not elsewhere, "Redis keys spelled outside omni_tasks/core/keys.py:\n" + "\n".join(sorted(elsewhere))


def test_each_key_is_defined_once_and_no_two_names_share_a_value() -> None:
    values = {name: value for name, value in vars(keys).items() if name.isupper() and isinstance(value, str)}
    assert len(values) >= 40
    by_value: dict[str, list[str]] = {}
    for name, value in values.items():
        assert value.startswith("omni:") or name.startswith("KOMBU_"), f"{name} = {value!r} is outside the omni: namespace"
        by_value.setdefault(value, []).append(name)
    assert {v: n for v, n in by_value.items() if len(n) > 1} == {}
