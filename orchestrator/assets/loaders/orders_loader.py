# orchestrator/assets/loaders/orders_loader.py
from dagster import AssetExecutionContext, AssetIn, asset
from pandas import DataFrame

from orchestrator.assets._demo import apply_controls
from orchestrator.shared.load_to_sql_utils import load_to_stg_table, sanitize_dataframe


@asset(
    name="stg_orders",
    ins={"raw_orders": AssetIn()},
    group_name="stg__loaders",
    description="Loads raw orders into the staging table stg.orders_staging.",
    kinds={"pandas", "sqlite"},
    owners=["data-platform@example.com", "team:data-platform"],
    tags={"ams/pipeline": "demo", "domain": "sales", "source": "DemoShop", "type": "loader"},
    metadata={"target_table": "orders_staging", "target_schema": "stg"},
    code_version="2",
)
def stg_orders(context: AssetExecutionContext, raw_orders: DataFrame) -> DataFrame:
    """Loads the raw orders into a staging table; returns them for the transformations."""
    sanitized_data = sanitize_dataframe(apply_controls("stg_orders", raw_orders))
    load_to_stg_table(context=context, df=sanitized_data, target_table_name="orders_staging")
    return sanitized_data


all_assets = [stg_orders]
