"""The Dagster code location: `dagster dev -m orchestrator.definitions` (or config/workspace.yaml).

Assets come from every module under `orchestrator/assets/` (see `orchestrator.loader`); a module that fails
to import is logged as a warning here, recorded in the Definitions metadata (shown in the catalog snapshot's
`problems` and by `asset-manager discover-assets --verbose`) and the other assets still load.
"""

from __future__ import annotations

import json
import os
import sys
import warnings
from pathlib import Path
from typing import Any

from dagster import AssetsDefinition, Definitions, with_source_code_references

from libs.common.log import get_logger
from orchestrator.catalog import PROBLEMS_METADATA_KEY
from orchestrator.checks import build_health_checks, materializable_keys
from orchestrator.loader import ASSETS_PACKAGE, ScanResult, scan_asset_modules
from orchestrator.resources import TableMetadataIOManager
from orchestrator.schedules import DEMO_TAG, build_schedules
from orchestrator.sensors import build_event_sensor

log = get_logger(__name__)


def _demo_keys(assets: list[Any]) -> list[Any]:
    keys = []
    for item in assets:
        if isinstance(item, AssetsDefinition):
            for key in item.keys:
                if item.tags_by_key.get(key, {}).get(DEMO_TAG[0]) == DEMO_TAG[1]:
                    keys.append(key)
    return keys


def build_definitions(scan: ScanResult, *, sensors: list[Any] | None = None) -> Definitions:
    """Definitions of the scanned assets, with their health checks, the demo schedule and the sensors."""
    for problem in scan.problems:
        log.warning("asset_module_problem", module=problem.module, path=problem.path, error=problem.error)
    with warnings.catch_warnings():
        # Code references are beta in Dagster 1.13; the UI's "open source" links are worth it.
        warnings.simplefilter("ignore")
        assets = list(with_source_code_references(scan.assets))
    return Definitions(
        assets=assets,
        asset_checks=build_health_checks(materializable_keys(assets)),
        schedules=build_schedules(_demo_keys(assets)),
        sensors=[build_event_sensor()] if sensors is None else sensors,
        resources={"io_manager": TableMetadataIOManager()},
        metadata={
            PROBLEMS_METADATA_KEY: json.dumps([str(p) for p in scan.problems]),
            "ams/asset_modules": len(scan.modules),
            "ams/assets_root": str(Path(scan.root)),
        },
    )


def load_definitions(package: str = ASSETS_PACKAGE, *, search_path: Path | None = None) -> Definitions:
    """Scan `package` and build its Definitions."""
    return build_definitions(scan_asset_modules(package, search_path=search_path))


def warn_without_dagster_home(argv: list[str] | None = None) -> bool:
    """Say loudly when a Dagster command loads this code location without DAGSTER_HOME (True if it did).

    Dagster then runs on a temporary instance that is deleted afterwards: the run "succeeds" and the asset
    management system never sees it. Only Dagster's own processes are concerned (`dagster ...`, its code
    servers); asset-manager and the workers read DAGSTER_HOME from their settings.
    """
    first = Path((argv if argv is not None else sys.argv)[0] if (argv or sys.argv) else "")
    if os.environ.get("DAGSTER_HOME") or not (
        first.name.startswith("dagster") or first.parent.name == "dagster"
    ):
        return False
    log.warning(
        "dagster_home_not_set",
        problem="this Dagster command runs on a TEMPORARY instance: "
        "its runs are lost and no worker sees them",
        fix="start it in the project folder (its .env, written by `asset-manager init`, sets DAGSTER_HOME) "
        "or export DAGSTER_HOME",
        cwd=os.getcwd(),
    )
    return True


warn_without_dagster_home()

# Module-level results of the scan, read by services.discovery and `asset-manager discover-assets`.
scan_result = scan_asset_modules()
scanned_modules: list[str] = list(scan_result.modules)
load_problems: list[str] = [str(p) for p in scan_result.problems]
defs = build_definitions(scan_result)
