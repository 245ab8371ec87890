"""`docker-compose -f docker/compose.yml config` (docker-compose 1.29, Debian's package) on the compose stack.

`config` needs no Docker engine: it reads the file and docker/.env, resolves
every ${...} and validates the result against docker-compose's schema. The
folder is copied so a docker/.env can be written beside compose.yml, as the
README tells a user to. Skipped when docker-compose is missing, unless
OMNI_REQUIRE_SERVICES=1 (CI installs it: .ci/run).
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from tests.conftest import REQUIRE_SERVICES
from tests.promql import DOCKER

pytestmark = pytest.mark.services


def _docker_compose() -> str:
    found = shutil.which("docker-compose")
    if found is None:
        message = "docker-compose not found (Debian package docker-compose)"
        if REQUIRE_SERVICES:
            pytest.fail(message + " (OMNI_REQUIRE_SERVICES=1)")
        pytest.skip(message)
    return found


def _repo_copy(tmp_path: Path, *, with_env: bool) -> Path:
    root = tmp_path / "repo"
    shutil.copytree(DOCKER, root / "docker", ignore=shutil.ignore_patterns(".env"))
    if with_env:
        lines = []
        for line in (DOCKER / ".env.example").read_text().splitlines():
            key, sep, value = line.partition("=")
            filled = sep and not line.lstrip().startswith("#") and not value
            lines.append(f"{key}=placeholder-{key.lower()}" if filled else line)
        (root / "docker" / ".env").write_text("\n".join(lines) + "\n")
    return root


def _config(root: Path) -> subprocess.CompletedProcess[str]:
    env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": str(root)}
    result = subprocess.run(  # fixed argv
        [_docker_compose(), "-f", "docker/compose.yml", "config"],
        cwd=root,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    print(f"$ docker-compose -f docker/compose.yml config -> exit {result.returncode}\n{result.stderr[-2000:]}")
    return result


def test_docker_compose_1_29_config_accepts_stack_with_filled_env(tmp_path: Path) -> None:
    version = subprocess.run([_docker_compose(), "version", "--short"], capture_output=True, text=True, timeout=60, check=False)
    print(f"docker-compose {version.stdout.strip()}")
    root = _repo_copy(tmp_path, with_env=True)
    result = _config(root)
    assert result.returncode == 0, result.stderr
    resolved = yaml.safe_load(result.stdout)
    source = yaml.safe_load((DOCKER / "compose.yml").read_text())
    assert set(resolved["services"]) == set(source["services"])
    server = resolved["services"]["server"]
    assert server["environment"]["OMNI_SECRET_KEY"] == "placeholder-omni_secret_key"  # noqa: S105 - the placeholder written above
    assert "placeholder-postgres_password@postgres" in server["environment"]["OMNI_DATABASE_URL"]
    assert any(str(v).endswith(":/data/metrics:rw") or str(v).endswith(":/data/metrics") for v in server["volumes"]), server["volumes"]
    assert resolved["services"]["worker-scans"]["depends_on"]["migrate"]["condition"] == "service_completed_successfully"
    mounts = resolved["services"]["prometheus"]["volumes"]
    assert any(str(m).split(":")[1] == "/etc/prometheus/rules" for m in mounts), mounts


def test_docker_compose_1_29_config_without_env_names_the_missing_secret(tmp_path: Path) -> None:
    result = _config(_repo_copy(tmp_path, with_env=False))
    assert result.returncode != 0
    assert "set POSTGRES_PASSWORD in docker/.env" in result.stderr, result.stderr
