"""Each docker-compose.yml service's command, as written, run as a local process until its healthcheck passes.

The compose environment is mapped to this machine by `stack.Stack`: Redis is the test fixture's, other
service hosts are 127.0.0.1 on free ports, /app is the repository, named volumes are temporary directories.
Images that are not ours run Debian's build of the same program (Prometheus, Redis). Grafana has no Debian
package: its provisioning is checked against the compose file instead (see the parametrisation id)."""

from __future__ import annotations

import json
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import httpx
import pytest
import redis
import yaml
from composestack import Stack
from deploytools import (
    COMPOSE_DEV,
    COMPOSE_PROD,
    IMAGE_ROLES,
    ROOT,
    compose_config,
    mounts,
    prod_secrets,
    tool,
    wait_for,
)

SERVICES = [
    "redis",
    "code-location",
    "webserver",
    "daemon",
    "discovery",
    "health",
    "alerts",
    "prometheus",
    "alertmanager",
]
NOT_RUN = {"grafana": "not-run-third-party-image-no-debian-package-provisioning-checked-instead"}
# docker-compose.prod.yml: its own password-protected Redis (AOF), the workers authenticating to it,
# Prometheus.
PROD_SERVICES = ["redis", "discovery", "health", "alerts", "prometheus", "alertmanager"]
IN_IMAGE_TEST = "run-from-the-image-in-test_image"
PROD_NOT_RUN = {
    "postgres": "not-run-third-party-image-debian-postgresql-is-packaged-differently",
    "grafana": NOT_RUN["grafana"],
    "code-location": IN_IMAGE_TEST,
    "webserver": IN_IMAGE_TEST,
    "daemon": IN_IMAGE_TEST,
    "dagster-worker": IN_IMAGE_TEST,
}


@pytest.fixture(scope="module")
def dev() -> dict[str, Any]:
    return compose_config(COMPOSE_DEV)


@pytest.fixture(scope="module")
def prod_env(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, str]]:
    return prod_secrets(tmp_path_factory.mktemp("prod-env"))


@pytest.fixture(scope="module")
def prod(prod_env: tuple[Path, dict[str, str]]) -> dict[str, Any]:
    return compose_config(COMPOSE_PROD, env_file=prod_env[0])


def _tools() -> None:
    for name in ("prometheus", "prometheus-alertmanager", "wget", "redis-server", "redis-cli"):
        tool(name)


