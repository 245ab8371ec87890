"""docker/: the compose stack checked against the code, without a Docker engine.

Each test reads the files under docker/ and compares them with what the code
really accepts: the `omni` command tree, the worker kinds, the queues, the
settings and the metric names.
"""

from __future__ import annotations

import ipaddress
import json
import re
import shlex
from pathlib import Path
from typing import Any

import click
import pytest
import typer
import yaml

from omni_tasks.ops.collectors import LiveCollector
from omni_tasks.ops.desk_collectors import DeskCollector, StreamCollector
from omni_tasks.pipeline.queues import ALL_QUEUES
from omni_tasks.settings import known_variables, load_settings
from workers import KINDS

DOCKER = Path(__file__).resolve().parents[2] / "docker"
COMPOSE_FILE = DOCKER / "compose.yml"
PROJECT_DOCKERFILE = "docker/Dockerfile"
LOOPBACK = "127.0.0.1"
SECRET_WORDS = ("PASSWORD", "SECRET", "KEY", "TOKEN")
# ${VAR}, ${VAR?message}, ${VAR:?message}; a default (${VAR:-value}) would be a literal secret.
REQUIRED_REFERENCE = re.compile(r"\$\{[A-Za-z_][A-Za-z0-9_]*(?::?\?[^}]*)?\}")
ANY_REFERENCE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)[^}]*\}")
URL_PASSWORD = re.compile(r"://[^:/@\s]*:(?P<password>[^@\s]+)@")
#: Variables docker/.env.example may give a value (they are not secrets).
NOT_SECRET = frozenset({"COMPOSE_PROJECT_NAME"})


def _load_compose() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE_FILE.read_text())


COMPOSE = _load_compose()
SERVICES: dict[str, dict[str, Any]] = COMPOSE["services"]


def _project_images() -> set[str]:
    return {
        spec["image"]
        for spec in SERVICES.values()
        if isinstance(spec.get("build"), dict) and spec["build"].get("dockerfile") == PROJECT_DOCKERFILE and "image" in spec
    }


def _uses_project_image(spec: dict[str, Any]) -> bool:
    build = spec.get("build")
    if isinstance(build, dict) and build.get("dockerfile") == PROJECT_DOCKERFILE:
        return True
    return spec.get("image") in _project_images()


PROJECT_SERVICES = sorted(name for name, spec in SERVICES.items() if _uses_project_image(spec))


def _words(command: str | list[Any] | None) -> list[str]:
    if command is None:
        return []
    if isinstance(command, str):
        return shlex.split(command)
    return [str(word) for word in command]


def _environment(spec: dict[str, Any]) -> dict[str, str]:
    env = spec.get("environment") or {}
    if isinstance(env, list):
        return dict(item.split("=", 1) if "=" in item else (item, "") for item in env)
    return {str(key): "" if value is None else str(value) for key, value in env.items()}


def _with_placeholders(env: dict[str, str]) -> dict[str, str]:
    """The environment a container would see, each ${...} replaced by a harmless placeholder."""
    return {key: ANY_REFERENCE.sub("placeholder", value) for key, value in env.items()}


def _port_parts(port: str | int | dict[str, Any]) -> tuple[str | None, str]:
    """(host IP or None, container port) of one `ports:` entry, short or long syntax."""
    if isinstance(port, dict):
        return port.get("host_ip"), str(port.get("target"))
    text = str(port).split("/", 1)[0]
    parts = text.rsplit(":", 2)
    host_ip = parts[0] if len(parts) == 3 else None
    return host_ip, parts[-1]


def _depends_on(spec: dict[str, Any]) -> dict[str, str]:
    """{service: condition}; the short list form means service_started."""
    deps = spec.get("depends_on") or {}
    if isinstance(deps, list):
        return dict.fromkeys(deps, "service_started")
    return {name: (value or {}).get("condition", "service_started") for name, value in deps.items()}


def _omni_words(name: str) -> list[str]:
    """The arguments a project container passes to `omni` (the image's ENTRYPOINT)."""
    spec = SERVICES[name]
    entrypoint = _words(spec.get("entrypoint"))
    assert entrypoint in ([], ["omni"]), f"{name}: entrypoint {entrypoint} replaces `omni`"
    return _words(spec.get("command"))


def _services_running(*path: str) -> list[str]:
    return [name for name in PROJECT_SERVICES if _omni_words(name)[: len(path)] == list(path)]


