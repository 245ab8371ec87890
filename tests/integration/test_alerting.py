"""The alert rules and the Prometheus config under docker/, checked by Debian's promtool.

`promtool check rules` (syntax, PromQL, templates), `promtool test rules` (the
cases in docker/prometheus/tests: every alert firing and not firing) and
`promtool check config` on the compose stack's prometheus.yml with its rule
files. Skipped when promtool is missing, unless OMNI_REQUIRE_SERVICES=1
(CI installs it: .ci/run).
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from tests.conftest import REQUIRE_SERVICES
from tests.promql import PROMETHEUS_CONFIG, RULE_TESTS_DIR, rule_expressions, rule_files

pytestmark = pytest.mark.services


def promtool() -> str:
    found = shutil.which("promtool")
    if found is None:
        message = "promtool not found (Debian package prometheus: apt-get install prometheus)"
        if REQUIRE_SERVICES:
            pytest.fail(message + " (OMNI_REQUIRE_SERVICES=1)")
        pytest.skip(message)
    return found


def _run(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    result = subprocess.run([promtool(), *args], capture_output=True, text=True, timeout=120, cwd=cwd, check=False)  # fixed argv
    print(f"$ promtool {' '.join(args)}\n{result.stdout}{result.stderr}")
    return result


def test_promtool_check_rules_accepts_every_rule_file() -> None:
    files = rule_files()
    assert files, "no rule file under docker/prometheus/rules"
    result = _run("check", "rules", *map(str, files))
    assert result.returncode == 0, result.stdout + result.stderr
    found = sum(int(n) for n in re.findall(r"SUCCESS: (\d+) rules found", result.stdout))
    assert found == len(rule_expressions()), f"promtool found {found} rules, the files hold {len(rule_expressions())}"


def test_promtool_test_rules_every_alert_fires_and_stays_quiet_in_its_cases() -> None:
    test_files = sorted(RULE_TESTS_DIR.glob("*.yml"))
    assert test_files, "no promtool test file under docker/prometheus/tests"
    result = _run("test", "rules", *map(str, test_files))
    assert result.returncode == 0, result.stdout + result.stderr
    # Every alert has a case where it fires and one where it must not.
    firing: set[str] = set()
    quiet: set[str] = set()
    for path in test_files:
        for case in yaml.safe_load(path.read_text())["tests"]:
            for check in case.get("alert_rule_test", []):
                (firing if check.get("exp_alerts") else quiet).add(check["alertname"])
    alerts = set(rule_expressions())
    print(f"alerts tested firing: {len(firing & alerts)} of {len(alerts)}, quiet: {len(quiet & alerts)} of {len(alerts)}")
    assert alerts <= firing, f"alerts never tested firing: {sorted(alerts - firing)}"
    assert alerts <= quiet, f"alerts never tested quiet: {sorted(alerts - quiet)}"


def test_promtool_check_config_accepts_compose_prometheus_config_with_its_rules(tmp_path: Path) -> None:
    config = yaml.safe_load(PROMETHEUS_CONFIG.read_text())
    # In the container the rules are mounted at /etc/prometheus/rules: point at the repository's copy.
    assert config.get("rule_files") == ["/etc/prometheus/rules/*.yml"], config.get("rule_files")
    config["rule_files"] = [str(path) for path in rule_files()]
    local = tmp_path / "prometheus.yml"
    local.write_text(yaml.safe_dump(config))
    result = _run("check", "config", str(local))
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(rule_expressions())} rules found" in result.stdout, result.stdout
    # And the file as it ships (the rule glob matches nothing outside the container: still valid).
    shipped = _run("check", "config", "--syntax-only", str(PROMETHEUS_CONFIG))
    assert shipped.returncode == 0, shipped.stdout + shipped.stderr
