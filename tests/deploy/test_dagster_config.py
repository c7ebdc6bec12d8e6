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
PG_ENV = {"DAGSTER_PG_HOST": "db", "DAGSTER_PG_PORT": "5432", "DAGSTER_PG_USER": "dagster",
          "DAGSTER_PG_PASSWORD": "secret", "DAGSTER_PG_DB": "dagster"}


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
