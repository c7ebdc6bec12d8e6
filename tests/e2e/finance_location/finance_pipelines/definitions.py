"""The finance workspace entry: `defs`."""

from collections.abc import Iterator

import dagster as dg

from finance_pipelines import ledger


@dg.multi_asset(
    specs=[
        dg.AssetSpec(
            ["finance", "revenue"],
            deps=[["finance", "ledger", "entries"]],
            owners=["team:finance"],
            kinds={"dbt"},
            group_name="finance_reporting",
        ),
        dg.AssetSpec(
            ["finance", "costs"],
            deps=[["finance", "ledger", "entries"]],
            owners=["team:finance"],
            kinds={"dbt"},
            group_name="finance_reporting",
        ),
    ]
)
def revenue_and_costs() -> Iterator[dg.MaterializeResult]:
    yield dg.MaterializeResult(asset_key=["finance", "revenue"])
    yield dg.MaterializeResult(asset_key=["finance", "costs"])


@dg.asset(
    key=["finance", "daily_balances"],
    partitions_def=dg.DailyPartitionsDefinition(start_date="2024-01-01"),
    deps=[["finance", "ledger", "entries"]],
    owners=["treasury@example.com"],
    group_name="finance_reporting",
)
def daily_balances() -> None:
    return None


ledger_assets = dg.load_assets_from_modules([ledger], key_prefix=["finance", "ledger"])
# The observable source asset keeps its own key (a prefix applies to the module's assets only).
month_end_close = dg.define_asset_job("month_end_close", selection=[revenue_and_costs])
defs = dg.Definitions(assets=[*ledger_assets, revenue_and_costs, daily_balances], jobs=[month_end_close])
