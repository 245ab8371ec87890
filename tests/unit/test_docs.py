"""The README and docs/ stay true: links resolve, named settings exist, named commands and options exist."""

from __future__ import annotations

import re
import shlex
from functools import cache
from pathlib import Path
from typing import Any

import pytest

from omni_tasks import settings as settings_module
from tests.conftest import REPO_ROOT

PAGES = [REPO_ROOT / "README.md", *sorted((REPO_ROOT / "docs").glob("*.md"))]
#: The README is for a newcomer: about 200 lines, the rest lives in docs/.
README_MAX_LINES = 230

LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")
FENCE = re.compile(r"^```[^\n]*\n(.*?)^```", re.MULTILINE | re.DOTALL)
INLINE_CODE = re.compile(r"`([^`]+)`")
#: A path in the repository, as pages name them in inline code (`omni_tasks/core/keys.py`, `workers/`).
REPO_PATH = re.compile(
    r"^(omni_tasks|workers|db|docker|tests|bench|docs)(/[A-Za-z0-9_.-]+)*/?$|^(beat_schedule\.py|setup\.cfg|pyproject\.toml)$"
)
#: A row of the package table in docs/architecture.md: | `core/` | ... |
PACKAGE_ROW = re.compile(r"^\| `([a-z_]+/|[a-z_]+\.py)` \|", re.MULTILINE)
#: An OMNI_ name, or a family of them when followed by `*` (`OMNI_RISK_*`).
VARIABLE = re.compile(r"\bOMNI_[A-Z0-9_]*[A-Z0-9](_\*)?")


def _page_id(page: Path) -> str:
    return str(page.relative_to(REPO_ROOT))


def test_docs_pages_exist_and_the_readme_stays_short() -> None:
    names = {page.name for page in PAGES}
    expected = {
        "architecture.md",
        "operations.md",
        "killswitch.md",
        "market-data.md",
        "streaming.md",
        "risk.md",
        "benchmarks.md",
        "configuration.md",
    }
    assert expected <= names, f"docs/ misses {sorted(expected - names)}"
    lines = len((REPO_ROOT / "README.md").read_text(encoding="utf-8").splitlines())
    assert lines <= README_MAX_LINES, f"README.md has {lines} lines: move detail to docs/ (at most {README_MAX_LINES})"


@pytest.mark.parametrize("page", PAGES, ids=_page_id)
def test_every_relative_link_points_at_an_existing_file(page: Path) -> None:
    broken = []
    for target in LINK.findall(page.read_text(encoding="utf-8")):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target) or target.startswith("#"):
            continue  # a URL, or an anchor on the same page
        path = target.split("#", 1)[0]
        if not (page.parent / path).exists():
            broken.append(target)
    assert broken == [], f"{_page_id(page)}: links to missing files: {broken}"


@pytest.mark.parametrize("page", PAGES, ids=_page_id)
def test_every_variable_named_is_a_setting(page: Path) -> None:
    known = settings_module.known_variables()
    unknown = []
    for match in VARIABLE.finditer(page.read_text(encoding="utf-8")):
        name = match.group(0)
        if name.endswith("_*"):
            if not any(variable.startswith(name[:-1]) for variable in known):
                unknown.append(name)
        elif name not in known:
            unknown.append(name)
    assert unknown == [], f"{_page_id(page)} names variables that are not settings: {sorted(set(unknown))}"


@pytest.mark.parametrize("page", PAGES, ids=_page_id)
def test_every_repository_path_named_exists(page: Path) -> None:
    text = FENCE.sub("", page.read_text(encoding="utf-8"))
    named = {span for span in INLINE_CODE.findall(text) if REPO_PATH.match(span)}
    missing = sorted(span for span in named if not (REPO_ROOT / span).exists())
    assert missing == [], f"{_page_id(page)} names paths that do not exist: {missing}"


def test_the_architecture_page_lists_every_package_of_omni_tasks() -> None:
    listed = set(PACKAGE_ROW.findall((REPO_ROOT / "docs" / "architecture.md").read_text(encoding="utf-8")))
    package = REPO_ROOT / "omni_tasks"
    present = {f"{path.parent.name}/" for path in package.glob("*/__init__.py")} | {"settings.py"}
    assert sorted(present - listed) == [], "docs/architecture.md: add these packages to the layout table"
    assert sorted(listed - present) == [], "docs/architecture.md: the layout table names packages that do not exist"


@cache
def _command_tree() -> Any:
    import typer

    from omni_tasks.cli import main

    main._register()  # private on purpose: the command tree as `omni` builds it, without running a command
    return typer.main.get_command(main.app)


def _command_lines(text: str) -> list[str]:
    """Every `omni ...` command line: in fenced blocks (one per line, comments dropped) and in inline code."""
    found = []
    for block in FENCE.findall(text):
        for line in block.splitlines():
            line = line.split(" # ", 1)[0].strip()
            if line.startswith("omni "):
                found.append(line)
    for span in INLINE_CODE.findall(FENCE.sub("", text)):
        span = " ".join(span.split())
        if re.match(r"^omni( [a-z-]+)*:", span):
            continue  # what a command prints (`omni order buy: qty ...`), not a command
        if span.startswith("omni ") or span == "omni":
            found.append(span)
    return found


def _problem(line: str) -> str | None:
    """Why ``line`` is not a command `omni` has (a subcommand or an option it lacks), or None."""
    try:
        tokens = shlex.split(line)
    except ValueError:
        tokens = line.split()
    tokens = [token.strip("[]") for token in tokens[1:]]
    command = _command_tree()
    path = ["omni"]
    index = 0
    while index < len(tokens) and hasattr(command, "commands") and tokens[index] in command.commands:
        command = command.commands[tokens[index]]
        path.append(tokens[index])
        index += 1
    rest = tokens[index:]
    takes_subcommand = hasattr(command, "commands") and not command.invoke_without_command
    if takes_subcommand and rest and not rest[0].startswith("-") and rest[0] not in {"...", "…"}:
        return f"`{' '.join(path)}` has no subcommand {rest[0]!r}"
    options = {"--help"} | {opt for param in command.params for opt in (*param.opts, *param.secondary_opts)}
    for token in rest:
        if token.startswith("--") and token.split("=", 1)[0] not in options:
            return f"`{' '.join(path)}` has no option {token.split('=', 1)[0]}"
    return None


@pytest.mark.parametrize("page", PAGES, ids=_page_id)
def test_every_command_named_exists_with_its_options(page: Path) -> None:
    problems = [f"{line}: {problem}" for line in _command_lines(page.read_text(encoding="utf-8")) if (problem := _problem(line))]
    assert problems == [], f"{_page_id(page)}:\n" + "\n".join(problems)
