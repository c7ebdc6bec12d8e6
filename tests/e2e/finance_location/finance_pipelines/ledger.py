"""Ledger assets, loaded with `load_assets_from_modules(..., key_prefix=["finance", "ledger"])`."""

import os
from pathlib import Path

import dagster as dg


@dg.observable_source_asset(
    key=["finance", "bank_feed"],
    group_name="finance_sources",
    description="Daily statement files dropped by the bank.",
)
def bank_feed() -> dg.DataVersion:
    return dg.DataVersion("v1")


@dg.asset(
    deps=[dg.AssetKey(["finance", "bank_feed"]), dg.AssetKey("stg_orders")],
    group_name="finance",
    owners=["team:finance", "controller@example.com"],
    tags={"domain": "finance", "tier": "gold"},
    kinds={"snowflake", "python"},
    description="Journal entries of the general ledger.",
    code_version="1",
)
def entries() -> dg.MaterializeResult:
    control = Path(os.environ.get("FINANCE_CONTROL_DIR", "/nonexistent"))
    if (control / "fail").exists():
        raise RuntimeError("ledger database refused the connection")
    return dg.MaterializeResult(metadata={"dagster/row_count": 1200})
