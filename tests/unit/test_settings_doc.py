"""Every setting is documented: the README's configuration table is `omni config doc`, made from the settings' descriptions."""

from __future__ import annotations

import re
import subprocess
import sys

from omni_tasks import settings as settings_module
from tests.conftest import REPO_ROOT

README = REPO_ROOT / "README.md"
ROW = re.compile(r"^\| `(OMNI_[A-Z0-9_]+)` \| `([^`]*)` \| (.*) \|$", re.MULTILINE)


def _every_setting() -> list[str]:
    return [group.prefix + name.upper() for group in settings_module.GROUPS.values() for name in group.model_fields]


def test_every_setting_has_a_meaning_in_its_own_description() -> None:
    undocumented = [name for name, _default, meaning in settings_module.configuration_rows() if not meaning.strip()]
    assert undocumented == [], f"settings without a description: {undocumented}"
    assert [name for name, _d, _m in settings_module.configuration_rows()] == _every_setting()


def test_every_setting_is_in_the_readme_table_with_its_meaning_and_default() -> None:
    rows = {m.group(1): (m.group(2), m.group(3).strip()) for m in ROW.finditer(README.read_text(encoding="utf-8"))}
    missing = [name for name in _every_setting() if name not in rows]
    assert missing == [], f"settings missing from the README's configuration table: {missing}"
    empty = [name for name in _every_setting() if not rows[name][1]]
    assert empty == [], f"settings with no meaning in the README: {empty}"
    stale = sorted(set(rows) - set(_every_setting()) - settings_module.NON_SETTING_VARIABLES)
    assert stale == [], f"the README documents variables that are not settings: {stale}"
    for name, default, meaning in settings_module.configuration_rows():
        assert rows[name] == (default, meaning.replace("|", "\\|")), (
            f"{name}: README says {rows[name]}, the settings say {(default, meaning)}"
        )


def test_the_readme_table_is_what_omni_config_doc_prints() -> None:
    printed = subprocess.run(  # fixed argv
        [sys.executable, "-m", "omni_tasks", "config", "doc"],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env={"PATH": "/usr/bin:/bin", "HOME": str(REPO_ROOT)},
    )
    assert printed.returncode == 0, printed.stderr
    assert printed.stdout.strip() == settings_module.configuration_table()
    assert printed.stdout.strip() in README.read_text(encoding="utf-8"), "regenerate the README's table with `omni config doc`"
