"""docker-compose.yml (development) and docker-compose.prod.yml: valid, complete, and production-safe."""

from __future__ import annotations

import json
import re
from pathlib import Path
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
    run(
        [tool("docker-compose"), "-f", str(COMPOSE_PROD), "--env-file", str(ENV_EXAMPLE), "config", "-q"],
        env=clean_env(),
    )


def test_prod_secrets_are_files_and_no_environment_holds_one(prod: dict[str, Any]) -> None:
    """`docker inspect` shows a container's environment: secrets are mounted files (compose `secrets:`), read
    by the image's entrypoint (*_FILE), by Postgres (POSTGRES_PASSWORD_FILE), Grafana (__FILE) and Redis."""
    files = prod["secrets"]
    assert set(files) == {"redis_password", "postgres_password", "grafana_admin_password", "alertmanager.yml"}
    for name, secret in files.items():
        assert Path(secret["file"]).name == name and Path(secret["file"]).parent.name == "secrets", name
    for name, service in prod["services"].items():
        for key, value in (service.get("environment") or {}).items():
            if re.search(r"PASSWORD|SECRET|TOKEN|_KEY", key):
                assert key.endswith("FILE") and str(value).startswith("/run/secrets/"), (
                    f"{name}: {key}={value}"
                )
            assert not re.search(r"redis://:[^@]+@", str(value)), f"{name}: {key} carries a password"
        mounted = {s if isinstance(s, str) else s["source"] for s in service.get("secrets") or []}
        wanted = set(re.findall(r"/run/secrets/([\w.]+)", json.dumps(service)))
        assert wanted <= mounted, f"{name} reads secrets it does not mount: {wanted - mounted}"


def test_env_example_names_every_variable_the_compose_files_use() -> None:
    used = set(re.findall(r"\$\{([A-Z0-9_]+)", COMPOSE_DEV.read_text() + COMPOSE_PROD.read_text()))
    declared = {
        line.split("=", 1)[0]
        for line in ENV_EXAMPLE.read_text().splitlines()
        if line and not line.startswith("#")
    }
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


def published_ports(service: dict[str, Any]) -> list[tuple[str, int, int]]:
    """(host address, published port, container port) of a resolved service's `ports`."""
    found = []
    for port in service.get("ports", []):
        if isinstance(port, dict):
            found.append((port.get("host_ip", "0.0.0.0"), int(port["published"]), int(port["target"])))
        else:
            parts = str(port).split("/")[0].split(":")
            host = parts[0] if len(parts) == 3 else "0.0.0.0"
            found.append((host, int(parts[-2]), int(parts[-1])))
    return found


def test_prod_publishes_only_the_ui_and_only_on_loopback(prod: dict[str, Any]) -> None:
    published = {name: published_ports(s) for name, s in prod["services"].items() if s.get("ports")}
    assert set(published) == {"webserver"}
    # Dagster's UI has no authentication: the host's loopback unless DAGSTER_UI_BIND says otherwise
    assert published["webserver"] == [("127.0.0.1", 3000, 3000)]


def option(command: list[str], flag: str) -> str:
    return command[command.index(flag) + 1]


def test_prod_uses_postgres_storage_and_runs_outside_the_code_location(prod: dict[str, Any]) -> None:
    services = prod["services"]
    assert services["postgres"]["image"].startswith("postgres:")
    instance = yaml.safe_load((ROOT / "deploy/dagster/dagster.prod.yaml").read_text())
    assert "postgres" in instance["storage"]
    for name in ("code-location", "webserver", "daemon", "dagster-worker"):
        assert (
            services[name]["environment"]["DAGSTER_INSTANCE_CONFIG"]
            == "/app/deploy/dagster/dagster.prod.yaml"
        )
    # runs are Celery tasks executed by the dagster-workers, never children of the code location (a redeploy
    # of it would kill them)
    launcher = instance["run_launcher"]
    assert (launcher["module"], launcher["class"]) == ("dagster_celery.launcher", "CeleryRunLauncher")
    worker = services["dagster-worker"]
    command = worker["command"]
    assert command[:3] == ["dagster-celery", "worker", "start"]
    assert option(command, "-q") == launcher["config"]["default_queue"]
    assert option(command, "-y") == "/app/deploy/dagster/celery.yaml"
    # scalable with --scale: no fixed container name, no published port
    assert "container_name" not in worker and "ports" not in worker
    # inside a run, each step is a process of its own (location.py applies the executor to every job)
    assert services["code-location"]["command"][-2:] == ["-f", "/app/deploy/dagster/location.py"]
    for name in ("code-location", "dagster-worker"):
        assert services[name]["environment"]["DAGSTER_EXECUTOR"] == "multiprocess"
    celery = yaml.safe_load((ROOT / "deploy/dagster/celery.yaml").read_text())
    assert celery["execution"]["config"]["broker"] == {"env": "DAGSTER_CELERY_BROKER_URL"}
    assert launcher["config"]["broker"] == {"env": "DAGSTER_CELERY_BROKER_URL"}


