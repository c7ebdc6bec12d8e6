"""deploy/dagster/location.py: the production code location picks its executor from DAGSTER_EXECUTOR."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

import pytest
from dagster import Definitions, in_process_executor, multiprocess_executor
from deploytools import ROOT

LOCATION = ROOT / "deploy" / "dagster" / "location.py"


def load(monkeypatch: pytest.MonkeyPatch, executor: str | None) -> ModuleType:
    if executor is None:
        monkeypatch.delenv("DAGSTER_EXECUTOR", raising=False)
    else:
        monkeypatch.setenv("DAGSTER_EXECUTOR", executor)
    spec = importlib.util.spec_from_file_location(f"ams_location_{executor}", LOCATION)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_default_keeps_the_orchestrators_definitions(monkeypatch: pytest.MonkeyPatch) -> None:
    from orchestrator.definitions import defs

    module = load(monkeypatch, None)
    assert module.defs is defs


@pytest.mark.parametrize(
    ("name", "expected"), [("in_process", in_process_executor), ("multiprocess", multiprocess_executor)]
)
def test_executor_from_environment_applies_to_every_job(
    monkeypatch: pytest.MonkeyPatch,
    name: str,
    expected: object,
) -> None:
    from orchestrator.definitions import defs

    module = load(monkeypatch, name)
    merged: Definitions = module.defs
    assert merged.executor is expected
    Definitions.validate_loadable(merged)
    assert {k for k in merged.resolve_asset_graph().get_all_asset_keys()} == set(
        defs.resolve_asset_graph().get_all_asset_keys()
    )
    job = merged.resolve_implicit_global_asset_job_def()
    assert job.executor_def is expected


def test_unknown_executor_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ValueError, match="DAGSTER_EXECUTOR='k8s'"):
        load(monkeypatch, "k8s")


def test_celery_executor_config_is_the_workers_config(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    module = load(monkeypatch, None)
    config = module.celery_config()
    assert config["broker"] == {"env": "DAGSTER_CELERY_BROKER_URL"}
    assert config["backend"] == {"env": "DAGSTER_CELERY_BACKEND_URL"}
    bad = tmp_path / "celery.yaml"
    bad.write_text("execution: {}\n")
    with pytest.raises(ValueError, match=r"no execution\.config"):
        module.celery_config(bad)


@pytest.mark.parametrize("executor", ["celery", "default"])
def test_dagster_loads_the_file_as_the_code_server_does(executor: str, tmp_path: Path) -> None:
    """`dagster code-server start -f location.py` scans the module for Definitions objects: exactly one."""
    import os
    import subprocess
    import sys

    env = {
        **os.environ,
        "DAGSTER_HOME": str(tmp_path),
        "DAGSTER_EXECUTOR": executor,
        "DAGSTER_CELERY_BROKER_URL": "redis://127.0.0.1:1/1",
        "DAGSTER_CELERY_BACKEND_URL": "redis://127.0.0.1:1/2",
    }
    dagster = Path(sys.executable).with_name("dagster")
    proc = subprocess.run(
        [str(dagster), "definitions", "validate", "-f", str(LOCATION)],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
