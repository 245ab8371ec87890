"""No code the watchdog runs can release the kill switch: a static check over its modules."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[3]
LOOSENING = {"release", "activate", "_change"}
TRANSITIONS_MODULE = "omni_tasks.safety.transitions"


def _watchdog_modules() -> list[Path]:
    paths = sorted((REPO / "omni_tasks" / "watchdog").rglob("*.py"))
    safety = REPO / "omni_tasks" / "safety"
    paths += [safety / "alarms.py", safety / "watchdog_listener.py", safety / "reconcile.py", safety / "engage.py"]
    paths += [REPO / "workers" / "watchdog.py", REPO / "omni_tasks" / "pipeline" / "hooks.py"]
    return [p for p in paths if p.exists()]


def loosening_calls(source: str) -> list[str]:
    """Places where ``source`` imports or reaches the kill switch's release/activate."""
    tree = ast.parse(source)
    aliases: set[str] = set()
    found: list[str] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            module = node.module or ""
            for name in node.names:
                if module == TRANSITIONS_MODULE and name.name in LOOSENING:
                    found.append(f"line {node.lineno}: from {module} import {name.name}")
                if module == "omni_tasks.safety" and name.name == "transitions":
                    aliases.add(name.asname or name.name)
        elif isinstance(node, ast.Import):
            for name in node.names:
                if name.name == TRANSITIONS_MODULE:
                    aliases.add(name.asname or name.name)
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and node.attr in LOOSENING:
            base = ast.unparse(node.value)
            if base in aliases:
                found.append(f"line {node.lineno}: {base}.{node.attr}")
    return found


def test_the_checker_sees_every_way_of_reaching_release() -> None:
    assert loosening_calls("from omni_tasks.safety.transitions import release\n")
    assert loosening_calls("from omni_tasks.safety import transitions as e\ne.release(rt, actor='x', reason='y')\n")
    assert loosening_calls("import omni_tasks.safety.transitions as m\nm.activate(rt)\n")
    assert loosening_calls("import omni_tasks.safety.transitions\nomni_tasks.safety.transitions.release(rt)\n")
    assert not loosening_calls("from omni_tasks.safety import engage as e\ne.engage(rt)\nbreaker.release(trial)\n")


@pytest.mark.parametrize("path", _watchdog_modules(), ids=lambda p: str(p.relative_to(REPO)))
def test_no_watchdog_module_reaches_release_or_activate(path: Path) -> None:
    assert loosening_calls(path.read_text()) == [], f"{path} can loosen the trading state"


def test_automatic_release_paths_counted() -> None:
    modules = _watchdog_modules()
    paths = sum(len(loosening_calls(p.read_text())) for p in modules)
    print(f"automatic release paths: {paths} in {len(modules)} watchdog modules")
    assert len(modules) >= 4
    assert paths == 0
