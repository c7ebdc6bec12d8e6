"""Dagster instance and workspace files of the deployment, validated by Dagster's own config schema."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from dagster._core.instance.config import dagster_instance_config
from dagster._core.workspace.config_schema import ensure_workspace_config
from deploytools import ROOT

INSTANCES = [
    ROOT / "deploy/dagster/dagster.dev.yaml",
    ROOT / "deploy/dagster/dagster.prod.yaml",
    ROOT / "k8s/base/dagster-instance.yaml",
    ROOT / "k8s/overlays/prod/dagster-instance.yaml",
]
PG_ENV = {
    "DAGSTER_PG_HOST": "db",
    "DAGSTER_PG_PORT": "5432",
    "DAGSTER_PG_USER": "dagster",
    "DAGSTER_PG_PASSWORD": "secret",
    "DAGSTER_PG_DB": "dagster",
}


@pytest.mark.parametrize("path", INSTANCES, ids=lambda p: str(p.relative_to(ROOT)))
def test_instance_config_is_valid(path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in PG_ENV.items():
        monkeypatch.setenv(name, value)
    (tmp_path / "dagster.yaml").write_text(path.read_text())
    config, _ = dagster_instance_config(str(tmp_path))
    assert config["telemetry"] == {"enabled": False}
    assert config["run_coordinator"]["class"] == "QueuedRunCoordinator"


def test_no_instance_config_holds_a_password() -> None:
    for path in INSTANCES:
        storage = yaml.safe_load(path.read_text()).get("storage", {})
        if "postgres" in storage:
            assert storage["postgres"]["postgres_db"]["password"] == {"env": "DAGSTER_PG_PASSWORD"}, path


def test_workspace_points_at_the_grpc_server_by_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    path = ROOT / "deploy/dagster/workspace.yaml"
    config = yaml.safe_load(path.read_text())
    monkeypatch.setenv("DAGSTER_GRPC_HOST", "code-location")
    monkeypatch.setenv("DAGSTER_GRPC_PORT", "4000")
    ensure_workspace_config(config, str(path))
    (entry,) = config["load_from"]
    assert entry["grpc_server"]["host"] == {"env": "DAGSTER_GRPC_HOST"}
    assert entry["grpc_server"]["port"] == {"env": "DAGSTER_GRPC_PORT"}


def test_celery_worker_config_matches_the_executor_schema() -> None:
    config = yaml.safe_load((ROOT / "deploy/dagster/celery.yaml").read_text())["execution"]["config"]
    # dagster-celery is installed in the image only; its schema fields are broker, backend, include,
    # config_source and retries (dagster_celery/executor.py CELERY_CONFIG).
    assert set(config) <= {"broker", "backend", "include", "config_source", "retries"}
    assert config["broker"] == {"env": "DAGSTER_CELERY_BROKER_URL"}


@pytest.mark.parametrize(
    "path",
    [p for p in INSTANCES if "postgres" in yaml.safe_load(p.read_text()).get("storage", {})],
    ids=lambda p: str(p.relative_to(ROOT)),
)
def test_postgres_instance_opens_on_a_real_server(
    path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, postgres_url: str
) -> None:
    """The installed dagster-postgres and SQLAlchemy connect with this file (SQLAlchemy 2.1 maps a bare
    postgresql:// to psycopg 3, which dagster-postgres does not install)."""
    from urllib.parse import urlparse

    from dagster import DagsterInstance

    url = urlparse(postgres_url)
    env = {
        "DAGSTER_PG_HOST": url.hostname or "",
        "DAGSTER_PG_PORT": str(url.port or 5432),
        "DAGSTER_PG_USER": url.username or "postgres",
        "DAGSTER_PG_PASSWORD": "unused-trust-auth",
        "DAGSTER_PG_DB": url.path.lstrip("/"),
        "DAGSTER_CELERY_BROKER_URL": "redis://127.0.0.1:1/1",
        "DAGSTER_CELERY_BACKEND_URL": "redis://127.0.0.1:1/2",
    }
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    config = yaml.safe_load(path.read_text())
    config.pop("run_launcher")  # K8sRunLauncher needs a cluster; the launchers are checked on their own
    (tmp_path / "dagster.yaml").write_text(yaml.safe_dump(config))
    with DagsterInstance.from_config(str(tmp_path)) as instance:
        assert instance.get_runs() == []


def test_prod_run_launcher_and_executor_match_dagster_celerys_schemas(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from dagster._config import process_config
    from dagster_celery.executor import celery_executor
    from dagster_celery.launcher import CeleryRunLauncher

    monkeypatch.setenv("DAGSTER_CELERY_BROKER_URL", "redis://:pw@redis:6379/1")
    monkeypatch.setenv("DAGSTER_CELERY_BACKEND_URL", "redis://:pw@redis:6379/2")
    launcher = yaml.safe_load((ROOT / "deploy/dagster/dagster.prod.yaml").read_text())["run_launcher"]
    result = process_config(CeleryRunLauncher.config_type(), launcher["config"])
    assert result.success, result.errors
    assert result.value["broker"] == "redis://:pw@redis:6379/1"
    config = yaml.safe_load((ROOT / "deploy/dagster/celery.yaml").read_text())["execution"]["config"]
    executor = process_config(celery_executor.config_schema.config_type, config)
    assert executor.success, executor.errors
