"""docker-compose.yml (development) and docker-compose.prod.yml: valid, complete, and production-safe."""

from __future__ import annotations

import re
from typing import Any

import pytest
import yaml
from deploytools import (
    COMPOSE_DEV,
    COMPOSE_PROD,
    ENV_EXAMPLE,
    ROOT,
    clean_env,
    compose_config,
    mounts,
    run,
    tool,
)

OUR_IMAGE = "dagster-asset-management"
WORKERS = {"discovery": 9101, "health": 9102, "alerts": 9103}


def ours(service: dict[str, Any]) -> bool:
    return str(service.get("image", "")).split(":")[0].endswith(OUR_IMAGE)


@pytest.fixture(scope="module")
def dev() -> dict[str, Any]:
    return compose_config(COMPOSE_DEV)


@pytest.fixture(scope="module")
def prod() -> dict[str, Any]:
    return compose_config(COMPOSE_PROD, env_file=ENV_EXAMPLE)


def test_dev_compose_config_is_valid() -> None:
    run([tool("docker-compose"), "-f", str(COMPOSE_DEV), "config", "-q"], env=clean_env())


def test_prod_compose_config_is_valid_with_the_example_env() -> None:
    run([tool("docker-compose"), "-f", str(COMPOSE_PROD), "--env-file", str(ENV_EXAMPLE), "config", "-q"],
        env=clean_env())


def test_prod_compose_refuses_to_start_without_secrets(tmp_path: Any) -> None:
    empty = tmp_path / "empty.env"
    empty.write_text("")
    proc = run([tool("docker-compose"), "-f", str(COMPOSE_PROD), "--env-file", str(empty), "config", "-q"],
               env=clean_env(), check=False)
    assert proc.returncode != 0
    assert "PASSWORD in .env" in proc.stderr


def test_env_example_names_every_variable_the_compose_files_use() -> None:
    used = set(re.findall(r"\$\{([A-Z0-9_]+)", COMPOSE_DEV.read_text() + COMPOSE_PROD.read_text()))
    declared = {line.split("=", 1)[0] for line in ENV_EXAMPLE.read_text().splitlines()
                if line and not line.startswith("#")}
    assert used - declared == set(), f"add to .env.example: {sorted(used - declared)}"


def test_dev_has_every_part_with_healthchecks_and_ordered_start(dev: dict[str, Any]) -> None:
    services = dev["services"]
    expected = {"redis", "code-location", "webserver", "daemon", *WORKERS, "prometheus", "grafana"}
    assert expected <= set(services)
    for name, service in services.items():
        assert "healthcheck" in service, f"{name} has no healthcheck"
        for dep, cond in (service.get("depends_on") or {}).items():
            assert cond == {"condition": "service_healthy"}, f"{name} -> {dep}: {cond}"
    assert set(services["webserver"]["depends_on"]) == {"code-location"}
    assert "redis" in services["code-location"]["depends_on"]
    for worker in WORKERS:
        assert "redis" in services[worker]["depends_on"]


def test_dev_commands_are_the_documented_ones(dev: dict[str, Any]) -> None:
    services = dev["services"]
    assert services["code-location"]["command"][:3] == ["dagster", "code-server", "start"]
    assert "orchestrator.definitions" in services["code-location"]["command"]
    assert services["webserver"]["command"][0] == "dagster-webserver"
    assert services["daemon"]["command"][:2] == ["dagster-daemon", "run"]
    for worker, port in WORKERS.items():
        service = services[worker]
        assert service["command"] == ["python", "-m", f"services.{worker}"]
        assert service["environment"][f"AMS_SERVICES__{worker.upper()}__PORT"] == str(port)
        assert f"127.0.0.1:{port}/readyz" in " ".join(service["healthcheck"]["test"])


def test_dev_ports_ui_3000_grafana_3001(dev: dict[str, Any]) -> None:
    services = dev["services"]

    def published(name: str) -> set[tuple[int, int]]:
        return {(int(p["published"]), int(p["target"])) for p in services[name].get("ports", [])}

    assert (3000, 3000) in published("webserver")
    assert (3001, 3001) in published("grafana")
    assert services["grafana"]["environment"]["GF_SERVER_HTTP_PORT"] == "3001"


def test_dev_named_volume_holds_dagster_home_and_stores(dev: dict[str, Any]) -> None:
    assert "ams-data" in dev["volumes"]
    for name, service in dev["services"].items():
        if not ours(service):
            continue
        env = service["environment"]
        by_target = {target: (kind, source) for kind, source, target in mounts(service, dev["volumes"])}
        assert by_target["/var/lib/ams"] == ("volume", "ams-data"), name
        assert env["DAGSTER_HOME"].startswith("/var/lib/ams/"), name
        assert env["AMS_STORES__DATA_DIR"].startswith("/var/lib/ams/"), name


