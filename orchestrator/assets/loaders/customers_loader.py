# orchestrator/assets/loaders/customers_loader.py
import pandas as pd
from dagster import AssetExecutionContext, AssetIn, asset

from orchestrator.assets._demo import apply_controls
from orchestrator.assets.loaders.orders_loader import stage


@asset(
    name="stg_customers",
    ins={"raw_customers": AssetIn()},
    group_name="stg__loaders",
    description="Loads raw customers into the staging table.",
    kinds={"pandas", "sqlite"},
    owners=["data-platform@example.com", "team:data-platform"],
    tags={"ams/pipeline": "demo", "domain": "sales", "source": "DemoShop", "type": "loader"},
    metadata={"target_table": "customers_staging", "target_schema": "stg"},
    code_version="1",
)
def stg_customers(context: AssetExecutionContext, raw_customers: pd.DataFrame) -> pd.DataFrame:
    """Loads the raw customers into a staging table."""
    df = apply_controls("stg_customers", raw_customers)
    stage(df, "customers_staging")
    return df


all_assets = [stg_customers]