@pytest.fixture(scope="module")
def stack(dev: dict[str, Any], redis_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    _tools()
    prefix = f"test-deploy-{uuid.uuid4().hex[:8]}"
    local = Stack(
        dev,
        tmp_path_factory.mktemp("compose"),
        provided={"redis": int(urlparse(redis_url).port or 6379)},
        extra_env={"AMS_BUS__PREFIX": prefix},
    )
    yield local
    local.down()
    client = redis.Redis.from_url(redis_url)
    keys = list(client.scan_iter(f"{prefix}:*"))
    if keys:
        client.delete(*keys)
    client.close()


@pytest.fixture(scope="module")
def prod_stack(prod: dict[str, Any], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    _tools()
    local = Stack(prod, tmp_path_factory.mktemp("compose-prod"), provided={})
    yield local
    local.down()


def test_every_compose_service_is_covered(dev: dict[str, Any], prod: dict[str, Any]) -> None:
    assert set(dev["services"]) == set(SERVICES) | set(NOT_RUN)
    assert set(prod["services"]) == set(PROD_SERVICES) | set(PROD_NOT_RUN)


@pytest.mark.parametrize("name", SERVICES)
def test_service_command_becomes_healthy(name: str, stack: Stack, tmp_path: Path) -> None:
    if name in stack.provided:
        # The fixture provides Redis to the others; run this service's own command on a port of its own.
        own = Stack(stack.compose, tmp_path, provided={})
        try:
            own.up(name, timeout_s=60)
        finally:
            own.down()
        return
    running = stack.up(name)
    assert running.process.poll() is None
    assert stack.check(running).returncode == 0
    if name == "webserver":
        stack.wait_code_location_loaded()


@pytest.mark.parametrize("name", PROD_SERVICES)
def test_prod_service_command_becomes_healthy(
    name: str, prod_stack: Stack, prod_env: tuple[Path, dict[str, str]]
) -> None:
    running = prod_stack.up(name)
    assert running.process.poll() is None
    assert prod_stack.check(running).returncode == 0
    if name == "redis":
        assert_prod_redis_requires_its_password_and_appends(prod_stack, prod_env[1]["redis_password"])


def assert_prod_redis_requires_its_password_and_appends(stack: Stack, password: str) -> None:
    port = stack.port_map[6379]
    anonymous = redis.Redis(host="127.0.0.1", port=port)
    with pytest.raises(redis.AuthenticationError):
        anonymous.ping()
    anonymous.close()
    client = redis.Redis(host="127.0.0.1", port=port, password=password)
    try:
        assert client.config_get("appendonly") == {"appendonly": "yes"}
        assert client.config_get("maxmemory-policy") == {"maxmemory-policy": "noeviction"}
        assert client.config_get("maxmemory") == {"maxmemory": str(2**30)}
    finally:
        client.close()
    # the password file lives in the container's private /tmp, readable by its owner only
    conf = stack.workdir / "tmp" / "redis" / "redis.conf"
    assert oct(conf.stat().st_mode & 0o777) == "0o600"


@pytest.mark.parametrize(
    "name", list(PROD_NOT_RUN), ids=[f"{n}-{reason}" for n, reason in PROD_NOT_RUN.items()]
)
def test_prod_service_not_run(name: str, prod: dict[str, Any], dev: dict[str, Any]) -> None:
    service = prod["services"][name]
    reason = PROD_NOT_RUN[name]
    if reason == IN_IMAGE_TEST:
        # started from the built image with this very compose definition (tests/deploy/test_image.py)
        assert name in IMAGE_ROLES
        assert service["environment"]["DAGSTER_INSTANCE_CONFIG"] == "/app/deploy/dagster/dagster.prod.yaml"
    elif name == "grafana":
        assert service["image"] == dev["services"]["grafana"]["image"]
    else:
        assert service["image"].startswith("postgres:")
        assert "pg_isready" in " ".join(service["healthcheck"]["test"])


@pytest.mark.parametrize("name", list(NOT_RUN), ids=[f"{n}-{reason}" for n, reason in NOT_RUN.items()])
def test_service_not_run_is_provisioned_consistently(name: str, dev: dict[str, Any]) -> None:
    service = dev["services"][name]
    binds = {
        target: Path(source) for kind, source, target in mounts(service, dev["volumes"]) if kind == "bind"
    }
    provisioning = binds["/etc/grafana/provisioning"]
    (source,) = yaml.safe_load((provisioning / "datasources" / "prometheus.yml").read_text())["datasources"]
    url = urlparse(source["url"])
    prometheus = dev["services"]["prometheus"]
    assert url.hostname in dev["services"] and url.hostname == "prometheus"
    assert f"--web.listen-address=0.0.0.0:{url.port}" in prometheus["command"]
    (provider,) = yaml.safe_load((provisioning / "dashboards" / "ams.yml").read_text())["providers"]
    dashboards = binds[provider["options"]["path"]]
    assert dashboards == ROOT / "deploy" / "grafana" / "dashboards" and any(dashboards.glob("*.json"))
    assert "depends_on" in service and service["depends_on"]["prometheus"] == {"condition": "service_healthy"}


def test_dev_stack_runs_the_demo_pipeline_and_the_cli_sees_it(stack: Stack) -> None:
    """A run launched in the UI's API is queued by the daemon, executed by the code location, published by the
    sensor and recorded by the workers; `docker-compose exec webserver asset-manager ...` shows the result."""
    for name in ("webserver", "daemon", "discovery", "health", "alerts"):
        stack.up(name)
    url = f"http://127.0.0.1:{stack.port_map[3000]}/graphql"
    launch = """mutation($p: ExecutionParams!) { launchRun(executionParams: $p) {
        __typename ... on LaunchRunSuccess { run { runId } } ... on PythonError { message } } }"""
    params = {
        "selector": {
            "repositoryLocationName": "orchestrator",
            "repositoryName": "__repository__",
            "jobName": "demo_pipeline",
        },
        "runConfigData": {},
    }
    result = httpx.post(url, json={"query": launch, "variables": {"p": params}}, timeout=30).json()
    assert result["data"]["launchRun"]["__typename"] == "LaunchRunSuccess", result
    run_id = result["data"]["launchRun"]["run"]["runId"]
    status_query = "query($id: ID!) { runOrError(runId: $id) { ... on Run { status } } }"

    def status() -> str:
        body = httpx.post(url, json={"query": status_query, "variables": {"id": run_id}}, timeout=30).json()
        return str(body["data"]["runOrError"]["status"])

    wait_for(
        lambda: status() in {"SUCCESS", "FAILURE", "CANCELED"},
        timeout_s=180,
        what="the demo run finished",
        interval_s=1,
        diagnose=lambda: stack.running["daemon"].output(),
    )
    assert status() == "SUCCESS"

    def cli(*args: str) -> Any:
        env = stack.environment("webserver")
        proc = subprocess.run(
            ["asset-manager", *args, "--format", "json"],
            env=env,
            cwd=stack.workdir,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert proc.returncode == 0, proc.stderr
        return json.loads(proc.stdout)

    def evaluated() -> dict[str, str]:
        return {r["asset_key"]: r["status"] for r in cli("asset-health") if r["status"] != "UNKNOWN"}

    # the five demo assets evaluated after their run (their verdicts are the health service's business)
    wait_for(
        lambda: len(evaluated()) == 5,
        timeout_s=120,
        what="the workers recorded the demo run",
        interval_s=2,
        diagnose=lambda: json.dumps(cli("asset-health"), indent=1)[:3000],
    )
    assert set(evaluated().values()) <= {"HEALTHY", "WARNING", "DEGRADED", "FAILED"}
    assert sorted(evaluated()) == sorted(row["key"] for row in cli("list-assets"))