def test_dev_prometheus_and_grafana_are_provisioned_from_deploy(dev: dict[str, Any]) -> None:
    services = dev["services"]
    prom = {t: s for k, s, t in mounts(services["prometheus"], dev["volumes"]) if k == "bind"}
    assert prom["/etc/prometheus"] == str(ROOT / "deploy" / "prometheus")
    assert "--config.file=/etc/prometheus/prometheus.yml" in services["prometheus"]["command"]
    graf = {t: s for k, s, t in mounts(services["grafana"], dev["volumes"]) if k == "bind"}
    assert graf["/etc/grafana/provisioning"] == str(ROOT / "deploy" / "grafana" / "provisioning")
    assert graf["/var/lib/grafana/dashboards"] == str(ROOT / "deploy" / "grafana" / "dashboards")
    provider = yaml.safe_load((ROOT / "deploy/grafana/provisioning/dashboards/ams.yml").read_text())
    assert provider["providers"][0]["options"]["path"] == "/var/lib/grafana/dashboards"
    home = services["grafana"]["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    assert (ROOT / "deploy/grafana/dashboards" / home.rsplit("/", 1)[1]).exists()


def test_prod_publishes_only_the_ui(prod: dict[str, Any]) -> None:
    published = {name: s["ports"] for name, s in prod["services"].items() if s.get("ports")}
    assert set(published) == {"webserver"}
    assert [int(p["target"]) for p in published["webserver"]] == [3000]


def test_prod_uses_postgres_storage_and_celery_workers(prod: dict[str, Any]) -> None:
    services = prod["services"]
    assert services["postgres"]["image"].startswith("postgres:")
    instance = yaml.safe_load((ROOT / "deploy/dagster/dagster.prod.yaml").read_text())
    assert "postgres" in instance["storage"]
    for name in ("code-location", "webserver", "daemon", "dagster-worker"):
        assert services[name]["environment"]["DAGSTER_INSTANCE_CONFIG"] == "/app/deploy/dagster/dagster.prod.yaml"
    worker = services["dagster-worker"]
    assert worker["command"][:3] == ["dagster-celery", "worker", "start"]
    assert worker["environment"]["DAGSTER_CELERY_BROKER_URL"].startswith("redis://:")
    # scalable with --scale: no fixed container name, no published port
    assert "container_name" not in worker and "ports" not in worker
    # jobs send their steps to those workers: the code location applies the Celery executor
    assert services["code-location"]["command"][-2:] == ["-f", "/app/deploy/dagster/location.py"]
    for name in ("code-location", "dagster-worker"):
        assert services[name]["environment"]["DAGSTER_EXECUTOR"] == "celery"
    celery = yaml.safe_load((ROOT / "deploy/dagster/celery.yaml").read_text())
    assert celery["execution"]["config"]["broker"] == {"env": "DAGSTER_CELERY_BROKER_URL"}


def test_prod_scales_dagster_worker() -> None:
    proc = run([tool("docker-compose"), "-f", str(COMPOSE_PROD), "--env-file", str(ENV_EXAMPLE), "config",
                "--services"], env=clean_env())
    assert "dagster-worker" in proc.stdout.split()


def test_prod_redis_persists_with_aof_and_requires_a_password(prod: dict[str, Any]) -> None:
    redis = prod["services"]["redis"]
    command = " ".join(redis["command"])
    assert "--appendonly yes" in command and "requirepass" in command
    assert "$REDIS_PASSWORD" in command  # read at run time inside the container, not baked into the file
    assert redis["environment"]["REDIS_PASSWORD"] == "change-me-redis"  # from .env.example
    for name, service in prod["services"].items():
        if ours(service):
            assert service["environment"]["AMS_REDIS__PASSWORD"] == "change-me-redis", name


def test_prod_restart_limits_and_log_rotation_everywhere(prod: dict[str, Any]) -> None:
    for name, service in prod["services"].items():
        assert service.get("restart") == "always", name
        assert service["logging"]["driver"] == "json-file", name
        assert service["logging"]["options"]["max-size"], name
        limits = service["deploy"]["resources"]["limits"]
        assert limits.get("memory"), name
        assert "healthcheck" in service, name


def test_no_secret_is_written_in_the_compose_files() -> None:
    for path in (COMPOSE_DEV, COMPOSE_PROD):
        for line in path.read_text().splitlines():
            match = re.match(r"\s*([A-Z_]*(PASSWORD|SECRET|TOKEN)[A-Z_]*):\s*(.+)", line)
            if match:
                value = match.group(3).strip()
                assert "${" in value or "$$" in value, f"{path.name}: literal secret in {line.strip()!r}"
