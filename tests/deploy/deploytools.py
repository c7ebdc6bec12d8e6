"""Helpers of the deployment tests: the repository's deployment files and the Debian tools that check them."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
COMPOSE_DEV = ROOT / "docker-compose.yml"
COMPOSE_PROD = ROOT / "docker-compose.prod.yml"
ENV_EXAMPLE = ROOT / ".env.example"
PROMETHEUS_DIR = ROOT / "deploy" / "prometheus"
PROMETHEUS_CONFIG = PROMETHEUS_DIR / "prometheus.yml"
RULE_FILES = sorted((PROMETHEUS_DIR / "rules").glob("*.yml"))
RULE_TESTS = sorted((PROMETHEUS_DIR / "tests").glob("*.yml"))
GRAFANA_DIR = ROOT / "deploy" / "grafana"
DASHBOARDS = sorted((GRAFANA_DIR / "dashboards").glob("*.json"))
DATASOURCES = GRAFANA_DIR / "provisioning" / "datasources" / "prometheus.yml"
OVERLAYS = ["dev", "prod"]
# Every role docker-compose.prod.yml runs from our image (k8s runs the same commands): test_image.py starts
# each.
IMAGE_ROLES = ["code-location", "webserver", "daemon", "dagster-worker", "discovery", "health", "alerts"]


def tool(name: str) -> str:
    """Path of a command `scripts/install-test-tools.sh` installs; skip (a failure in CI) when missing."""
    found = shutil.which(name)
    if not found:
        pytest.skip(f"{name} is not installed: run `make test-tools` (scripts/install-test-tools.sh) as root")
    return found


def run(
    cmd: list[str],
    *,
    cwd: Path = ROOT,
    timeout: float = 120,
    env: dict[str, str] | None = None,
    check: bool = True,
) -> subprocess.CompletedProcess[str]:
    """Run a command, failing with its output when it exits non-zero and `check` is set."""
    proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=timeout, env=env)
    if check and proc.returncode != 0:
        raise AssertionError(
            f"{' '.join(cmd)} exited {proc.returncode}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
        )
    return proc


def compose_config(path: Path, *, env_file: Path | None = None) -> dict[str, Any]:
    """The compose file as docker-compose resolves it (anchors merged, variables interpolated)."""
    cmd = [tool("docker-compose"), "-f", str(path)]
    if env_file is not None:
        cmd += ["--env-file", str(env_file)]
    out = run([*cmd, "config"], env=clean_env()).stdout
    data = yaml.safe_load(out)
    assert isinstance(data, dict)
    return data


def clean_env() -> dict[str, str]:
    """The environment without variables that compose files interpolate, so results do not depend on the
    shell."""
    import os

    names = set(re.findall(r"\$\{([A-Z0-9_]+)", COMPOSE_DEV.read_text() + COMPOSE_PROD.read_text()))
    return {k: v for k, v in os.environ.items() if k not in names}


def kustomize(overlay: str) -> list[dict[str, Any]]:
    """Every manifest of one overlay, built by `kubectl kustomize`."""
    out = run([tool("kubectl"), "kustomize", str(ROOT / "k8s" / "overlays" / overlay)]).stdout
    return [d for d in yaml.safe_load_all(out) if d]


def dashboard_targets() -> list[tuple[str, str, str]]:
    """(dashboard file, panel title, PromQL) of every query of every dashboard panel."""
    found = []
    for path in DASHBOARDS:
        for panel in all_panels(json.loads(path.read_text())):
            for target in panel.get("targets", []):
                found.append((path.name, panel["title"], target["expr"]))
    return found


def all_panels(dashboard: dict[str, Any]) -> list[dict[str, Any]]:
    """Every panel, including those nested in collapsed rows."""
    panels = []
    for panel in dashboard.get("panels", []):
        panels.append(panel)
        panels.extend(panel.get("panels", []))
    return panels


def rule_expressions() -> list[tuple[str, str, str]]:
    """(rule file, alert/record name, PromQL) of every rule."""
    found = []
    for path in RULE_FILES:
        for group in yaml.safe_load(path.read_text())["groups"]:
            for rule in group["rules"]:
                found.append((path.name, rule.get("alert") or rule.get("record"), rule["expr"]))
    return found


def wait_for(
    condition: Callable[[], bool],
    *,
    timeout_s: float,
    what: str,
    interval_s: float = 0.25,
    diagnose: Callable[[], str] | None = None,
) -> None:
    """Poll `condition` until true; fail after `timeout_s` with `diagnose()` output."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            detail = diagnose() if diagnose else ""
            raise AssertionError(f"{what} not reached within {timeout_s:.0f} s\n{detail}")
        time.sleep(interval_s)


def mounts(service: dict[str, Any], named_volumes: dict[str, Any]) -> list[tuple[str, str, str]]:
    """(kind "bind" | "volume", source, target) of a resolved compose service's volumes (short or long
    syntax)."""
    found = []
    for volume in service.get("volumes", []):
        if isinstance(volume, dict):
            found.append((volume["type"], str(volume["source"]), str(volume["target"])))
            continue
        source, target = str(volume).split(":")[:2]
        kind = "volume" if source in named_volumes else "bind"
        found.append((kind, source, target))
    return found


def prod_secrets(folder: Path) -> tuple[Path, dict[str, str]]:
    """The secret files docker-compose.prod.yml mounts, made in `folder` (private, files readable by the
    containers' users), and an env file pointing AMS_SECRETS_DIR at them: (env file, secret name -> value)."""
    import shutil
    import uuid

    secrets = folder / "secrets"
    secrets.mkdir(mode=0o700)
    values = {
        name: uuid.uuid4().hex for name in ("redis_password", "postgres_password", "grafana_admin_password")
    }
    for name, value in values.items():
        (secrets / name).write_text(value + "\n")
    shutil.copy(ROOT / "deploy/alertmanager/alertmanager.example.yml", secrets / "alertmanager.yml")
    for path in secrets.iterdir():
        path.chmod(0o444)
    env_file = folder / ".env"
    env_file.write_text(
        ENV_EXAMPLE.read_text().replace("AMS_SECRETS_DIR=./secrets", f"AMS_SECRETS_DIR={secrets}")
    )
    return env_file, values