def test_prod_run_and_step_concurrency_are_set_and_fit_the_cpu_limit(prod: dict[str, Any]) -> None:
    """Celery's and Dagster's multiprocess defaults are the host's CPU count, whatever the container's
    limit."""
    worker = prod["services"]["dagster-worker"]
    flags = [t for t in worker["command"] if t.startswith("--concurrency=")]
    assert len(flags) == 1
    runs = int(flags[0].split("=")[1])
    steps = int(worker["environment"]["DAGSTER_MAX_CONCURRENT_STEPS"])
    cpus = float(worker["deploy"]["resources"]["limits"]["cpus"])
    assert runs >= 1 and steps >= 2  # at least two steps of a run in parallel processes
    # a run's steps are processes: a run may not be a daemonic prefork child (test_image.py runs one)
    assert "--pool=threads" in worker["command"]
    assert runs * steps <= 2 * cpus
    assert worker["stop_grace_period"] in ("30m", "30m0s", 1800)  # warm shutdown lets running runs finish


def test_prod_dagster_outputs_and_compute_logs_are_on_the_shared_volume(prod: dict[str, Any]) -> None:
    """Every path of the instance that holds run data is on the one volume all Dagster containers mount."""
    dagster = {
        n for n, s in prod["services"].items() if ours(s) and str(s["command"][0]).startswith("dagster")
    }
    assert dagster == {"code-location", "webserver", "daemon", "dagster-worker"}
    instance = yaml.safe_load((ROOT / "deploy/dagster/dagster.prod.yaml").read_text())
    paths = [
        instance["local_artifact_storage"]["config"]["base_dir"],
        instance["compute_logs"]["config"]["base_dir"],
    ]
    for name, service in prod["services"].items():
        if not ours(service) or not str(service["command"][0]).startswith("dagster"):
            continue  # the workers (python -m services.x) run no Dagster run
        volumes = {
            target: source for kind, source, target in mounts(service, prod["volumes"]) if kind == "volume"
        }
        for path in paths:
            holders = [t for t in volumes if path.startswith(t.rstrip("/") + "/")]
            assert holders, f"{name}: {path} is on no volume (lost with the container, unseen by the others)"
            assert volumes[max(holders, key=len)] == "dagster-shared", f"{name}: {path}"


def test_prod_scales_dagster_worker() -> None:
    proc = run(
        [
            tool("docker-compose"),
            "-f",
            str(COMPOSE_PROD),
            "--env-file",
            str(ENV_EXAMPLE),
            "config",
            "--services",
        ],
        env=clean_env(),
    )
    assert "dagster-worker" in proc.stdout.split()


def test_prod_redis_persists_refuses_writes_when_full_and_requires_a_password(prod: dict[str, Any]) -> None:
    redis = prod["services"]["redis"]
    command = " ".join(redis["command"])
    assert "--appendonly yes" in command and "requirepass" in command
    assert "$(cat /run/secrets/redis_password)" in command  # read at run time inside the container
    # a bounded memory that refuses writes (noeviction) well inside the container's limit: never OOM-killed
    maxmemory = re.search(r"--maxmemory (\d+)([kmg]b)", command)
    assert maxmemory and "--maxmemory-policy noeviction" in command
    limit = redis["deploy"]["resources"]["limits"]["memory"]
    as_bytes = {"kb": 2**10, "mb": 2**20, "gb": 2**30}
    limit_bytes = (
        int(limit) if str(limit).isdigit() else int(str(limit)[:-1]) * as_bytes[str(limit)[-1].lower() + "b"]
    )
    assert (
        int(maxmemory.group(1)) * as_bytes[maxmemory.group(2)] <= 0.6 * limit_bytes
    )  # room for the AOF fork
    for name, service in prod["services"].items():
        if ours(service):
            assert service["environment"]["AMS_REDIS__PASSWORD_FILE"] == "/run/secrets/redis_password", name


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
                assert "${" in value or "$$" in value or value.startswith("/run/secrets/"), (
                    f"{path.name}: literal secret in {line.strip()!r}"
                )
