"""The CI's pip-audit summary says when the audit did not happen instead of "No known vulnerabilities found"."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

_SPEC = importlib.util.spec_from_file_location("audit_summary", Path(__file__).resolve().parents[2] / ".ci" / "audit_summary.py")
assert _SPEC is not None
audit_summary = importlib.util.module_from_spec(_SPEC)
assert _SPEC.loader is not None
_SPEC.loader.exec_module(audit_summary)


def _files(tmp_path: Path, report: object, stderr: str) -> tuple[Path, Path]:
    report_path, stderr_path = tmp_path / "audit.json", tmp_path / "audit.err"
    if report is not None:
        report_path.write_text(json.dumps(report))
    stderr_path.write_text(stderr)
    return report_path, stderr_path


def test_every_package_skipped_is_an_audit_that_did_not_run(tmp_path: Path) -> None:
    skipped = [{"name": f"p{i}", "skip_reason": f"Dependency not found on PyPI and could not be audited: p{i} (1.0)"} for i in range(119)]
    lines = audit_summary.summary(*_files(tmp_path, {"dependencies": skipped, "fixes": []}, "No known vulnerabilities found\n"), 0)
    assert len(lines) == 1
    assert lines[0].startswith("pip-audit did not run: it audited 0 of 119 packages")
    assert "No known vulnerabilities" not in lines[0]


def test_no_report_names_the_error(tmp_path: Path) -> None:
    lines = audit_summary.summary(*_files(tmp_path, None, "ConnectionError: pypi.org unreachable\n"), 1)
    assert lines == ["pip-audit did not run: ConnectionError: pypi.org unreachable"]


@pytest.mark.parametrize("vulnerable", [False, True])
def test_an_audit_that_ran_counts_packages_and_findings(tmp_path: Path, vulnerable: bool) -> None:
    vulns = [{"id": "PYSEC-1", "fix_versions": ["2.0"]}] if vulnerable else []
    report = {
        "dependencies": [
            {"name": "a", "version": "1.0", "vulns": vulns},
            {"name": "b", "version": "1.0", "vulns": []},
            {"name": "c", "skip_reason": "x"},
        ]
    }
    lines = audit_summary.summary(*_files(tmp_path, report, ""), 1 if vulnerable else 0)
    assert lines[-1].startswith("pip-audit: 2 of 3 packages audited, ")
    assert ("1 with known vulnerabilities" in lines[-1]) is vulnerable
    assert ("PYSEC-1 (fixed in 2.0)" in "\n".join(lines)) is vulnerable
