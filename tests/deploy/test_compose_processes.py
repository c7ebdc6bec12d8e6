"""Each docker-compose.yml service's command, as written, run as a local process until its healthcheck passes.

The compose environment is mapped to this machine by `stack.Stack`: Redis is the test fixture's, other
service hosts are 127.0.0.1 on free ports, /app is the repository, named volumes are temporary directories.
Images that are not ours run Debian's build of the same program (Prometheus, Redis). Grafana has no Debian
package: its provisioning is checked against the compose file instead (see the parametrisation id)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import httpx
import pytest
import redis
import yaml
from deploytools import COMPOSE_DEV, ROOT, compose_config, mounts, tool, wait_for
from stack import Stack

SERVICES = ["redis", "code-location", "webserver", "daemon", "discovery", "health", "alerts", "prometheus"]
NOT_RUN = {"grafana": "not-run-third-party-image-no-debian-package-provisioning-checked-instead"}


@pytest.fixture(scope="module")
def dev() -> dict[str, Any]:
    return compose_config(COMPOSE_DEV)


@pytest.fixture(scope="module")
def stack(dev: dict[str, Any], redis_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    for name in ("prometheus", "wget", "redis-server", "redis-cli"):
        tool(name)
    prefix = f"test-deploy-{uuid.uuid4().hex[:8]}"
    local = Stack(dev, tmp_path_factory.mktemp("compose"), provided={"redis": int(urlparse(redis_url).port or 6379)},
                  extra_env={"AMS_BUS__PREFIX": prefix})
    yield local
    local.down()
    client = redis.Redis.from_url(redis_url)
    keys = list(client.scan_iter(f"{prefix}:*"))
    if keys:
        client.delete(*keys)
    client.close()


def test_every_compose_service_is_covered(dev: dict[str, Any]) -> None:
    assert set(dev["services"]) == set(SERVICES) | set(NOT_RUN)


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
        assert_code_location_loaded(stack)


def assert_code_location_loaded(stack: Stack) -> None:
    """The webserver reached the code location's gRPC server through the workspace file's variables."""
    url = f"http://127.0.0.1:{stack.port_map[3000]}/graphql"
    query = "{ workspaceOrError { ... on Workspace { locationEntries { name locationOrLoadError { __typename } } } } }"

    def loaded() -> bool:
        entries = httpx.post(url, json={"query": query}, timeout=10).json()["data"]["workspaceOrError"]["locationEntries"]
        return [(e["name"], (e["locationOrLoadError"] or {}).get("__typename")) for e in entries] == [
            ("orchestrator", "RepositoryLocation")]

    wait_for(loaded, timeout_s=60, what="code location loaded in the webserver",
             diagnose=lambda: httpx.post(url, json={"query": query}, timeout=10).text)


@pytest.mark.parametrize("name", list(NOT_RUN), ids=[f"{n}-{reason}" for n, reason in NOT_RUN.items()])
def test_service_not_run_is_provisioned_consistently(name: str, dev: dict[str, Any]) -> None:
    service = dev["services"][name]
    binds = {target: Path(source) for kind, source, target in mounts(service, dev["volumes"]) if kind == "bind"}
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
