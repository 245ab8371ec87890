"""The metric names the alert rules and the Grafana dashboard query, read out of their PromQL.

Shared by the tests that check those names against the code and against a
live /metrics. Not a PromQL parser: string literals, label matchers, range
selectors and grouping clauses are removed, then every identifier that is not
followed by ``(`` (a function or an aggregation) and is not a keyword is a
metric name.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import yaml

DOCKER = Path(__file__).resolve().parents[1] / "docker"
RULES_DIR = DOCKER / "prometheus" / "rules"
RULE_TESTS_DIR = DOCKER / "prometheus" / "tests"
PROMETHEUS_CONFIG = DOCKER / "prometheus" / "prometheus.yml"
DASHBOARD = DOCKER / "grafana" / "dashboards" / "omni-tasks.json"

#: Series Prometheus makes itself (not in any /metrics).
SYNTHETIC = frozenset({"up", "scrape_duration_seconds", "scrape_samples_scraped"})
_KEYWORDS = frozenset(
    {"and", "or", "unless", "by", "without", "on", "ignoring", "group_left", "group_right", "bool", "offset", "inf", "nan"}
)
_STRINGS = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'')
_MATCHERS = re.compile(r"\{[^}]*\}")
_RANGES = re.compile(r"\[[^\]]*\]")
_CLAUSES = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)")
_IDENT = re.compile(r"(?<![\w.:])([A-Za-z_:][A-Za-z0-9_:]*)(?![\w:])(?!\s*\()")
_NUMBER_UNIT = re.compile(r"^\d")


def metric_names(expr: str) -> set[str]:
    """Metric names a PromQL expression selects (e.g. ``celery_task_runtime_bucket``, ``omni_beat_leader``)."""
    text = _STRINGS.sub(" ", expr)
    text = _MATCHERS.sub(" ", text)
    text = _RANGES.sub(" ", text)
    text = _CLAUSES.sub(" ", text)
    return {name for name in _IDENT.findall(text) if name.lower() not in _KEYWORDS and not _NUMBER_UNIT.match(name)}


def rule_files() -> list[Path]:
    return sorted(RULES_DIR.glob("*.yml"))


def rule_expressions() -> dict[str, str]:
    """Alert (or recording rule) name -> expression, over every rule file."""
    out: dict[str, str] = {}
    for path in rule_files():
        for group in yaml.safe_load(path.read_text())["groups"]:
            for rule in group["rules"]:
                out[rule.get("alert") or rule["record"]] = rule["expr"]
    return out


def dashboard() -> dict:  # type: ignore[type-arg]
    return json.loads(DASHBOARD.read_text())


def dashboard_panels() -> list[dict]:  # type: ignore[type-arg]
    """Every panel with queries (rows only group them)."""
    return [panel for panel in dashboard()["panels"] if panel.get("type") != "row"]


def dashboard_expressions() -> dict[str, str]:
    """'<panel title> / <refId>' -> expression."""
    return {f"{panel['title']} / {target['refId']}": target["expr"] for panel in dashboard_panels() for target in panel["targets"]}


def exposition_names(text: str) -> tuple[set[str], set[str]]:
    """(names with a sample, names declared by # TYPE with their sample suffixes) in a Prometheus text exposition."""
    sampled = {re.split(r"[{ ]", line, maxsplit=1)[0] for line in text.splitlines() if line and not line.startswith("#")}
    suffixes = {
        "counter": ("_total", "_created"),
        "histogram": ("_bucket", "_sum", "_count", "_created"),
        "summary": ("_sum", "_count", ""),
    }
    declared: set[str] = set()
    for line in text.splitlines():
        parts = line.split()
        if len(parts) == 4 and parts[:2] == ["#", "TYPE"]:
            family, kind = parts[2], parts[3]
            base = family.removesuffix("_total") if kind == "counter" else family
            declared.add(family)
            declared.update(base + suffix for suffix in suffixes.get(kind, ("",)))
    return sampled, declared
