"""Every setting is documented: docs/configuration.md is `omni config doc`, made from the settings' descriptions."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

from omni_tasks import settings as settings_module
from tests.conftest import REPO_ROOT

CONFIGURATION_DOC = REPO_ROOT / "docs" / "configuration.md"
ROW = re.compile(r"^\| `(OMNI_[A-Z0-9_]+)` \| `([^`]*)` \| (.*) \|$", re.MULTILINE)


def _every_setting() -> list[str]:
    return [group.prefix + name.upper() for group in settings_module.GROUPS.values() for name in group.model_fields]


def _omni_config_doc(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(  # fixed argv
        [sys.executable, "-m", "omni_tasks", "config", "doc", *args],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env={"PATH": "/usr/bin:/bin", "HOME": str(REPO_ROOT)},
    )


def test_every_setting_has_a_meaning_in_its_own_description() -> None:
    undocumented = [name for name, _default, meaning in settings_module.configuration_rows() if not meaning.strip()]
    assert undocumented == [], f"settings without a description: {undocumented}"
    assert [name for name, _d, _m in settings_module.configuration_rows()] == _every_setting()


def test_every_setting_is_in_the_configuration_doc_with_its_meaning_and_default() -> None:
    rows = {m.group(1): (m.group(2), m.group(3).strip()) for m in ROW.finditer(CONFIGURATION_DOC.read_text(encoding="utf-8"))}
    missing = [name for name in _every_setting() if name not in rows]
    assert missing == [], f"settings missing from docs/configuration.md: {missing}"
    empty = [name for name in _every_setting() if not rows[name][1]]
    assert empty == [], f"settings with no meaning in docs/configuration.md: {empty}"
    stale = sorted(set(rows) - set(_every_setting()) - settings_module.NON_SETTING_VARIABLES)
    assert stale == [], f"docs/configuration.md documents variables that are not settings: {stale}"
    for name, default, meaning in settings_module.configuration_rows():
        assert rows[name] == (default, meaning.replace("|", "\\|")), (
            f"{name}: docs/configuration.md says {rows[name]}, the settings say {(default, meaning)}"
        )


def test_the_configuration_doc_is_what_omni_config_doc_prints() -> None:
    printed = _omni_config_doc()
    assert printed.returncode == 0, printed.stderr
    assert printed.stdout == settings_module.configuration_page()
    assert printed.stdout == CONFIGURATION_DOC.read_text(encoding="utf-8"), "regenerate it: `omni config doc --write docs/configuration.md`"


def test_omni_config_doc_check_passes_on_the_doc_and_names_a_stale_file(tmp_path: Path) -> None:
    assert _omni_config_doc("--check", str(CONFIGURATION_DOC)).returncode == 0
    stale = tmp_path / "configuration.md"
    stale.write_text(settings_module.configuration_page().replace("OMNI_DATA_DIR", "OMNI_DATA_FOLDER"), encoding="utf-8")
    checked = _omni_config_doc("--check", str(stale))
    assert checked.returncode == 1
    assert checked.stderr.strip() == f"omni config doc: {stale} is stale: regenerate it with `omni config doc --write {stale}`"
    written = _omni_config_doc("--write", str(stale))
    assert written.returncode == 0, written.stderr
    assert stale.read_text(encoding="utf-8") == settings_module.configuration_page()
