"""Every exception class omni-tasks defines is an OmniError, and core/errors.py draws each one."""

from __future__ import annotations

import importlib
import inspect
import pkgutil

import omni_tasks
from omni_tasks.core import errors


def _defined_exceptions() -> dict[str, type[BaseException]]:
    found: dict[str, type[BaseException]] = {}
    for info in pkgutil.walk_packages(omni_tasks.__path__, "omni_tasks."):
        if info.name == "omni_tasks.__main__":
            continue
        module = importlib.import_module(info.name)
        for name, value in vars(module).items():
            if inspect.isclass(value) and issubclass(value, BaseException) and value.__module__ == info.name and not name.startswith("_"):
                found[f"{info.name}.{name}"] = value
    return found


def test_every_public_exception_is_an_omni_error() -> None:
    defined = _defined_exceptions()
    assert len(defined) >= 30
    outside = sorted(name for name, cls in defined.items() if not issubclass(cls, errors.OmniError))
    assert outside == [], "join the OmniError tree (omni_tasks/core/errors.py): " + ", ".join(outside)


def test_the_drawing_in_core_errors_names_every_exception() -> None:
    """Drawn in core/errors.py, or in the drawing of a package's own errors module that core/errors.py names."""
    from omni_tasks.marketdata import errors as provider_errors

    drawing = (errors.__doc__ or "") + (provider_errors.__doc__ or "")
    assert "marketdata.errors" in (errors.__doc__ or "")
    missing = sorted(name for name, cls in _defined_exceptions().items() if cls.__name__ not in drawing)
    assert missing == [], "draw them in omni_tasks/core/errors.py's docstring: " + ", ".join(missing)