def _settings_of(name: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Any:
    # load_settings reads ./.env when present: run it where there is none.
    monkeypatch.chdir(tmp_path)
    return load_settings(_with_placeholders(_environment(SERVICES[name])))


# Typer builds the command tree on click or, from typer 0.2x, on its vendored
# copy of click (whose errors derive from TyperException): accept both.
USAGE_ERRORS = (click.ClickException, typer.TyperException)


@pytest.fixture(scope="module")
def omni_command() -> Any:
    from omni_tasks.cli.main import _register, app

    _register()
    return typer.main.get_command(app)


def _resolve(root: Any, words: list[str]) -> tuple[list[str], Any]:
    """Walk the command tree like `omni` would; return the subcommand path and the parsed context."""
    command = root
    path: list[str] = []
    rest = list(words)
    while isinstance(getattr(command, "commands", None), dict):  # a group such as `db`
        if not rest or rest[0].startswith("-"):
            if getattr(command, "invoke_without_command", False):  # a group that runs on its own, such as `stream`
                break
            pytest.fail(f"`omni {' '.join(path)}` needs a subcommand")
        word = rest.pop(0)
        sub = command.commands.get(word)
        if sub is None:
            pytest.fail(f"`omni {' '.join([*path, word])}`: no such command (have: {', '.join(sorted(command.commands))})")
        path.append(word)
        command = sub
    try:
        context = command.make_context(" ".join(["omni", *path]), rest)
    except USAGE_ERRORS as exc:
        pytest.fail(f"`omni {' '.join(words)}`: {exc.format_message()}")
    return path, context


# ---- the omni services ---------------------------------------------------


def test_compose_project_services_found_includes_workers_beat_and_migrate() -> None:
    # Guards the tests below: they check nothing if no service is recognised as ours.
    commands = {tuple(_omni_words(name)[:1]) for name in PROJECT_SERVICES}
    assert {("worker",), ("beat",), ("db",), ("flower",), ("server",), ("stream",)} <= commands


@pytest.mark.parametrize("service", PROJECT_SERVICES)
def test_compose_project_service_command_resolves_to_real_omni_subcommand(service: str, omni_command: Any) -> None:
    words = _omni_words(service)
    assert words, f"{service}: no command; the image's default only prints --help"
    path, context = _resolve(omni_command, words)
    if path == ["worker"]:
        assert context.params["kind"] in KINDS, f"{service}: unknown worker kind {context.params['kind']!r}; choose from {sorted(KINDS)}"


def test_compose_worker_services_every_queue_consumed() -> None:
    consumed = {queue for name in _services_running("worker") for queue in KINDS[_omni_words(name)[1]].queues}
    missing = [queue.value for queue in ALL_QUEUES if queue not in consumed]
    assert not missing, f"no worker service consumes {missing}: those tasks would wait forever"


def test_compose_beat_exactly_one_service_with_one_replica() -> None:
    beats = _services_running("beat")
    assert len(beats) == 1, f"beat services: {beats}"
    spec = SERVICES[beats[0]]
    replicas = (spec.get("deploy") or {}).get("replicas", 1)
    assert replicas == 1, f"{beats[0]}: {replicas} replicas"
    assert spec.get("scale", 1) == 1, f"{beats[0]}: scale {spec['scale']}"


def test_compose_long_running_omni_services_wait_for_migrate_and_healthy_services() -> None:
    wrong = {}
    for name in PROJECT_SERVICES:
        if _omni_words(name)[:1] == ["db"]:
            continue
        deps = _depends_on(SERVICES[name])
        expected = {"migrate": "service_completed_successfully", "redis": "service_healthy", "postgres": "service_healthy"}
        if any(deps.get(dep) != condition for dep, condition in expected.items()):
            wrong[name] = deps
    assert not wrong, f"services that may start before the schema or the services are ready: {wrong}"


def test_compose_migrate_service_runs_db_upgrade_once() -> None:
    migrates = _services_running("db", "upgrade")
    assert migrates == ["migrate"], f"db upgrade services: {migrates}"
    assert str(SERVICES["migrate"].get("restart", "no")) == "no", "a one-shot migrate must not restart"


def test_compose_service_healthy_dependencies_have_healthchecks() -> None:
    needed = {dep for spec in SERVICES.values() for dep, condition in _depends_on(spec).items() if condition == "service_healthy"}
    missing = sorted(dep for dep in needed if not (SERVICES.get(dep) or {}).get("healthcheck"))
    assert not missing, f"service_healthy on services without a healthcheck (compose would wait forever): {missing}"


# ---- exposure and secrets -------------------------------------------------


def test_compose_published_ports_bound_to_loopback() -> None:
    open_ports = [
        f"{name}: {port}"
        for name, spec in SERVICES.items()
        for port in spec.get("ports") or []
        if _port_parts(port)[0] != LOOPBACK
    ]
    assert not open_ports, f"ports published beyond {LOOPBACK}: {open_ports}"
    host_network = [name for name, spec in SERVICES.items() if spec.get("network_mode") == "host"]
    assert not host_network, f"host networking bypasses the port bindings: {host_network}"


def test_compose_redis_and_postgres_not_published() -> None:
    assert not SERVICES["redis"].get("ports"), "Redis has no authentication here: never publish it"
    assert not SERVICES["postgres"].get("ports")


def test_compose_secret_environment_values_are_required_references() -> None:
    literal = []
    for name, spec in SERVICES.items():
        for key, value in _environment(spec).items():
            if any(word in key.upper() for word in SECRET_WORDS) and not REQUIRED_REFERENCE.fullmatch(value):
                literal.append(f"{name}: {key}={value!r}")
            for match in URL_PASSWORD.finditer(value):
                if not REQUIRED_REFERENCE.fullmatch(match["password"]):
                    literal.append(f"{name}: {key} has a literal password in its URL")
    assert not literal, f"secrets must be ${{VAR}} or ${{VAR:?message}} references: {literal}"


def test_env_example_lists_every_referenced_variable_with_empty_values() -> None:
    referenced = set(ANY_REFERENCE.findall(COMPOSE_FILE.read_text()))
    example: dict[str, str] = {}
    for line in (DOCKER / ".env.example").read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            key, _, value = line.partition("=")
            example[key.strip()] = value.strip()
    assert referenced <= set(example), f"not in docker/.env.example: {sorted(referenced - set(example))}"
    filled = sorted(key for key, value in example.items() if value and key not in NOT_SECRET)
    assert not filled, f"docker/.env.example must not carry values (it is committed): {filled}"
    # Compose v2 and docker-compose 1.29 both take the project name from here (the file has no top-level `name`).
    assert example.get("COMPOSE_PROJECT_NAME") == "omni-tasks", example.get("COMPOSE_PROJECT_NAME")


# ---- Compose versions: v2 and docker-compose 1.29 --------------------------------

# What docker-compose 1.29 accepts at the top of a file without `version` (Compose spec, less `name`).
COMPOSE_129_TOP_LEVEL = {"services", "volumes", "networks", "configs", "secrets"}


def test_compose_top_level_keys_accepted_by_docker_compose_1_29() -> None:
    unknown = sorted(key for key in COMPOSE if key not in COMPOSE_129_TOP_LEVEL and not key.startswith("x-"))
    assert not unknown, f"docker-compose 1.29 refuses top-level {unknown} ('name' is Compose v2 only: use COMPOSE_PROJECT_NAME)"


def test_readmes_name_both_compose_commands() -> None:
    readmes = {path: path.read_text() for path in (DOCKER / "README.md", DOCKER.parent / "README.md")}
    for command in ("docker compose -f docker/compose.yml", "docker-compose -f docker/compose.yml"):
        missing = [str(path.relative_to(DOCKER.parent)) for path, text in readmes.items() if command not in text]
        assert not missing, f"{missing} do not say `{command}` works"
    assert "(process ids repeat across containers, so the folder must not be shared)" not in readmes[DOCKER / "README.md"]


# ---- settings the containers get -------------------------------------------


def test_compose_omni_variables_are_known_settings() -> None:
    # load_settings refuses unknown OMNI_* variables: a typo would stop every container.
    known = known_variables()
    unknown = sorted(
        f"{name}: {key}"
        for name, spec in SERVICES.items()
        for key in _environment(spec)
        if key.startswith("OMNI_") and key not in known
    )
    assert not unknown, f"unknown OMNI_* variables: {unknown}"


@pytest.mark.parametrize("service", PROJECT_SERVICES)
def test_compose_project_service_environment_loads_as_services_mode_settings(
    service: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    settings = _settings_of(service, monkeypatch, tmp_path)
    # Without these the process would start an embedded Redis and SQLite inside its own container.
    assert settings.broker.url is not None
    assert settings.database_url.startswith("postgresql"), settings.database_url


@pytest.mark.parametrize(("service", "group"), [("flower", "flower"), ("server", "metrics")])
def test_compose_http_service_listens_on_all_interfaces_at_published_port(
    service: str, group: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    listen = getattr(_settings_of(service, monkeypatch, tmp_path), group)
    # The default 127.0.0.1 inside a container is unreachable from Prometheus and from the published port.
    assert ipaddress.ip_address(listen.host).is_unspecified, f"{service} listens on {listen.host} inside its container"
    published = {_port_parts(port)[1] for port in SERVICES[service].get("ports") or []}
    assert str(listen.port) in published, f"{service} listens on {listen.port}, publishes {published}"


# ---- Redis ------------------------------------------------------------------


def test_compose_redis_command_sets_noeviction_and_appendonly() -> None:
    words = _words(SERVICES["redis"].get("command"))
    options = dict(zip(words[1::2], words[2::2], strict=False)) if words[:1] == ["redis-server"] else {}
    assert options.get("--maxmemory-policy") == "noeviction", f"redis command {words}: omni refuses to boot on an evicting Redis"
    assert options.get("--appendonly") == "yes", f"redis command {words}: queued tasks would not survive a restart"


# ---- Prometheus and Grafana --------------------------------------------------


def test_prometheus_scrapes_server_and_flower_at_their_listen_ports(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    config = yaml.safe_load((DOCKER / "prometheus" / "prometheus.yml").read_text())
    targets = {
        (target, job.get("metrics_path", "/metrics"))
        for job in config["scrape_configs"]
        for static in job.get("static_configs", [])
        for target in static["targets"]
    }
    server_port = _settings_of("server", monkeypatch, tmp_path).metrics.port
    flower_port = _settings_of("flower", monkeypatch, tmp_path).flower.port
    assert (f"server:{server_port}", "/metrics") in targets, targets
    assert (f"flower:{flower_port}", "/metrics") in targets, targets
    strangers = sorted(target for target, _ in targets if target.rsplit(":", 1)[0] not in SERVICES)
    assert not strangers, f"scrape targets that are not compose services: {strangers}"


def _exported_series() -> set[str]:
    # Imported here, not at collection: prometheus_client picks its multiprocess
    # mode when first imported, and other tests may set PROMETHEUS_MULTIPROC_DIR first.
    from prometheus_client.metrics import MetricWrapperBase

    from omni_tasks.core import counters
    from omni_tasks.ops import prometheus as metrics

    suffixes = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count"), "gauge": ("",)}
    series: set[str] = set()
    for value in vars(metrics).values():
        if isinstance(value, MetricWrapperBase):
            for family in value.describe():
                series.update(family.name + suffix for suffix in suffixes[family.type])
    # The scrape-time collectors, fed everything they can show.
    stream_status = {"connected": 1, "updated_ns": 1, "last_quote_ns": 1, "counts": {"served": 1}, "counters": {}}
    desk = {
        "market_open": True,
        "risk": {"ts": "2024-01-02T15:00:00+00:00", "utilisation": {"daily_loss": 0.1}, "var_95": 1.0, "es_95": 1.0, "risk_score": 0.1},
        "backfill_partitions": {},
        "validation_series": {},
        "watchdog_last_tick": {"ts": 1.0},
        "latency_violations": {"order_submission": 0},
        "errors": [],
    }
    collectors = (
        LiveCollector(lambda: {"trading": {"state": "ACTIVE"}}),
        StreamCollector(lambda: (stream_status, {"process": {"buckets": {}, "budget_ns": 1}})),
        DeskCollector(lambda: desk),
        counters.collector(dict),
    )
    for collector in collectors:
        for family in collector.collect():
            series.update(family.name + suffix for suffix in suffixes[family.type])
    return series


def test_grafana_dashboard_queries_only_metrics_the_code_exports() -> None:
    from tests.promql import dashboard_panels, metric_names

    exported = _exported_series()
    problems = []
    panels = dashboard_panels()
    assert panels, "the dashboard has no panels"
    for panel in panels:
        names = {name for target in panel["targets"] for name in metric_names(target["expr"])}
        if not names:
            problems.append(f"{panel['title']!r} queries no metric")
        problems.extend(f"{panel['title']!r} queries {name}, which the code does not export" for name in sorted(names - exported))
    assert not problems, problems


def test_alert_rules_query_only_metrics_the_code_exports() -> None:
    from tests.promql import SYNTHETIC, metric_names, rule_expressions

    exported = _exported_series()
    rules = rule_expressions()
    assert len(rules) >= 15, sorted(rules)
    problems = [
        f"{alert} queries {name}, which the code does not export"
        for alert, expr in rules.items()
        for name in sorted(metric_names(expr) - exported - SYNTHETIC)
    ]
    assert not problems, problems


def test_grafana_dashboard_uses_provisioned_datasource_uid() -> None:
    provisioned = yaml.safe_load((DOCKER / "grafana" / "provisioning" / "datasources" / "prometheus.yml").read_text())
    uids = {source["uid"] for source in provisioned["datasources"]}
    dashboard = json.loads((DOCKER / "grafana" / "dashboards" / "omni-tasks.json").read_text())
    used = {panel["datasource"]["uid"] for panel in dashboard["panels"] if "datasource" in panel}
    used |= {target["datasource"]["uid"] for panel in dashboard["panels"] for target in panel.get("targets", []) if "datasource" in target}
    assert used <= uids, f"dashboard datasource uids {used} not provisioned ({uids}): every panel would show an error"


# ---- the image --------------------------------------------------------------


def _final_stage() -> list[str]:
    """The final stage's instructions, continuation lines joined."""
    text = re.sub(r"\\\n", " ", (DOCKER / "Dockerfile").read_text())
    instructions = [line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    return instructions[max(i for i, line in enumerate(instructions) if line.upper().startswith("FROM ")) :]


def _owned_dirs(stage: list[str]) -> dict[str, str]:
    """Folders the stage creates with `install -d -o USER`: path -> owner."""
    owned: dict[str, str] = {}
    for line in stage:
        if not line.upper().startswith("RUN "):
            continue
        for command in re.split(r"&&|;", line[4:]):
            words = shlex.split(command)
            if words[:2] != ["install", "-d"]:
                continue
            owner = words[words.index("-o") + 1] if "-o" in words else "root"
            skip = {i + 1 for i, word in enumerate(words) if word in {"-o", "-g", "-m"}}
            owned.update({word: owner for i, word in enumerate(words[2:], start=2) if i not in skip and not word.startswith("-")})
    return owned


def test_dockerfile_creates_every_named_volume_mount_point_owned_by_its_user() -> None:
    # Docker copies the image folder's owner into an empty named volume; a mount point the image lacks is root's.
    stage = _final_stage()
    user = [line.split(None, 1)[1] for line in stage if line.upper().startswith("USER ")][-1].split(":")[0]
    owned = _owned_dirs(stage)
    named = set(COMPOSE.get("volumes") or {})
    problems = []
    for name in PROJECT_SERVICES:
        for volume in SERVICES[name].get("volumes") or []:
            source, _, target = str(volume).partition(":")
            target = target.split(":", 1)[0]
            if source in named and owned.get(target) != user:
                problems.append(
                    f"{name}: volume {source} at {target}, which the image creates owned by {owned.get(target, 'nobody (absent)')}"
                )
    assert not problems, f"not writable by {user}: {problems}"
    assert "/data/metrics" in owned, owned


def test_dockerfile_entrypoint_omni_and_runs_as_non_root_user() -> None:
    instructions = [line.strip() for line in (DOCKER / "Dockerfile").read_text().splitlines() if line.strip() and not line.lstrip().startswith("#")]
    final_stage = instructions[max(i for i, line in enumerate(instructions) if line.upper().startswith("FROM ")) :]
    entrypoints = [line for line in final_stage if line.upper().startswith("ENTRYPOINT ")]
    assert entrypoints, "no ENTRYPOINT in the final stage: compose commands would not reach `omni`"
    assert json.loads(entrypoints[-1].split(None, 1)[1]) == ["omni"], entrypoints[-1]
    users = [line.split(None, 1)[1] for line in final_stage if line.upper().startswith("USER ")]
    assert users, "no USER in the final stage: the processes would run as root"
    assert users[-1].split(":")[0] not in {"root", "0"}, f"final USER: {users[-1]}"
