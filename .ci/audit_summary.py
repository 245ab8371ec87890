"""Say what pip-audit did, in plain words: how many packages it audited, what it found, or that it did not run.

Usage: audit_summary.py AUDIT_JSON STDERR_FILE EXIT_CODE. Always exits 0 (the audit is informational).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def summary(report_path: Path, stderr_path: Path, exit_code: int) -> list[str]:
    """The lines to print."""
    text = stderr_path.read_text(errors="replace") if stderr_path.exists() else ""
    # pip-audit prints this even when it audited nothing: never a reason, never a verdict here.
    error_lines = [line.strip() for line in text.splitlines() if line.strip() and "No known vulnerabilities found" not in line]
    reason = error_lines[-1] if error_lines else f"exit code {exit_code}"
    try:
        report = json.loads(report_path.read_text())
    except (OSError, ValueError):
        return [f"pip-audit did not run: {reason}"]
    dependencies = report.get("dependencies", []) if isinstance(report, dict) else []
    audited = [d for d in dependencies if "skip_reason" not in d]
    skipped = [d for d in dependencies if "skip_reason" in d]
    if not audited:
        why = skipped[0]["skip_reason"] if skipped else reason
        return [
            f"pip-audit did not run: it audited 0 of {len(dependencies)} packages ({why}); the vulnerability service is probably unreachable"
        ]
    lines = []
    vulnerable = [d for d in audited if d.get("vulns")]
    for dependency in vulnerable:
        ids = ", ".join(
            v.get("id", "?") + (f" (fixed in {', '.join(v['fix_versions'])})" if v.get("fix_versions") else "") for v in dependency["vulns"]
        )
        lines.append(f"pip-audit: {dependency['name']} {dependency.get('version', '?')}: {ids}")
    verdict = f"{len(vulnerable)} with known vulnerabilities" if vulnerable else "no known vulnerabilities"
    lines.append(
        f"pip-audit: {len(audited)} of {len(dependencies)} packages audited, {verdict}"
        + (f"; {len(skipped)} could not be audited" if skipped else "")
    )
    return lines


def main(argv: list[str]) -> int:
    report, stderr, code = argv[1], argv[2], argv[3]
    for line in summary(Path(report), Path(stderr), int(code) if code.lstrip("-").isdigit() else -1):
        print(line)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv))
