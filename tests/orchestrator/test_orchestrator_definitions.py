"""The code location as Dagster loads it, and what materializing it does on a real instance."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import dagster as dg
import pytest
from dagster import AssetKey, DagsterInstance, DefaultSensorStatus, Definitions

from libs.common.events import CHECK_NAMES, dagster_check_name
from libs.common.settings import PROJECT_ROOT
from orchestrator.assets import _demo
from orchestrator.definitions import defs, load_problems, scanned_modules

DEMO = ["raw_customers", "raw_orders", "stg_customers", "stg_orders", "transformed_customer_orders"]


def test_definitions_are_loadable() -> None:
    Definitions.validate_loadable(defs)
    assert load_problems == []
    assert len(scanned_modules) >= len(DEMO)


def test_every_asset_declares_one_non_blocking_check_per_evaluator() -> None:
    graph = defs.resolve_asset_graph()
    for node in graph.asset_nodes:
        assert sorted(k.name for k in node.check_keys) == sorted(map(dagster_check_name, CHECK_NAMES)), (
            node.key
        )
    specs = [spec for checks_def in defs.asset_checks or [] for spec in checks_def.check_specs]
    assert len(specs) == len(DEMO) * len(CHECK_NAMES)
    assert not any(spec.blocking for spec in specs)


def test_assets_use_dagster_conventions() -> None:
    for spec in defs.resolve_all_asset_specs():
        assert spec.owners and spec.group_name and spec.kinds, spec.key
        assert "dagster/compute_kind" not in spec.tags


def test_sensor_runs_by_default_and_schedule_targets_the_demo_pipeline() -> None:
    repo = defs.get_repository_def()
    (sensor_def,) = repo.sensor_defs
    assert sensor_def.default_status == DefaultSensorStatus.RUNNING
    (schedule,) = repo.schedule_defs
    job = repo.get_job(schedule.job_name)
    assert {k.to_user_string() for k in job.asset_layer.selected_asset_keys} == set(DEMO)


def test_materializing_everything_with_the_declared_checks_succeeds(
    dagster_instance: DagsterInstance,
) -> None:
    """The check op is part of the implicit asset job; it must not fail the run or block an asset."""
    result = defs.resolve_implicit_global_asset_job_def().execute_in_process(instance=dagster_instance)
    assert result.success
    for name in DEMO:
        record = dagster_instance.fetch_materializations(AssetKey(name), limit=1).records[0]
        metadata = record.asset_materialization.metadata  # type: ignore[union-attr]
        assert metadata["dagster/row_count"].value > 0
        assert [c.name for c in metadata["dagster/column_schema"].value.columns]


def test_demo_asset_fails_on_request_and_recovers(
    dagster_instance: DagsterInstance, monkeypatch: pytest.MonkeyPatch
) -> None:
    job = defs.resolve_implicit_global_asset_job_def()
    raw_orders = [AssetKey("raw_orders")]
    flag = _demo.set_failing("raw_orders")
    assert flag.parent.parent == Path(os.environ["DAGSTER_HOME"]) / "demo"
    failed = job.execute_in_process(
        instance=dagster_instance, raise_on_error=False, asset_selection=raw_orders
    )
    assert not failed.success
    assert "raw_orders" in {e.step_key for e in failed.all_events if e.is_step_failure}
    _demo.set_failing("raw_orders", False)

    _demo.set_rows("raw_orders", 3)
    assert job.execute_in_process(instance=dagster_instance, asset_selection=raw_orders).success
    mat = (
        dagster_instance.fetch_materializations(AssetKey("raw_orders"), limit=1)
        .records[0]
        .asset_materialization
    )
    assert mat is not None and mat.metadata["dagster/row_count"].value == 3
    _demo.set_rows("raw_orders", None)

    monkeypatch.setenv(_demo.FAIL_ENV, "raw_orders")
    assert not job.execute_in_process(
        instance=dagster_instance, raise_on_error=False, asset_selection=raw_orders
    ).success


def test_dagster_loads_the_module_and_the_workspace(tmp_path: Path) -> None:
    """`dagster definitions validate` on the module and on config/workspace.yaml, as dagster dev would."""
    env = {**os.environ, "DAGSTER_HOME": str(tmp_path)}
    dagster = str(Path(sys.executable).with_name("dagster"))
    for args in (["-m", "orchestrator.definitions"], ["-w", str(PROJECT_ROOT / "config" / "workspace.yaml")]):
        done = subprocess.run(
            [dagster, "definitions", "validate", *args],
            cwd=PROJECT_ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert done.returncode == 0, done.stdout + done.stderr


def test_with_health_checks_declares_the_six_checks_on_a_teams_own_definitions(
    dagster_instance: DagsterInstance,
) -> None:
    from orchestrator import with_health_checks

    @dg.asset(key=["finance", "entries"])
    def entries() -> None: ...

    @dg.asset(
        key=["finance", "revenue"],
        deps=[entries],
        check_specs=[dg.AssetCheckSpec("freshness", asset=["finance", "revenue"])],
    )
    def revenue() -> dg.MaterializeResult:
        return dg.MaterializeResult(check_results=[dg.AssetCheckResult(passed=True, check_name="freshness")])

    team = dg.Definitions(assets=[entries, revenue, dg.AssetSpec(["bank", "feed"])])
    declared = with_health_checks(team)
    Definitions.validate_loadable(declared)
    checks = declared.resolve_asset_graph().asset_check_keys
    assert {(c.asset_key.to_user_string(), c.name) for c in checks} == {
        (key, dagster_check_name(name))
        for key in ("finance/entries", "finance/revenue")
        for name in CHECK_NAMES
    } | {("finance/revenue", "freshness")}  # not on the external asset; the team's own `freshness` is kept
    # and ours is another check beside it (`ams_freshness`): Dagster knows a check by asset and name only
    assert len(with_health_checks(declared).resolve_asset_graph().asset_check_keys) == len(checks)
    # The team's assets still materialize as before (the declared checks never run or block).
    job = declared.resolve_implicit_global_asset_job_def()
    assert job.execute_in_process(instance=dagster_instance).success


def test_publisher_location_holds_only_the_sensor() -> None:
    from orchestrator.publisher import defs as publisher_defs

    Definitions.validate_loadable(publisher_defs)
    repository = publisher_defs.get_repository_def()
    assert [s.name for s in repository.sensor_defs] == ["ams_event_publisher"]
    assert not list(repository.asset_graph.get_all_asset_keys())
