"""Switches for the demo pipeline, so tests and demos can make an asset fail or change its volume.

Not an asset module (the leading underscore keeps the loader away).

- Make an asset FAIL: set `DEMO_FAIL_ASSETS=raw_orders,stg_orders` (or `*` for every demo asset) in the
  environment of the process that runs it, or create the flag file `$DAGSTER_HOME/demo/fail/<asset name>`
  (works while `dagster dev` is running; delete the file to recover).
- Change its VOLUME: write a row count into `$DAGSTER_HOME/demo/rows/<asset name>` (e.g. `0` or `5000`);
  the asset's output is cut or repeated to exactly that many rows. Delete the file to go back to normal.

`ensure_demo_source()` creates the demo source database (`asset-manager init` does the same) when it is
missing, so the demo pipeline also runs on a fresh DAGSTER_HOME.
"""

from __future__ import annotations

import os
from pathlib import Path

import pandas as pd

from libs.common.settings import PROJECT_ROOT

FAIL_ENV = "DEMO_FAIL_ASSETS"


class DemoFailure(RuntimeError):
    """Raised by a demo asset that was asked to fail."""


def control_dir() -> Path:
    """`$DAGSTER_HOME/demo` (the project's `.dagster_home/demo` without DAGSTER_HOME)."""
    home = os.environ.get("DAGSTER_HOME")
    return (Path(home) if home else PROJECT_ROOT / ".dagster_home") / "demo"


def should_fail(asset_name: str) -> bool:
    """Whether `asset_name` was asked to fail (environment or flag file)."""
    wanted = {n.strip() for n in os.environ.get(FAIL_ENV, "").split(",") if n.strip()}
    if asset_name in wanted or "*" in wanted:
        return True
    return (control_dir() / "fail" / asset_name).exists()


def row_override(asset_name: str) -> int | None:
    """The row count requested for `asset_name`, if any."""
    path = control_dir() / "rows" / asset_name
    try:
        return max(0, int(path.read_text().strip()))
    except (FileNotFoundError, ValueError):
        return None


def apply_controls(asset_name: str, df: pd.DataFrame) -> pd.DataFrame:
    """Fail if asked to; otherwise `df`, cut or repeated to the requested row count."""
    if should_fail(asset_name):
        raise DemoFailure(
            f"{asset_name} was asked to fail ({FAIL_ENV} or {control_dir() / 'fail' / asset_name})"
        )
    rows = row_override(asset_name)
    if rows is None or rows == len(df):
        return df
    if rows < len(df) or df.empty:
        return df.head(rows).reset_index(drop=True)
    repeats = -(-rows // len(df))
    return pd.concat([df] * repeats, ignore_index=True).head(rows)


def ensure_demo_source() -> Path:
    """The demo source database, created on first use when `asset-manager init` has not run."""
    from orchestrator.shared.demo_source import create_demo_source, default_demo_source_path

    return create_demo_source(default_demo_source_path())


def set_failing(asset_name: str, failing: bool = True) -> Path:
    """Create (or remove) the flag file that makes `asset_name` fail; returns its path."""
    flag = control_dir() / "fail" / asset_name
    if failing:
        flag.parent.mkdir(parents=True, exist_ok=True)
        flag.touch()
    else:
        flag.unlink(missing_ok=True)
    return flag


def set_rows(asset_name: str, rows: int | None) -> Path:
    """Request `rows` rows from `asset_name` (None removes the request); returns the file's path."""
    path = control_dir() / "rows" / asset_name
    if rows is None:
        path.unlink(missing_ok=True)
    else:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(str(int(rows)))
    return path
