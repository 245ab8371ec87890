"""The Celery boundary: only omni_tasks/pipeline (and the task modules that use it) load Celery or kombu.

Each check imports modules in a fresh interpreter, so what an earlier test
imported cannot hide (or cause) a leak.
"""

from __future__ import annotations

import pkgutil
import subprocess
import sys

import pytest

import omni_tasks
from tests.conftest import REPO_ROOT

#: The edge: modules that build, configure or drive the Celery app (they may import Celery when imported).
EDGE = frozenset(
    {
        "omni_tasks.__main__",
        "omni_tasks.pipeline.app",
        "omni_tasks.pipeline.beat",
        "omni_tasks.pipeline.canvas",
        "omni_tasks.pipeline.hooks",
        "omni_tasks.pipeline.limits",
        "omni_tasks.pipeline.refusal",
        "omni_tasks.pipeline.taskdef",
    }
)
CELERY_PACKAGES = ("celery", "kombu")


def _domain_modules() -> list[str]:
    names = [m.name for m in pkgutil.walk_packages(omni_tasks.__path__, "omni_tasks.")]
    return sorted(n for n in names if n not in EDGE and not n.endswith(".tasks"))


def _loaded_after_importing(modules: list[str]) -> list[str]:
    """``module: package`` for every module whose import (in order, in one fresh interpreter) loaded Celery or kombu."""
    script = (
        "import importlib, sys\n"
        f"for name in {modules!r}:\n"
        "    importlib.import_module(name)\n"
        f"    leaked = [p for p in {CELERY_PACKAGES!r} if p in sys.modules]\n"
        "    if leaked:\n"
        "        print(name + ': ' + ', '.join(leaked))\n"
        "        break\n"
    )
    done = subprocess.run([sys.executable, "-c", script], cwd=REPO_ROOT, capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    return done.stdout.split("\n")[:-1]


@pytest.mark.parametrize(
    "module", ["omni_tasks.ops.health", "omni_tasks.watchdog.monitor", "omni_tasks.pipeline.observe", "omni_tasks.cli.main"]
)
def test_reader_module_import_does_not_load_celery(module: str) -> None:
    assert _loaded_after_importing([module]) == []


def test_every_domain_module_import_does_not_load_celery_or_kombu() -> None:
    modules = _domain_modules()
    assert "omni_tasks.marketdata.router" in modules
    assert _loaded_after_importing(modules) == []


def test_importing_the_app_reads_no_settings() -> None:
    script = (
        "import omni_tasks.pipeline.app as a, omni_tasks.core.runtime as r\n"
        "import omni_tasks.system.tasks\n"
        "assert r._settings is None, 'settings read at import'\n"
        "assert not a.app.configured, 'app configured at import'\n"
    )
    done = subprocess.run([sys.executable, "-c", script], cwd=REPO_ROOT, capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr
